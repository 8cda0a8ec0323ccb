//! What every screen of the node and the hub shares: the page around the content, the one stylesheet
//! (embedded, served under its content hash with a year's cache), sign-in and sign-out, forms checked for
//! their session's CSRF token, and problems shown as sentences instead of JSON.
//!
//! Screens are plain HTML forms rendered on the server ([`maud`], which escapes every value it inserts): no
//! script is needed to use them, a barcode scanner types into the focused field and presses Enter, and the
//! pages stay far below 150 KB. A screen route (`/ui…`) is authenticated by the session cookie
//! ([`crate::auth::session`]) in the same middleware and against the same per-route roles as the API, so a
//! screen can never do what its user's role could not do through the API.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::auth::session::{SESSION_COOKIE, SignInError, UiSession, cookie};
use crate::auth::{Auth, SIGN_IN_PATH, is_screen_route};
use crate::problem::Problem;

/// Largest form body, bytes.
pub const FORM_BYTES_MAX: usize = 16 * 1024;
/// Most fields of a form.
pub const FORM_FIELDS_MAX: usize = 64;
/// Largest problem body turned into a page, bytes.
const PROBLEM_BYTES_MAX: usize = 64 * 1024;

const STYLE_CSS: &str = include_str!("style.css");

/// The stylesheet's path, named by the first 8 bytes of its SHA-256 so a new build's never meets a cached old
/// one.
pub fn style_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        use sha2::Digest;
        let h = sha2::Sha256::digest(STYLE_CSS.as_bytes());
        format!("/ui/assets/style-{}.css", crate::auth::keys::hex(&h[..8]))
    })
}

/// `303 See Other` to `to`: the answer to every form post that worked (post, redirect, get), so a reload
/// never posts twice.
pub fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `s` percent-encoded for a query string value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `next` is a path on this server (never `//host` or a scheme): where sign-in may send the user.
fn local_path(next: &str) -> bool {
    next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') && !next.chars().any(char::is_control)
}

/// What a server puts around its screens: its name and its navigation.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// Shown at the top of every page and in the title ("oms · site-a").
    pub product: String,
    /// Navigation: label and path.
    pub nav: Vec<(&'static str, &'static str)>,
    /// Whether the session cookie is `Secure` (the server speaks TLS).
    pub secure_cookie: bool,
}

/// A whole page: the header with the navigation and the signed-in user, then `body` in `<main>`.
pub fn page(chrome: &Chrome, title: &str, session: Option<&UiSession>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (chrome.product) }
                link rel="stylesheet" href=(style_path());
            }
            body {
                header.top {
                    // A page with no navigation (the customer's) links nowhere a visitor cannot go.
                    @if chrome.nav.is_empty() { strong { (chrome.product) } } @else { a href="/ui" { strong { (chrome.product) } } }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            @for (label, href) in &chrome.nav { a href=(href) { (label) } }
                        }
                        form method="post" action="/ui/sign-out" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            span.who { (s.user) " (" (s.role) ") " }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// An error box that says what went wrong and what to do, for the top of a form.
pub fn error_box(message: &str) -> Markup {
    html! { div.error role="alert" { strong { "Not done: " } (message) } }
}

/// A posted form whose `csrf` field matched the session's token. Fields are read by name.
#[derive(Debug, Clone)]
pub struct Form {
    fields: Vec<(String, String)>,
    /// The session that posted it.
    pub session: UiSession,
}

impl Form {
    /// The first value of field `name`, trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim())
    }

    /// The value of field `name`, or a `400 missing_field` that says which.
    pub fn require(&self, name: &str, label: &str) -> Result<&str, Problem> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, "missing_field", format!("{label} is missing")))
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let session = req.extensions().get::<UiSession>().cloned().ok_or_else(|| {
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "sign in first; this form needs a session")
        })?;
        let essence = crate::problem::media_type(req.headers());
        if essence != "application/x-www-form-urlencoded" {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a screen form is sent as application/x-www-form-urlencoded",
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|_| Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the form is too large"))?;
        if body.len() > FORM_BYTES_MAX {
            return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the form is too large"));
        }
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|e| {
            Problem::new(StatusCode::BAD_REQUEST, "invalid_form", format!("the form cannot be read: {e}"))
        })?;
        if fields.len() > FORM_FIELDS_MAX {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_form", "the form has too many fields"));
        }
        let csrf = fields.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or("");
        if !session.csrf_ok(csrf) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "csrf_mismatch",
                "this form is from an older session or another site; open the page again and resubmit",
            ));
        }
        Ok(Form { fields, session })
    }
}

