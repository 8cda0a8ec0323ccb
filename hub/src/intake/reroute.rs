//! Changing an order after its intake: routing what is still unplaced (the watcher's rounds and customer
//! service's "route now"), cancelling an order or its waiting units, and asking a site to cancel its part.

use super::*;

impl Intake {
    /// Routes what is still unplaced of order `id`; `released` lists fulfillments whose sites gave their
    /// units back (rejected or cancelled) to fold back in first, excluding those sites for this round.
    pub fn reroute(
        &self,
        id: &str,
        released: &[(OrderId, String)],
        sites: &[SiteFacts],
        now_ms: u64,
    ) -> Result<Option<(HubOrder, Effects)>, IntakeError> {
        self.reroute_as(id, released, sites, now_ms, None)
    }

    /// Routes the units of order `id` still waiting for stock now, at `actor`'s asking (customer service's
    /// "route the waiting units now"), rather than at the watcher's next pass: the same round as
    /// [`Intake::reroute`], with the audit row (`ok`, `nothing_placeable` when no site can take any of them
    /// now, `units_not_waiting`, `order_not_found`) in its transaction.
    pub fn reroute_by(
        &self,
        id: &str,
        sites: &[SiteFacts],
        actor: &Actor,
        now_ms: u64,
    ) -> Result<Option<(HubOrder, Effects)>, IntakeError> {
        self.reroute_as(id, &[], sites, now_ms, Some(actor))
    }

    fn reroute_as(
        &self,
        id: &str,
        released: &[(OrderId, String)],
        sites: &[SiteFacts],
        now_ms: u64,
        by: Option<&Actor>,
    ) -> Result<Option<(HubOrder, Effects)>, IntakeError> {
        let mut st = lock(&self.core.state);
        let Some(mut order) = self.order(id)? else {
            return match by {
                Some(actor) => {
                    refuse(self.core.db.begin_write()?, actor, id, now_ms, IntakeError::NotFound(id.to_owned()))
                }
                None => Ok(None),
            };
        };
        let mut exclude: BTreeSet<NodeId> = order.avoid_sites.iter().cloned().collect();
        let mut trigger = by.map_or_else(|| "retry".to_owned(), |a| format!("asked by {}", a.key));
        let mut changed = false;
        let mut gone = Vec::new();
        // Units a cancel asked of their site alone cancels, with its reason, as the site confirms.
        let mut cancelled_here: Vec<(Vec<SkuQty>, String)> = Vec::new();
        for (fid, why) in released {
            if let Some(f) = order.fulfillments.iter_mut().find(|f| &f.id == fid && f.released.is_none()) {
                f.released = Some(why.clone());
                gone.push(f.id.to_string());
                exclude.insert(f.site.clone());
                let lines = f.lines.clone();
                trigger = format!("released by {}: {why}", f.site);
                let asked = f.site_cancel.as_ref().map(|c| (c.then, c.reason.clone(), c.lines.clone()));
                match asked {
                    _ if order.cancel_requested_at_ms.is_some() => add_units(&mut order.cancelled_unfilled, &lines),
                    Some((AfterSiteCancel::Cancel, reason, Some(part))) => {
                        // A line cancel: those units go, the rest is placed again (this site may take it).
                        let rest = minus_units(&lines, &part);
                        add_units(&mut order.cancelled_unfilled, &part);
                        cancelled_here.push((part, reason));
                        if !rest.is_empty() {
                            add_units(&mut order.unfilled, &rest);
                            if !order.avoid_sites.contains(&f.site) {
                                exclude.remove(&f.site);
                            }
                        }
                    }
                    Some((AfterSiteCancel::Cancel, reason, None)) => {
                        add_units(&mut order.cancelled_unfilled, &lines);
                        cancelled_here.push((lines, reason));
                    }
                    Some((AfterSiteCancel::Reroute, _, _)) => {
                        trigger = format!("moved away from {} by service", f.site);
                        if !order.avoid_sites.contains(&f.site) {
                            order.avoid_sites.push(f.site.clone());
                        }
                        add_units(&mut order.unfilled, &lines);
                    }
                    None => add_units(&mut order.unfilled, &lines),
                }
                changed = true;
            }
        }
        let w = self.core.db.begin_write()?;
        let mut consumed = Overlay::new();
        let mut effects = Effects::default();
        {
            let mut t = Tables::open(&w)?;
            for (lines, reason) in &cancelled_here {
                t.event(crate::events::EventDraft::lines_cancelled(&order, lines, Some(reason), now_ms))?;
            }
            for f in &gone {
                t.live.remove(f.as_str())?;
            }
            if order.wants_routing() {
                let before = order.unfilled.clone();
                let d = self.core.plan(&st, &consumed, &t, &order, sites, &exclude, now_ms)?;
                // A retry that placed nothing is not worth a record (but a person's asking is audited).
                if d.assignments.is_empty() && !changed && before == d.unfilled {
                    if let Some(actor) = by {
                        t.audit(actor, Some(id), now_ms, "nothing_placeable")?;
                        t.finish()?;
                        w.commit()?;
                    }
                    return Ok(None);
                }
                Core::record(&st, &mut consumed, &mut t, &mut order, d, trigger, now_ms, &mut effects)?;
            } else if !changed {
                if let Some(actor) = by {
                    t.audit(actor, Some(id), now_ms, "units_not_waiting")?;
                    t.finish()?;
                    w.commit()?;
                }
                return Ok(None);
            }
            Core::put_order(&mut t, &order)?;
            if let Some(actor) = by {
                t.audit(actor, Some(id), now_ms, "ok")?;
            }
            t.finish()?;
        }
        write_escrow_rows(&w, &consumed)?;
        // Nothing left to place: the order may be final (once its sites are done).
        if order.unfilled.is_empty() {
            crate::money::note_settle_due(&w, order.id.as_str(), now_ms)?;
        }
        w.commit()?;
        st.escrow.extend(consumed);
        if order.wants_routing() {
            st.open.insert(order.id.to_string());
        } else {
            st.open.remove(order.id.as_str());
        }
        Ok(Some((order, effects)))
    }

