//! The faults the demo injects while orders flow: one site cut off from the hub and its carrier, and an
//! online backup of a site restored and checked elsewhere. (The kill -9 of a node is in `run`.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CUT_SITE;
use super::checks::node_order_ids;
use super::traffic::Tally;

/// What the demo's online backup measured.
pub(super) struct DemoBackup {
    pub(super) bytes: u64,
    pub(super) ms: u64,
    pub(super) pause_ms: f64,
    pub(super) restored_orders: u64,
    pub(super) restore_mismatches: u64,
}

/// Backs up the node serving `data` while it takes orders, restores the backup into `<data>-restored` beside
/// it and checks it there. `None` (and a line saying why) if any step failed.
pub(super) async fn demo_backup(data: &std::path::Path, started: Instant) -> Option<DemoBackup> {
    let root = data.parent().unwrap_or(data);
    let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (file, restored) = (root.join(format!("{name}.backup")), root.join(format!("{name}-restored")));
    let _ = std::fs::remove_dir_all(&restored);
    let t = Instant::now();
    let (dir, out) = (data.to_owned(), file.clone());
    let taken = tokio::task::spawn_blocking(move || -> anyhow::Result<oms_service::storage::archive::Manifest> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&out)?);
        anyhow::ensure!(oms_service::storage::admin::request_backup(&dir, &mut f)?, "no admin socket");
        drop(f);
        Ok(oms_service::storage::archive::verify(&mut std::io::BufReader::new(std::fs::File::open(&out)?))?)
    })
    .await;
    let manifest = match taken {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            println!("backup failed: {e:#}");
            return None;
        }
        Err(e) => {
            println!("backup failed: {e}");
            return None;
        }
    };
    let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
    let bytes = manifest.files.iter().map(|f| f.len).sum();
    println!(
        "t={:>4.1}s  online backup taken: {bytes} bytes in {ms} ms while orders arrive",
        started.elapsed().as_secs_f64()
    );
    match crate::backup::restore_into(&file, &restored).await {
        Ok(r) => Some(DemoBackup {
            bytes,
            ms,
            pause_ms: manifest.pause_ms_max,
            restored_orders: r.orders.unwrap_or(0),
            restore_mismatches: r.ledger_mismatches.len() as u64,
        }),
        Err(e) => {
            println!("restore of the backup failed: {e:#}");
            None
        }
    }
}

/// What cutting a site off needs ([`spawn_cutter`]).
pub(super) struct Cutter {
    /// The relay between the cut site and the hub.
    pub(super) relay: Arc<oms_transport::relay::Relay>,
    /// A client with the admin key (reads the site's orders and the hub's).
    pub(super) cut_http: reqwest::Client,
    pub(super) cut_tally: Arc<Tally>,
    /// The cut site's HTTP address.
    pub(super) cut_addr: SocketAddr,
    /// The file whose presence makes the site's test carrier unreachable.
    pub(super) cut_fault: PathBuf,
    pub(super) duration_s: u64,
    pub(super) started: Instant,
    pub(super) hub_http: SocketAddr,
}

/// Cuts [`CUT_SITE`] off the hub (blackholing its relay) and off its carrier for the middle half of a run of
/// `duration_s` seconds that started at `started`, then waits (at most 120 s) until the hub holds every till
/// order the site took meanwhile. Answers how long that took after the heal, in ms, or `None`.
pub(super) fn spawn_cutter(c: Cutter) -> tokio::task::JoinHandle<Option<u64>> {
    let Cutter { relay, cut_http, cut_tally, cut_addr, cut_fault, duration_s, started, hub_http } = c;
    let (quarter, half) = (Duration::from_millis(duration_s * 250), Duration::from_millis(duration_s * 500));
    tokio::spawn(async move {
        tokio::time::sleep(quarter).await;
        relay.set_blackhole(true);
        // Cut off from the carrier too: it keeps packing, its consignments wait for their labels.
        let _ = std::fs::write(&cut_fault, "unreachable");
        println!(
            "t={:>4.1}s  {CUT_SITE} cut off from the hub and its carrier (it keeps taking orders and packing)",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(half).await;
        // The till orders the cut site holds at the heal are what the hub must catch up on (orders the
        // hub routed there are the hub's own already).
        let at_heal = node_order_ids(&cut_http, cut_addr).await.map(|ids| {
            ids.into_iter().filter(|id| !id.starts_with(oms_protocol::domain::HUB_ORDER_PREFIX)).collect::<Vec<_>>()
        });
        relay.set_blackhole(false);
        let _ = std::fs::remove_file(&cut_fault);
        let healed = Instant::now();
        let mut missing = at_heal?;
        println!(
            "t={:>4.1}s  {CUT_SITE} linked again holding {} till orders; waiting for the hub to catch up",
            started.elapsed().as_secs_f64(),
            missing.len()
        );
        while healed.elapsed() < Duration::from_secs(120) {
            let mut still = Vec::new();
            for id in missing {
                let seen = cut_http.get(format!("https://{hub_http}/v1/orders/{id}")).send().await.is_ok_and(|r| {
                    cut_tally.hub_answer(&r);
                    r.status().is_success()
                });
                if !seen {
                    still.push(id);
                }
            }
            missing = still;
            if missing.is_empty() {
                let ms = u64::try_from(healed.elapsed().as_millis()).unwrap_or(u64::MAX);
                println!(
                    "t={:>4.1}s  hub caught up with {CUT_SITE} {ms} ms after the heal",
                    started.elapsed().as_secs_f64()
                );
                return Some(ms);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    })
}
