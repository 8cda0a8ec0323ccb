//! The [`Money`] service: payment preparation, authorization at intake, settlement, recorded payments, totals.

use super::*;

/// A prepared payment for a new order: the record to write with it and the provider key of its attempt.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The record (its order id is set by the intake).
    pub payment: Payment,
    /// The provider's idempotency key of the authorization (cards).
    pub attempt_key: Option<String>,
}

/// Money at the hub: configuration, providers and the lock every money write holds.
pub struct Money {
    pub(super) cfg: PaymentsConfig,
    pub(super) tax: TaxConfig,
    pub(super) providers: BTreeMap<String, Arc<dyn PaymentProvider>>,
    /// Held by every money write transaction (billing, outbox results, refunds), so invoice numbers are
    /// allocated one transaction after another and a read-modify-write of a payment sees the last one.
    pub(super) write: Mutex<()>,
    /// Wakes the outbox.
    pub(crate) wake: tokio::sync::Notify,
}

impl Money {
    /// Money with `cfg` and `tax` (both checked), its providers built.
    pub fn new(cfg: PaymentsConfig, tax: TaxConfig) -> Result<Money, String> {
        cfg.check()?;
        tax.check()?;
        let mut providers: BTreeMap<String, Arc<dyn PaymentProvider>> = BTreeMap::new();
        providers.insert(MANUAL.into(), Arc::new(ManualProvider));
        for (name, p) in &cfg.providers {
            let inner: Arc<dyn PaymentProvider> = match p {
                ProviderConfig::Test(t) => Arc::new(TestProvider::new(t.clone(), cfg.call_timeout_ms)?),
                ProviderConfig::Stripe(s) => Arc::new(
                    stripe::StripeProvider::new(s, cfg.call_timeout_ms)
                        .map_err(|e| format!("[payments.providers.{name}] {e}"))?,
                ),
            };
            providers.insert(name.clone(), Arc::new(Bounded::new(inner, cfg.in_flight_max)));
        }
        Ok(Money { cfg, tax, providers, write: Mutex::new(()), wake: tokio::sync::Notify::new() })
    }

