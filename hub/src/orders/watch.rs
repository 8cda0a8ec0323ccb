//! The watcher ([`watch()`], [`watch_once`]): merges each site's escrow view, re-routes what sites released,
//! retries waiting orders, notes shipments; and the start's recovery ([`recover`]).

use super::*;

/// One pass of the watcher: merge escrow views, re-route released fulfillments, retry waiting orders. False
/// if it could not act on what it read and queued those documents again (a failed flush or write): the next
/// pass waits for the tick or a node's change rather than come right after.
pub fn watch_once(hub: &Hub, retry: bool) -> bool {
    let changed = hub.docs.lock().take_changed();
    let now = now_ms();
    let mut released: BTreeMap<String, Vec<(OrderId, String)>> = BTreeMap::new();
    // (fulfillment, its customer order, site, units shipped per SKU)
    type Shipped = (OrderId, Option<String>, String, Vec<(String, u64)>);
    let mut shipped: Vec<Shipped> = Vec::new();
    let mut seen = Vec::new();
    for doc in changed {
        match DocKind::of(&doc) {
            Some(DocKind::Stock(site)) => {
                let (counters, stock) = {
                    let mut docs = hub.docs.lock();
                    // The SKUs the changes touched, taken under the same hold of the lock as the read: only
                    // their balances and escrow counters are read, not the whole catalog's.
                    let touched = docs.take_stock_touched(&doc);
                    let escrow_touched = docs.take_escrow_touched(&doc);
                    let d = docs.get(&doc);
                    let counters = d.as_ref().and_then(|d| {
                        let read = match &escrow_touched {
                            Some(skus) => schema::read_escrow_of(d, skus.iter().map(String::as_str)),
                            None => schema::read_escrow(d, usize::MAX),
                        };
                        read.ok().map(|(c, _)| c)
                    });
                    let stock = d.as_ref().and_then(|d| crate::events::watch::read_stock_change(d, &doc, touched));
                    drop(d);
                    if counters.is_none() {
                        docs.reread_escrow(&doc);
                    }
                    (counters, stock)
                };
                let (db, at, low_at) = (hub.intake.db(), site.as_str(), hub.stock_low_at);
                let reported = match &stock {
                    Some(StockRead::Whole(skus)) => crate::events::watch::report_stock(db, at, skus, low_at, now),
                    Some(StockRead::Touched(skus)) => {
                        crate::events::watch::report_stock_skus(db, at, skus, low_at, now)
                    }
                    None => Ok(0),
                };
                match reported {
                    // Capped: the rest are found by the next change's whole read.
                    Ok(n) if n >= crate::events::watch::STOCK_LOW_EVENTS_MAX => hub.docs.lock().reread_stock(&doc),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%site, error = %e, "cannot record the site's stock.low events");
                        hub.docs.lock().reread_stock(&doc);
                    }
                }
                crate::purchasing::sites::apply_site_receipts(hub, &site, &doc);
                crate::returns::sites::apply_site_receipts(hub, &site, &doc);
                let Some(counters) = counters else { continue };
                match hub.intake.merge_site(&site, counters, now) {
                    Ok(publish) if !publish.is_empty() => {
                        let effects = Effects {
                            fulfillments: vec![],
                            escrow: publish.into_iter().map(|c| (site.clone(), c)).collect(),
                        };
                        if let Err(e) = apply_effects(hub, &effects) {
                            tracing::warn!(%site, error = %e, "cannot publish escrow");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%site, error = %e, "cannot merge a site's escrow view");
                        // What was read is not merged: the next change's read takes every counter.
                        hub.docs.lock().reread_escrow(&doc);
                    }
                }
            }
            Some(DocKind::Order(id)) if schema::order_origin(&id) == Some(HUB_ORIGIN) => {
                let docs = hub.docs.lock();
                let Some(view) = docs.get(&doc).and_then(|d| schema::read_order(&d, doc.as_str()).ok()) else {
                    continue;
                };
                let delivered_frozen = carrier_delivered_frozen(hub, &view).is_some();
                let Some(p) = view.progress else { continue };
                seen.extend(
                    crate::events::watch::FulfillmentSeen::of(
                        &view.id,
                        view.parent.as_deref(),
                        &view.site,
                        &view.draft.channel,
                        &p,
                    )
                    .map(|mut f| {
                        // A carrier delivery the site could not apply (frozen as shipped) is reported once too.
                        if delivered_frozen {
                            f.status = FulfillmentState::Delivered;
                        }
                        f
                    }),
                );
                if matches!(p.status, FulfillmentState::Shipped | FulfillmentState::Delivered) {
                    let lines = p.lines.iter().map(|l| (l.sku.to_string(), u64::from(l.shipped))).collect();
                    shipped.push((view.id.clone(), view.parent.clone(), view.site.to_string(), lines));
                }
                if matches!(p.status, FulfillmentState::Rejected | FulfillmentState::Cancelled)
                    && let Some(parent) = view.parent
                {
                    released.entry(parent).or_default().push((view.id, p.status.as_str().to_owned()));
                }
            }
            _ => {}
        }
    }
    // A site's word that ends a fulfillment (shipped, rejected, cancelled) may come before `hub.redb` holds
    // it, or its document at all: a session flushes a node's change only at the end of its pass, and sends a
    // fresh document before the flush that writes it (`server::early_frames`), which a start builds again only
    // while it is live. So what ends it is acted on once the documents are on disk as read; a failed flush
    // leaves it all for the next pass. Nearly always the session's own flush has written them by now (the
    // watcher runs 25 ms after a change), and a flush here would cost an fsync a pass that the sessions, busy
    // with intake, wait for: it runs only if one is not written.
    let ending = shipped.iter().map(|s| &s.0).chain(released.values().flatten().map(|(id, _)| id));
    let ending: Vec<DocId> = ending.filter_map(schema::order_doc).collect();
    if !ending.is_empty()
        && let Err(e) = crate::server::flush_docs_unless_written(hub, &ending)
    {
        tracing::warn!(error = %e, "cannot flush the documents before acting on the sites' progress; next pass");
        let seen = seen.iter().filter_map(|f| schema::order_doc(&f.id));
        hub.docs.lock().requeue_docs(seen.chain(ending));
        return false;
    }
    // Each shipment is billed (invoice and capture row, once) before the fulfillment stops being live, so a
    // crash in between bills it at the next start.
    let mut finished = Vec::new();
    let mut parents = BTreeSet::new();
    for (id, parent, site, lines) in shipped {
        let billed = match &parent {
            Some(parent) => {
                hub.money.bill_shipment(hub.intake.db(), id.as_str(), parent, &site, &lines, now).map(|_| ())
            }
            None => Ok(()),
        };
        match billed {
            Ok(()) => {
                finished.push(id);
                parents.extend(parent);
            }
            Err(e) => tracing::warn!(fulfillment = %id, error = %e, "cannot bill a shipment; a start will try again"),
        }
    }
    // An order whose last shipment this was is final: the rest of its authorization is released, still before
    // its fulfillments stop being live (a crash in between releases it at the next start).
    for parent in parents {
        match hub.intake.order(&parent) {
            Ok(Some(o)) => settle_if_final(hub, &o, now),
            Ok(None) => {}
            Err(e) => tracing::warn!(order = %parent, error = %e, "cannot read an order to settle its payment"),
        }
    }
    // Their events before they leave the open work, so a failure here leaves them for a start to read again.
    let mut acted = true;
    if let Err(e) = crate::events::watch::report_fulfillments(hub.intake.db(), &seen, now) {
        tracing::warn!(error = %e, "cannot record the fulfillments' events; reading their documents again");
        hub.docs.lock().requeue(seen.iter().filter_map(|f| schema::order_doc(&f.id)));
        finished.clear();
        acted = false;
    }
    if let Err(e) = hub.intake.finished(&finished) {
        tracing::warn!(error = %e, "cannot note finished fulfillments; a start will look at them again");
    }
    if retry {
        crate::returns::sites::tick(hub);
    }
    let mut ids: Vec<String> = released.keys().cloned().collect();
    if retry {
        for id in hub.intake.open_orders(RETRY_BATCH_MAX) {
            if !released.contains_key(&id) {
                ids.push(id);
            }
        }
    }
    if ids.is_empty() {
        return acted;
    }
    let sites = site_facts(hub, now);
    for id in ids {
        let rel = released.remove(&id).unwrap_or_default();
        match hub.intake.reroute(&id, &rel, &sites, now) {
            Ok(Some((order, effects))) => {
                if let Err(e) = apply_effects(hub, &effects) {
                    tracing::warn!(order = %id, error = %e, "cannot write re-routed fulfillments");
                }
                settle_if_final(hub, &order, now);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(order = %id, error = %e, "re-routing failed"),
        }
    }
    acted
}

