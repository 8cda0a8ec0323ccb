//! `GET /metrics`: the hub's OpenMetrics text.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use oms_service::auth::Auth;
use oms_service::now_ms;

use crate::server::Hub;

/// State documents of each kind (stock, escrow, inbound) whose history `/metrics` measures, under the
/// documents' lock: the first this many by id.
const STATE_DOCS_MEASURED_MAX: usize = 256;

/// `GET /metrics`: OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "OpenMetrics text",
    content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub(super) async fn metrics(State((hub, auth)): State<(Arc<Hub>, Arc<Auth>)>) -> Response {
    let mut out = auth.stats.openmetrics("oms_hub");
    let now = now_ms();
    let (connected, held, per_node, anti_entropy, sessions, backlog) = {
        let docs = hub.docs.lock();
        // One series per node that ever connected (bounded by `nodes_max` and the hub's parties).
        let per_node: Vec<(String, bool, Option<u64>, u64)> = docs
            .nodes
            .iter()
            .map(|(name, st)| {
                let age_s = st.last_frame_at_ms.or(st.connected_at_ms).map(|t| now.saturating_sub(t) / 1_000);
                (name.clone(), st.connected, age_s, st.changes_quarantined)
            })
            .collect();
        // What the hub's side of every node's sessions sent for anti-entropy, and the sessions.
        let mut anti_entropy = oms_protocol::sync::AntiEntropyStats::default();
        for st in docs.nodes.values() {
            anti_entropy.add_since(&oms_protocol::sync::AntiEntropyStats::default(), &st.anti_entropy);
        }
        let sessions = docs.nodes.values().map(|st| st.sessions).sum::<u64>();
        let backlog = (docs.backlog_len(), docs.requeue_dropped());
        (
            docs.nodes.values().filter(|n| n.connected).count(),
            docs.db().len(),
            per_node,
            anti_entropy,
            sessions,
            backlog,
        )
    };
    let history = hub.docs.lock().db().state_history(STATE_DOCS_MEASURED_MAX);
    let h = hub.clone();
    let taken = tokio::task::spawn_blocking(move || h.intake.orders_taken()).await.ok().and_then(Result::ok);
    let gauge = |out: &mut String, name: &str, help: &str, v: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
    };
    // A counter's family is named without its `_total` sample suffix (OpenMetrics).
    let counter = |out: &mut String, name: &str, help: &str, v: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {v}\n"));
    };
    gauge(&mut out, "oms_hub_nodes_connected", "Nodes with a live sync session.", connected.to_string());
    gauge(&mut out, "oms_hub_documents_held", "Documents the hub holds.", held.to_string());
    let lock = hub.docs.times();
    let secs = |ns: u64| format!("{:.6}", ns as f64 / 1e9);
    counter(
        &mut out,
        "oms_hub_documents_lock_acquisitions",
        "Times the documents' lock was taken (by every sync session, the intake's documents thread, the watcher \
         and the reads of documents).",
        lock.acquisitions.to_string(),
    );
    counter(
        &mut out,
        "oms_hub_documents_lock_held_seconds",
        "Time the documents' lock was held. Its rate is the share of the time it is busy: near 1, everything that \
         needs the documents waits in line.",
        secs(lock.held_ns),
    );
    counter(
        &mut out,
        "oms_hub_documents_lock_waited_seconds",
        "Time callers waited for the documents' lock, all together.",
        secs(lock.waited_ns),
    );
    gauge(
        &mut out,
        "oms_hub_orders_waiting",
        "Customer orders with units not placed yet.",
        hub.intake.open_count().to_string(),
    );
    gauge(
        &mut out,
        "oms_hub_watcher_backlog",
        "Documents waiting for the watcher beyond one pass (a start's open work, passes that failed, bursts of \
         nodes' changes), taken a slice a pass.",
        backlog.0.to_string(),
    );
    counter(
        &mut out,
        "oms_hub_watcher_requeue_dropped",
        "Documents queued for the watcher past its backlog's bound and dropped (looked at again at their next \
         change).",
        backlog.1.to_string(),
    );
    gauge(&mut out, "oms_hub_api_keys_live", "API keys in force.", auth.live_keys().to_string());
    // Per node: whether it is linked, how long since its last frame (past the escrow lease, 60 s by default,
    // and its margin the site reclaims the rights the hub holds there), and the changes quarantined.
    let mut connected_lines = String::new();
    let mut age_lines = String::new();
    let mut quarantined_lines = String::new();
    for (name, up, age_s, quarantined) in &per_node {
        connected_lines.push_str(&format!("oms_hub_node_connected{{node=\"{name}\"}} {}\n", u8::from(*up)));
        if let Some(age) = age_s {
            age_lines.push_str(&format!("oms_hub_node_last_frame_age_seconds{{node=\"{name}\"}} {age}\n"));
        }
        quarantined_lines.push_str(&format!("oms_hub_changes_quarantined_total{{node=\"{name}\"}} {quarantined}\n"));
    }
    out.push_str(&format!(
        "# HELP oms_hub_node_connected 1 while the node has a live sync session.\n# TYPE oms_hub_node_connected gauge\n\
         {connected_lines}# HELP oms_hub_node_last_frame_age_seconds Seconds since the node's last sync frame.\n\
         # TYPE oms_hub_node_last_frame_age_seconds gauge\n{age_lines}\
         # HELP oms_hub_changes_quarantined Changes from the node to keys it does not own, rolled back.\n\
         # TYPE oms_hub_changes_quarantined counter\n{quarantined_lines}"
    ));
    let b = hub.intake.batch_counts();
    for (name, help, v) in [
        ("oms_hub_intake_commits", "Write transactions of the intake's writer (channel orders).", b.commits),
        (
            "oms_hub_intake_orders",
            "Channel orders those transactions held (orders per commit: this over commits).",
            b.orders,
        ),
        (
            "oms_hub_intake_document_rounds",
            "Rounds of the intake's documents thread (the documents of one or more committed batches written under \
             one hold of the documents' lock).",
            b.document_rounds,
        ),
        ("oms_hub_intake_document_orders", "Created orders whose documents those rounds wrote.", b.document_orders),
        (
            "oms_hub_intake_document_fallbacks",
            "Created orders whose documents a round could not write (their requests wrote them).",
            b.document_fallbacks,
        ),
    ] {
        counter(&mut out, name, help, v.to_string());
    }
    gauge(
        &mut out,
        "oms_hub_intake_batch_orders_max",
        "Most channel orders one transaction held.",
        b.largest.to_string(),
    );
    for (name, help, v) in [
        ("oms_hub_sync_sessions", "Sync sessions nodes opened since the hub started.", sessions),
        (
            "oms_hub_anti_entropy_digests",
            "Periodic anti-entropy rounds the hub sent (a digest of its manifest, whole or per bucket).",
            anti_entropy.digests_sent,
        ),
        (
            "oms_hub_anti_entropy_full_manifests",
            "Manifests the hub sent listing every document a node shares (one per session is expected; beyond it, \
             a node without bucket rounds).",
            anti_entropy.full_manifests,
        ),
        (
            "oms_hub_anti_entropy_partial_manifests",
            "Manifests the hub sent listing only the buckets of documents whose digests differed.",
            anti_entropy.partial_manifests,
        ),
        ("oms_hub_anti_entropy_entries", "Documents listed in the manifests the hub sent.", anti_entropy.entries_sent),
        (
            "oms_hub_state_doc_generations",
            "New generations of the sites' state documents (stock, escrow, inbound) the hub started or took since \
             it started.",
            history.generations_started,
        ),
    ] {
        counter(&mut out, name, help, v.to_string());
    }
    gauge(
        &mut out,
        "oms_hub_state_doc_history_ops_max",
        "The longest history (Automerge operations) among the current generations of the state documents.",
        history.history_ops_max.to_string(),
    );
    gauge(
        &mut out,
        "oms_hub_state_docs_over_history_bound",
        "State documents whose history is over twice the bound at which a new generation starts (0).",
        history.over_bound.to_string(),
    );
    counter(
        &mut out,
        "oms_hub_demand_documents_read",
        "Order and stock documents the demand history and the network stock read (each once after a start, then \
         only those that changed).",
        hub.demand.docs_read().to_string(),
    );
    let t = &hub.tracking;
    out.push_str(&format!(
        "# HELP oms_hub_carrier_events Carrier tracking events by outcome: stored, replays answered without a \
         change, refused (carrier, signature, body).\n# TYPE oms_hub_carrier_events counter\n\
         oms_hub_carrier_events_total{{result=\"stored\"}} {}\noms_hub_carrier_events_total{{result=\"replayed\"}} {}\n\
         oms_hub_carrier_events_total{{result=\"refused\"}} {}\n",
        t.accepted.load(std::sync::atomic::Ordering::Relaxed),
        t.replayed.load(std::sync::atomic::Ordering::Relaxed),
        t.refused.load(std::sync::atomic::Ordering::Relaxed),
    ));
    counter(
        &mut out,
        "oms_hub_carrier_events_easypost",
        "Carrier tracking events stored or replayed from carriers that post in EasyPost's format.",
        t.easypost.load(std::sync::atomic::Ordering::Relaxed).to_string(),
    );
    if let Some(n) = taken {
        counter(&mut out, "oms_hub_orders_taken", "Customer orders the hub took.", n.to_string());
    }
    out.push_str("# EOF\n");
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
