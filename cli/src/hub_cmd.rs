//! `oms hub`: runs the hub from a TOML config (`deploy/hub.example.toml`) with flag overrides.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `oms hub`.
#[derive(clap::Args, Debug)]
pub(crate) struct HubArgs {
    /// TOML config file (see deploy/hub.example.toml); flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (hub.redb).
    #[arg(long)]
    data: Option<PathBuf>,
    /// QUIC listen address for nodes.
    #[arg(long)]
    listen_quic: Option<SocketAddr>,
    /// HTTP listen address.
    #[arg(long)]
    listen_http: Option<SocketAddr>,
    /// PKI directory (ca.pem, crl.pem, hub.pem, hub.key).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Tenant.
    #[arg(long)]
    tenant: Option<String>,
}

/// The configuration `a` describes.
pub(crate) fn config(a: &HubArgs) -> anyhow::Result<oms_hub::HubConfig> {
    let mut cfg = match &a.config {
        Some(p) => oms_hub::HubConfig::load(p)?,
        None => oms_hub::HubConfig::default(),
    };
    if let Some(d) = &a.data {
        cfg.data_dir = d.clone();
    }
    if let Some(l) = a.listen_quic {
        cfg.listen_quic = l;
    }
    if let Some(l) = a.listen_http {
        cfg.listen_http = l;
    }
    if let Some(c) = &a.certs {
        cfg.certs_dir = c.clone();
    }
    if let Some(t) = &a.tenant {
        cfg.tenant = t.clone();
    }
    Ok(cfg)
}
