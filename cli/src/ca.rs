//! `oms ca`: the tenant PKI from the command line, over `oms_transport::pki`. Meant to run on an admin host:
//! the CA key never needs to leave it; a hub needs only `ca.pem`, `crl.pem`, `hub.pem` and `hub.key`, a node
//! `ca.pem` and its own pair.
//!
//! `init` creates the CA in a directory made (or tightened to) `0700` (and records the tenant in `DIR/tenant`, so later `issue` calls need not repeat
//! it), `issue` writes `node-<id>.pem/.key` or `hub.pem/.key` and prints the serial (`--http NAME`: a
//! certificate for the TLS of a node's or the hub's HTTP API, `http-NAME.pem/.key`, for its `--dns` names and
//! `--ip` addresses, with no oms identity, so it can never sync as a node or the hub), `renew` replaces such
//! a pair with a new certificate for the same identity (or names) (a fresh key unless `--reuse-key`; the old certificate
//! stays valid until it expires, and the old pair is archived to `DIR/archive/<stem>-<serial>.pem/.key`, the
//! last `pki::ARCHIVE_KEEP` per identity kept), `revoke` adds a serial to the CRL that a running hub re-reads
//! (and closes the revoked node's live connection); copied to a node's certs dir, the same `crl.pem` makes
//! the node refuse a revoked hub certificate. Private keys are written `0600`, everything durably (temporary file,
//! fsync, rename, fsync of the directory).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use oms_transport::pki::{self, FileMode, Identity, IssueOptions, KeyChoice};

/// Longest validity accepted, days (about 30 years): a typo must not mint a certificate for ever.
const VALIDITY_DAYS_MAX: i64 = 11_000;

/// `oms ca` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum CaCmd {
    /// Create a CA for a tenant in DIR (ca.pem, ca.key, crl.pem); DIR is made, or tightened to, 0700.
    Init {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Tenant name (a-z, 0-9, '.', '_', '-').
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Validity of the CA, days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a node, hub or HTTP server certificate signed by the CA in DIR.
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["node", "hub", "http"])))]
    Issue {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Node id to issue for.
        #[arg(long)]
        node: Option<String>,
        /// Issue the hub's certificate.
        #[arg(long)]
        hub: bool,
        /// Issue a certificate for the TLS of an HTTP API (`[http] tls_cert` / `tls_key` of a node or the
        /// hub) named NAME: `http-NAME.pem`, `http-NAME.key`. It names the `--dns` and `--ip` given and
        /// carries no oms identity.
        #[arg(long, value_name = "NAME")]
        http: Option<String>,
        /// Tenant; defaults to the one `ca init` recorded.
        #[arg(long)]
        tenant: Option<String>,
        /// DNS names of the hub or HTTP certificate (clients check the server's name against them).
        #[arg(long = "dns", default_value = "localhost")]
        dns: Vec<String>,
        /// IP addresses of the HTTP certificate (clients that address the server by IP check it).
        #[arg(long = "ip", default_value = "127.0.0.1")]
        ip: Vec<IpAddr>,
        /// Validity, days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Renew a node, hub or HTTP certificate in DIR: same identity, DNS names and IP addresses, a new serial
    /// and validity. The old certificate is not revoked; it stays valid until it expires (revoke it once the
    /// new one is in use). The old certificate and key are archived to DIR/archive/STEM-SERIAL.pem/.key
    /// (the last 5 per identity are kept).
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["node", "hub", "http"])))]
    Renew {
        /// PKI directory (with the CA and the certificate to renew).
        #[arg(long)]
        dir: PathBuf,
        /// Node id whose certificate to renew.
        #[arg(long)]
        node: Option<String>,
        /// Renew the hub's certificate.
        #[arg(long)]
        hub: bool,
        /// Renew the HTTP certificate NAME (`http-NAME.pem`).
        #[arg(long, value_name = "NAME")]
        http: Option<String>,
        /// Validity of the new certificate from now, days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Keep the current key (only the certificate changes) instead of generating a fresh one.
        #[arg(long)]
        reuse_key: bool,
    },
    /// Revoke a certificate by its serial (hex, as `issue` printed it).
    Revoke {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Serial number in hex.
        #[arg(long)]
        serial: String,
    },
}

fn tenant_file(dir: &Path) -> PathBuf {
    dir.join("tenant")
}

fn check_days(days: i64) -> anyhow::Result<time::Duration> {
    if !(1..=VALIDITY_DAYS_MAX).contains(&days) {
        bail!("--days must be 1 to {VALIDITY_DAYS_MAX}, got {days}");
    }
    Ok(time::Duration::days(days))
}

