//! What deploy/ ships stays true to the code: every metric the Prometheus alert rules and the Grafana
//! dashboard name is exported by a running hub or node, and the service units and the Containerfile keep
//! the properties README promises (dedicated user, read-only system, state under /var/lib/oms, graceful
//! stop, non-root image).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use oms_tests::cluster;
use oms_tests::{http, order_body};

fn deploy(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)).unwrap()
}

/// Every `oms_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("oms_") {
        let start = i + at;
        let end = start
            + text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Families (`# TYPE name`) and sample names of an exposition.
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            out.extend(rest.split_whitespace().next().map(str::to_owned));
        } else if !line.starts_with('#') {
            out.extend(line.split(['{', ' ']).next().filter(|n| !n.is_empty()).map(str::to_owned));
        }
    }
    out
}

fn is_exported(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|family| exported.contains(family)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (hub, node) = cluster::hub_and_node(&c, root, "wh-a", "").await;
    let hub_http = hub.http;
    cluster::seed(&c, &node, 1, 10).await;
    cluster::place(&c, &node, "m-1", &order_body("m-1", &[("SKU-0", 1)])).await;
    // The hub's per-node series exist once the node has linked.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        let hub = c.get(format!("http://{hub_http}/metrics")).send().await.unwrap().text().await.unwrap();
        let at_node = c.get(format!("http://{}/metrics", node.http)).send().await.unwrap().text().await.unwrap();
        text = format!("{hub}\n{at_node}");
        if hub.contains("oms_hub_node_connected{node=\"wh-a\"} 1")
            && at_node.contains("oms_node_certificate_expires_in_seconds{")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exported = exported(&text);
    for file in ["prometheus/oms-alerts.yml", "grafana/oms-dashboard.json"] {
        let named = metric_names(&deploy(file));
        assert!(named.len() >= 8, "{file}: {named:?}");
        let missing: Vec<&String> = named.iter().filter(|n| !is_exported(n, &exported)).collect();
        assert!(missing.is_empty(), "{file} names metrics nobody exports: {missing:?}\n{text}");
    }
    let dashboard: serde_json::Value = serde_json::from_str(&deploy("grafana/oms-dashboard.json")).unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
}

#[test]
fn service_units_and_the_container_keep_their_promises() {
    for (unit, cmd) in [("systemd/oms-node.service", "oms node"), ("systemd/oms-hub.service", "oms hub")] {
        let text = deploy(unit);
        for line in [
            "User=oms",
            "ProtectSystem=strict",
            "StateDirectory=oms",
            "Restart=on-failure",
            "LimitNOFILE=65536",
            "TimeoutStopSec=45s",
            "NoNewPrivileges=true",
        ] {
            assert!(text.lines().any(|l| l == line), "{unit} lacks {line}");
        }
        assert!(text.contains(&format!("ExecStart=/usr/local/bin/{cmd} --config")), "{unit}");
    }
    let c = deploy("Containerfile");
    for needle in
        ["AS build", "USER 65532:65532", "VOLUME [\"/var/lib/oms\"]", "EXPOSE 8081/tcp 8080/tcp 7443/udp", "--locked"]
    {
        assert!(c.contains(needle), "Containerfile lacks {needle}");
    }
}
