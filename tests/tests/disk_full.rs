//! A node or a hub whose disk fills up: writes are refused with `507 insufficient_storage` before they touch
//! the database, reads go on, nothing is half-written, and writes resume as soon as space returns. On a real
//! file system that really fills: a small tmpfs, which needs root to mount (CI runs as root); elsewhere the
//! test says why it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use oms_tests::cluster::{self, free_tcp, free_udp, pki};
use oms_tests::{NodeProc, get, http, order_body, place, post, seed};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Tmpfs {
    /// A `mib` MiB tmpfs under `dir` for a test, or `None` (and why, on stderr) where it cannot be mounted:
    /// the test then skips.
    fn for_test(dir: &Path, mib: u64) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
            return None;
        }
        let fs = Tmpfs::mount(&dir.join("mnt"), mib);
        if fs.is_none() {
            eprintln!("skipped: mount -t tmpfs failed");
        }
        fs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::for_test(tmp.path(), 48) else { return };
    let data = fs.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut node = NodeProc::start_with_config("wh-full", &data, &format!("[storage]\nreserve_bytes = {}\n", 8 * MIB));
    let c = http();
    seed(&c, &node, "SKU-1", 100).await;
    let (s, first) = place(&c, &node, "k-1", &order_body("o-1", &[("SKU-1", 2)])).await;
    assert_eq!(s, 201, "{first}");

    // Fill the disk until less than the reserve is free.
    let filler = fill(&fs.0, 4 * MIB);
    assert!(oms_service::storage::free_bytes(&fs.0).unwrap() < 8 * MIB);

    // Writes: a typed 507, nothing stored; reads: as before.
    let (s, v) = place(&c, &node, "k-2", &order_body("o-2", &[("SKU-1", 3)])).await;
    assert_eq!((s, v["code"].as_str()), (507, Some("insufficient_storage")), "{v}");
    assert!(v["free_bytes"].as_u64().is_some_and(|f| f < 8 * MIB), "{v}");
    let r = c.post(node.url("/v1/stock/receipts")).json(&json!({"sku": "SKU-1", "qty": 1})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 507);
    let (s, o) = get(&c, node.url(&format!("/v1/orders/{}", first["id"].as_str().unwrap()))).await;
    assert_eq!((s, o["status"].as_str()), (200, Some("accepted")), "{o}");
    let (s, st) = get(&c, node.url("/v1/stock/SKU-1")).await;
    assert_eq!((s, st["on_hand"].as_u64(), st["reserved"].as_u64()), (200, Some(100), Some(2)), "{st}");
    let (_, list) = get(&c, node.url("/v1/orders")).await;
    assert_eq!(list["orders"].as_array().map(Vec::len), Some(1), "the refused order left nothing: {list}");

    // Space returns: the same request goes through, once.
    std::fs::remove_file(&filler).unwrap();
    let (s, v) = place(&c, &node, "k-2", &order_body("o-2", &[("SKU-1", 3)])).await;
    assert_eq!(s, 201, "{v}");
    let (_, st) = get(&c, node.url("/v1/stock/SKU-1")).await;
    assert_eq!(st["reserved"].as_u64(), Some(5), "{st}");
    let (s, audit) = get(&c, node.url("/v1/audit/ledger")).await;
    assert_eq!((s, audit["consistent"].as_bool()), (200, Some(true)), "{audit}");
    node.kill9();
    drop(node);
}

/// Fills the file system of `dir` until less than `left` bytes are free; returns the filler to remove.
fn fill(dir: &Path, left: u64) -> PathBuf {
    let free = oms_service::storage::free_bytes(dir).unwrap();
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![0u8; (free - left) as usize]).unwrap();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_with_a_full_disk_refuses_api_writes_keeps_reads_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::for_test(tmp.path(), 64) else { return };
    let root = fs.0.clone();
    let certs = pki(&root, &["wh-1"]);
    let (quic, addr) = (free_udp(), free_tcp());
    let toml = format!("[storage]\nreserve_bytes = {}\n[webhooks]\nallow_private_addresses = true\n", 8 * MIB);
    let mut hub = cluster::spawn_hub_with(&root, &certs, quic, addr, "info", &toml);
    let c = http();
    cluster::wait_healthy(&c, addr, std::time::Duration::from_secs(30)).await;
    let url = |p: &str| format!("http://{addr}{p}");
    let hook = |n: u32| json!({"url": format!("http://127.0.0.1:9/hook-{n}"), "types": ["order.created"]});
    let (s, v) = post(&c, url("/v1/webhooks"), hook(1)).await;
    assert_eq!(s, 201, "{v}");

    let filler = fill(&root, 4 * MIB);
    let (s, v) = post(&c, url("/v1/webhooks"), hook(2)).await;
    assert_eq!((s, v["code"].as_str()), (507, Some("insufficient_storage")), "{v}");
    assert!(v["free_bytes"].as_u64().is_some_and(|f| f < 8 * MIB) && v["reserve_bytes"] == 8 * MIB, "{v}");
    let (s, v) = post(&c, url("/v1/orders"), order_body("full-1", &[("SKU-1", 1)])).await;
    assert_eq!((s, v["code"].as_str()), (507, Some("insufficient_storage")), "{v}");
    // Reads go on, and show that nothing was written.
    let (s, list) = get(&c, url("/v1/webhooks")).await;
    assert_eq!((s, list["webhooks"].as_array().map(Vec::len)), (200, Some(1)), "{list}");
    let (s, orders) = get(&c, url("/v1/orders")).await;
    assert_eq!((s, orders["orders"].as_array().map(Vec::len)), (200, Some(0)), "{orders}");
    // A caller without a key is still told so first.
    let r = reqwest::Client::new().post(url("/v1/webhooks")).json(&hook(3)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    std::fs::remove_file(&filler).unwrap();
    let (s, v) = post(&c, url("/v1/webhooks"), hook(2)).await;
    assert_eq!(s, 201, "{v}");
    let (_, list) = get(&c, url("/v1/webhooks")).await;
    assert_eq!(list["webhooks"].as_array().map(Vec::len), Some(2), "{list}");
    hub.proc.kill9();
}
