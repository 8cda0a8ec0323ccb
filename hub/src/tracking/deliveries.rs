//! A carrier's delivery into the fulfillment's document: the outbox [`deliver_due`], the hub's own record
//! for a document frozen as shipped ([`frozen_delivery`]), and the carrier events in an order's view.

use std::sync::Arc;

use oms_protocol::domain::{FulfillmentState, OrderId};
use oms_protocol::schema;
use oms_service::now_ms;
use oms_service::storage::StorageError;
use redb::{ReadableDatabase, ReadableTable};

use super::store::{DELIVER_DUE, DELIVERED_FROZEN};
use super::{DELIVER_BATCH_MAX, STATUSES, current_state, events_of, flag_of};
use crate::events::watch::FulfillmentSeen;
use crate::server::Hub;

/// Adds each shipped fulfillment's carrier events (`tracking`, `tracking_status`) to an order's view, the
/// events to its timeline (`carrier_<status>`, with the carrier as `site` and its words as `note`), and the
/// order's carrier flag (`carrier_exception`).
pub(crate) fn with_tracking(hub: &Hub, view: &mut crate::orders::HubOrderView) {
    let db = hub.intake.db();
    let mut timeline = Vec::new();
    for f in &mut view.fulfillments {
        let Some(tracking) = f.shipment.as_ref().map(|s| s.tracking.clone()) else { continue };
        let events = match events_of(db, &tracking) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%tracking, error = %e, "cannot read the carrier's events");
                continue;
            }
        };
        // Unknown statuses are kept with the events but say nothing in the customer's timeline.
        for e in events.iter().filter(|e| STATUSES.contains(&e.status.as_str())) {
            timeline.push(crate::orders::TimelineItem::at_site(
                e.occurred_at_ms,
                format!("carrier_{}", e.status),
                f.id.as_str(),
                &e.carrier,
                e.description.clone().unwrap_or_default(),
            ));
        }
        f.tracking_status = Some(current_state(&events).map(str::to_owned));
        f.tracking = Some(events);
    }
    view.timeline.extend(timeline);
    crate::orders::sort_timeline(&mut view.timeline);
    match flag_of(db, view.id.as_str()) {
        Ok(flag) => view.carrier_exception = Some(flag),
        Err(e) => tracing::warn!(order = %view.id, error = %e, "cannot read the order's carrier flag"),
    }
}

/// When the carrier delivered fulfillment `fulfillment` after its site froze it as shipped, if it did: the
/// hub's record ([`deliver_due`]).
pub fn frozen_delivery(db: &redb::Database, fulfillment: &str) -> Result<Option<u64>, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = crate::events::read_table(&r, DELIVERED_FROZEN)? else { return Ok(None) };
    Ok(t.get(fulfillment).map_err(redb::Error::from)?.map(|v| v.value()))
}

/// What the outbox does with one due delivery, from the fulfillment's document.
enum DueDelivery {
    /// Written into the document (or nothing to write): the row goes.
    Done,
    /// The document is frozen as shipped: the hub records the delivery itself and reports `order.delivered`.
    Frozen(FulfillmentSeen, u64),
    /// Not written (the document refused it): the row stays for the next pass.
    Retry,
}

/// Records in `w` a carrier's delivery of a fulfillment whose document is frozen as shipped (`f`, with the
/// status `delivered`): the [`DELIVERED_FROZEN`] row and, once, its `order.delivered`; removes the due row.
pub(crate) fn record_frozen(
    w: &redb::WriteTransaction,
    f: &FulfillmentSeen,
    at_ms: u64,
    now_ms: u64,
) -> Result<(), StorageError> {
    {
        let mut t = w.open_table(DELIVERED_FROZEN).map_err(redb::Error::from)?;
        if t.get(f.id.as_str()).map_err(redb::Error::from)?.is_none() {
            t.insert(f.id.as_str(), at_ms).map_err(redb::Error::from)?;
        }
        w.open_table(DELIVER_DUE).map_err(redb::Error::from)?.remove(f.id.as_str()).map_err(redb::Error::from)?;
    }
    crate::events::watch::report_in(w, f, now_ms)?;
    Ok(())
}

