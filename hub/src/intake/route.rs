//! Routing an order and recording it ([`Core`]'s methods, shared by the writer's batches and the other
//! writes): what the idempotency records say of a key, the sites' views, the plan, its record, the order's row.

use std::collections::{BTreeSet, HashMap};

use oms_protocol::domain::{Channel, GeoPoint, NodeId, OrderId, Sku};
use oms_protocol::escrow::Party;
use redb::ReadableTable;

use super::*;
use crate::routing::{self, RouteLine, RouteRequest, RoutingDecision, SiteView};

/// Routing and its records, shared by the writer's batches and the other writes.
impl Core {
    /// What the idempotency records say of `key` for a body of `channel` hashing to `hash`.
    pub(super) fn seen(
        idem: &impl ReadableTable<&'static str, &'static [u8]>,
        orders: &impl ReadableTable<&'static str, &'static [u8]>,
        channel: &Channel,
        key: &str,
        hash: &[u8; 32],
    ) -> Result<Seen, IntakeError> {
        if let Some(v) = idem.get(scoped_key(channel, key).as_str())? {
            let rec = decode_idem(v.value())?;
            return Ok(if rec.body_sha256 == *hash { Seen::Replay(rec.order) } else { Seen::Reused(rec.order) });
        }
        // A record from before keys were scoped to the channel. The same body (which names its channel) is a
        // replay of that order; another body is a reuse only if that order is of this channel, otherwise the
        // key is this channel's to use.
        let Some(v) = idem.get(key)? else { return Ok(Seen::New) };
        let rec = decode_idem(v.value())?;
        if rec.body_sha256 == *hash {
            return Ok(Seen::Replay(rec.order));
        }
        let theirs = get_order(orders, &rec.order)?;
        Ok(if theirs.is_some_and(|o| &o.draft.channel == channel) { Seen::Reused(rec.order) } else { Seen::New })
    }

    /// The sites' views for routing `skus` as the transaction sees them: capacity used today from `cap`,
    /// the hub's spendable rights from the counters this transaction changed (`overlay`) over the committed
    /// ones.
    #[allow(clippy::too_many_arguments)]
    fn site_views(
        st: &State,
        overlay: &Overlay,
        cap: &impl ReadableTable<&'static str, u64>,
        sites: &[SiteFacts],
        skus: &[Sku],
        exclude: &BTreeSet<NodeId>,
        now_ms: u64,
    ) -> Result<Vec<SiteView>, IntakeError> {
        let mut out = Vec::with_capacity(sites.len());
        for s in sites {
            if exclude.contains(&s.id) {
                continue;
            }
            let Ok(location) = GeoPoint::new(s.info.lat, s.info.lon) else { continue };
            let used = cap.get(format!("{}|{}", s.id, utc_day(now_ms)).as_str())?.map(|v| v.value()).unwrap_or(0);
            let mut promisable = HashMap::new();
            for sku in skus {
                if let Some(c) = rights(st, overlay, &(s.id.clone(), sku.clone())) {
                    let n = u32::try_from(c.spendable(Party::Hub, now_ms)).unwrap_or(u32::MAX);
                    if n > 0 {
                        promisable.insert(sku.clone(), n);
                    }
                }
            }
            // Open work: the shipments the hub routed there today, this batch's included.
            let open = oms_protocol::shipping::OpenWork { shipments: used };
            // Cached per schedule: the same answer as `site_promise`, computed once per day and cut-off.
            let promise = s.schedule.as_ref().and_then(|c| c.promise(now_ms, open));
            out.push(SiteView {
                id: s.id.clone(),
                location,
                priority: s.info.priority,
                capacity_left_shipments: u32::try_from(u64::from(s.info.capacity_per_day).saturating_sub(used))
                    .unwrap_or(0),
                region: s.info.region.clone(),
                reachable: s.reachable,
                last_heard_age_ms: s.last_heard_age_ms,
                promisable,
                promise,
            });
        }
        Ok(out)
    }