/// Middleware for the whole router: a problem answered to a screen request becomes a page with the problem
/// as a sentence (and the same status), so nobody at a screen reads raw JSON.
pub async fn html_problems(Extension(chrome): Extension<Arc<Chrome>>, req: Request, next: Next) -> Response {
    let screen = is_screen_route(req.uri().path());
    let resp = next.run(req).await;
    // The authorize layer (inside this one) hands the session back on the response.
    let session = resp.extensions().get::<UiSession>().cloned();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if !screen || !is_problem {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, PROBLEM_BYTES_MAX).await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let title = v.get("title").and_then(|t| t.as_str()).unwrap_or("Something went wrong");
    let detail = v.get("detail").and_then(|t| t.as_str()).unwrap_or("");
    let code = v.get("code").and_then(|t| t.as_str()).unwrap_or("");
    let markup = page(
        &chrome,
        title,
        session.as_ref(),
        html! {
            h1 { (title) }
            div.error role="alert" { p { (detail) } p.hint { "Code: " code { (code) } } }
            p { a.button href="/ui" { "Back to today's work" } }
        },
    );
    let mut out = (parts.status, markup).into_response();
    if let Some(v) = parts.headers.get(header::RETRY_AFTER) {
        out.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    out
}

#[derive(Deserialize, Default)]
struct NextQuery {
    next: Option<String>,
}

#[derive(Clone)]
struct WebState {
    auth: Arc<Auth>,
    chrome: Arc<Chrome>,
}

/// The sign-in and sign-out routes and the assets, for a server to merge under its auth layer. Its policy
/// admits `/ui/sign-in` and `/ui/assets/{file}` to anyone and `/ui/sign-out` to any signed-in role.
pub fn routes<S: Clone + Send + Sync + 'static>(auth: Arc<Auth>, chrome: Arc<Chrome>) -> Router<S> {
    Router::new()
        .route(SIGN_IN_PATH, get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/assets/{file}", get(asset))
        .with_state(WebState { auth, chrome })
}

async fn asset(Path(file): Path<String>) -> Response {
    if format!("/ui/assets/{file}") != style_path() {
        return Problem::new(StatusCode::NOT_FOUND, "not_found", "no such asset").into_response();
    }
    let mut resp = STYLE_CSS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    resp
}

fn sign_in_form(chrome: &Chrome, next: &str, name: &str, error: Option<&str>) -> Markup {
    page(
        chrome,
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { (error_box(e)) }
            form.card method="post" action=(SIGN_IN_PATH) {
                input type="hidden" name="next" value=(next);
                label for="name" { "Name" }
                input id="name" name="name" autocomplete="username" autocapitalize="none" required value=(name)
                    autofocus[name.is_empty()];
                label for="password" { "Password or PIN" }
                input id="password" name="password" type="password" autocomplete="current-password" required
                    autofocus[!name.is_empty()];
                button type="submit" { "Sign in" }
            }
        },
    )
}

async fn sign_in_page(State(st): State<WebState>, Query(q): Query<NextQuery>) -> Response {
    let next = q.next.filter(|n| local_path(n)).unwrap_or_else(|| "/ui".into());
    sign_in_form(&st.chrome, &next, "", None).into_response()
}

async fn sign_in(State(st): State<WebState>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        name: String,
        #[serde(default)]
        password: String,
        next: Option<String>,
    }
    let b: Body = match serde_urlencoded::from_bytes(&body) {
        Ok(b) if body.len() <= FORM_BYTES_MAX => b,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                sign_in_form(&st.chrome, "/ui", "", Some("The form cannot be read; try again.")),
            )
                .into_response();
        }
    };
    let next = b.next.filter(|n| local_path(n)).unwrap_or_else(|| "/ui".into());
    let name = b.name.trim().to_owned();
    let auth = st.auth.clone();
    let (n, p) = (name.clone(), b.password);
    let outcome = tokio::task::spawn_blocking(move || auth.sign_in(&n, &p, crate::now_ms())).await;
    match outcome {
        Ok(Ok(new)) => {
            let mut resp = see_other(&next);
            let secure = if st.chrome.secure_cookie { "; Secure" } else { "" };
            let c = format!("{SESSION_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}", new.token);
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            tracing::info!(user = %new.session.user, role = %new.session.role, "signed in");
            resp
        }
        Ok(Err(e)) => {
            let status = match e {
                SignInError::Wrong => StatusCode::UNAUTHORIZED,
                SignInError::Locked { .. } => StatusCode::TOO_MANY_REQUESTS,
            };
            let message = format!("{}.", capitalize(&e.to_string()));
            (status, sign_in_form(&st.chrome, &next, &name, Some(&message))).into_response()
        }
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the sign-in task failed: {e}"))
            .into_response(),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

async fn sign_out(State(st): State<WebState>, headers: axum::http::HeaderMap, _form: Form) -> Response {
    if let Some(t) = cookie(&headers, SESSION_COOKIE) {
        st.auth.sign_out(t);
    }
    let mut resp = see_other(SIGN_IN_PATH);
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("oms_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        for ok in ["/ui", "/ui/waves/3?x=1"] {
            assert!(local_path(ok), "{ok}");
        }
        for bad in ["//evil.example/ui", "https://evil.example", "ui", "/\\evil", "/ui\n"] {
            assert!(!local_path(bad), "{bad}");
        }
        assert_eq!(query_escape("/ui/a b?c=1&d"), "/ui/a%20b%3Fc%3D1%26d");
    }
}
