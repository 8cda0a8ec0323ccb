//! A site as the screens find it after a day's traffic with a real hub: a hub (test payment provider,
//! returns approved at once) and one node `wh-berlin` linked to it, with SKU-A (50) and SKU-B (5) in stock,
//! a card order for 3 × SKU-A shipped from the site and captured, a return (RMA) of 2 of them approved and
//! published to the site, and a purchase order of 10 × SKU-A sent, confirmed and announced by ASN `ASN-1`,
//! published to the site. Users: `ana` (staff, PIN 4711) and `per` (planner, "a long password"). Every
//! wait is bounded; the processes are killed when the [`Floor`] drops.

use serde_json::json;

use crate::cluster::{self, free_tcp, free_udp, pki, seed_sku, wait_for};

/// The hub and the site, and what the hub published to it.
pub struct Floor {
    /// The hub process.
    pub hub: cluster::HubProc,
    /// The hub's HTTP address.
    pub hub_http: std::net::SocketAddr,
    /// The site.
    pub node: cluster::ClusterNode,
    /// The purchase order (its ASN is `ASN-1`, line 1: 10 × SKU-A).
    pub po: String,
    /// The approved return: 2 × SKU-A of [`Floor::fulfillment`].
    pub rma: String,
    /// The shipped fulfillment order at the site.
    pub fulfillment: String,
    _tmp: tempfile::TempDir,
}

impl Floor {
    /// Starts both processes and makes the day's traffic (a few seconds).
    pub async fn start() -> Floor {
        Floor::start_with("").await
    }

    /// [`Floor::start`] with `auth` added to the node's and the hub's `[auth]` tables (e.g.
    /// `open_rate_per_s = 1000000`). The hub has a planner `per` and a service agent `sam` (password "a long
    /// password") from its start.
    pub async fn start_with(auth: &str) -> Floor {
        let c = crate::http();
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path();
        let state = root.join("provider.json");
        let certs = pki(root, &["wh-berlin"]);
        let (quic, hub) = (free_udp(), free_tcp());
        let hub_toml = format!(
            "[payments]\ncall_timeout_ms = 30000\nretry_backoff_ms = 50\n\
             [payments.providers.test]\nkind = \"test\"\nstate_file = {:?}\n\
             [tax]\nprices = \"inclusive\"\n[tax.rates]\nDE = 1900\n\
             [returns]\nwindow_days = 30\nauto_approve = true\n[auth]\n{auth}\n",
            state.display().to_string()
        );
        for (name, role) in [("per", oms_service::auth::Role::Planner), ("sam", oms_service::auth::Role::Service)] {
            let user = oms_service::auth::users::NewUser {
                name: name.into(),
                role,
                secret: "a long password".into(),
                pin: false,
            };
            oms_service::auth::users::create(&cluster::hub_data(root), user, 1).unwrap();
        }
        let hub_proc = cluster::spawn_hub_with(root, &certs, quic, hub, "info", &hub_toml);
        let site = format!(
            "\n[site]\nname = \"Berlin\"\nlat = 52.52\nlon = 13.40\n[auth]\nkeys_check_interval_ms = 100\n{auth}\n"
        );
        let (config, node_http, dir) = cluster::node_config_with(root, &certs, "wh-berlin", quic, &site);
        let berlin = cluster::spawn_node_with("wh-berlin", &config, node_http, &dir, "info");
        cluster::wait_healthy(&c, berlin.http, std::time::Duration::from_secs(30)).await;
        cluster::wait_healthy(&c, hub, std::time::Duration::from_secs(30)).await;
        seed_sku(&c, &berlin, "SKU-A", 50).await;
        seed_sku(&c, &berlin, "SKU-B", 5).await;
        wait_for(&c, format!("http://{hub}/v1/stock/SKU-A"), "hub rights", |v| {
            v["sites"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["hub_promisable"].as_u64().is_some_and(|n| n >= 3)))
        })
        .await;
        let data = dir.join("data");
        let staff = oms_service::auth::users::NewUser {
            name: "ana".into(),
            role: oms_service::auth::Role::Staff,
            secret: "4711".into(),
            pin: true,
        };
        oms_service::auth::users::create(&data, staff, 1).unwrap();
        let planner = oms_service::auth::users::NewUser {
            name: "per".into(),
            role: oms_service::auth::Role::Planner,
            secret: "a long password".into(),
            pin: false,
        };
        oms_service::auth::users::create(&data, planner, 1).unwrap();

