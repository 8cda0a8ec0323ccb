//! `oms keys`: API keys of a node or the hub, in its data directory (`DIR/keys.json`, see
//! `oms_service::auth::keys`). A running node or hub picks up a created or revoked key within its
//! `auth.keys_check_interval_ms`; no restart.

use std::path::PathBuf;

use anyhow::Context;
use oms_protocol::domain::Channel;
use oms_service::auth::keys::{self, NewKey, Role};

/// `oms keys` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum KeysCmd {
    /// Create a key and print its token (shown this once; only its hash is kept).
    Create {
        /// The node's or the hub's data directory.
        #[arg(long)]
        data: PathBuf,
        /// channel, staff, planner, service, monitor or admin.
        #[arg(long)]
        role: String,
        /// A unique name (a-z, A-Z, 0-9, '-', '_', '.'), recorded in the audit trail.
        #[arg(long)]
        name: String,
        /// The channel a channel key sells for (required for --role channel).
        #[arg(long)]
        channel: Option<String>,
        /// Its own rate limit, requests per second (default: the server's `auth.rate_per_s`).
        #[arg(long)]
        rate_per_s: Option<u32>,
    },
    /// List the keys (names, roles, scopes, when created and revoked; never tokens).
    List {
        /// The node's or the hub's data directory.
        #[arg(long)]
        data: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the live key with this name.
    Revoke {
        /// The node's or the hub's data directory.
        #[arg(long)]
        data: PathBuf,
        /// The key's name.
        #[arg(long)]
        name: String,
    },
}

/// Runs an `oms keys` subcommand.
pub(crate) fn run(cmd: KeysCmd) -> anyhow::Result<()> {
    let now = oms_service::now_ms();
    match cmd {
        KeysCmd::Create { data, role, name, channel, rate_per_s } => {
            let role: Role = role.parse()?;
            let channel = channel.map(|c| Channel::parse(&c)).transpose().context("--channel")?;
            let token = keys::create(&data, NewKey { name: name.clone(), role, channel, rate_per_s }, now)?;
            eprintln!("created key {name:?} ({role}) in {}; the token is shown only now:", data.display());
            println!("{token}");
        }
        KeysCmd::List { data, json } => {
            let file = keys::read(&data)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&file.keys)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<8} {:<16} {:>14} {:>14} {:>8}",
                "NAME", "ROLE", "CHANNEL", "CREATED_MS", "REVOKED_MS", "RATE/S"
            );
            for k in &file.keys {
                println!(
                    "{:<24} {:<8} {:<16} {:>14} {:>14} {:>8}",
                    k.name,
                    k.role.as_str(),
                    k.channel.as_ref().map_or("-", |c| c.as_str()),
                    k.created_at_ms,
                    k.revoked_at_ms.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                    k.rate_per_s.map_or_else(|| "default".to_owned(), |r| r.to_string()),
                );
            }
        }
        KeysCmd::Revoke { data, name } => {
            let k = keys::revoke(&data, &name, now)?;
            println!("revoked {:?} ({}); a running server refuses it at its next key check", k.name, k.role);
        }
    }
    Ok(())
}
