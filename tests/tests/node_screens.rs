//! The warehouse screens of a real node over HTTP on loopback, as a browser would use them (form posts,
//! redirects, a session cookie): sign-in and its refusals, a wave picked by scanning bins and items, a wrong
//! scan and a forged form that change nothing, a short pick with its reason, pack and ship, the audit trail's
//! `user:<name>` rows, roles, and a disabled user's session ending without a restart; receiving an ASN line,
//! an over-receipt forced with a reason and a return against its RMA through the screens, against what a real
//! hub published; the dispatch screen while the carrier is away and a manifest closed from it. The same flows in a
//! real Chromium are `tests/ui/` (run by `ui_browser.rs`).

use std::time::{Duration, Instant};

use oms_tests::browser::{Browser, Page};
use oms_tests::{NodeProc, get, http, order_body, place, run_oms, seed};
use serde_json::Value;

/// How many times the node has read its key file (`/metrics`).
async fn key_reloads(n: &NodeProc) -> u64 {
    let body = http().get(n.url("/metrics")).send().await.unwrap().text().await.unwrap();
    body.lines()
        .find_map(|l| l.split_once("_auth_key_reloads_total ").and_then(|(_, v)| v.trim().parse().ok()))
        .expect("the node counts its key file reads")
}

/// Adds a user to the node's key file and waits until the running node has read the file again (it does
/// within `keys_check_interval_ms`, 100 ms here), so that a sign-in right after this does not race the reload.
async fn add_user(n: &NodeProc, name: &str, role: oms_service::auth::Role, secret: &str, pin: bool) {
    let before = key_reloads(n).await;
    let new = oms_service::auth::users::NewUser { name: name.into(), role, secret: secret.into(), pin };
    oms_service::auth::users::create(&n.dir, new, 1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while key_reloads(n).await <= before {
        assert!(Instant::now() < deadline, "the node did not read its key file again within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    add_user(&n, "ana", oms_service::auth::Role::Staff, "4711", true).await;
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
    add_user(&n, "ana", oms_service::auth::Role::Staff, "4711", true).await;
    add_user(&n, "per", oms_service::auth::Role::Planner, "a long password", false).await;
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

/// Posts the form `f` to `path`.
async fn post_form(b: &mut Browser, f: Vec<(String, String)>, path: String) -> Page {
    let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    b.post(&path, &pairs).await
}

/// Units on hand of `sku` at the node `addr`, by the API.
async fn on_hand_at(addr: std::net::SocketAddr, sku: &str) -> u64 {
    let (s, v) = get(&http(), format!("http://{addr}/v1/stock/{sku}")).await;
    assert_eq!(s, 200, "{v}");
    v["balance"]["on_hand"].as_u64().or_else(|| v["on_hand"].as_u64()).unwrap()
}

/// Signs `name` in, waiting (bounded) for the node to pick up a user created while it runs.
async fn signed_in(addr: std::net::SocketAddr, name: &str, secret: &str) -> Browser {
    let mut b = Browser::new(addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.sign_in(name, secret).await.status != 303 {
        assert!(Instant::now() < deadline, "{name} never signed in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b
}

/// Receiving and returns through the screens, against what a real hub published to the site: an ASN line
/// received by scanning (the ledger has it once, a second press books nothing), an over-receipt refused as a
/// sentence and then forced with a reason, an unplanned SKU, a form without its CSRF token refused; a
/// return received per line with restock and scrap, an over-return and a stale form refused. The today
/// screen links to both with counts; a planner is refused on each. All of it with the hub killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiving_and_returns_screens_book_what_the_hub_published() {
    let c = http();
    let mut f = oms_tests::floor::Floor::start().await;
    // What the hub published is at the site; from here on the hub is gone: the screens work without it.
    f.hub.proc.kill9();
    let (berlin, po, rma, fo) = (&f.node, f.po.clone(), f.rma.clone(), f.fulfillment.clone());
    let base = format!("http://{}/v1", berlin.http);
    // A planner is refused every new screen, as a page.
    let mut per = signed_in(berlin.http, "per", "a long password").await;
    for path in
        ["/ui/inbound", &format!("/ui/inbound/{po}"), "/ui/returns", &format!("/ui/returns/{rma}"), "/ui/dispatch"]
    {
        let p = per.get(path).await;
        assert_eq!(p.status, 403, "{path}: {}", p.html);
        assert!(!p.html.contains("\"code\""), "a page, not JSON");
    }

    let mut b = signed_in(berlin.http, "ana", "4711").await;
    let today = b.get("/ui").await;
    assert_eq!(today.status, 200);
    for link in [
        r#"href="/ui/inbound"><span class="n">1</span>"#,
        r#"href="/ui/returns"><span class="n">1</span>"#,
        r#"href="/ui/dispatch"><span class="n">0</span>"#,
    ] {
        assert!(today.html.contains(link), "{link} in {}", today.html);
    }
    let list = b.get("/ui/inbound").await;
    assert!(
        list.html.contains(&format!("Purchase order {po}")) && list.html.contains("Receive ASN ASN-1"),
        "{}",
        list.html
    );

    // Scan the ASN's line: 6 units.
    let screen = format!("/ui/inbound/{po}?asn=ASN-1");
    let action = format!("/ui/inbound/{po}/receive");
    let before = on_hand_at(berlin.http, "SKU-A").await;
    let p = b.get(&screen).await;
    assert_eq!(p.status, 200);
    let (csrf, receipt) = (p.csrf(), p.field("receipt").unwrap());
    let form = |receipt: &str, sku: &str, qty: &str| -> Vec<(String, String)> {
        [("csrf", csrf.as_str()), ("receipt", receipt), ("asn", "ASN-1"), ("sku", sku), ("qty", qty)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    // Without the session's CSRF token: refused, nothing booked.
    let mut forged = form(&receipt, "SKU-A", "6");
    forged[0].1 = "forged".into();
    let p = post_form(&mut b, forged, action.clone()).await;
    assert_eq!(p.status, 403);
    assert_eq!(on_hand_at(berlin.http, "SKU-A").await, before);
    let p = post_form(&mut b, form(&receipt, "SKU-A", "6"), action.clone()).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let done = b.get(p.location.as_deref().unwrap()).await;
    assert!(done.html.contains("Received 6 × SKU-A (line 1)"), "{}", done.html);
    assert_eq!(on_hand_at(berlin.http, "SKU-A").await, before + 6);
    // The sentence comes from the stored receipt, never from the address: a crafted link says nothing.
    let crafted =
        p.location.as_deref().unwrap().split("?done=").next().unwrap().to_owned() + "?done=Call%20this%20number%20now";
    let page = b.get(&crafted).await;
    assert_eq!(page.status, 200);
    assert!(!page.html.contains("Call this number") && !page.html.contains("Received 6"), "{}", page.html);
    // The ledger has the receipt, once, under the form's receipt id; a second press books nothing.
    let p = post_form(&mut b, form(&receipt, "SKU-A", "6"), action.clone()).await;
    assert_eq!(p.status, 303);
    let again = b.get(p.location.as_deref().unwrap()).await;
    assert!(again.html.contains("already booked"), "{}", again.html);
    assert_eq!(on_hand_at(berlin.http, "SKU-A").await, before + 6);
    // The same form sent back with other units (the back button): refused, nothing booked.
    let p = post_form(&mut b, form(&receipt, "SKU-A", "5"), action.clone()).await;
    assert!(p.status >= 400 && p.html.contains("already booked a different receipt"), "{}", p.html);
    assert_eq!(on_hand_at(berlin.http, "SKU-A").await, before + 6);
    let (_, ledger) = get(&c, format!("{base}/stock/SKU-A/ledger?limit=500")).await;
    let booked = ledger.to_string().matches(&format!("receipt {receipt}")).count();
    assert_eq!(booked, 1, "{ledger}");

    // 6 + 10 is past 10 % over the 10 expected: refused as a sentence, with "receive anyway".
    let r2 = done.field("receipt").unwrap();
    assert_ne!(r2, receipt, "a fresh receipt id per drawn form");
    let p = post_form(&mut b, form(&r2, "SKU-A", "10"), action.clone()).await;
    assert_eq!(p.status, 409, "{}", p.html);
    assert!(p.html.contains("exceed the 10 expected") && p.html.contains("Receive anyway"), "{}", p.html);
    assert!(!p.html.contains("\"code\""), "a page, not JSON");
    assert_eq!(on_hand_at(berlin.http, "SKU-A").await, before + 6);
    assert_eq!(p.field("receipt").as_deref(), Some(r2.as_str()), "the forced form keeps the receipt id");
    let mut forced = form(&r2, "SKU-A", "10");
    forced.push(("force".into(), "1".into()));
    let p = post_form(&mut b, forced.clone(), action.clone()).await;
    assert_eq!(p.status, 400, "a reason is required: {}", p.html);
    assert!(p.html.contains("Say why"), "{}", p.html);
    forced.push(("reason".into(), "extra on the pallet".into()));
    let p = post_form(&mut b, forced, action.clone()).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let done = b.get(p.location.as_deref().unwrap()).await;
    assert!(done.html.contains("past the tolerance because: extra on the pallet"), "{}", done.html);
    assert_eq!(on_hand_at(berlin.http, "SKU-A").await, before + 16);
    // A SKU the order does not have: unplanned, against the same order.
    let b_before = on_hand_at(berlin.http, "SKU-B").await;
    let r3 = done.field("receipt").unwrap();
    let p = post_form(&mut b, form(&r3, "SKU-B", "2"), action.clone()).await;
    let done = b.get(p.location.as_deref().unwrap()).await;
    assert!(done.html.contains("unplanned"), "{}", done.html);
    assert_eq!(on_hand_at(berlin.http, "SKU-B").await, b_before + 2);
    let p = post_form(&mut b, form(&done.field("receipt").unwrap(), "NOPE", "1"), action.clone()).await;
    assert_eq!(p.status, 422, "{}", p.html);
    assert!(p.html.contains("NOPE"), "an unknown SKU as a sentence: {}", p.html);

    // The return: 3 is past the 2 approved, refused; 1 restocked, then 1 scrapped; a stale form refused.
    let list = b.get("/ui/returns").await;
    assert!(list.html.contains(&format!("Receive return {rma}")), "{}", list.html);
    let rscreen = format!("/ui/returns/{rma}");
    let ract = format!("/ui/returns/{rma}/receive");
    let p = b.get(&rscreen).await;
    let seen = p.field("seen").unwrap();
    assert_eq!(seen, "0");
    let rform = |seen: &str, qty: &str, disposition: &str| -> Vec<(String, String)> {
        [("csrf", csrf.as_str()), ("seen", seen), ("sku", "SKU-A"), ("qty", qty), ("disposition", disposition)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let before = on_hand_at(berlin.http, "SKU-A").await;
    let p = post_form(&mut b, rform("0", "3", "restock"), ract.clone()).await;
    assert_eq!(p.status, 409, "{}", p.html);
    assert!(p.html.contains("would exceed the 2 approved"), "{}", p.html);
    let p = post_form(&mut b, rform("0", "1", "restock"), ract.clone()).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let done = b.get(p.location.as_deref().unwrap()).await;
    assert!(
        done.html.contains("Received 1 × SKU-A against return") && done.html.contains("restocked"),
        "{}",
        done.html
    );
    assert_eq!(on_hand_at(berlin.http, "SKU-A").await, before + 1);
    let p = post_form(&mut b, rform("0", "1", "restock"), ract.clone()).await;
    assert_eq!(p.status, 409, "a second press of the same form: {}", p.html);
    assert!(p.html.contains("changed since the page was drawn"), "{}", p.html);
    assert_eq!(done.field("seen").as_deref(), Some("1"));
    let p = post_form(&mut b, rform("1", "1", "scrap"), ract.clone()).await;
    assert_eq!(p.status, 303, "{}", p.html);
    assert_eq!(on_hand_at(berlin.http, "SKU-A").await, before + 1, "scrapped units are not stock");
    let (_, rmas) = get(&c, format!("{base}/rmas")).await;
    let here = &rmas["items"].as_array().unwrap().iter().find(|r| r["rma"] == rma.as_str()).unwrap()["lines"][0];
    assert_eq!(here["received_here"], 2, "{rmas}");
    let (_, o) = get(&c, format!("{base}/orders/{fo}")).await;
    assert_eq!(o["returns"].as_array().map(Vec::len), Some(2), "{o}");

    // Every booking is audited as the person.
    let (_, audit) = get(&c, format!("{base}/audit/events?limit=1000")).await;
    let routes: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == "user:ana")
        .filter_map(|e| e["route"].as_str())
        .collect();
    assert!(
        routes.contains(&"/ui/inbound/{po}/receive") && routes.contains(&"/ui/returns/{rma}/receive"),
        "{routes:?}"
    );
}

/// The dispatch screen of a site whose carrier goes away: a consignment waits for its label (counted, with
/// since when), the others are labelled with slip and label links; closing the manifest through the screen
/// takes only the labelled ones; a planner is refused.
#[tokio::test]
async fn dispatch_screen_shows_waiting_labels_and_closes_only_labelled_consignments() {
    use serde_json::json;
    let d = tempfile::tempdir().unwrap();
    let carrier = d.path().join("carrier");
    std::fs::create_dir_all(&carrier).unwrap();
    let node_dir = d.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let cfg = format!(
        "[auth]\nkeys_check_interval_ms = 100\n[carrier]\nkind = \"test\"\ndir = {:?}\ndefault_service = \"ground\"\n\
         label_timeout_ms = 1500\nlabel_poll_ms = 50\n",
        carrier.display().to_string()
    );
    let n = NodeProc::start_with_config("wh1", &node_dir, &cfg);
    add_user(&n, "ana", oms_service::auth::Role::Staff, "4711", true).await;
    add_user(&n, "per", oms_service::auth::Role::Planner, "a long password", false).await;
    let c = http();
    seed(&c, &n, "A", 10).await;
    let parcel = json!({"parcels": [{"weight_g": 1200, "length_mm": 300, "width_mm": 200, "height_mm": 100}]});
    let mut ids = Vec::new();
    for ext in ["d1", "d2"] {
        let (s, o) = place(&c, &n, ext, &order_body(ext, &[("A", 1)])).await;
        assert_eq!(s, 201);
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    let (s, _) = oms_tests::post(&c, n.url("/v1/waves"), json!({"max_orders": 50})).await;
    assert_eq!(s, 201);
    for id in &ids {
        let picks = json!({"lines": [{"sku": "A", "picked": 1}]});
        assert_eq!(oms_tests::post(&c, n.url(&format!("/v1/orders/{id}/picks")), picks).await.0, 200);
    }
    let wait_state = |id: String, state: &'static str| {
        let c = c.clone();
        let url = n.url(&format!("/v1/consignments/C-{id}"));
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, v) = get(&c, url.clone()).await;
                if v["state"] == state {
                    return v;
                }
                assert!(Instant::now() < deadline, "C-{id} not {state}: {v}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let pack = |id: &str| oms_tests::post(&c, n.url(&format!("/v1/orders/{id}/pack")), parcel.clone());
    assert_eq!(pack(&ids[0]).await.0, 200);
    wait_state(ids[0].clone(), "labelled").await;
    std::fs::write(carrier.join("fault"), "unreachable").unwrap();
    assert_eq!(pack(&ids[1]).await.0, 200);
    wait_state(ids[1].clone(), "awaiting_label").await;

    let mut per = signed_in(n.addr, "per", "a long password").await;
    assert_eq!(per.get("/ui/dispatch").await.status, 403);
    let mut b = signed_in(n.addr, "ana", "4711").await;
    let p = b.get("/ui").await;
    assert!(p.html.contains(r#"href="/ui/dispatch"><span class="n">1</span>"#), "{}", p.html);
    let p = b.get("/ui/dispatch").await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("1 consignments wait for a label"), "{}", p.html);
    let (waiting, labelled) = (format!("C-{}", ids[1]), format!("C-{}", ids[0]));
    assert!(p.html.contains(&format!("/ui/dispatch/{labelled}/label")), "a label link: {}", p.html);
    assert!(!p.html.contains(&format!("/ui/dispatch/{waiting}/label")), "no label yet: {}", p.html);
    assert!(p.html.contains("Close the manifest for test"), "{}", p.html);
    let slip = b.get(&format!("/ui/dispatch/{waiting}/slip")).await;
    assert!(slip.status == 200 && slip.html.contains("Packing slip"), "{}", slip.html);
    let label = b.get(&format!("/ui/dispatch/{labelled}/label")).await;
    assert_eq!(label.status, 200);
    let none = b.get(&format!("/ui/dispatch/{waiting}/label")).await;
    assert_eq!(none.status, 409, "{}", none.html);
    assert!(none.html.contains("not bought yet") && !none.html.contains("\"code\""), "{}", none.html);

    let csrf = p.csrf();
    let p = b.post("/ui/dispatch/manifests", &[("carrier", "test")]).await;
    assert_eq!(p.status, 403, "no CSRF token");
    let p = b.submit("/ui/dispatch/manifests", &[("csrf", &csrf), ("carrier", "test")]).await;
    assert!(p.html.contains("Closed manifest M-1 for test with 1 consignments"), "{}", p.html);
    assert_eq!(wait_state(ids[0].clone(), "manifested").await["state"], "manifested");
    assert_eq!(wait_state(ids[1].clone(), "awaiting_label").await["state"], "awaiting_label");
    let p = b.post("/ui/dispatch/manifests", &[("csrf", &csrf), ("carrier", "test")]).await;
    assert_eq!(p.status, 409, "nothing labelled is left: {}", p.html);
    assert!(p.html.contains("no labelled consignment of test waits"), "{}", p.html);
}