        // A card order shipped from the site, and a return of 2 of its 3 units (approved at once).
        let order = json!({
            "external_ref": "web-1", "channel": "web",
            "lines": [{"sku": "SKU-A", "qty": 3, "unit_price_minor": 1190, "currency": "EUR"}],
            "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE", "lat": 52.52, "lon": 13.40},
            "payment": {"method": "card", "provider": "test", "token": "tok_ok"},
        });
        let r = c
            .post(format!("http://{hub}/v1/orders"))
            .header("idempotency-key", "k-1")
            .json(&order)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let placed: serde_json::Value = r.json().await.unwrap();
        let id = placed["id"].as_str().unwrap().to_owned();
        let fo = placed["fulfillments"][0]["id"].as_str().unwrap().to_owned();
        let base = format!("http://{}/v1", berlin.http);
        wait_for(&c, format!("{base}/orders/{fo}"), "accepted at the site", |v| v["status"] == "accepted").await;
        let (s, _) = crate::post(&c, format!("{base}/waves"), json!({"max_orders": 50})).await;
        assert_eq!(s, 201);
        let picks = json!({"lines": [{"sku": "SKU-A", "picked": 3}]});
        assert_eq!(crate::post(&c, format!("{base}/orders/{fo}/picks"), picks).await.0, 200);
        assert_eq!(crate::post(&c, format!("{base}/orders/{fo}/pack"), json!({"parcels": 1})).await.0, 200);
        let ship = json!({"carrier": "DHL", "tracking": "T1"});
        assert_eq!(crate::post(&c, format!("{base}/orders/{fo}/ship"), ship).await.0, 200);
        wait_for(&c, format!("http://{hub}/v1/orders/{id}"), "captured", |v| v["payment"]["status"] == "captured")
            .await;
        let ret = json!({"lines": [{"sku": "SKU-A", "qty": 2, "reason": "does not fit"}]});
        let (s, rma) = crate::post(&c, format!("http://{hub}/v1/orders/{id}/returns"), ret).await;
        assert_eq!((s, rma["state"].as_str()), (201, Some("approved")), "{rma}");
        let rma = rma["id"].as_str().unwrap().to_owned();

        // A purchase order of 10 × SKU-A for the site, sent, confirmed and announced by an ASN.
        let supplier = json!({"name": "Acme", "contact": "po@acme.test", "currency": "EUR", "lead_time_days": 5,
            "skus": {"SKU-A": {"supplier_sku": "AC-A", "cost_minor": 250, "moq": 1, "order_multiple": 1}}});
        let r = c.put(format!("http://{hub}/v1/suppliers/acme")).json(&supplier).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let body = json!({"supplier": "acme", "site": "wh-berlin", "lines": [{"sku": "SKU-A", "qty": 10}]});
        let (s, po) = crate::post(&c, format!("http://{hub}/v1/purchase-orders"), body).await;
        assert_eq!(s, 201, "{po}");
        let po = po["id"].as_str().unwrap().to_owned();
        for step in ["send", "confirm"] {
            let (s, v) = crate::post(&c, format!("http://{hub}/v1/purchase-orders/{po}/{step}"), json!({})).await;
            assert_eq!(s, 200, "{step}: {v}");
        }
        let asn = json!({"asn": "ASN-1", "lines": [{"line": 1, "qty": 10}]});
        let (s, v) = crate::post(&c, format!("http://{hub}/v1/purchase-orders/{po}/asns"), asn).await;
        assert_eq!(s, 201, "{v}");
        wait_for(&c, format!("{base}/inbound"), "the ASN at the site", |v| v.to_string().contains("ASN-1")).await;
        wait_for(&c, format!("{base}/rmas"), "the RMA at the site", |v| v.to_string().contains(&rma)).await;
        Floor { hub: hub_proc, hub_http: hub, node: berlin, po, rma, fulfillment: fo, _tmp: tmp }
    }
}