    /// Adds (or replaces) a provider under `name` (tests and the demo hand in their own instance).
    pub fn with_provider(mut self, name: &str, p: Arc<dyn PaymentProvider>) -> Money {
        let bounded: Arc<dyn PaymentProvider> = Arc::new(Bounded::new(p, self.cfg.in_flight_max));
        self.providers.insert(name.to_owned(), bounded);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &PaymentsConfig {
        &self.cfg
    }

    pub(crate) fn provider(&self, name: &str) -> Option<&Arc<dyn PaymentProvider>> {
        self.providers.get(name)
    }

    /// Reads the optional `payment` member of an order body: none when absent.
    pub fn payment_request(&self, body: &[u8]) -> Result<Option<PaymentRequest>, MoneyError> {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            payment: Option<serde_json::Value>,
        }
        let Ok(Body { payment }) = serde_json::from_slice::<Body>(body) else { return Ok(None) };
        let Some(v) = payment else { return Ok(None) };
        let req: PaymentRequest =
            serde_json::from_value(v).map_err(|e| MoneyError::InvalidPayment(format!("payment: {e}")))?;
        match req.method {
            Method::Card => {
                let provider = req.provider.as_deref().unwrap_or_default();
                if provider == MANUAL || !self.providers.contains_key(provider) {
                    return Err(MoneyError::InvalidPayment(format!(
                        "payment.provider: no card provider {provider:?} is configured"
                    )));
                }
                let token = req.token.as_deref().unwrap_or_default();
                if token.is_empty() || token.len() > TOKEN_BYTES_MAX || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(MoneyError::InvalidPayment(format!(
                        "payment.token must be 1 to {TOKEN_BYTES_MAX} visible ASCII characters"
                    )));
                }
            }
            Method::Terms | Method::Cod => {
                if req.provider.is_some() || req.token.is_some() {
                    return Err(MoneyError::InvalidPayment("payment: terms and cod take no provider or token".into()));
                }
            }
        }
        Ok(Some(req))
    }

    /// The payment record of a new order of `draft` (tax, totals), and the provider key its authorization
    /// uses: derived from the channel-scoped idempotency key, the body's hash and the token, so a retry of the
    /// same request gets the same authorization and a new body or card a new one.
    pub fn prepare(&self, key: &str, draft: &OrderDraft, body_sha256: &[u8; 32], req: &PaymentRequest) -> Prepared {
        let tax_bp = self.tax.rate_bp(&draft.ship_to.country, None);
        let prices = self.tax.prices;
        let lines: Vec<PricedLine> = draft
            .lines
            .iter()
            .map(|l| PricedLine { sku: l.sku.to_string(), qty: u64::from(l.qty), unit_price_minor: l.unit_price_minor })
            .collect();
        let total: i64 = lines.iter().map(|l| tax::part(l.unit_price_minor, 0, l.qty, tax_bp, prices).2).sum();
        let (provider, token) = match req.method {
            Method::Card => (req.provider.clone().unwrap_or_default(), req.token.clone()),
            Method::Terms | Method::Cod => (MANUAL.to_owned(), None),
        };
        let attempt_key = token.as_ref().map(|t| {
            let material = format!("{}\u{1f}{key}\u{1f}{}\u{1f}{t}", draft.channel, hex(body_sha256));
            format!("auth-{}", &hex(&token_hash(&material))[..40])
        });
        let payment = Payment {
            order: String::new(),
            channel: draft.channel.clone(),
            method: req.method,
            provider,
            token,
            currency: draft
                .lines
                .first()
                .map_or_else(|| Currency::parse("EUR").unwrap_or_else(|_| unreachable!()), |l| l.currency),
            tax_bp,
            prices,
            lines,
            total_minor: u64::try_from(total).unwrap_or(0),
            authorizations: Vec::new(),
            captured_minor: 0,
            refunded_minor: 0,
            invoiced: BTreeMap::new(),
            invoiced_minor: 0,
            credit_noted_minor: 0,
            invoices: Vec::new(),
            credit_notes: Vec::new(),
            void_requested: false,
            voided: false,
            release_requested: false,
            released_minor: 0,
            paid_minor: 0,
            recorded: Vec::new(),
            action_required: None,
            events: Vec::new(),
        };
        Prepared { payment, attempt_key }
    }

    /// Authorizes `prepared` for its total (blocking): commits the attempt row, calls the provider, and fills
    /// in the authorization. A decline is [`MoneyError::Declined`] and leaves nothing (the attempt row goes).
    /// Terms and COD are recorded without a call.
    pub fn authorize(&self, db: &Database, prepared: &mut Prepared, now_ms: u64) -> Result<(), MoneyError> {
        let p = &mut prepared.payment;
        let expires = now_ms.saturating_add(self.cfg.authorization_validity_ms);
        let (Some(key), Some(token)) = (prepared.attempt_key.as_deref(), p.token.clone()) else {
            p.authorizations.push(Authorization::new(MANUAL.into(), p.total_minor, now_ms, u64::MAX));
            p.event(now_ms, "authorized", p.total_minor, None);
            return Ok(());
        };
        let provider = self
            .provider(&p.provider)
            .ok_or_else(|| MoneyError::InvalidPayment(format!("no provider {:?}", p.provider)))?
            .clone();
        let attempt = Attempt {
            provider: p.provider.clone(),
            token: token.clone(),
            amount_minor: p.total_minor,
            currency: p.currency,
            at_ms: now_ms,
        };
        {
            let w = db.begin_write()?;
            w.open_table(ATTEMPTS)?.insert(key, enc(&attempt)?.as_slice())?;
            w.commit()?;
        }
        match provider.authorize(key, &token, p.total_minor, p.currency.as_str()) {
            Ok(a) => {
                p.authorizations.push(Authorization::new(a.reference, a.amount_minor, now_ms, expires));
                p.event(now_ms, "authorized", p.total_minor, None);
                Ok(())
            }
            Err(ProviderError::Declined(reason)) => {
                let w = db.begin_write()?;
                w.open_table(ATTEMPTS)?.remove(key)?;
                w.commit()?;
                Err(MoneyError::Declined(reason))
            }
            // The attempt row stays: the sweep voids whatever the provider may have authorized.
            Err(e) => Err(MoneyError::ProviderUnavailable(e.to_string())),
        }
    }

    /// Voids the authorization of an order the intake refused (blocking) and forgets its attempt. A failure
    /// leaves the attempt for the sweep.
    pub fn release(&self, db: &Database, prepared: &Prepared) -> Result<(), MoneyError> {
        let Some(key) = prepared.attempt_key.as_deref() else { return Ok(()) };
        let p = &prepared.payment;
        if let (Some(provider), Some(a)) = (self.provider(&p.provider), p.authorizations.first()) {
            provider
                .void(&a.reference, &format!("void-{key}"))
                .map_err(|e| MoneyError::ProviderUnavailable(e.to_string()))?;
        }
        let w = db.begin_write()?;
        w.open_table(ATTEMPTS)?.remove(key)?;
        w.commit()?;
        Ok(())
    }

    /// After the intake answered a replay (the key was used: the order exists) for a request that authorized
    /// `prepared`: the same request got the same authorization as the order (the same provider key), so only
    /// the attempt row goes; another card's authorization is voided. Never voids the order's own.
    pub fn settle_replay(&self, db: &Database, order: &str, prepared: &Prepared) -> Result<(), MoneyError> {
        let Some(key) = prepared.attempt_key.as_deref() else { return Ok(()) };
        let theirs = self.payment(db, order)?;
        let ours = prepared.payment.authorizations.first().map(|a| a.reference.as_str());
        let same = theirs.as_ref().is_some_and(|p| p.authorizations.iter().any(|a| Some(a.reference.as_str()) == ours));
        if !same {
            return self.release(db, prepared);
        }
        let w = db.begin_write()?;
        w.open_table(ATTEMPTS)?.remove(key)?;
        w.commit()?;
        Ok(())
    }

    /// Records `prepared` as the payment of `order` in a transaction of its own (the intake writes it in the
    /// order's own transaction instead; this is for tooling, tests and benches that hold orders apart).
    pub fn record_payment(&self, db: &Database, order: &str, prepared: Prepared) -> Result<(), MoneyError> {
        let w = db.begin_write()?;
        let authorized = NewPayments::open(&w)?.write(order, prepared.payment, prepared.attempt_key.as_deref())?;
        if let Some(event) = authorized {
            crate::events::append(&w, event).map_err(|e| MoneyError::Storage(Arc::new(e)))?;
        }
        w.commit()?;
        Ok(())
    }

    /// The payment of hub order `order`, if it has one.
    pub fn payment(&self, db: &Database, order: &str) -> Result<Option<Payment>, MoneyError> {
        let r = db.begin_read()?;
        get_json(&r.open_table(PAYMENTS)?, "payments", order)
    }

    /// Whether `order` has outbox rows (captures, refunds, voids) not settled yet.
    pub fn unsettled(&self, db: &Database, order: &str) -> Result<bool, MoneyError> {
        Ok(outbox::open_orders(&db.begin_read()?)?.contains(order))
    }

    /// Settles the authorization of an order that reached its final state (every fulfillment shipped or given
    /// back, nothing left to place): once, in one transaction, queues the void of an order nothing was invoiced
    /// for, or the release of what it will never capture (short-shipped, lines cancelled, cancelled after a
    /// partial shipment). `shipped` are the fulfillments that shipped: until each is billed (its invoice and
    /// capture row committed) nothing is queued, so the release row comes after every capture row of the
    /// order and the outbox (rows of an order strictly in order) releases only what no capture takes. Returns
    /// whether it queued.
    pub fn settle_final(&self, db: &Database, order: &str, shipped: &[&str], now_ms: u64) -> Result<bool, MoneyError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let found = get_json::<Payment>(&w.open_table(PAYMENTS)?, "payments", order)?;
        let Some(mut p) = found.filter(|p| !p.void_requested && !p.release_requested) else {
            // Nothing to settle, or settled already: the note (if any) is done with.
            if w.open_table(SETTLE_DUE)?.remove(order)?.is_some() {
                w.commit()?;
            }
            return Ok(false);
        };
        {
            let billed = w.open_table(BILLED)?;
            for f in shipped {
                if billed.get(*f)?.is_none() {
                    // Settled when that shipment is billed (the watcher bills, then asks again).
                    return Ok(false);
                }
            }
        }
        w.open_table(SETTLE_DUE)?.remove(order)?;
        let kind = if p.invoices.is_empty() {
            p.void_requested = true;
            outbox::Kind::Void
        } else {
            p.release_requested = true;
            outbox::Kind::Release
        };
        // With one open authorization, the row is made on it from the start (one commit less per release).
        let mut open = p.authorizations.iter().enumerate().filter(|(_, a)| !a.closed).map(|(i, _)| i);
        let auth = match (open.next(), open.next()) {
            (Some(i), None) => Some(i),
            _ => None,
        };
        outbox::push(&w, order, kind, 0, None, auth, now_ms)?;
        w.open_table(PAYMENTS)?.insert(order, enc(&p)?.as_slice())?;
        w.commit()?;
        self.wake.notify_one();
        Ok(true)
    }

    /// Orders noted as due to be settled ([`note_settle_due`]) and not settled yet, at most `max`, oldest
    /// first by id: what a start hands to [`crate::orders::recover`].
    pub fn settle_due(&self, db: &Database, max: usize) -> Result<Vec<String>, MoneyError> {
        let r = db.begin_read()?;
        let t = r.open_table(SETTLE_DUE)?;
        let mut out = Vec::new();
        for row in t.range::<&str>(..)?.take(max) {
            out.push(row?.0.value().to_owned());
        }
        Ok(out)
    }

    /// Records money service received for a terms or COD order (`POST /v1/orders/{id}/payments`): in one
    /// transaction the payment on the order (at most [`RECORDED_MAX`], never more than it owes: invoiced less
    /// credited less recorded), a `payment.recorded` event, the audit row and the idempotency key. The same
    /// key with the same request answers the first record (`true`: replayed); with another request,
    /// [`MoneyError::KeyReused`]. A refusal writes the audit row only.
    #[allow(clippy::too_many_arguments)]
    pub fn record_manual(
        &self,
        db: &Database,
        order: &str,
        key: &str,
        req: &ManualPaymentRequest,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<(RecordedPayment, bool), MoneyError> {
        let hash = hex(&token_hash(&serde_json::to_string(req).map_err(|e| storage_enc("a payment", e))?));
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let slot = format!("{order}\u{1f}{key}");
        let decided = self.decide_manual(&w, order, &slot, &hash, req);
        let mut p = match decided {
            Ok(Ok(p)) => p,
            Ok(Err(replayed)) => return Ok((replayed, true)),
            Err(e) => {
                if !matches!(e, MoneyError::Storage(_)) {
                    audit::append(&mut w.open_table(AUDIT)?, actor, Some(order), now_ms, e.code())?;
                    w.commit()?;
                }
                return Err(e);
            }
        };
        let rec = RecordedPayment {
            id: format!("{order}-P{}", p.recorded.len() + 1),
            amount_minor: req.amount_minor,
            method: req.method,
            reference: req.reference.trim().to_owned(),
            reason: req.reason.trim().to_owned(),
            recorded_by: actor.key.clone(),
            at_ms: now_ms,
        };
        p.paid_minor += rec.amount_minor;
        p.recorded.push(rec.clone());
        p.event(now_ms, "recorded", rec.amount_minor, Some(&rec.id));
        let k = RecordedKey { body_sha256: hash, id: rec.id.clone() };
        w.open_table(RECORDED_KEYS)?.insert(slot.as_str(), enc(&k)?.as_slice())?;
        w.open_table(PAYMENTS)?.insert(order, enc(&p)?.as_slice())?;
        payment_event(&w, crate::events::PAYMENT_RECORDED, &p, rec.amount_minor, Some(&rec.id), None)?;
        audit::append(&mut w.open_table(AUDIT)?, actor, Some(order), now_ms, "ok")?;
        w.commit()?;
        Ok((rec, false))
    }

    /// Reads and checks a recorded payment: the payment to add it to, or the record a replay answers with.
    fn decide_manual(
        &self,
        w: &redb::WriteTransaction,
        order: &str,
        slot: &str,
        hash: &str,
        req: &ManualPaymentRequest,
    ) -> Result<Result<Payment, RecordedPayment>, MoneyError> {
        let not_found = || MoneyError::NotFound { what: "paid order", id: order.to_owned() };
        let p: Payment = get_json(&w.open_table(PAYMENTS)?, "payments", order)?.ok_or_else(not_found)?;
        if let Some(k) = get_json::<RecordedKey>(&w.open_table(RECORDED_KEYS)?, "payments_recorded_keys", slot)? {
            if k.body_sha256 != hash {
                return Err(MoneyError::KeyReused(order.to_owned()));
            }
            return match p.recorded.iter().find(|r| r.id == k.id) {
                Some(r) => Ok(Err(r.clone())),
                None => Err(MoneyError::Corrupt { table: "payments", detail: format!("{} is missing", k.id) }),
            };
        }
        let text = |what: &str, v: &str, max: usize| {
            let v = v.trim();
            if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
                Err(MoneyError::InvalidPayment(format!(
                    "{what} is required: 1 to {max} bytes without control characters"
                )))
            } else {
                Ok(())
            }
        };
        text("reference", &req.reference, PAYMENT_REFERENCE_BYTES_MAX)?;
        text("reason", &req.reason, TEXT_BYTES_MAX)?;
        if req.amount_minor == 0 {
            return Err(MoneyError::InvalidPayment("amount_minor must be positive".into()));
        }
        if p.method == Method::Card {
            return Err(MoneyError::NotManual(order.to_owned()));
        }
        if p.recorded.len() >= RECORDED_MAX {
            return Err(MoneyError::TooManyPayments(order.to_owned()));
        }
        let owed = p.outstanding_minor();
        if req.amount_minor > owed {
            return Err(MoneyError::Overpayment(format!(
                "order {order} owes {owed} {} (invoiced {}, credited {}, paid {}), not {}",
                p.currency, p.invoiced_minor, p.credit_noted_minor, p.paid_minor, req.amount_minor
            )));
        }
        Ok(Ok(p))
    }

    /// The documents, payments and outbox figures over every order (bounded by the number of paid orders the
    /// hub holds; the demo and `/v1/payments/summary` use it).
    pub fn totals(&self, db: &Database) -> Result<MoneyTotals, MoneyError> {
        let r = db.begin_read()?;
        let mut t = MoneyTotals::default();
        let open = outbox::open_orders(&r)?;
        for item in r.open_table(PAYMENTS)?.range::<&str>(..)? {
            let (k, v) = item?;
            let p: Payment = dec("payments", v.value())?;
            t.payments += 1;
            t.authorized_minor += p.authorized_minor();
            t.captured_minor += p.captured_minor;
            t.invoiced_minor += p.invoiced_minor;
            t.credit_noted_minor += p.credit_noted_minor;
            t.refunded_minor += p.refunded_minor;
            t.released_minor += p.released_minor;
            t.held_minor += p.held_minor();
            t.paid_minor += p.paid_minor;
            t.payments_recorded += p.recorded.len() as u64;
            t.invoices += p.invoices.len() as u64;
            t.credit_notes += p.credit_notes.len() as u64;
            let settled = !open.contains(k.value());
            if p.captured_minor > p.authorized_minor() {
                t.payment_mismatches += 1;
            }
            if settled && p.invoiced_minor != p.captured_minor {
                t.payment_mismatches += 1;
            }
            if settled && p.credit_noted_minor != p.refunded_minor {
                t.payment_mismatches += 1;
            }
            // Authorized = captured + released + still held, per authorization and over the payment.
            let per_auth = p.authorizations.iter().any(|a| {
                a.captured_minor > a.amount_minor
                    || (a.closed && a.captured_minor + a.released_minor != a.amount_minor)
                    || (!a.closed && a.released_minor != 0)
            });
            if per_auth || p.authorized_minor() != p.captured_minor + p.released_minor + p.held_minor() {
                t.payment_mismatches += 1;
            }
            // A final order holds nothing once its release settled; recorded payments never exceed what is owed.
            if settled && (p.release_requested || p.voided) && p.held_minor() != 0 {
                t.payment_mismatches += 1;
            }
            if p.paid_minor > p.invoiced_minor.saturating_sub(p.credit_noted_minor)
                || p.paid_minor != p.recorded.iter().map(|r| r.amount_minor).sum::<u64>()
            {
                t.payment_mismatches += 1;
            }
        }
        t.outbox_open = r.open_table(outbox::OUTBOX_OPEN)?.len()?;
        t.action_required = r.open_table(ACTION)?.len()?;
        Ok(t)
    }
}
