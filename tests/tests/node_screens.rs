//! The warehouse screens of a real node over HTTP on loopback, as a browser would use them (form posts,
//! redirects, a session cookie): sign-in and its refusals, a wave picked by scanning bins and items, a wrong
//! scan and a forged form that change nothing, a short pick with its reason, pack and ship, the audit trail's
//! `user:<name>` rows, roles, and a disabled user's session ending without a restart. The same flows in a
//! real Chromium are `tests/ui/` (run by `ui_browser.rs`).

use std::time::{Duration, Instant};

use oms_tests::browser::{Browser, Page};
use oms_tests::{NodeProc, get, http, order_body, place, run_oms, seed};
use serde_json::Value;

fn add_user(n: &NodeProc, name: &str, role: oms_service::auth::Role, secret: &str, pin: bool) {
    let new = oms_service::auth::users::NewUser { name: name.into(), role, secret: secret.into(), pin };
    oms_service::auth::users::create(&n.dir, new, 1).unwrap();
}

fn node(d: &tempfile::TempDir) -> NodeProc {
    let cfg = "[auth]\nkeys_check_interval_ms = 100\nsign_in_failures_max = 3\n";
    NodeProc::start_with_config("wh1", d.path(), cfg)
}

async fn order_state(n: &NodeProc, id: &str) -> Value {
    let (s, v) = get(&http(), n.url(&format!("/v1/orders/{id}"))).await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn a_picker_signs_in_picks_a_wave_by_scanning_packs_and_ships() {
    let d = tempfile::tempdir().unwrap();
    let n = node(&d);
    add_user(&n, "ana", oms_service::auth::Role::Staff, "4711", true);
    let admin = http();
    seed(&admin, &n, "A", 10).await; // bin B-A
    seed(&admin, &n, "B", 10).await; // bin B-B
    let (s, o1) = place(&admin, &n, "k1", &order_body("r1", &[("A", 2), ("B", 1)])).await;
    assert_eq!(s, 201);
    let (s, o2) = place(&admin, &n, "k2", &order_body("r2", &[("A", 3)])).await;
    assert_eq!(s, 201);
    let (id1, id2) = (o1["id"].as_str().unwrap().to_owned(), o2["id"].as_str().unwrap().to_owned());
    assert_ne!(id1, id2);
    let mut b = Browser::new(n.addr);
    // A stranger is sent to sign in, and back to where they were going afterwards.
    let p = b.get("/ui/stock?sku=A").await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/ui/sign-in?next=/ui/stock%3Fsku%3DA")));
    let p = b.sign_in("ana", "1234").await;
    assert_eq!(p.status, 401);
    assert!(p.html.contains("The name or the password is wrong"), "{}", p.html);
    assert!(b.cookie.is_none());
    let p = b.sign_in("ana", "4711").await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/ui")));
    assert!(b.cookie.is_some());
    let today = b.get("/ui").await;
    assert_eq!(today.status, 200);
    assert!(today.html.contains("Today at wh1"));
    assert!(today.html.contains("This site runs on its own"), "no hub configured");
    let csrf = today.csrf();

    // A form without the session's CSRF token is refused as a page, and builds no wave.
    let p = b.post("/ui/waves", &[("max_orders", "5"), ("csrf", "forged")]).await;
    assert_eq!(p.status, 403);
    assert!(p.html.contains("open the page again"), "{}", p.html);
    assert!(!p.html.contains("\"code\""), "a page, not JSON");
    assert_eq!(order_state(&n, &id1).await["status"], "accepted");

    // Build the wave: both orders, lines sorted by bin: A (r1), A (r2), B (r1).
    let p = b.post("/ui/waves", &[("max_orders", "5"), ("csrf", &csrf)]).await;
    assert_eq!(p.status, 303);
    let wave = p.location.unwrap();
    let p = b.get(&wave).await;
    assert!(p.html.contains("Line 1 of 3") && p.html.contains("B-A"), "{}", p.html);
    let scan = format!("{wave}/scan");
    let line = |p: &Page, key: &str| -> String {
        let at = p.html.find(&format!(r#"name="{key}" value=""#)).unwrap() + key.len() + 15;
        p.html[at..].split('"').next().unwrap().to_owned()
    };
    // A wrong bin is refused on the same screen and changes nothing.
    let first_order = line(&p, "order");
    let p2 = b
        .post(&scan, &[("csrf", &csrf), ("order", &first_order), ("sku", "A"), ("step", "bin"), ("scan", "B-B")])
        .await;
    assert_eq!(p2.status, 422);
    assert!(p2.html.contains("which is not bin B-A"), "{}", p2.html);
    // The bin, then the item: line 1 done.
    let p = b
        .submit(&scan, &[("csrf", &csrf), ("order", &first_order), ("sku", "A"), ("step", "bin"), ("scan", "b-a")])
        .await;
    assert!(p.html.contains("Scan the item"), "{}", p.html);
    let qty = line(&p, "order");
    assert_eq!(qty, first_order);
    // A wrong item is refused.
    let p2 =
        b.post(&scan, &[("csrf", &csrf), ("order", &first_order), ("sku", "A"), ("step", "sku"), ("scan", "B")]).await;
    assert_eq!(p2.status, 422);
    let full = if first_order == id1 { "2" } else { "3" };
    let p = b
        .submit(
            &scan,
            &[("csrf", &csrf), ("order", &first_order), ("sku", "A"), ("step", "sku"), ("scan", "A"), ("qty", full)],
        )
        .await;
    assert!(p.html.contains("Line 2 of 3"), "{}", p.html);
    assert!(p.html.contains("Scan the item"), "same bin: no second bin scan");
    // Posting the done line again (a double press) changes nothing and shows the next line.
    let again = b
        .post(
            &scan,
            &[("csrf", &csrf), ("order", &first_order), ("sku", "A"), ("step", "sku"), ("scan", "A"), ("qty", full)],
        )
        .await;
    assert_eq!(again.status, 409);
    // Line 2 (the other order's A): a short pick with a reason.
    let second_order = line(&p, "order");
    assert_ne!(second_order, first_order);
    let p = b
        .submit(
            &format!("{wave}/short"),
            &[("csrf", &csrf), ("order", &second_order), ("sku", "A"), ("picked", "1"), ("reason", "damaged")],
        )
        .await;
    assert!(p.html.contains("Line 3 of 3") && p.html.contains("B-B"), "{}", p.html);
    b.submit(&scan, &[("csrf", &csrf), ("order", &id1), ("sku", "B"), ("step", "bin"), ("scan", "B-B")]).await;
    let p = b
        .submit(&scan, &[("csrf", &csrf), ("order", &id1), ("sku", "B"), ("step", "sku"), ("scan", "B"), ("qty", "1")])
        .await;
    assert!(p.html.contains("is picked"), "{}", p.html);
    let short = order_state(&n, &second_order).await;
    assert_eq!(short["status"], "picked");
    assert!(
        short["timeline"].to_string().contains("short pick: 1 of")
            && short["timeline"].to_string().contains("(damaged)")
    );

    // Pack and ship order 1 from its screen.
    let p = b.submit(&format!("/ui/orders/{id1}/pack"), &[("csrf", &csrf), ("parcels", "2")]).await;
    assert!(p.html.contains("Handed to the carrier"), "{}", p.html);
    let p = b.post(&format!("/ui/orders/{id1}/ship"), &[("csrf", &csrf), ("carrier", "DHL"), ("tracking", "")]).await;
    assert_eq!(p.status, 400, "a missing tracking number is refused on the screen");
    assert!(p.html.contains("The tracking number is missing"), "{}", p.html);
    b.submit(&format!("/ui/orders/{id1}/ship"), &[("csrf", &csrf), ("carrier", "DHL"), ("tracking", "JD0001")]).await;
    let o = order_state(&n, &id1).await;
    assert_eq!(o["status"], "shipped");
    assert_eq!(o["shipment"]["tracking"], "JD0001");

    // Every change is in the audit trail as the person who made it.
    let (_, audit) = get(&admin, n.url("/v1/audit/events?limit=1000")).await;
    let rows: Vec<&Value> = audit["events"].as_array().unwrap().iter().filter(|e| e["key"] == "user:ana").collect();
    let routes: Vec<&str> = rows.iter().map(|e| e["route"].as_str().unwrap()).collect();
    assert!(routes.contains(&"/ui/waves") && routes.contains(&"/ui/orders/{id}/{action}"), "{routes:?}");
    assert_eq!(rows.iter().filter(|e| e["route"] == "/ui/waves/{id}/scan").count(), 2, "two full picks");

    // Sign out: the cookie no longer opens anything.
    let old = b.cookie.clone();
    let p = b.post("/ui/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 303);
    b.cookie = old;
    assert_eq!(b.get("/ui").await.status, 303);
}

#[tokio::test]
async fn roles_lockout_disabling_and_keys_on_screens() {
    let d = tempfile::tempdir().unwrap();
    let n = node(&d);
    add_user(&n, "ana", oms_service::auth::Role::Staff, "4711", true);
    add_user(&n, "per", oms_service::auth::Role::Planner, "a long password", false);
    let pin = run_oms(&[
        "users",
        "create",
        "--data",
        n.dir.to_str().unwrap(),
        "--role",
        "staff",
        "--name",
        "bo",
        "--pin",
        "--generate",
    ]);
    let pin = pin.trim();
    assert_eq!(pin.len(), 6, "{pin}");
    seed(&http(), &n, "A", 5).await;

    // A planner may look up stock but not open the picking screens: a page that says so, 403.
    let mut per = Browser::new(n.addr);
    // The CLI's user is picked up within the reload interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut bo = Browser::new(n.addr);
    while bo.sign_in("bo", pin).await.status != 303 {
        assert!(Instant::now() < deadline, "bo never signed in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(per.sign_in("per", "a long password").await.status, 303);
    let p = per.get("/ui/stock?sku=A").await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("On hand") && !p.html.contains("Receive"), "read only for a planner");
    let p = per.get("/ui").await;
    assert_eq!(p.status, 403);
    assert!(p.html.contains("this screen is for staff"), "{}", p.html);

    // An API key is not a session: screens need a person.
    let r = http().get(n.url("/ui")).send().await.unwrap();
    assert_eq!(r.status(), 403);

    // Three wrong PINs lock the name, even for the right PIN.
    let mut x = Browser::new(n.addr);
    for _ in 0..3 {
        assert_eq!(x.sign_in("ana", "0000").await.status, 401);
    }
    let p = x.sign_in("ana", "4711").await;
    assert_eq!(p.status, 429);
    assert!(p.html.contains("Too many wrong attempts"), "{}", p.html);

    // Disabling bo ends the session within the reload interval.
    assert_eq!(bo.get("/ui").await.status, 200);
    run_oms(&["users", "disable", "--data", n.dir.to_str().unwrap(), "--name", "bo"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bo.get("/ui").await.status != 303 {
        assert!(Instant::now() < deadline, "bo's session outlived the user");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Assets are served with a long cache and the page names them.
    let mut anon = Browser::new(n.addr);
    let p = anon.get("/ui/sign-in").await;
    let at = p.html.find("/ui/assets/style-").unwrap();
    let css = p.html[at..].split('"').next().unwrap().to_owned();
    let r = reqwest::get(format!("http://{}{css}", n.addr)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(anon.get("/ui/assets/style-0000.css").await.status, 404);
}