/// Settles the payment of an order that reached its final state: nothing left to place (or cancelled) and
/// every fulfillment shipped or given back. An order nothing was invoiced for is voided (cancelled before
/// anything shipped; a site that ships before it sees the cancellation gets its shipment captured
/// instead); otherwise what it will never capture is released ([`crate::money::Money::settle_final`]).
pub(super) fn settle_if_final(hub: &Hub, order: &HubOrder, now: u64) {
    if !order.unfilled.is_empty() {
        return;
    }
    let mut shipped = Vec::new();
    for f in order.fulfillments.iter().filter(|f| f.released.is_none()) {
        match fo_state(hub, &f.id).status {
            Some(FulfillmentState::Shipped | FulfillmentState::Delivered) => shipped.push(f.id.as_str()),
            // Still at its site, or given back and not re-routed yet: not final.
            _ => return,
        }
    }
    if let Err(e) = hub.money.settle_final(hub.intake.db(), order.id.as_str(), &shipped, now) {
        tracing::warn!(order = %order.id, error = %e, "cannot queue the void or release of a final order");
    }
}

/// Fulfillment documents [`recover`] re-creates per read of their orders (and per write of the documents).
const RECREATED_PER_SLICE: usize = 10_000;

/// At start: re-creates the fulfillment documents committed before a crash but not written, republishes
/// the escrow views, and queues for the watcher the other fulfillments a site has not finished with and every
/// stock document. Reads the open work only ([`crate::intake::Intake::live_ids`]), not every order, and the
/// orders of the documents it re-creates. Writes the re-created documents as it goes once `docs_loaded_max` are
/// loaded, so a start that re-creates many is bounded in memory as the sessions' flushes are. That flush blocks
/// on its commit: never call this on an async runtime's worker (`spawn_blocking`, or no runtime).
pub fn recover(hub: &Hub) -> Result<(), EffectsError> {
    recover_in_slices(hub, RECREATED_PER_SLICE)
}

