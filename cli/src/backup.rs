//! `oms backup` and `oms restore`: an online backup of a running node's or hub's databases through its admin
//! socket (`oms_service::storage::admin`), and a restore into a new data directory that checks everything
//! before the files get their names.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use oms_service::storage::archive;
use serde::Serialize;

/// `oms backup`.
#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    /// Data directory of the running node or hub.
    #[arg(long)]
    data: PathBuf,
    /// The backup file to write (replaced only once the new one is complete and checked).
    #[arg(long)]
    out: PathBuf,
}

/// `oms restore`.
#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The data directory to restore into: new, or without any database in it.
    #[arg(long)]
    data: PathBuf,
}

/// What `oms backup` prints (JSON).
#[derive(Debug, Serialize)]
struct BackupReport {
    out: PathBuf,
    files: Vec<archive::BackupFile>,
    bytes: u64,
    ms: u64,
    pause_ms_max: f64,
}

/// Takes a backup of the process serving `args.data`, checks it and writes it to `args.out`.
pub(crate) fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let partial = partial_path(&args.out);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?,
    );
    let served = oms_service::storage::admin::request_backup(&args.data, &mut out);
    let served = match served {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(anyhow::anyhow!("the backup failed: {e}"));
        }
    };
    if !served {
        let _ = std::fs::remove_file(&partial);
        anyhow::bail!(
            "no node or hub is running on {} (no admin socket). A stopped one's *.redb files are consistent as \
             they are: copy them, or start it and run oms backup",
            args.data.display()
        );
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    let manifest = archive::verify(&mut std::io::BufReader::new(std::fs::File::open(&partial)?))
        .with_context(|| format!("the backup written to {} does not check out", partial.display()))?;
    std::fs::rename(&partial, &args.out)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    let report = BackupReport {
        out: args.out.clone(),
        bytes: manifest.files.iter().map(|f| f.len).sum(),
        files: manifest.files,
        ms: started.elapsed().as_millis() as u64,
        pause_ms_max: manifest.pause_ms_max,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// What `oms restore` found (printed as JSON).
#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    /// The files restored.
    pub files: Vec<archive::BackupFile>,
    /// Bytes restored.
    pub bytes: u64,
    /// When the backup was taken, ms since the Unix epoch.
    pub backup_created_at_ms: u64,
    /// Orders in `node.redb` (a node's backup).
    pub orders: Option<u64>,
    /// SKUs whose balance differs from a replay of the ledger (must be empty).
    pub ledger_mismatches: Vec<String>,
    /// Order numbers the restored node skips ([`oms_node::store::RESTORE_ORDER_IDS_SKIPPED`]).
    pub order_numbers_skipped: Option<u64>,
    /// Documents in `sync.redb` / `hub.redb`.
    pub documents: Option<usize>,
    /// Channel orders waiting for units in `intake.redb` (a hub's backup).
    pub intake_open_orders: Option<usize>,
    /// API keys (revoked ones included) and screen users in the restored `keys.json`, if the backup had one.
    pub keys: Option<usize>,
    /// Screen users in it.
    pub users: Option<usize>,
    /// What the restored node cannot know from this backup and how it recovers it.
    pub notes: Vec<String>,
}

/// Restores `args.from` into `args.data` after checking it; on any failure the restored files are removed.
pub(crate) async fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let report = restore_into(&args.from, &args.data).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// [`restore`]'s work, for the demo too: unpacks with checksums, checks every file with redb's integrity
/// check, then what each holds (a node's ledger replays to its balances; documents and intake open).
pub async fn restore_into(from: &Path, data: &Path) -> anyhow::Result<RestoreReport> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let input = std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let (manifest, written) = archive::unpack(&mut std::io::BufReader::new(input), data)
        .with_context(|| format!("{} cannot be restored", from.display()))?;
    match check(data, &manifest).await {
        Ok(report) => Ok(report),
        Err(e) => {
            for f in &written {
                let _ = std::fs::remove_file(f);
            }
            Err(e.context(format!("{} failed its checks; nothing was restored", from.display())))
        }
    }
}

async fn check(data: &Path, manifest: &archive::Manifest) -> anyhow::Result<RestoreReport> {
    let mut report = RestoreReport {
        files: manifest.files.clone(),
        bytes: manifest.files.iter().map(|f| f.len).sum(),
        backup_created_at_ms: manifest.created_at_ms,
        ..RestoreReport::default()
    };
    for f in manifest.files.iter().filter(|f| f.kind != "keys") {
        let path = data.join(&f.name);
        let mut db = redb::Database::open(&path).with_context(|| format!("{} does not open", f.name))?;
        anyhow::ensure!(
            db.check_integrity().with_context(|| format!("{}: integrity check", f.name))?,
            "{}: redb's integrity check found damage",
            f.name
        );
    }
    for f in &manifest.files {
        let path = data.join(&f.name);
        match f.kind.as_str() {
            "node" => {
                let site = oms_protocol::domain::NodeId::parse("restore-check")?;
                let metrics = Arc::new(oms_node::metrics::Metrics::new());
                let limits = oms_node::store::Limits { storage_reserve_bytes: 0, ..Default::default() };
                let store = oms_node::store::Store::open(&path, site, limits, metrics)?;
                report.ledger_mismatches = store.verify_ledger()?.iter().map(|s| s.to_string()).collect();
                report.orders = Some(store.order_total()?);
                if !report.ledger_mismatches.is_empty() {
                    store.close();
                    anyhow::bail!(
                        "node.redb: the ledger does not replay to the balances of {:?}",
                        report.ledger_mismatches
                    );
                }
                let skipped = oms_node::store::RESTORE_ORDER_IDS_SKIPPED;
                let next = store.execute(oms_node::store::cmd::SkipOrderIds { ids: skipped }).await?;
                store.close();
                report.order_numbers_skipped = Some(skipped);
                report.notes.push(format!(
                    "what the node did after the backup is not in it: orders it took since then live on at the \
                     hub only (GET /v1/orders?site=<node> there), with their last synced state; stock movements \
                     since then are lost, so count the stock. New orders are numbered from {next} on, so none \
                     takes the id of an order the hub may hold"
                ));
            }
            "docdb" => {
                let db = oms_sync::DocDb::open(&path, vec![0; 16], usize::MAX)?;
                report.documents = Some(report.documents.unwrap_or(0) + db.len());
            }
            "intake" => {
                let intake = oms_hub::intake::Intake::open(&path, oms_hub::routing::RoutingPolicy::default())?;
                report.intake_open_orders = Some(intake.open_count());
            }
            "keys" => {
                let keys = oms_service::auth::keys::read(data).with_context(|| format!("{} does not read", f.name))?;
                report.keys = Some(keys.keys.len());
                report.users = Some(keys.users.len());
            }
            other => anyhow::bail!("{}: unknown kind of database {other:?}", f.name),
        }
    }
    Ok(report)
}