    /// Routing's decision for the unfilled units of `order`, reading only: nothing is written, so a decision
    /// that is refused leaves no trace in a shared transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan(
        &self,
        st: &State,
        overlay: &Overlay,
        t: &Tables<'_>,
        order: &HubOrder,
        sites: &[SiteFacts],
        exclude: &BTreeSet<NodeId>,
        now_ms: u64,
    ) -> Result<RoutingDecision, IntakeError> {
        let lines: Vec<RouteLine> =
            order.unfilled.iter().map(|l| RouteLine { sku: l.sku.clone(), qty: l.qty }).collect();
        let skus: Vec<Sku> = lines.iter().map(|l| l.sku.clone()).collect();
        let views = Self::site_views(st, overlay, &t.capacity, sites, &skus, exclude, now_ms)?;
        let ship_to = GeoPoint { lat: order.draft.ship_to.lat, lon: order.draft.ship_to.lon };
        let req = RouteRequest { lines, ship_to, region: None };
        Ok(routing::route(&req, &views, &self.policy))
    }

    /// Records `decision` for `order`: consumes the hub's rights for each assignment in `overlay` (copied
    /// from `st` on first use), counts the site's shipment for the day in `t`, adds the fulfillments to the
    /// order and to `effects` (with each counter consumed, after consumption), and the decision to the
    /// order's record. The counters' rows are written by [`write_escrow_rows`] once per transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        st: &State,
        overlay: &mut Overlay,
        t: &mut Tables<'_>,
        order: &mut HubOrder,
        decision: RoutingDecision,
        trigger: String,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<(), IntakeError> {
        if !decision.assignments.is_empty() {
            let mut touched = BTreeSet::new();
            for a in &decision.assignments {
                for l in &a.lines {
                    let key = (a.site.clone(), l.sku.clone());
                    let c = match overlay.entry(key) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let held = st.escrow.get(e.key()).cloned().ok_or_else(|| IntakeError::Corrupt {
                                table: "escrow",
                                detail: format!(
                                    "routing used rights of {} at {} that the hub does not hold",
                                    l.sku, a.site
                                ),
                            })?;
                            e.insert(held)
                        }
                    };
                    c.consume(Party::Hub, u64::from(l.qty), now_ms).map_err(|e| IntakeError::Corrupt {
                        table: "escrow",
                        detail: format!("routing promised more than the hub may spend: {e}"),
                    })?;
                    touched.insert((a.site.clone(), l.sku.clone()));
                }
                let n = order.fulfillments.len() + 1;
                let id = OrderId::parse(&format!("{}.{n}", order.id))
                    .map_err(|e| IntakeError::Corrupt { table: "orders", detail: format!("fulfillment id: {e}") })?;
                let day_key = format!("{}|{}", a.site, utc_day(now_ms));
                let used = t.capacity.get(day_key.as_str())?.map(|v| v.value()).unwrap_or(0);
                t.capacity.insert(day_key.as_str(), used + 1)?;
                t.live.insert(id.as_str(), order.id.as_str())?;
                let f = Fulfillment {
                    id,
                    site: a.site.clone(),
                    lines: a.lines.clone(),
                    assigned_at_ms: now_ms,
                    released: None,
                    promise: a.promise.clone(),
                    site_cancel: None,
                };
                // From the record as stored, as a start rebuilds it.
                effects.fulfillments.push(NewFulfillment::of(order, &f));
                order.fulfillments.push(f);
            }
            for key in touched {
                if let Some(c) = overlay.get(&key) {
                    effects.escrow.push((key.0, c.clone()));
                }
            }
            let placed = &order.fulfillments[order.fulfillments.len() - decision.assignments.len()..];
            t.event(crate::events::EventDraft::routed(order, placed, &decision.unfilled, &trigger, now_ms))?;
        }
        order.unfilled = decision.unfilled.clone();
        let record = DecisionRecord { at_ms: now_ms, trigger, decision };
        if order.decisions.len() >= DECISIONS_MAX {
            order.decisions.remove(1);
        }
        order.decisions.push(record);
        Ok(())
    }

    /// Writes `o` and keeps [`OPEN`] in step with it.
    pub(super) fn put_order(t: &mut Tables<'_>, o: &HubOrder) -> Result<(), IntakeError> {
        t.orders.insert(o.id.as_str(), enc_json(o)?.as_slice())?;
        if o.wants_routing() {
            t.open.insert(o.id.as_str(), ())?;
        } else {
            t.open.remove(o.id.as_str())?;
        }
        Ok(())
    }
}

/// What an idempotency key says about a create.
pub(super) enum Seen {
    /// Never used (or forgotten): a new order.
    New,
    /// Used for this very body: the original order.
    Replay(String),
    /// Used by this channel for another body: refused.
    Reused(String),
}

fn utc_day(ms: u64) -> u64 {
    ms / 86_400_000
}