fn read_tenant(dir: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(tenant_file(dir))
        .map(|t| t.trim().to_owned())
        .with_context(|| format!("no --tenant and no {}", tenant_file(dir).display()))
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`, or the number of seconds if it is out of range.
fn date(unix_s: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix_s) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{unix_s} s after the epoch"),
    }
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s = s.trim().trim_start_matches("0x");
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 40 {
        bail!("serial {s:?} is not 1 to 20 bytes of hex");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("serial {s:?} is not hex")))
        .collect()
}

/// The names an HTTP certificate is for, as `issue` prints them.
fn names(dns: &[String], ips: &[IpAddr]) -> String {
    dns.iter().cloned().chain(ips.iter().map(IpAddr::to_string)).collect::<Vec<_>>().join(", ")
}

/// Runs one `oms ca` subcommand.
pub(crate) fn run(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { dir, tenant, days } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            pki::ca_init(&dir, &tenant, check_days(days)?)?;
            pki::write_durable(&tenant_file(&dir), format!("{tenant}\n").as_bytes(), FileMode::Public)
                .with_context(|| format!("cannot write {}", tenant_file(&dir).display()))?;
            println!("CA for tenant {tenant} created in {}", dir.display());
        }
        CaCmd::Issue { dir, http: Some(name), node: None, hub: false, dns, ip, days, .. } => {
            let opts = IssueOptions { dns_names: dns, ip_addresses: ip, ..IssueOptions::valid_for(check_days(days)?) };
            let issued = pki::issue_http(&dir, &dir, &name, &opts)?;
            println!(
                "issued HTTP certificate {name} for {}: {} {} serial {}",
                names(&opts.dns_names, &opts.ip_addresses),
                issued.cert_path.display(),
                issued.key_path.display(),
                pki::hex(&issued.serial)
            );
        }
        CaCmd::Issue { dir, node, hub, http: None, tenant, dns, days, .. } => {
            let tenant = match tenant {
                Some(t) => t,
                None => read_tenant(&dir)?,
            };
            let identity = match (node, hub) {
                (Some(node), false) => Identity::node(&tenant, &node)?,
                (None, true) => Identity::hub(&tenant)?,
                _ => bail!("give exactly one of --node ID, --hub and --http NAME"),
            };
            let mut opts = IssueOptions::valid_for(check_days(days)?);
            if hub {
                opts.dns_names = dns;
            }
            let issued = pki::issue(&dir, &dir, &identity, &opts)?;
            println!(
                "issued {identity}: {} {} serial {}",
                issued.cert_path.display(),
                issued.key_path.display(),
                pki::hex(&issued.serial)
            );
        }
        CaCmd::Issue { .. } => bail!("give exactly one of --node ID, --hub and --http NAME"),
        CaCmd::Renew { dir, node, hub, http, days, reuse_key } => {
            let key = if reuse_key { KeyChoice::Reuse } else { KeyChoice::Fresh };
            let (what, renewed) = match (node, hub, http) {
                (None, false, Some(name)) => {
                    let renewed = pki::renew_http(&dir, &dir, &name, check_days(days)?, key)
                        .with_context(|| format!("cannot renew the HTTP certificate {name} in {}", dir.display()))?;
                    (format!("HTTP certificate {name}"), renewed)
                }
                (node, hub, None) => {
                    let tenant = read_tenant(&dir)?;
                    let identity = match (node, hub) {
                        (Some(node), false) => Identity::node(&tenant, &node)?,
                        (None, true) => Identity::hub(&tenant)?,
                        _ => bail!("give exactly one of --node ID, --hub and --http NAME"),
                    };
                    let renewed = pki::renew(&dir, &dir, &identity, check_days(days)?, key)
                        .with_context(|| format!("cannot renew {identity} in {}", dir.display()))?;
                    (identity.to_string(), renewed)
                }
                _ => bail!("give exactly one of --node ID, --hub and --http NAME"),
            };
            let (old, new, archived) = (&renewed.old, &renewed.new, &renewed.archived);
            println!(
                "renewed {what}: {} {} serial {} valid until {} ({} key)",
                renewed.issued.cert_path.display(),
                renewed.issued.key_path.display(),
                new.serial_hex(),
                date(new.not_after_unix_s),
                if reuse_key { "same" } else { "new" },
            );
            println!(
                "the old certificate, serial {}, stays valid until {}; once the new one is in use, \
                 `oms ca revoke --dir {} --serial {}`",
                old.serial_hex(),
                date(old.not_after_unix_s),
                dir.display(),
                old.serial_hex()
            );
            println!(
                "the old pair is archived: {}{} (the last {} replaced pairs per identity are kept{})",
                archived.cert_path.display(),
                archived.key_path.as_ref().map(|k| format!(" {}", k.display())).unwrap_or_default(),
                pki::ARCHIVE_KEEP,
                if archived.pruned.is_empty() {
                    String::new()
                } else {
                    format!("; {} older removed", archived.pruned.len())
                },
            );
        }
        CaCmd::Revoke { dir, serial } => {
            let bytes = unhex(&serial)?;
            pki::revoke(&dir, &bytes)?;
            println!(
                "revoked {}; a hub with this crl.pem closes its connection and refuses it from its next CRL check \
                 (copy crl.pem to the nodes' certs dirs too: a node with it refuses a revoked hub certificate)",
                pki::hex(&bytes)
            );
        }
    }
    Ok(())
}