/// The outbox pass: writes each due delivery into its fulfillment's document (`hub.carrier_delivered_at_ms`),
/// flushes the documents, then deletes the rows and tells the sites. A fulfillment whose document its site
/// already froze as shipped cannot take the key: the hub records the delivery in its own store instead
/// ([`DELIVERED_FROZEN`], read by the order's view) and reports its `order.delivered`, in the transaction
/// that deletes the row. At most [`DELIVER_BATCH_MAX`] a pass; a row whose write failed stays for the next
/// pass.
pub async fn deliver_due(hub: &Arc<Hub>) {
    let h = hub.clone();
    let due = tokio::task::spawn_blocking(move || -> Result<Vec<(String, u64)>, StorageError> {
        let r = h.intake.db().begin_read().map_err(redb::Error::from)?;
        let Some(t) = crate::events::read_table(&r, DELIVER_DUE)? else { return Ok(vec![]) };
        let mut out = Vec::new();
        for row in t.iter().map_err(redb::Error::from)?.take(DELIVER_BATCH_MAX) {
            let (k, v) = row.map_err(redb::Error::from)?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    })
    .await;
    let due = match due {
        Ok(Ok(d)) if !d.is_empty() => d,
        Ok(Ok(_)) => return,
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read the carrier deliveries due"),
        Err(e) => return tracing::warn!(error = %e, "the carrier deliveries' read failed"),
    };
    let mut done = Vec::new();
    let mut frozen = Vec::new();
    let mut tell = Vec::new();
    {
        let mut docs = hub.docs.lock();
        for (fulfillment, at) in &due {
            match deliver_one(&mut docs, fulfillment, *at, &mut tell) {
                DueDelivery::Done => done.push(fulfillment.clone()),
                DueDelivery::Frozen(f, at) => frozen.push((f, at)),
                DueDelivery::Retry => {}
            }
        }
    }
    if let Err(e) = crate::server::flush_docs(hub).await {
        return tracing::warn!(error = %e, "cannot flush the carrier's deliveries; retrying");
    }
    let h = hub.clone();
    let removed = tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
        let w = h.intake.db().begin_write().map_err(redb::Error::from)?;
        {
            let mut t = w.open_table(DELIVER_DUE).map_err(redb::Error::from)?;
            for f in &done {
                t.remove(f.as_str()).map_err(redb::Error::from)?;
            }
        }
        let now = now_ms();
        for (f, at) in &frozen {
            record_frozen(&w, f, *at, now)?;
        }
        w.commit().map_err(redb::Error::from)?;
        Ok(())
    })
    .await;
    if !matches!(removed, Ok(Ok(()))) {
        tracing::warn!("cannot clear the carrier deliveries written; they are written again (no change)");
    }
    tell.sort();
    tell.dedup();
    hub.poke(&tell);
}

/// One due delivery against its fulfillment's document (under the documents' lock).
fn deliver_one(docs: &mut crate::docs::HubDocs, fulfillment: &str, at: u64, tell: &mut Vec<String>) -> DueDelivery {
    let Some(name) = OrderId::parse(fulfillment).ok().as_ref().and_then(schema::order_doc) else {
        return DueDelivery::Done;
    };
    if !docs.db().contains(&name) {
        tracing::warn!(%fulfillment, "a carrier delivery for a fulfillment whose document is not here");
        return DueDelivery::Done;
    }
    let view = docs.get(&name).and_then(|d| schema::read_order(&d, name.as_str()).ok());
    if let Some(v) = view.filter(|v| v.frozen_at_ms.is_some()) {
        // Frozen: the document takes no more changes. Shipped, the delivery is the hub's to record.
        let Some(p) = v.progress.as_ref().filter(|p| p.status == FulfillmentState::Shipped) else {
            return DueDelivery::Done;
        };
        return match FulfillmentSeen::of(&v.id, v.parent.as_deref(), &v.site, &v.draft.channel, p) {
            Some(mut f) => {
                f.status = FulfillmentState::Delivered;
                DueDelivery::Frozen(f, at)
            }
            None => DueDelivery::Done,
        };
    }
    match docs.write_local(&name, |d| schema::request_delivered(d, at)) {
        Ok(nodes) => {
            tell.extend(nodes);
            DueDelivery::Done
        }
        Err(e) => {
            tracing::warn!(%fulfillment, error = %e, "cannot write the carrier's delivery; retrying");
            DueDelivery::Retry
        }
    }
}
