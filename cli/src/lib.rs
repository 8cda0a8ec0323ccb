//! `oms`: the one binary. Each subcommand is a thin adapter over a library crate: `node` over `oms-node`,
//! `forecast` over `oms-forecast`, `ca` over `oms-transport`'s PKI, and `demo`, which runs several nodes as
//! separate processes on loopback and drives a warehouse day through them.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]
// The demo's summary is one `json!` literal with more keys than the macro's default recursion allows.
#![recursion_limit = "256"]

/// mimalloc instead of glibc's malloc: the hub loads and evicts ≈ 24 KB Automerge documents by the million
/// between long-lived small index entries, and glibc's per-thread arenas kept the freed space (RSS grew
/// ≈ 1 KB per synced order; see bench/hub_scale/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process and the processes it starts (`PR_SET_THP_DISABLE`,
/// which the kernel checks at each page fault, so it covers what the allocator mapped before `main`).
///
/// mimalloc maps its arenas 2 MiB-aligned, and where the kernel backs them with huge pages (`always`, or
/// `madvise` with the `MADV_HUGEPAGE` mimalloc gives by default, which the `no_thp` feature drops) each first
/// touch of a fresh region zeroes 2 MiB for what is often a few small objects. Under channel intake that
/// zeroing was 35 % of the hub's CPU; without huge pages the hub alone took 1.4x the orders a second
/// (BENCHMARKS.md, "Hub: transparent huge pages off, ..."). A failure (another kernel, a sandbox) changes nothing else.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("oms: transparent huge pages stay on ({e})");
    }
}

pub mod backup;
mod ca;
mod config_ref;
mod demo;
mod hub_cmd;
mod keys;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "oms", version, about = "Order management that keeps warehouses shipping when the network fails")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a warehouse node (or import into one).
    Node(NodeArgs),
    /// Run a demo: several warehouse nodes on this machine, orders flowing through pick, pack and ship.
    Demo(demo::DemoArgs),
    /// Run the hub: nodes sync to it over QUIC; operators query it over HTTP.
    Hub(hub_cmd::HubArgs),
    /// Manage the tenant PKI: CA, node and hub certificates, revocation.
    Ca {
        #[command(subcommand)]
        cmd: ca::CaCmd,
    },
    /// Manage the API keys of a node or the hub (in its data directory).
    Keys {
        #[command(subcommand)]
        cmd: keys::KeysCmd,
    },
    /// Manage the people who sign in to the screens of a node or the hub (in its data directory).
    Users {
        #[command(subcommand)]
        cmd: keys::UsersCmd,
    },
    /// Back up a running node's or hub's databases to one file (online: intake pauses for at most a commit).
    Backup(backup::BackupArgs),
    /// Restore a backup into a new data directory, after checking it (checksums, redb's integrity check, a
    /// node's ledger replayed against its balances).
    Restore(backup::RestoreArgs),
    /// Print the configuration reference (deploy/CONFIG.md) generated from the config types.
    ConfigReference,
    /// Demand forecasting tools.
    Forecast {
        #[command(subcommand)]
        cmd: ForecastCmd,
    },
}

#[derive(clap::Args)]
struct NodeArgs {
    #[command(subcommand)]
    cmd: Option<NodeCmd>,
    /// TOML config file (see deploy/node.example.toml); flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This site's id.
    #[arg(long)]
    node_id: Option<String>,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Import catalog and/or opening stock from CSV into a node's database (the node must be stopped; a
    /// running node takes the same files at POST /v1/import/catalog and /v1/import/stock).
    Import {
        /// CSV with header `sku,name,bin`.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// CSV with header `sku,on_hand`.
        #[arg(long)]
        stock: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ForecastCmd {
    /// Evaluate every model and the automatic choice on DIR/series.csv and DIR/observations.csv.
    Eval {
        /// Directory with series.csv and observations.csv.
        #[arg(long)]
        data: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn node_config(a: &NodeArgs) -> anyhow::Result<oms_node::NodeConfig> {
    let mut cfg = match &a.config {
        Some(p) => oms_node::NodeConfig::load(p)?,
        None => oms_node::NodeConfig::default(),
    };
    if let Some(id) = &a.node_id {
        cfg.node_id = oms_protocol::domain::NodeId::parse(id).context("--node-id")?;
    }
    if let Some(d) = &a.data {
        cfg.data_dir = d.clone();
    }
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn node_import(
    cfg: &oms_node::NodeConfig,
    catalog: Option<PathBuf>,
    stock: Option<PathBuf>,
) -> anyhow::Result<()> {
    use oms_node::import::{Kind, import};
    use std::sync::Arc;
    std::fs::create_dir_all(&cfg.data_dir)?;
    let store = oms_node::store::Store::open(
        &cfg.db_path(),
        cfg.node_id.clone(),
        oms_node::store::Limits::default(),
        Arc::new(oms_node::metrics::Metrics::new()),
    )
    .with_context(|| {
        format!("cannot open {} (is the node running? then POST the file to /v1/import/…)", cfg.db_path().display())
    })?;
    let mut failed = false;
    for (path, kind) in [(catalog, Kind::Catalog), (stock, Kind::Stock)] {
        let Some(path) = path else { continue };
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{kind:?}"));
        let report = import(&store, kind, std::io::BufReader::new(file), None, |b| bar.set_position(b)).await?;
        bar.finish();
        println!("{}: {} rows imported, {} rejected", path.display(), report.accepted, report.rejected);
        for r in &report.rejects {
            println!("  line {}: {}", r.line, r.reason);
        }
        failed |= report.rejected > 0;
    }
    if failed {
        anyhow::bail!("some rows were rejected (listed above); the others were imported");
    }
    Ok(())
}

/// Parses the command line and runs the subcommand. `main.rs` and the integration tests' copy of the binary
/// both call this, so tests drive exactly what users run.
pub fn main() -> anyhow::Result<()> {
    no_huge_pages();
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Node(a) => {
                let cfg = node_config(&a)?;
                match a.cmd {
                    Some(NodeCmd::Import { catalog, stock }) => node_import(&cfg, catalog, stock).await,
                    None => oms_node::run(cfg, shutdown_signal()).await,
                }
            }
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Hub(a) => oms_hub::run(hub_cmd::config(&a)?, shutdown_signal()).await,
            Cmd::Ca { cmd } => ca::run(cmd),
            Cmd::Keys { cmd } => keys::run(cmd),
            Cmd::Users { cmd } => keys::run_users(cmd),
            Cmd::Backup(a) => backup::backup(&a),
            Cmd::ConfigReference => {
                print!("{}", config_ref::reference()?);
                Ok(())
            }
            Cmd::Restore(a) => backup::restore(&a).await,
            Cmd::Forecast { cmd: ForecastCmd::Eval { data } } => {
                let mut out = std::io::stdout().lock();
                oms_forecast::eval_command(&data, &mut out).map(|_| ()).map_err(anyhow::Error::from)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    /// `main` turns transparent huge pages off for the process (the flag is the process's, so the test's too).
    #[cfg(target_os = "linux")]
    #[test]
    fn main_turns_transparent_huge_pages_off() {
        super::no_huge_pages();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
