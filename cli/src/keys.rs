//! `oms keys`: API keys of a node or the hub, in its data directory (`DIR/keys.json`, see
//! `oms_service::auth::keys`). A running node or hub picks up a created or revoked key within its
//! `auth.keys_check_interval_ms`; no restart.

use std::path::PathBuf;

use anyhow::Context;
use oms_protocol::domain::{Channel, SupplierId};
use oms_service::auth::keys::{self, NewKey, Role};

/// `oms keys` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum KeysCmd {
    /// Create a key and print its token (shown this once; only its hash is kept).
    Create {
        /// The node's or the hub's data directory.
        #[arg(long)]
        data: PathBuf,
        /// channel, staff, planner, service, monitor, admin or supplier.
        #[arg(long)]
        role: String,
        /// A unique name (a-z, A-Z, 0-9, '-', '_', '.'), recorded in the audit trail.
        #[arg(long)]
        name: String,
        /// The channel a channel key sells for (required for --role channel).
        #[arg(long)]
        channel: Option<String>,
        /// The supplier a supplier key acts for (required for --role supplier; hub only): it reads and
        /// confirms that supplier's purchase orders and announces ASNs against them, nothing else.
        #[arg(long)]
        supplier: Option<String>,
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
        KeysCmd::Create { data, role, name, channel, supplier, rate_per_s } => {
            let role: Role = role.parse()?;
            let channel = channel.map(|c| Channel::parse(&c)).transpose().context("--channel")?;
            let supplier = supplier.map(|s| SupplierId::parse(&s)).transpose().context("--supplier")?;
            let token = keys::create(&data, NewKey { name: name.clone(), role, channel, supplier, rate_per_s }, now)?;
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
                "NAME", "ROLE", "SCOPE", "CREATED_MS", "REVOKED_MS", "RATE/S"
            );
            for k in &file.keys {
                println!(
                    "{:<24} {:<8} {:<16} {:>14} {:>14} {:>8}",
                    k.name,
                    k.role.as_str(),
                    k.channel.as_ref().map(|c| c.as_str()).or(k.supplier.as_ref().map(|s| s.as_str())).unwrap_or("-"),
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

/// `oms users` subcommands: the people who sign in to the screens (see `oms_service::auth::users`).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum UsersCmd {
    /// Create a user. The password (or PIN) is read from the first line of standard input, or made up and
    /// printed with --generate.
    Create {
        /// The node's or the hub's data directory.
        #[arg(long)]
        data: PathBuf,
        /// staff, planner, service or admin.
        #[arg(long)]
        role: String,
        /// The sign-in name (a-z, A-Z, 0-9, '-', '_', '.'), also recorded in the audit trail as `user:<name>`.
        #[arg(long)]
        name: String,
        /// The secret is a PIN of 4 to 12 digits (staff only) instead of a password.
        #[arg(long)]
        pin: bool,
        /// Make up the password (or a 6-digit PIN) and print it, instead of reading it from standard input.
        #[arg(long)]
        generate: bool,
    },
    /// List the users (names, roles, when created and disabled; never secrets).
    List {
        /// The node's or the hub's data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Disable the live user with this name; their sessions end within a second.
    Disable {
        /// The node's or the hub's data directory.
        #[arg(long)]
        data: PathBuf,
        /// The user's name.
        #[arg(long)]
        name: String,
    },
}

/// Runs an `oms users` subcommand.
pub(crate) fn run_users(cmd: UsersCmd) -> anyhow::Result<()> {
    use oms_service::auth::users::{self, NewUser};
    let now = oms_service::now_ms();
    match cmd {
        UsersCmd::Create { data, role, name, pin, generate } => {
            let role: Role = role.parse()?;
            let secret = if generate {
                made_up_secret(pin)
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            };
            users::create(&data, NewUser { name: name.clone(), role, secret: secret.clone(), pin }, now)?;
            eprintln!("created user {name:?} ({role}) in {}", data.display());
            if generate {
                eprintln!("the {} is shown only now:", if pin { "PIN" } else { "password" });
                println!("{secret}");
            }
        }
        UsersCmd::List { data } => {
            let file = keys::read(&data)?;
            println!("{:<24} {:<8} {:<8} {:>14} {:>14}", "NAME", "ROLE", "SECRET", "CREATED_MS", "DISABLED_MS");
            for u in &file.users {
                println!(
                    "{:<24} {:<8} {:<8} {:>14} {:>14}",
                    u.name,
                    u.role.as_str(),
                    if u.pin { "pin" } else { "password" },
                    u.created_at_ms,
                    u.disabled_at_ms.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                );
            }
        }
        UsersCmd::Disable { data, name } => {
            let u = users::disable(&data, &name, now)?;
            println!("disabled {:?} ({}); a running server ends their sessions at its next key check", u.name, u.role);
        }
    }
    Ok(())
}

/// A random 6-digit PIN, or a password of 16 letters and digits (about 95 bits).
pub(crate) fn made_up_secret(pin: bool) -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    if pin {
        format!("{:06}", rand::random_range(0..1_000_000u32))
    } else {
        (0..16).map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())])).collect()
    }
}
