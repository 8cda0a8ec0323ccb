//! Invoices and credit notes: billing a shipment (its invoice and capture row, once per fulfillment), refunds
//! (a credit note and a refund row, the one path goodwill and returns share), the documents' gap-free numbers,
//! and reading them back. See the parent module's docs.

use super::*;

impl Money {
    /// Bills a shipment the watcher saw: in one transaction, once per fulfillment, the invoice for the
    /// shipped lines (`shipped`: SKU, units), its number and the capture row. Returns the invoice number (none
    /// for an order without payment, or a shipment already billed or with nothing billable).
    pub fn bill_shipment(
        &self,
        db: &Database,
        fulfillment: &str,
        order: &str,
        site: &str,
        shipped: &[(String, u64)],
        now_ms: u64,
    ) -> Result<Option<String>, MoneyError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        if w.open_table(BILLED)?.get(fulfillment)?.is_some() {
            return Ok(None);
        }
        let Some(mut p) = get_json::<Payment>(&w.open_table(PAYMENTS)?, "payments", order)? else { return Ok(None) };
        let mut lines = Vec::new();
        for (sku, qty) in shipped {
            let Some(l) = p.lines.iter().find(|l| &l.sku == sku) else { continue };
            let before = p.invoiced.get(sku).copied().unwrap_or(0);
            // Never more than was ordered, whatever a site reports.
            let qty = (*qty).min(l.qty.saturating_sub(before));
            if qty == 0 {
                continue;
            }
            let (net, tax, gross) = tax::part(l.unit_price_minor, before, qty, p.tax_bp, p.prices);
            lines.push(DocLine {
                sku: sku.clone(),
                qty,
                unit_price_minor: l.unit_price_minor,
                before,
                net_minor: net,
                tax_bp: p.tax_bp,
                tax_minor: tax,
                gross_minor: gross,
            });
        }
        if lines.is_empty() {
            w.open_table(BILLED)?.insert(fulfillment, "")?;
            w.commit()?;
            return Ok(None);
        }
        let number = next_number(&w, &self.cfg.invoice_series)?;
        let (net, tax, gross) = sums(&lines);
        for l in &lines {
            *p.invoiced.entry(l.sku.clone()).or_default() += l.qty;
        }
        let amount = u64::try_from(gross).unwrap_or(0);
        p.invoiced_minor = p.invoiced_minor.saturating_add(amount);
        p.invoices.push(number.clone());
        p.event(now_ms, "invoiced", amount, Some(&number));
        // With one authorization that covers everything invoiced so far, the capture row is made on it from
        // the start (one commit less per capture); otherwise the outbox chooses when the row's turn comes.
        let auth = match p.authorizations.as_slice() {
            [a] if !a.closed && now_ms < a.expires_at_ms && p.invoiced_minor <= a.amount_minor => Some(0),
            _ => None,
        };
        let capture_row = if amount > 0 {
            Some(outbox::push(&w, order, outbox::Kind::Capture, amount, Some(&number), auth, now_ms)?)
        } else {
            None
        };
        let inv = Invoice {
            number: number.clone(),
            order: order.to_owned(),
            channel: p.channel.clone(),
            fulfillment: fulfillment.to_owned(),
            site: site.to_owned(),
            issued_at_ms: now_ms,
            currency: p.currency,
            prices: p.prices,
            lines,
            net_minor: net,
            tax_minor: tax,
            total_minor: gross,
            capture_row,
            captured: capture_row.is_none(),
            credited_minor: 0,
            credited: BTreeMap::new(),
            credit_notes: Vec::new(),
        };
        w.open_table(INVOICES)?.insert(number.as_str(), enc(&inv)?.as_slice())?;
        w.open_table(INVOICES_BY_TIME)?.insert((now_ms, number.as_str()), ())?;
        w.open_table(BILLED)?.insert(fulfillment, number.as_str())?;
        w.open_table(PAYMENTS)?.insert(order, enc(&p)?.as_slice())?;
        // `invoice.created` for the feed and the webhooks, in the invoice's own transaction.
        if let Ok(id) = oms_protocol::domain::OrderId::parse(order) {
            let data = serde_json::json!({"invoice": number, "fulfillment": fulfillment, "site": site,
                "total_minor": gross, "tax_minor": tax, "currency": p.currency});
            let draft = crate::events::EventDraft::new("invoice.created", now_ms).order(&id, &p.channel).data(data);
            crate::events::append(&w, draft).map_err(|e| MoneyError::Storage(Arc::new(e)))?;
        }
        w.commit()?;
        self.wake.notify_one();
        Ok(Some(number))
    }

    /// The invoice of a fulfillment's shipment, if it was billed with one.
    pub fn invoice_of_fulfillment(&self, db: &Database, fulfillment: &str) -> Result<Option<String>, MoneyError> {
        let r = db.begin_read()?;
        Ok(r.open_table(BILLED)?.get(fulfillment)?.map(|v| v.value().to_owned()).filter(|n| !n.is_empty()))
    }

    /// Refunds part of a hub order: validates `req` against the order's invoices (an order of another channel
    /// than `confined_to` is not found), then in one transaction issues the credit note referencing its invoice,
    /// queues the refund in the outbox and appends the audit row. Nothing is written on a refusal but the audit
    /// row. This is the one refund path: goodwill from service and returns both call it.
    pub fn refund(
        &self,
        db: &Database,
        order: &str,
        confined_to: Option<&Channel>,
        req: &RefundRequest,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<CreditNote, MoneyError> {
        self.refund_with(db, order, confined_to, req, actor, now_ms, |_, _| Ok(()))
    }

    /// [`Money::refund`], with `also` writing the caller's own rows in the credit note's transaction (a
    /// return records its refund with it, so a crash never leaves a credit note its return does not know,
    /// and a retry never refunds twice). `also` runs only when the refund is issued; its error aborts it.
    #[allow(clippy::too_many_arguments)]
    pub fn refund_with(
        &self,
        db: &Database,
        order: &str,
        confined_to: Option<&Channel>,
        req: &RefundRequest,
        actor: &Actor,
        now_ms: u64,
        also: impl FnOnce(&redb::WriteTransaction, &CreditNote) -> Result<(), MoneyError>,
    ) -> Result<CreditNote, MoneyError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let decided = self.decide_refund(&w, order, confined_to, req);
        let (mut p, mut inv, lines) = match decided {
            Ok(d) => d,
            Err(e) => {
                if !matches!(e, MoneyError::Storage(_)) {
                    audit::append(&mut w.open_table(AUDIT)?, actor, Some(order), now_ms, e.code())?;
                    w.commit()?;
                }
                return Err(e);
            }
        };
        let number = next_number(&w, &self.cfg.credit_note_series)?;
        let (net, tax, gross) = sums(&lines);
        let amount = u64::try_from(gross).unwrap_or(0);
        let row = if amount > 0 {
            Some(outbox::push(&w, order, outbox::Kind::Refund, amount, Some(&number), None, now_ms)?)
        } else {
            None
        };
        for l in lines.iter().filter(|l| l.sku != ADJUSTMENT) {
            *inv.credited.entry(l.sku.clone()).or_default() += l.qty;
        }
        inv.credited_minor += gross;
        inv.credit_notes.push(number.clone());
        p.credit_noted_minor = p.credit_noted_minor.saturating_add(amount);
        p.credit_notes.push(number.clone());
        p.event(now_ms, "credit_noted", amount, Some(&number));
        let note = CreditNote {
            number: number.clone(),
            invoice: inv.number.clone(),
            order: order.to_owned(),
            channel: p.channel.clone(),
            issued_at_ms: now_ms,
            reason: req.reason.trim().to_owned(),
            issued_by: actor.key.clone(),
            currency: p.currency,
            lines,
            net_minor: net,
            tax_minor: tax,
            total_minor: gross,
            refund_row: row,
        };
        w.open_table(CREDIT_NOTES)?.insert(number.as_str(), enc(&note)?.as_slice())?;
        w.open_table(CREDIT_NOTES_BY_TIME)?.insert((now_ms, number.as_str()), ())?;
        w.open_table(INVOICES)?.insert(inv.number.as_str(), enc(&inv)?.as_slice())?;
        w.open_table(PAYMENTS)?.insert(order, enc(&p)?.as_slice())?;
        audit::append(&mut w.open_table(AUDIT)?, actor, Some(order), now_ms, "ok")?;
        also(&w, &note)?;
        w.commit()?;
        self.wake.notify_one();
        Ok(note)
    }

    /// Reads and checks a refund; writes nothing.
    fn decide_refund(
        &self,
        w: &redb::WriteTransaction,
        order: &str,
        confined_to: Option<&Channel>,
        req: &RefundRequest,
    ) -> Result<(Payment, Invoice, Vec<DocLine>), MoneyError> {
        let reason = req.reason.trim();
        if reason.is_empty() || reason.len() > TEXT_BYTES_MAX || reason.chars().any(char::is_control) {
            return Err(MoneyError::InvalidRefund(format!(
                "reason is required: 1 to {TEXT_BYTES_MAX} bytes without control characters"
            )));
        }
        let lines_req = match (&req.lines, req.amount_minor) {
            (Some(l), None) if !l.is_empty() && l.len() <= REFUND_LINES_MAX => Some(l),
            (None, Some(a)) if a > 0 => None,
            _ => {
                return Err(MoneyError::InvalidRefund(format!(
                    "send either lines (1 to {REFUND_LINES_MAX}) or a positive amount_minor"
                )));
            }
        };
        if let Some(lines) = lines_req {
            for (i, l) in lines.iter().enumerate() {
                if l.qty == 0 || lines[..i].iter().any(|o| o.sku == l.sku) {
                    return Err(MoneyError::InvalidRefund(format!("lines[{i}]: a positive qty, each SKU once")));
                }
            }
        }
        let not_found = || MoneyError::NotFound { what: "paid order", id: order.to_owned() };
        let p: Payment = get_json(&w.open_table(PAYMENTS)?, "payments", order)?.ok_or_else(not_found)?;
        if confined_to.is_some_and(|c| c != &p.channel) {
            return Err(not_found());
        }
        let invoices = w.open_table(INVOICES)?;
        let candidates: Vec<String> = match &req.invoice {
            Some(n) if p.invoices.contains(n) => vec![n.clone()],
            Some(n) => return Err(MoneyError::NotFound { what: "invoice", id: n.clone() }),
            None => p.invoices.clone(),
        };
        let mut last_err = MoneyError::RefundExceeds("the order has no invoice to credit".into());
        for n in candidates {
            let inv: Invoice = get_json(&invoices, "invoices", &n)?
                .ok_or_else(|| MoneyError::Corrupt { table: "invoices", detail: format!("{n} is missing") })?;
            match credit_lines(&inv, lines_req.map(Vec::as_slice), req.amount_minor) {
                Ok(lines) if !inv.captured => {
                    let _ = lines;
                    last_err = MoneyError::NotCaptured(inv.number.clone());
                }
                Ok(lines) => return Ok((p, inv, lines)),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }
}

/// The SKU of a credit note line for an amount without lines.
pub const ADJUSTMENT: &str = "adjustment";

/// The lines a refund credits on `inv`: `lines` (units of its lines not credited yet, their tax rounded as
/// the invoice's, see [`tax`]) or an `amount` (one adjustment line at the invoice's first rate); refused past
/// what the invoice has left.
fn credit_lines(inv: &Invoice, lines: Option<&[RefundLine]>, amount: Option<u64>) -> Result<Vec<DocLine>, MoneyError> {
    let left = inv.total_minor - inv.credited_minor;
    let out = match (lines, amount) {
        (Some(lines), _) => {
            let mut out = Vec::new();
            for r in lines {
                let Some(l) = inv.lines.iter().find(|l| l.sku == r.sku) else {
                    return Err(MoneyError::RefundExceeds(format!("invoice {} has no line {}", inv.number, r.sku)));
                };
                let done = inv.credited.get(&r.sku).copied().unwrap_or(0);
                if done.saturating_add(r.qty) > l.qty {
                    return Err(MoneyError::RefundExceeds(format!(
                        "invoice {} has {} of {} not credited yet, not {}",
                        inv.number,
                        l.qty - done,
                        r.sku,
                        r.qty
                    )));
                }
                let (net, tax, gross) = tax::part(l.unit_price_minor, l.before + done, r.qty, l.tax_bp, inv.prices);
                out.push(DocLine {
                    sku: r.sku.clone(),
                    qty: r.qty,
                    unit_price_minor: l.unit_price_minor,
                    before: done,
                    net_minor: net,
                    tax_bp: l.tax_bp,
                    tax_minor: tax,
                    gross_minor: gross,
                });
            }
            out
        }
        (None, Some(a)) => {
            let gross = i64::try_from(a).unwrap_or(i64::MAX);
            let bp = inv.lines.first().map_or(0, |l| l.tax_bp);
            let tax = i64::try_from(tax::line_tax(i128::from(gross), bp, Prices::Inclusive)).unwrap_or(0);
            vec![DocLine {
                sku: ADJUSTMENT.into(),
                qty: 1,
                unit_price_minor: gross,
                before: 0,
                net_minor: gross - tax,
                tax_bp: bp,
                tax_minor: tax,
                gross_minor: gross,
            }]
        }
        (None, None) => return Err(MoneyError::InvalidRefund("nothing to refund".into())),
    };
    let (_, _, gross) = sums(&out);
    if gross > left {
        return Err(MoneyError::RefundExceeds(format!(
            "invoice {} has {left} left to credit, the refund is {gross}",
            inv.number
        )));
    }
    Ok(out)
}

fn sums(lines: &[DocLine]) -> (i64, i64, i64) {
    lines.iter().fold((0, 0, 0), |(n, t, g), l| (n + l.net_minor, t + l.tax_minor, g + l.gross_minor))
}

/// The next number of `series` (in `w`: the number and the document commit together, so none is skipped).
fn next_number(w: &redb::WriteTransaction, series: &str) -> Result<String, MoneyError> {
    let mut meta = w.open_table(MONEY_META)?;
    let key = format!("seq.{series}");
    let n = meta.get(key.as_str())?.map_or(0, |v| v.value()) + 1;
    meta.insert(key.as_str(), n)?;
    Ok(format!("{series}-{n:06}"))
}

/// Documents of one kind issued within `[from, to)` ms, after `after` (a number), at most `limit`, with
/// `keep` choosing which the caller may see; and the number to continue after.
fn documents<T: for<'de> Deserialize<'de>>(
    db: &Database,
    credit_notes: bool,
    from: u64,
    to: u64,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, MoneyError> {
    let r = db.begin_read()?;
    let (by_time, docs, name) = if credit_notes {
        (r.open_table(CREDIT_NOTES_BY_TIME)?, r.open_table(CREDIT_NOTES)?, "credit_notes")
    } else {
        (r.open_table(INVOICES_BY_TIME)?, r.open_table(INVOICES)?, "invoices")
    };
    let mut out = Vec::new();
    for item in by_time.range((from, "")..(to, ""))?.take(limit.saturating_mul(4).max(limit)) {
        let (k, _) = item?;
        let (_, number) = k.value();
        if let Some(d) = get_json::<T>(&docs, name, number)?
            && keep(&d)
        {
            out.push(d);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

impl Money {
    /// Invoices issued in `[from, to)` ms visible to `confined_to` (a channel key sees its channel's only).
    pub fn invoices(
        &self,
        db: &Database,
        from: u64,
        to: u64,
        limit: usize,
        confined_to: Option<&Channel>,
    ) -> Result<Vec<Invoice>, MoneyError> {
        documents(db, false, from, to, limit.clamp(1, DOCS_PAGE_MAX), |i: &Invoice| {
            confined_to.is_none_or(|c| c == &i.channel)
        })
    }

    /// Credit notes issued in `[from, to)` ms visible to `confined_to`.
    pub fn credit_notes(
        &self,
        db: &Database,
        from: u64,
        to: u64,
        limit: usize,
        confined_to: Option<&Channel>,
    ) -> Result<Vec<CreditNote>, MoneyError> {
        documents(db, true, from, to, limit.clamp(1, DOCS_PAGE_MAX), |c: &CreditNote| {
            confined_to.is_none_or(|ch| ch == &c.channel)
        })
    }

    /// One invoice.
    pub fn invoice(&self, db: &Database, number: &str) -> Result<Option<Invoice>, MoneyError> {
        let r = db.begin_read()?;
        get_json(&r.open_table(INVOICES)?, "invoices", number)
    }

    /// One credit note.
    pub fn credit_note(&self, db: &Database, number: &str) -> Result<Option<CreditNote>, MoneyError> {
        let r = db.begin_read()?;
        get_json(&r.open_table(CREDIT_NOTES)?, "credit_notes", number)
    }

    /// Payments that need service's action, at most `limit`.
    pub fn action_required(&self, db: &Database, limit: usize) -> Result<Vec<Payment>, MoneyError> {
        let r = db.begin_read()?;
        let payments = r.open_table(PAYMENTS)?;
        let mut out = Vec::new();
        for item in r.open_table(ACTION)?.range::<&str>(..)?.take(limit.clamp(1, DOCS_PAGE_MAX)) {
            let (k, _) = item?;
            if let Some(p) = get_json(&payments, "payments", k.value())? {
                out.push(p);
            }
        }
        Ok(out)
    }
}
