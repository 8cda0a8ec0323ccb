//! `GET /v1/nodes`: each site's link, sync and storage figures and certificates, as the API and the network
//! screen read them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oms_service::now_ms;
use serde::Serialize;
use serde_json::{Value, json};

use super::problem;
use crate::server::Hub;

#[utoipa::path(get, path = "/v1/nodes", tag = "network", responses((status = 200,
    description = "Each known site's link, sync and storage figures and certificate", body = NodesView)))]
pub(super) async fn nodes(State(hub): State<Arc<Hub>>) -> Response {
    // It may read a changed stock document: on a blocking thread, not on this async worker.
    match tokio::task::spawn_blocking(move || nodes_typed(&hub)).await {
        Ok(v) => Json(v).into_response(),
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "node listing failed"),
    }
}

/// What `GET /v1/nodes` answers, as the network screen reads it.
pub(crate) fn nodes_view(hub: &Hub) -> Value {
    json!(nodes_typed(hub))
}

/// What `GET /v1/nodes` answers.
pub(crate) fn nodes_typed(hub: &Hub) -> NodesView {
    // When each site last wrote its stock, from the stock the demand cache keeps (re-read per changed
    // document), not from a read of every stock document under the documents' lock.
    let stock_updated: BTreeMap<String, u64> =
        hub.demand.stock_sites(&hub.docs).iter().map(|s| (s.site.clone(), s.updated_at_ms)).collect();
    let docs = hub.docs.lock();
    let now = now_ms();
    let counts = docs.order_counts();
    let mut out = Vec::new();
    // Connected or known nodes and sites that hold orders, each once, in order: linear in both (a `Vec` and
    // `contains` made this quadratic in the number of parties).
    let names: std::collections::BTreeSet<&String> = docs.nodes.keys().chain(counts.keys()).collect();
    let default = crate::docs::NodeStatus::default();
    for name in names {
        let st = docs.nodes.get(name).unwrap_or(&default);
        let usage = docs.usage(name);
        out.push(NodeView {
            node: name.clone(),
            connected: st.connected,
            connected_at_ms: st.connected_at_ms,
            last_frame_at_ms: st.last_frame_at_ms,
            last_sync_at_ms: st.last_sync_at_ms,
            last_change_at_ms: st.last_change_at_ms,
            since_last_change_ms: st.last_change_at_ms.map(|t| now.saturating_sub(t)),
            last_change_lag_ms: st.last_change_lag_ms,
            pending: st.pending,
            session: SessionView {
                doc_states: st.session_sizes.doc_states,
                in_flight: st.session_sizes.in_flight,
                pending: st.session_sizes.pending,
                outbound: st.session_sizes.outbound,
            },
            compressed: st.compressed,
            changes_applied: st.changes_applied,
            changes_quarantined: st.changes_quarantined,
            docs_refused: st.docs_refused,
            quota_refusals: st.quota_refusals,
            changes_too_large: st.changes_too_large,
            changes_dropped: st.changes_dropped,
            manifests_deferred: st.manifests_deferred,
            documents: usage.documents,
            stored_bytes: usage.stored_bytes,
            sessions: st.sessions,
            orders: counts.get(name).copied().unwrap_or(0),
            stock_updated_at_ms: stock_updated.get(name).copied(),
            certificate: st.certificate.as_ref().map(|c| certificate_view(&c.serial, c.not_after_unix_s, now)),
        });
    }
    let documents = DocumentsHeld { held: docs.db().len(), loaded: docs.db().loaded() };
    let own = hub.tls().map(|tls| tls.own.info());
    let hub_certificate = own.map(|c| certificate_view(&c.serial_hex(), c.not_after_unix_s, now));
    NodesView { now_ms: now, nodes: out, documents, hub_certificate }
}

/// The answer of `GET /v1/nodes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct NodesView {
    /// The hub's clock, ms.
    now_ms: u64,
    /// Each connected or known node and each site that holds orders, by name.
    nodes: Vec<NodeView>,
    /// The documents the hub holds.
    documents: DocumentsHeld,
    /// The hub's own certificate, when it serves QUIC with one.
    hub_certificate: Option<CertificateView>,
}

/// One site's link, sync and storage figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct NodeView {
    /// The node.
    node: String,
    /// Whether a session is up now.
    connected: bool,
    /// When the current or last session came up, ms.
    connected_at_ms: Option<u64>,
    /// When the last frame came, ms.
    last_frame_at_ms: Option<u64>,
    /// When both sides last had the same heads, ms.
    last_sync_at_ms: Option<u64>,
    /// When a change of the node was last applied, ms.
    last_change_at_ms: Option<u64>,
    /// How long ago that was, ms.
    since_last_change_ms: Option<u64>,
    /// From the node's write to the hub's apply of that change, ms.
    last_change_lag_ms: Option<u64>,
    /// Whether changes wait to be sent.
    pending: bool,
    /// The session's queue sizes.
    session: SessionView,
    /// Whether the session compresses.
    compressed: bool,
    /// Changes applied.
    changes_applied: u64,
    /// Changes put back (touched what the node does not own).
    changes_quarantined: u64,
    /// Documents refused.
    docs_refused: u64,
    /// Changes refused for the node's quota.
    quota_refusals: u64,
    /// Changes refused for their size.
    changes_too_large: u64,
    /// Changes dropped.
    changes_dropped: u64,
    /// Manifests deferred.
    manifests_deferred: u64,
    /// Documents the node caused to exist.
    documents: u64,
    /// Bytes stored for it.
    stored_bytes: u64,
    /// Sessions since the start.
    sessions: u64,
    /// Orders it holds.
    orders: u64,
    /// When it last wrote its stock, ms.
    stock_updated_at_ms: Option<u64>,
    /// Its certificate, if it connected with one.
    certificate: Option<CertificateView>,
}

/// A session's queue sizes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SessionView {
    /// Documents with sync state.
    doc_states: usize,
    /// Messages sent and not acknowledged.
    in_flight: usize,
    /// Documents with changes to send.
    pending: usize,
    /// Frames queued out.
    outbound: usize,
}

/// The documents the hub holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DocumentsHeld {
    /// Stored.
    held: usize,
    /// Of those, loaded in memory.
    loaded: usize,
}

/// A certificate's serial and remaining validity.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CertificateView {
    /// Serial, hex.
    serial: String,
    /// End of validity, Unix seconds.
    not_after_unix_s: i64,
    /// Seconds left (zero or negative once expired).
    expires_in_s: i64,
    /// Time to renew.
    expiring_soon: bool,
}

/// A certificate's serial and remaining validity at `now_ms`.
fn certificate_view(serial: &str, not_after_unix_s: i64, now_ms: u64) -> CertificateView {
    let now_s = i64::try_from(now_ms / 1_000).unwrap_or(i64::MAX);
    let e = oms_transport::pki::expiry(not_after_unix_s, now_s);
    CertificateView {
        serial: serial.to_owned(),
        not_after_unix_s,
        expires_in_s: e.expires_in_s,
        expiring_soon: e.expiring_soon,
    }
}
