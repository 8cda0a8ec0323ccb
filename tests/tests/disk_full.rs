//! A node whose disk fills up: writes are refused with `507 insufficient_storage` before they touch the
//! database, reads go on, nothing is half-written, and writes resume as soon as space returns. On a real
//! file system that really fills: a small tmpfs, which needs root to mount (CI runs as root); elsewhere the
//! test says why it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use oms_tests::{NodeProc, get, http, order_body, place, seed};
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
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), 48) else {
        eprintln!("skipped: mount -t tmpfs failed");
        return;
    };
    let data = fs.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut node = NodeProc::start_with_config("wh-full", &data, &format!("[storage]\nreserve_bytes = {}\n", 8 * MIB));
    let c = http();
    seed(&c, &node, "SKU-1", 100).await;
    let (s, first) = place(&c, &node, "k-1", &order_body("o-1", &[("SKU-1", 2)])).await;
    assert_eq!(s, 201, "{first}");

    // Fill the disk until less than the reserve is free.
    let free = oms_service::storage::free_bytes(&fs.0).unwrap();
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![0u8; (free - 4 * MIB) as usize]).unwrap();
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