/// [`recover`], re-creating `per_slice` documents per read of their orders.
pub(crate) fn recover_in_slices(hub: &Hub, per_slice: usize) -> Result<(), EffectsError> {
    // Only documents that are missing: recreating one that exists would be a no-op, but would load it. Only
    // their orders are read, a slice at a time (a crash loses a few; a `hub.redb` lost or restored from an
    // older copy, all); the others are queued for the watcher by name.
    let live = hub.intake.live_ids()?;
    let (mut missing, mut present) = (Vec::new(), Vec::new());
    {
        let docs = hub.docs.lock();
        for (f, parent) in live {
            let Some(d) = schema::order_doc(&f) else { continue };
            if docs.db().contains(&d) { present.push(d) } else { missing.push((f, parent)) }
        }
    }
    for slice in missing.chunks(per_slice.max(1)) {
        let fulfillments = hub.intake.fulfillments_of(slice)?;
        apply_effects(hub, &Effects { fulfillments, escrow: vec![] })?;
        // Re-created from the intake's committed record: written now or by the first session's flush alike.
        crate::server::flush_docs_if_full(hub);
    }
    let mut escrow = Vec::new();
    for site in hub.intake.escrow_sites() {
        for c in hub.intake.escrow_of_site(&site) {
            escrow.push((site.clone(), c));
        }
    }
    apply_effects(hub, &Effects { fulfillments: vec![], escrow })?;
    // And the shipped ones whose delivery is still to be reported (the intake no longer tracks them).
    let unfinished = crate::events::watch::unfinished(hub.intake.db()).map_err(|e| EffectsError::Intake(e.into()))?;
    hub.docs.lock().requeue(present.into_iter().chain(unfinished.iter().filter_map(schema::order_doc)));
    // Requeued above, the stock documents bring back any site receipt not applied yet.
    if let Err(e) = crate::purchasing::sites::publish_open(hub) {
        tracing::warn!(error = %e, "purchasing: cannot publish the open orders to their sites");
    }
    if let Err(e) = crate::returns::sites::publish_open(hub) {
        tracing::warn!(error = %e, "returns: cannot publish the open RMAs to their sites");
    }
    settle_due(hub);
    Ok(())
}

/// Orders settled per start at most (each is one read and at most one commit); the rest wait for the next
/// start, or settle on their own when their last shipment is billed.
pub const SETTLE_DUE_AT_START_MAX: usize = 100_000;

/// Settles the payments a crash left due: a cancel, line cancel or re-route made the order final and committed,
/// and the hub died before [`crate::money::Money::settle_final`] did (the change noted it in its transaction).
/// An order that is not final yet keeps its note until its last shipment settles it.
fn settle_due(hub: &Hub) {
    let due = match hub.money.settle_due(hub.intake.db(), SETTLE_DUE_AT_START_MAX) {
        Ok(d) => d,
        Err(e) => return tracing::warn!(error = %e, "cannot read the payments due to be settled"),
    };
    let now = now_ms();
    for id in due {
        match hub.intake.order(&id) {
            Ok(Some(o)) => settle_if_final(hub, &o, now),
            Ok(None) => {}
            Err(e) => tracing::warn!(order = %id, error = %e, "cannot read an order to settle its payment"),
        }
    }
}

/// Least time between two passes of the watcher, ms: the changes nodes make meanwhile are taken together,
/// so a busy hub merges each site's escrow view (an intake commit, under the intake's lock) a few dozen
/// times a second rather than once per change a node sends.
pub const WATCH_GAP_MS: u64 = 25;

/// Runs the watcher until the runtime stops.
pub async fn watch(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_millis(WATCH_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let retry = tokio::select! {
            () = hub.node_changes.notified() => false,
            _ = tick.tick() => true,
        };
        tokio::time::sleep(Duration::from_millis(WATCH_GAP_MS)).await;
        let h = hub.clone();
        let acted = match tokio::task::spawn_blocking(move || watch_once(&h, retry)).await {
            Ok(acted) => acted,
            Err(e) => {
                tracing::error!(error = %e, "the routing watcher failed; continuing");
                false
            }
        };
        // Open work a start queued beyond one pass: the next pass takes more of it after the gap, not a tick
        // (unless this one could not act: then it waits for the tick or a node's change).
        if acted && hub.docs.lock().backlog_len() > 0 {
            hub.node_changes.notify_one();
        }
        // The carriers' deliveries the watcher (a shipment matched late) or a webhook left due.
        crate::tracking::deliver_due(&hub).await;
    }
}
