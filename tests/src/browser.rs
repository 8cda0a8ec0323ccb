//! A person at a browser, for the screen tests: form posts, redirects not followed by themselves, the
//! session cookie kept.

/// A person at a browser: follows no redirect by itself, keeps the session cookie.
pub struct Browser {
    c: reqwest::Client,
    base: String,
    /// The session cookie (`name=value`), once signed in.
    pub cookie: Option<String>,
}

/// What a page answered: status, where it redirects, its HTML.
pub struct Page {
    /// HTTP status.
    pub status: u16,
    /// Where it redirects.
    pub location: Option<String>,
    /// The body.
    pub html: String,
}

impl Page {
    /// The CSRF token of the page's first form.
    pub fn csrf(&self) -> String {
        let at = self.html.find(r#"name="csrf" value=""#).expect("a form with a csrf field") + 19;
        self.html[at..].split('"').next().unwrap().to_owned()
    }

    /// The value of the page's first field named `name` (written `name="…" value="…"`), if any.
    pub fn field(&self, name: &str) -> Option<String> {
        let key = format!(r#"name="{name}" value=""#);
        let at = self.html.find(&key)? + key.len();
        self.html[at..].split('"').next().map(str::to_owned)
    }
}

impl Browser {
    /// A browser for the server at `addr` (plain HTTP).
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let c = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap();
        Browser { c, base: format!("http://{addr}"), cookie: None }
    }

    async fn read(&mut self, r: reqwest::Response) -> Page {
        if let Some(c) = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
            let pair = c.split(';').next().unwrap().to_owned();
            self.cookie = if pair.ends_with('=') { None } else { Some(pair) };
        }
        let status = r.status().as_u16();
        let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        Page { status, location, html: r.text().await.unwrap() }
    }

    /// Times `n` GETs of `path` (which must answer `200`), each followed by a `GET /healthz` on the same
    /// connection (the baseline: the cheapest answer of the same server, alternated so both see the same load):
    /// (screen ms, baseline ms, the screen's bytes), each list sorted. For the screens' benches.
    pub async fn alternate_with_healthz(&mut self, path: &str, n: u64) -> (Vec<f64>, Vec<f64>, usize) {
        let (mut ui, mut hz) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        for _ in 0..n {
            let t = std::time::Instant::now();
            let p = self.get(path).await;
            ui.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(p.status, 200, "{path}: {}", p.html);
            bytes = p.html.len();
            let t = std::time::Instant::now();
            assert_eq!(self.get("/healthz").await.status, 200);
            hz.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ui.sort_by(f64::total_cmp);
        hz.sort_by(f64::total_cmp);
        (ui, hz, bytes)
    }

    /// GET `path`.
    pub async fn get(&mut self, path: &str) -> Page {
        let mut rq = self.c.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            rq = rq.header("cookie", c);
        }
        let r = rq.send().await.unwrap();
        self.read(r).await
    }

    /// POST the form to `path`.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut rq = self.c.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = &self.cookie {
            rq = rq.header("cookie", c);
        }
        let r = rq.send().await.unwrap();
        self.read(r).await
    }

    /// Posts the form and follows the redirect that answers it.
    pub async fn submit(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let p = self.post(path, form).await;
        assert_eq!(p.status, 303, "{path} {form:?}: {}", p.html);
        let to = p.location.unwrap();
        self.get(&to).await
    }

    /// Signs in through the sign-in form.
    pub async fn sign_in(&mut self, name: &str, secret: &str) -> Page {
        self.post("/ui/sign-in", &[("name", name), ("password", secret), ("next", "/ui")]).await
    }
}
