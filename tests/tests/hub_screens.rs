//! The hub's screens over real HTTP against a real `oms hub`: a planner's network and stock screens and the
//! CSV of exactly what the table shows; customer service finding an order and cancelling it with a reason
//! (audited as the person), refused without one and for a planner; the customer's tracking page, which shows
//! nothing internal and nothing for a guessed link.

use std::path::Path;
use std::time::Duration;

use oms_protocol::domain::Channel;
use oms_service::auth::keys::{self, NewKey, Role};
use oms_service::auth::users::{self, NewUser};
use oms_tests::browser::Browser;
use oms_tests::cluster::{self, free_tcp, free_udp, hub_data, pki};
use serde_json::{Value, json};

fn user(root: &Path, name: &str, role: Role) {
    users::create(
        &hub_data(root),
        NewUser { name: name.into(), role, secret: "a long password".into(), pin: false },
        1,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_service_and_customer_screens() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let certs = pki(root, &[] as &[&str]);
    let web = NewKey {
        name: "web".into(),
        role: Role::Channel,
        channel: Some(Channel::parse("web").unwrap()),
        supplier: None,
        rate_per_s: None,
    };
    let web = keys::create(&hub_data(root), web, 1).unwrap();
    let svc = NewKey { name: "svc".into(), role: Role::Service, channel: None, supplier: None, rate_per_s: None };
    let svc = keys::create(&hub_data(root), svc, 1).unwrap();
    user(root, "per", Role::Planner);
    user(root, "sam", Role::Service);
    let http = free_tcp();
    let _hub =
        cluster::spawn_hub_with(root, &certs, free_udp(), http, "warn", "[auth]\nkeys_check_interval_ms = 100\n");
    let anon = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    cluster::wait_healthy(&anon, http, Duration::from_secs(30)).await;

    // A channel order with nowhere to go yet: it waits for stock.
    let channel = oms_tests::http_as(&web);
    let body = json!({
        "external_ref": "web-1", "channel": "web",
        "lines": [{"sku": "SKU-1", "qty": 2, "unit_price_minor": 1250, "currency": "EUR"}],
        "ship_to": {"name": "Ada Customer", "line1": "1 Secret Street", "city": "X", "postcode": "10115",
            "country": "DE", "lat": 52.52, "lon": 13.40}
    });
    let r = channel
        .post(format!("http://{http}/v1/orders"))
        .header("idempotency-key", "o1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let order: Value = r.json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    let token = order["tracking_token"].as_str().unwrap().to_owned();

    // The planner: network, stock, its CSV; the order read-only.
    let mut per = Browser::new(http);
    assert_eq!(per.sign_in("per", "a long password").await.status, 303);
    let p = per.get("/ui").await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("0 of 0 nodes linked now"), "{}", p.html);
    let p = per.get("/ui/stock?sku=SKU-1&sort=available").await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("0 rows") && p.html.contains("/ui/stock.csv?sku=SKU-1&amp;sort=available"), "{}", p.html);
    let csv = per.get("/ui/stock.csv?sku=SKU-1").await;
    assert_eq!(csv.status, 200);
    assert!(csv.html.starts_with("sku,site,on_hand"), "{}", csv.html);
    let p = per.get(&format!("/ui/orders/{id}")).await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("Waiting for stock"), "{}", p.html);
    assert!(!p.html.contains("Cancel the order"), "a planner has no cancel form");
    // How it was routed, drawn: no site exists yet, so the one decision held it and chose none.
    assert!(p.html.contains(&format!("/ui/orders/{id}/routing")), "{}", p.html);
    let r = per.get(&format!("/ui/orders/{id}/routing")).await;
    assert_eq!(r.status, 200);
    assert!(r.html.contains(&format!("Routing of order {id}")) && r.html.contains("held"), "{}", r.html);
    assert!(r.html.contains("No site was chosen.") && r.html.contains("units left unfilled"), "{}", r.html);
    assert_eq!(per.get("/ui/orders/hub-0000099999/routing").await.status, 404);
    let csrf = per.get("/ui").await.csrf();
    let p = per.post(&format!("/ui/orders/{id}/cancel"), &[("csrf", &csrf), ("reason", "x")]).await;
    assert_eq!(p.status, 403);
    assert!(p.html.contains("this screen is for service"), "{}", p.html);

    // Customer service: find by number, a cancel without a reason is refused and changes nothing, with one
    // it is done and audited as the person.
    let mut sam = Browser::new(http);
    assert_eq!(sam.sign_in("sam", "a long password").await.status, 303);
    // Found by what the customer says: two orders under one e-mail are listed, a phone number opens its one,
    // and a search that matches nothing says so.
    let mut ids = vec![id.clone()];
    for (key, ext, phone) in [("o2", "web-2", "+49 30 1234567"), ("o3", "web-3", "+49 40 7654321")] {
        let mut b = body.clone();
        b["external_ref"] = json!(ext);
        b["contact"] = json!({"email": "Ada@Example.com", "phone": phone});
        let r = channel.post(format!("http://{http}/v1/orders")).header("idempotency-key", key).json(&b).send().await;
        let v: Value = r.unwrap().json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let p = sam.get("/ui/orders?q=ada%40example.com").await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("2 orders match") && p.html.contains(&ids[1]) && p.html.contains(&ids[2]), "{}", p.html);
    assert!(p.html.find(&ids[2]) < p.html.find(&ids[1]), "newest first: {}", p.html);
    let p = sam.get("/ui/orders?q=%2B49%2030%201234567").await;
    assert_eq!((p.status, p.location.clone()), (303, Some(format!("/ui/orders/{}", ids[1]))));
    let p = sam.get("/ui/orders?q=web-3").await;
    assert_eq!(p.location, Some(format!("/ui/orders/{}", ids[2])), "by the shop's reference");
    let p = sam.get("/ui/orders?q=nobody%40example.com").await;
    assert!(p.html.contains("No order matches"), "{}", p.html);
    // The same search over the API, for service only, with typed refusals.
    let admin = oms_tests::http();
    let v: Value = admin
        .get(format!("http://{http}/v1/orders/search?q=ADA@example.com"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let found: Vec<&str> = v["orders"].as_array().unwrap().iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(found, [ids[2].as_str(), ids[1].as_str()], "{v}");
    for bad in
        ["/v1/orders/search", "/v1/orders/search?q=", "/v1/orders/search?q=x&limit=0", "/v1/orders/search?q=x&x=1"]
    {
        let r = admin.get(format!("http://{http}{bad}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "invalid_query", "{bad}: {v}");
    }
    let r = channel.get(format!("http://{http}/v1/orders/search?q=ada@example.com")).send().await.unwrap();
    assert_eq!(r.status(), 403, "a channel does not search other channels' customers");
    // Line-level cancel of units waiting for stock: over the API more than wait is refused and changes
    // nothing; on the console a reason is required, then one of the two units goes, audited as the person,
    // with its event; the order goes on (waiting units hold no reservation and no rights, so nothing else moves).
    let (s, v) = oms_tests::post(
        &channel,
        format!("http://{http}/v1/orders/{id}/cancel"),
        json!({"lines": [{"sku": "SKU-1", "qty": 3}]}),
    )
    .await;
    assert_eq!((s, v["code"].as_str(), v["waiting"].as_u64()), (409, Some("units_not_waiting"), Some(2)), "{v}");
    let (s, v) = oms_tests::post(
        &channel,
        format!("http://{http}/v1/orders/{id}/cancel"),
        json!({"lines": [{"sku": "SKU-1", "qty": 0}]}),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("invalid_quantity")), "{v}");
    let p = sam.get(&format!("/ui/orders/{id}")).await;
    assert!(p.html.contains("Cancel units") && p.html.contains("2 can be"), "{}", p.html);
    let csrf = p.csrf();
    let lines = format!("/ui/orders/{id}/cancel-lines");
    let p = sam.post(&lines, &[("csrf", &csrf), ("sku.0", "SKU-1"), ("qty.0", "1"), ("reason", "")]).await;
    assert_eq!(p.status, 422);
    assert!(p.html.contains("Give a reason for the cancellation."), "{}", p.html);
    let form = [("csrf", csrf.as_str()), ("sku.0", "SKU-1"), ("qty.0", "1"), ("reason", "customer wants one")];
    let p = sam.submit(&lines, &form).await;
    assert!(p.html.contains("1 can be"), "{}", p.html);
    let v: Value = admin.get(format!("http://{http}/v1/orders/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (
            v["cancel_requested_at_ms"].is_null(),
            v["lines"][0]["unfilled"].as_u64(),
            v["cancelled_unfilled"][0]["qty"].as_u64()
        ),
        (true, Some(1), Some(1)),
        "{v}"
    );
    let audit: Value =
        admin.get(format!("http://{http}/v1/audit/events?limit=100")).send().await.unwrap().json().await.unwrap();
    let rows: Vec<(&str, &str)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["route"] == "/ui/orders/{id}/cancel-lines" || e["route"] == "/v1/orders/{id}/cancel")
        .map(|e| (e["key"].as_str().unwrap_or(""), e["outcome"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(rows, [("web", "units_not_waiting"), ("user:sam", "ok")], "{audit}");
    let ev: Value = admin
        .get(format!("http://{http}/v1/events?types=order.lines_cancelled"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ev["events"].as_array().map(Vec::len), Some(1), "{ev}");
    assert_eq!(ev["events"][0]["data"]["reason"], "customer wants one", "{ev}");
    // Route the waiting unit now: no site exists, so nothing is placed, said on the page and audited.
    let p = sam.get(&format!("/ui/orders/{id}")).await;
    assert!(p.html.contains("Route the waiting units now"), "{}", p.html);
    let csrf = p.csrf();
    let p = sam.post(&format!("/ui/orders/{id}/route"), &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 409);
    assert!(p.html.contains("No site can take any of the waiting units now"), "{}", p.html);
    let (s, v) = oms_tests::post(&admin, format!("http://{http}/v1/orders/{id}/route"), json!({})).await;
    assert_eq!((s, v["routed"].as_bool()), (200, Some(false)), "{v}");
    let r = channel.post(format!("http://{http}/v1/orders/{id}/route")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 403, "routing by hand is service's");
    let audit: Value =
        admin.get(format!("http://{http}/v1/audit/events?limit=200")).send().await.unwrap().json().await.unwrap();
    let routed: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["route"].as_str().is_some_and(|r| r.ends_with("/route")))
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(routed, ["nothing_placeable", "nothing_placeable"], "{audit}");
    let p = sam.get(&format!("/ui/orders?id={id}")).await;
    assert_eq!((p.status, p.location.clone()), (303, Some(format!("/ui/orders/{id}"))));
    let p = sam.get(&format!("/ui/orders/{id}")).await;
    assert!(p.html.contains("Cancel the order"), "{}", p.html);
    let csrf = p.csrf();
    let p = sam.post(&format!("/ui/orders/{id}/cancel"), &[("csrf", &csrf), ("reason", "")]).await;
    assert_eq!(p.status, 422);
    assert!(p.html.contains("Give a reason"), "{}", p.html);
    let v: Value = admin.get(format!("http://{http}/v1/orders/{id}")).send().await.unwrap().json().await.unwrap();
    assert!(v["cancel_requested_at_ms"].is_null(), "{v}");
    let p = sam.submit(&format!("/ui/orders/{id}/cancel"), &[("csrf", &csrf), ("reason", "customer called")]).await;
    assert!(p.html.contains("Cancelled because: customer called"), "{}", p.html);
    let v: Value = admin.get(format!("http://{http}/v1/orders/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "cancelled", "{v}");
    let audit: Value =
        admin.get(format!("http://{http}/v1/audit/events?limit=100")).send().await.unwrap().json().await.unwrap();
    let cancels: Vec<&Value> =
        audit["events"].as_array().unwrap().iter().filter(|e| e["route"] == "/ui/orders/{id}/cancel").collect();
    assert_eq!(cancels.len(), 1, "{audit}");
    assert_eq!(cancels[0]["key"], "user:sam");

    // Notes: service writes one on the screen and one over the API; both show in the timeline with their
    // author for service, never to the channel; a blank or unknown-field note, an unknown order, a channel's
    // note are refused and change nothing.
    let p = sam.get(&format!("/ui/orders/{}", ids[1])).await;
    let csrf = p.csrf();
    let p = sam
        .submit(
            &format!("/ui/orders/{}/notes", ids[1]),
            &[("csrf", &csrf), ("text", "customer asked for a Friday delivery")],
        )
        .await;
    assert!(p.html.contains("Note by user:sam: customer asked for a Friday delivery"), "{}", p.html);
    let p = sam.post(&format!("/ui/orders/{}/notes", ids[1]), &[("csrf", &csrf), ("text", "   ")]).await;
    assert_eq!(p.status, 422);
    assert!(p.html.contains("a note is 1 to 2000 bytes"), "{}", p.html);
    let svc_http = oms_tests::http_as(&svc);
    let (s, n) =
        oms_tests::post(&svc_http, format!("http://{http}/v1/orders/{}/notes", ids[1]), json!({"text": "called back"}))
            .await;
    assert_eq!((s, n["n"].as_u64(), n["by"].as_str()), (201, Some(2), Some("svc")), "{n}");
    for (url, body, status, code) in [
        (format!("/v1/orders/{}/notes", ids[1]), json!({"text": ""}), 422, "invalid_text"),
        (format!("/v1/orders/{}/notes", ids[1]), json!({"text": "x", "pin": true}), 422, "invalid_body"),
        ("/v1/orders/hub-999999/notes".to_owned(), json!({"text": "x"}), 404, "order_not_found"),
    ] {
        let (s, v) = oms_tests::post(&svc_http, format!("http://{http}{url}"), body).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{url}: {v}");
    }
    let r = channel
        .post(format!("http://{http}/v1/orders/{}/notes", ids[1]))
        .json(&json!({"text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a channel writes no notes");
    let (_, v) = oms_tests::get(&svc_http, format!("http://{http}/v1/orders/{}", ids[1])).await;
    let notes: Vec<(&str, &str)> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "note")
        .map(|t| (t["by"].as_str().unwrap(), t["note"].as_str().unwrap()))
        .collect();
    assert_eq!(notes, [("user:sam", "customer asked for a Friday delivery"), ("svc", "called back")], "{v}");
    let v: Value =
        channel.get(format!("http://{http}/v1/orders/{}", ids[1])).send().await.unwrap().json().await.unwrap();
    assert!(!v.to_string().contains("Friday"), "the channel does not see service's notes: {v}");
    let audit: Value =
        admin.get(format!("http://{http}/v1/audit/events?limit=100")).send().await.unwrap().json().await.unwrap();
    let noted: Vec<(&str, &str)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["route"].as_str().is_some_and(|r| r.ends_with("/notes")))
        .map(|e| (e["key"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(noted, [("user:sam", "ok"), ("svc", "ok"), ("svc", "order_not_found")], "{audit}");

    // Reports: three orders of two units, none placed (no site yet), one cancelled; the planner's screen draws
    // them with a CSV of the same figures; service reads the JSON; a channel may not; bad queries are typed.
    let (s, r) = oms_tests::get(&admin, format!("http://{http}/v1/reports")).await;
    assert_eq!(s, 200, "{r}");
    let t = &r["total"];
    assert_eq!(
        (t["orders"].as_u64(), t["units_ordered"].as_u64(), t["units_backordered_at_intake"].as_u64()),
        (Some(3), Some(6), Some(6)),
        "{r}"
    );
    assert_eq!(
        (t["fill_rate"].as_f64(), t["cancellations"].as_u64(), t["shipped"].as_u64()),
        (Some(0.0), Some(1), Some(0))
    );
    assert_eq!(r["days"].as_array().map(Vec::len), Some(14), "the last 14 days by default: {r}");
    assert_eq!(r["channels"][0]["name"], "web", "{r}");
    let p = per.get("/ui/reports").await;
    assert_eq!(p.status, 200);
    assert!(
        p.html.contains("Orders per day") && p.html.contains("<svg") && p.html.contains("/ui/reports.csv"),
        "{}",
        p.html
    );
    let csv = per.get("/ui/reports.csv?channel=web").await;
    assert_eq!(csv.status, 200);
    assert!(csv.html.lines().last().is_some_and(|l| l.starts_with("total,,3,6,0.0000,6,1,")), "{}", csv.html);
    let p = per.get("/ui/reports?from=2026-13-01").await;
    assert!(p.html.contains("is not a date"), "a bad date is said on the screen: {}", p.html);
    let (s, _) = oms_tests::get(&oms_tests::http_as(&svc), format!("http://{http}/v1/reports?channel=web")).await;
    assert_eq!(s, 200, "service reads reports");
    let r = channel.get(format!("http://{http}/v1/reports")).send().await.unwrap();
    assert_eq!(r.status(), 403, "a channel does not read the network's reports");
    for bad in [
        "/v1/reports?from=2026-12-05&to=2026-12-01",
        "/v1/reports?from=2020-01-01&to=2026-01-01",
        "/v1/reports?to=tomorrow",
        "/v1/reports?format=xml",
        "/v1/reports?sku=A",
    ] {
        let (s, v) = oms_tests::get(&admin, format!("http://{http}{bad}")).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid_query")), "{bad}: {v}");
    }

    // The customer's page: no sign-in, plain words, nothing internal; a guessed link finds nothing.
    let mut customer = Browser::new(http);
    let p = customer.get(&format!("/t/{token}")).await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("<h1>Cancelled</h1>") && p.html.contains("web-1"), "{}", p.html);
    for internal in ["Secret Street", "Ada Customer", &id, "Sign out"] {
        assert!(!p.html.contains(internal), "the customer page shows {internal:?}");
    }
    // Without the link: the order number and the e-mail address it was placed with (any case) find it; a
    // wrong address or an unknown number get the same page and status.
    let p = customer.get("/t").await;
    assert!(p.status == 200 && p.html.contains("Find your order"), "{}", p.html);
    let p = customer.post("/t", &[("order", ids[1].as_str()), ("email", " ADA@example.COM ")]).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let to = p.location.clone().unwrap();
    assert!(to.starts_with("/t/"), "{to}");
    let page = customer.get(&to).await;
    assert!(page.status == 200 && page.html.contains("web-2"), "{}", page.html);
    let wrong = customer.post("/t", &[("order", ids[1].as_str()), ("email", "eve@example.com")]).await;
    let unknown = customer.post("/t", &[("order", "hub-0000099999"), ("email", "ada@example.com")]).await;
    let no_email = customer.post("/t", &[("order", id.as_str()), ("email", "ada@example.com")]).await;
    for p in [&wrong, &unknown, &no_email] {
        assert_eq!(p.status, 404);
        assert!(p.html.contains("No order has this number and e-mail address"), "{}", p.html);
    }
    assert_eq!(wrong.html, unknown.html, "the page says nothing about which part was wrong");
    let mut guess = token.into_bytes();
    guess[10] = if guess[10] == b'a' { b'b' } else { b'a' };
    let p = customer.get(&format!("/t/{}", String::from_utf8(guess).unwrap())).await;
    assert_eq!(p.status, 404);
    assert!(p.html.contains("can't find this order"), "{}", p.html);
}