    /// Records the customer's cancellation for `actor`: units not placed are dropped at once; the sites are
    /// asked to cancel their parts (the caller writes the requests into the fulfillment documents). With
    /// `confined_to`, an order of another channel is [`IntakeError::NotFound`], as one that does not exist.
    /// The audit row (`ok`, or `order_not_found`) is written in the change's transaction; cancelling an order
    /// already being cancelled changes nothing and records the call.
    pub fn request_cancel(
        &self,
        id: &str,
        confined_to: Option<&Channel>,
        reason: Option<&str>,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<HubOrder, IntakeError> {
        let mut st = lock(&self.core.state);
        let w = self.core.db.begin_write()?;
        let found = get_order(&w.open_table(ORDERS)?, id)?;
        let Some(mut order) = found.filter(|o| confined_to.is_none_or(|c| &o.draft.channel == c)) else {
            return refuse(w, actor, id, now_ms, IntakeError::NotFound(id.to_owned()));
        };
        let changed = order.cancel_requested_at_ms.is_none();
        let mut t = Tables::open(&w)?;
        if changed {
            order.cancel_requested_at_ms = Some(now_ms);
            order.cancel_reason = reason.map(str::to_owned);
            let dropped = std::mem::take(&mut order.unfilled);
            add_units(&mut order.cancelled_unfilled, &dropped);
            Core::put_order(&mut t, &order)?;
            t.event(crate::events::EventDraft::cancelled(&order, now_ms))?;
        }
        t.audit(actor, Some(id), now_ms, "ok")?;
        t.finish()?;
        if changed {
            crate::money::note_settle_due(&w, order.id.as_str(), now_ms)?;
        }
        w.commit()?;
        if changed {
            st.open.remove(order.id.as_str());
        }
        Ok(order)
    }

    /// Cancels `lines` of order `id`: first among its units still waiting for stock (not placed at any site,
    /// so holding no reservation and no rights), which move from `unfilled` to `cancelled_unfilled` at once
    /// with the `order.lines_cancelled` event; the rest among the units of its open fulfillments (not given
    /// back, no cancel asked yet, and not in `closed`: the ones the caller saw shipped or cancelled at their
    /// site), oldest first, each asked of its site ([`SiteCancel`] with those `lines`): a site cancels a
    /// fulfillment whole, so when it confirms, those units are cancelled and the rest of its part is placed
    /// again ([`Intake::reroute`]). The caller writes the requests into the returned fulfillments' documents.
    /// More units than can be cancelled (or an order being cancelled already) is [`IntakeError::NotWaiting`],
    /// changing nothing but the audit row, which is written in the change's transaction otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn cancel_units(
        &self,
        id: &str,
        confined_to: Option<&Channel>,
        lines: &[SkuQty],
        reason: Option<&str>,
        closed: &BTreeSet<OrderId>,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<(HubOrder, Vec<OrderId>), IntakeError> {
        let mut st = lock(&self.core.state);
        let w = self.core.db.begin_write()?;
        let found = get_order(&w.open_table(ORDERS)?, id)?;
        let decided = match found.filter(|o| confined_to.is_none_or(|c| &o.draft.channel == c)) {
            None => Err(IntakeError::NotFound(id.to_owned())),
            Some(order) => take_units(order, lines, closed),
        };
        let (mut order, waiting, asks) = match decided {
            Ok(d) => d,
            Err(e) => return refuse(w, actor, id, now_ms, e),
        };
        let mut asked = Vec::new();
        for (fid, part) in asks {
            if let Some(f) = order.fulfillments.iter_mut().find(|f| f.id == fid) {
                let reason = reason.unwrap_or("units cancelled by line").to_owned();
                f.site_cancel =
                    Some(SiteCancel { at_ms: now_ms, then: AfterSiteCancel::Cancel, reason, lines: Some(part) });
                asked.push(fid);
            }
        }
        let mut t = Tables::open(&w)?;
        Core::put_order(&mut t, &order)?;
        if !waiting.is_empty() {
            t.event(crate::events::EventDraft::lines_cancelled(&order, &waiting, reason, now_ms))?;
        }
        t.audit(actor, Some(id), now_ms, "ok")?;
        t.finish()?;
        // Nothing left to place: the order may be final (once its sites are done).
        if order.unfilled.is_empty() {
            crate::money::note_settle_due(&w, order.id.as_str(), now_ms)?;
        }
        w.commit()?;
        if !order.wants_routing() {
            st.open.remove(order.id.as_str());
        }
        Ok((order, asked))
    }

    /// Asks the site of fulfillment `fulfillment` of order `id` to cancel it, for `actor` (with `confined_to`,
    /// an order of another channel is [`IntakeError::NotFound`]); once the site confirms, its units are
    /// cancelled or go back to routing away from that site, as `then` says ([`Intake::reroute`]). The caller
    /// writes the request into the fulfillment's document. A fulfillment given back already, asked already, or
    /// of an order being cancelled is [`IntakeError::FulfillmentNotOpen`]; every refusal changes nothing but
    /// its audit row, written in the same transaction as the change otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn request_site_cancel(
        &self,
        id: &str,
        fulfillment: &str,
        confined_to: Option<&Channel>,
        then: AfterSiteCancel,
        reason: &str,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<HubOrder, IntakeError> {
        let _st = lock(&self.core.state);
        let w = self.core.db.begin_write()?;
        let found = get_order(&w.open_table(ORDERS)?, id)?;
        let decided = match found.filter(|o| confined_to.is_none_or(|c| &o.draft.channel == c)) {
            None => Err(IntakeError::NotFound(id.to_owned())),
            Some(mut order) => {
                let cancelling = order.cancel_requested_at_ms.is_some();
                match order.fulfillments.iter_mut().find(|f| f.id.as_str() == fulfillment) {
                    None => Err(IntakeError::FulfillmentNotFound {
                        order: id.to_owned(),
                        fulfillment: fulfillment.to_owned(),
                    }),
                    Some(f) => {
                        let why = if cancelling {
                            Some("the whole order is being cancelled")
                        } else if f.released.is_some() {
                            Some("its site gave it back already")
                        } else if f.site_cancel.is_some() {
                            Some("a cancel was asked of its site already")
                        } else {
                            None
                        };
                        match why {
                            Some(why) => {
                                Err(IntakeError::FulfillmentNotOpen { fulfillment: fulfillment.to_owned(), why })
                            }
                            None => {
                                f.site_cancel =
                                    Some(SiteCancel { at_ms: now_ms, then, reason: reason.to_owned(), lines: None });
                                Ok(order)
                            }
                        }
                    }
                }
            }
        };
        let order = match decided {
            Ok(o) => o,
            Err(e) => return refuse(w, actor, id, now_ms, e),
        };
        let mut t = Tables::open(&w)?;
        Core::put_order(&mut t, &order)?;
        t.audit(actor, Some(id), now_ms, "ok")?;
        t.finish()?;
        w.commit()?;
        Ok(order)
    }
}
