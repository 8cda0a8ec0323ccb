//! Suppliers, purchase orders, ASNs and the sending outbox in `intake.redb`. Every change reads and checks
//! everything first, then writes, with its audit row, in one durable transaction: a refusal writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use oms_protocol::domain::{AsnId, NodeId, PurchaseOrderId, Sku, SupplierId, ValidationError};
use oms_service::audit::{self, AUDIT, Actor};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::model::{
    ASNS_PER_PO_MAX, Asn, AsnLine, PO_LINES_MAX, PoLine, PoState, PoStep, PurchaseOrder, QTY_MAX, Supplier,
    SupplierInput, SupplierSku,
};
use super::{Purchasing, PurchasingError};

/// Supplier id → [`Supplier`] (JSON).
const SUPPLIERS: TableDefinition<&str, &[u8]> = TableDefinition::new("suppliers");
/// PO id → [`PurchaseOrder`] (JSON).
const POS: TableDefinition<&str, &[u8]> = TableDefinition::new("purchase_orders");
/// PO ids of open orders (what counts as on order): bounded scans for the replenishment.
const POS_OPEN: TableDefinition<&str, ()> = TableDefinition::new("purchase_orders_open");
/// Idempotency key of a `POST /v1/purchase-orders` → [`KeyRecord`] (JSON).
const PO_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("purchase_order_keys");
/// ASN id → [`Asn`] (JSON).
const ASNS: TableDefinition<&str, &[u8]> = TableDefinition::new("asns");
/// Receipt id (from a site) → PO id: each receipt advances its order once.
const RECEIPTS_APPLIED: TableDefinition<&str, &str> = TableDefinition::new("po_receipts_applied");
/// Counters: PO numbers, outbox rows.
const PO_META: TableDefinition<&str, u64> = TableDefinition::new("purchasing_meta");
/// Outbox row id → [`SendRow`] (JSON).
pub(super) const PO_SENDS: TableDefinition<u64, &[u8]> = TableDefinition::new("purchase_order_sends");
/// Row ids not settled.
pub(super) const PO_SENDS_OPEN: TableDefinition<u64, ()> = TableDefinition::new("purchase_order_sends_open");

/// Most suppliers held.
pub const SUPPLIERS_MAX: u64 = 10_000;
/// Most purchase orders open at once (the on-order scan reads them all).
pub const POS_OPEN_MAX: u64 = 20_000;
/// Largest page of a listing.
pub const PAGE_MAX: usize = 1_000;

/// What an idempotency key of a PO create remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyRecord {
    po: String,
    body_sha256: String,
}

/// One row of the sending outbox: a purchase order to deliver to its supplier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRow {
    /// Row id.
    pub id: u64,
    /// The order.
    pub po: PurchaseOrderId,
    /// The idempotency key every attempt carries.
    pub key: String,
    /// Failed attempts.
    pub attempts: u32,
    /// Not before, ms.
    pub next_at_ms: u64,
    /// `pending`, `delivered`, `failed`.
    pub status: String,
    /// The last failure.
    pub last_error: Option<String>,
}

/// A PO line as asked for (explicit lines, or what the replenishment computed).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineInput {
    /// SKU.
    pub sku: Sku,
    /// Units.
    pub qty: u64,
}

/// A purchase order to create, after the HTTP layer resolved it.
#[derive(Debug, Clone)]
pub struct NewPo {
    /// Supplier.
    pub supplier: SupplierId,
    /// Destination.
    pub site: NodeId,
    /// Expected arrival (epoch day); the supplier's lead time from today when `None`.
    pub expected_day: Option<u64>,
    /// Lines.
    pub lines: Vec<LineInput>,
    /// `lines` or `replenishment`.
    pub origin: &'static str,
    /// Whether the quantities must already respect MOQ and multiples (explicit lines).
    pub strict_terms: bool,
}

/// An ASN to record.
#[derive(Debug, Clone)]
pub struct NewAsn {
    /// The purchase order.
    pub po: String,
    /// Its id.
    pub id: AsnId,
    /// Lines.
    pub lines: Vec<AsnLine>,
    /// Expected arrival (epoch day); the order's when `None`.
    pub expected_day: Option<u64>,
}

/// What open purchase orders will bring to one SKU at one site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnOrder {
    /// Units ordered and not received or short-closed.
    pub qty: u64,
    /// Expected arrival days (epoch days), distinct, earliest first.
    pub expected_days: BTreeSet<u64>,
    /// The orders.
    pub pos: BTreeSet<String>,
}

/// Open PO quantities per (SKU, site).
pub type OnOrderIndex = BTreeMap<(String, String), OnOrder>;

pub(super) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, PurchasingError> {
    serde_json::to_vec(v).map_err(|e| PurchasingError::Corrupt { table: "encode", detail: e.to_string() })
}

fn dec<T: for<'de> Deserialize<'de>>(table: &'static str, b: &[u8]) -> Result<T, PurchasingError> {
    serde_json::from_slice(b).map_err(|e| PurchasingError::Corrupt { table, detail: e.to_string() })
}

fn get<T: for<'de> Deserialize<'de>>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    table: &'static str,
    key: &str,
) -> Result<Option<T>, PurchasingError> {
    t.get(key)?.map(|v| dec(table, v.value())).transpose()
}

fn put<T: Serialize>(
    t: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: &str,
    v: &T,
) -> Result<(), PurchasingError> {
    t.insert(key, enc(v)?.as_slice())?;
    Ok(())
}

fn next(w: &redb::WriteTransaction, name: &str) -> Result<u64, PurchasingError> {
    let mut meta = w.open_table(PO_META)?;
    let n = meta.get(name)?.map_or(0, |v| v.value()) + 1;
    meta.insert(name, n)?;
    Ok(n)
}

fn audited(w: &redb::WriteTransaction, actor: &Actor, target: &str, now: u64) -> Result<(), PurchasingError> {
    audit::append(&mut w.open_table(AUDIT)?, actor, Some(target), now, "ok")?;
    Ok(())
}

/// Commits `w` durably (redb's default durability, `Immediate`: fsync before the answer).
fn commit(w: redb::WriteTransaction) -> Result<(), PurchasingError> {
    w.commit()?;
    Ok(())
}

fn invalid(code: &'static str, field: impl Into<String>, msg: impl Into<String>) -> PurchasingError {
    PurchasingError::Invalid(ValidationError::new(code, field, msg))
}

/// `PO_META` key: units received against orders, in total.
const UNITS_RECEIVED: &str = "units.received";

/// `PO_META` key of the number of orders in state `s`.
fn state_key(s: PoState) -> String {
    format!("state.{}", s.as_str())
}

/// Creates the tables, so that reads before the first write find them.
pub(super) fn init(db: &Database) -> Result<(), PurchasingError> {
    let w = db.begin_write()?;
    w.open_table(SUPPLIERS)?;
    w.open_table(POS)?;
    w.open_table(POS_OPEN)?;
    w.open_table(PO_KEYS)?;
    w.open_table(ASNS)?;
    w.open_table(RECEIPTS_APPLIED)?;
    w.open_table(PO_META)?;
    w.open_table(PO_SENDS)?;
    w.open_table(PO_SENDS_OPEN)?;
    commit(w)
}

/// What `PUT /v1/suppliers/{id}` did.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    /// The supplier now.
    pub supplier: Supplier,
    /// Whether it is new.
    pub created: bool,
    /// The webhook secret, when this call made it (shown once).
    pub new_secret: Option<String>,
}

impl Purchasing {
    /// Creates or replaces supplier `id` (its webhook secret is kept while it keeps a webhook channel).
    pub fn put_supplier(
        &self,
        db: &Database,
        id: &SupplierId,
        input: SupplierInput,
        actor: &Actor,
        now: u64,
    ) -> Result<PutOutcome, PurchasingError> {
        let out = self.put_suppliers(db, vec![(id.clone(), input)], false, actor, now)?;
        out.into_iter()
            .next()
            .ok_or_else(|| PurchasingError::Corrupt { table: "suppliers", detail: "no outcome".into() })
    }

    /// Creates or replaces several suppliers in one transaction (the CSV import), after checking them all;
    /// with `keep_channel`, a supplier that exists keeps its channel (the CSV names none).
    pub fn put_suppliers(
        &self,
        db: &Database,
        inputs: Vec<(SupplierId, SupplierInput)>,
        keep_channel: bool,
        actor: &Actor,
        now: u64,
    ) -> Result<Vec<PutOutcome>, PurchasingError> {
        for (_, input) in &inputs {
            input.validate().map_err(PurchasingError::Invalid)?;
            if let super::model::ChannelSpec::Webhook { url } = &input.channel {
                crate::events::webhooks::validate_url(url, self.cfg.allow_private_addresses)
                    .map_err(|e| invalid("invalid_url", "channel.url", e))?;
            }
        }
        let w = db.begin_write()?;
        let mut out = Vec::with_capacity(inputs.len());
        {
            let mut t = w.open_table(SUPPLIERS)?;
            let mut held = t.len()?;
            for (id, input) in inputs {
                let old: Option<Supplier> = get(&t, "suppliers", id.as_str())?;
                if old.is_none() {
                    if held >= SUPPLIERS_MAX {
                        return Err(PurchasingError::Limit("too_many_suppliers", format!("at most {SUPPLIERS_MAX}")));
                    }
                    held += 1;
                }
                let channel = match (&old, keep_channel) {
                    (Some(o), true) => o.channel.clone(),
                    _ => input.channel,
                };
                let webhook = matches!(channel, super::model::ChannelSpec::Webhook { .. });
                let kept = old.as_ref().and_then(|o| o.webhook_secret.clone()).filter(|_| webhook);
                let new_secret = (webhook && kept.is_none()).then(|| {
                    let bytes: [u8; 32] = rand::random();
                    format!("whsec_{}", oms_service::auth::keys::hex(&bytes))
                });
                let supplier = Supplier {
                    id: id.clone(),
                    name: input.name,
                    contact: input.contact,
                    currency: input.currency,
                    lead_time_days: input.lead_time_days,
                    skus: input.skus,
                    channel,
                    webhook_secret: kept.or_else(|| new_secret.clone()),
                    updated_at_ms: now,
                };
                put(&mut t, id.as_str(), &supplier)?;
                out.push(PutOutcome { supplier, created: old.is_none(), new_secret });
            }
        }
        {
            let mut a = w.open_table(AUDIT)?;
            for o in &out {
                audit::append(&mut a, actor, Some(o.supplier.id.as_str()), now, "ok")?;
            }
        }
        commit(w)?;
        self.bump();
        Ok(out)
    }

    /// One supplier.
    pub fn supplier(&self, db: &Database, id: &str) -> Result<Option<Supplier>, PurchasingError> {
        get(&db.begin_read()?.open_table(SUPPLIERS)?, "suppliers", id)
    }

    /// Suppliers after `after` (by id), at most `limit`.
    pub fn suppliers(&self, db: &Database, after: &str, limit: usize) -> Result<Vec<Supplier>, PurchasingError> {
        let r = db.begin_read()?;
        let t = r.open_table(SUPPLIERS)?;
        let mut out = Vec::new();
        for item in t.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))? {
            if out.len() >= limit.min(PAGE_MAX) {
                break;
            }
            out.push(dec("suppliers", item?.1.value())?);
        }
        Ok(out)
    }

    /// Every supplier's terms for each SKU: the cheapest offer (then the lowest supplier id) wins.
    pub fn offers(&self, db: &Database) -> Result<BTreeMap<String, (Supplier, SupplierSku)>, PurchasingError> {
        let r = db.begin_read()?;
        let mut out: BTreeMap<String, (Supplier, SupplierSku)> = BTreeMap::new();
        for item in r.open_table(SUPPLIERS)?.iter()? {
            let s: Supplier = dec("suppliers", item?.1.value())?;
            for (sku, terms) in &s.skus {
                let better = out.get(sku.as_str()).is_none_or(|(_, t)| terms.cost_minor < t.cost_minor);
                if better {
                    out.insert(sku.as_str().to_owned(), (s.clone(), terms.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Creates a draft purchase order. With an idempotency key, the same key and body answer the first
    /// order (`replayed`); the same key with another body is `idempotency_key_reused`.
    pub fn create_po(
        &self,
        db: &Database,
        new: NewPo,
        key: Option<(&str, &[u8])>,
        actor: &Actor,
        now: u64,
    ) -> Result<(PurchaseOrder, bool), PurchasingError> {
        let key = key.map(|(k, body)| (k, oms_service::auth::keys::hex(&sha2::Sha256::digest(body))));
        let w = db.begin_write()?;
        if let Some((k, hash)) = &key {
            let found: Option<KeyRecord> = get(&w.open_table(PO_KEYS)?, "purchase_order_keys", k)?;
            if let Some(rec) = found {
                if &rec.body_sha256 != hash {
                    return Err(PurchasingError::KeyReused);
                }
                let po = get(&w.open_table(POS)?, "purchase_orders", &rec.po)?
                    .ok_or_else(|| PurchasingError::Corrupt { table: "purchase_order_keys", detail: rec.po })?;
                return Ok((po, true));
            }
        }
        let supplier: Supplier = get(&w.open_table(SUPPLIERS)?, "suppliers", new.supplier.as_str())?
            .ok_or_else(|| PurchasingError::SupplierNotFound(new.supplier.to_string()))?;
        if new.lines.is_empty() {
            return Err(PurchasingError::NothingToOrder);
        }
        if new.lines.len() > PO_LINES_MAX {
            return Err(invalid("too_many_lines", "lines", format!("at most {PO_LINES_MAX} lines")));
        }
        let mut seen = BTreeSet::new();
        let mut lines = Vec::with_capacity(new.lines.len());
        for (i, l) in new.lines.iter().enumerate() {
            let field = format!("lines[{i}]");
            if !seen.insert(l.sku.clone()) {
                return Err(invalid("duplicate_line", format!("{field}.sku"), format!("{} is on two lines", l.sku)));
            }
            let terms = supplier.skus.get(&l.sku).ok_or_else(|| {
                invalid("sku_not_offered", format!("{field}.sku"), format!("{} does not offer {}", supplier.id, l.sku))
            })?;
            if !(1..=QTY_MAX).contains(&l.qty) {
                return Err(invalid("invalid_quantity", format!("{field}.qty"), format!("must be 1 ..= {QTY_MAX}")));
            }
            if new.strict_terms && l.qty < terms.moq {
                return Err(invalid(
                    "below_moq",
                    format!("{field}.qty"),
                    format!("the minimum order is {}", terms.moq),
                ));
            }
            if new.strict_terms && l.qty % terms.order_multiple != 0 {
                return Err(invalid(
                    "not_order_multiple",
                    format!("{field}.qty"),
                    format!("must be a multiple of {}", terms.order_multiple),
                ));
            }
            lines.push(PoLine {
                line: u32::try_from(i + 1).unwrap_or(u32::MAX),
                sku: l.sku.clone(),
                supplier_sku: terms.supplier_sku.clone(),
                ordered: l.qty,
                received: 0,
                short_closed: 0,
                cost_minor: terms.cost_minor,
            });
        }
        if w.open_table(POS_OPEN)?.len()? >= POS_OPEN_MAX {
            return Err(PurchasingError::Limit("too_many_open_orders", format!("at most {POS_OPEN_MAX} open")));
        }
        let n = next(&w, "seq.po")?;
        let id = PurchaseOrderId::parse(&format!("PO-{n:06}")).map_err(PurchasingError::Invalid)?;
        let expected_day = new.expected_day.unwrap_or(now / crate::demand::DAY_MS + u64::from(supplier.lead_time_days));
        let po = PurchaseOrder {
            id: id.clone(),
            supplier: supplier.id.clone(),
            site: new.site,
            currency: supplier.currency,
            state: PoState::Draft,
            expected_day,
            lines,
            asns: Vec::new(),
            origin: new.origin.to_owned(),
            created_at_ms: now,
            history: vec![super::model::PoEvent { state: PoState::Draft, at_ms: now }],
            send_status: "not_sent".into(),
            send_key: None,
        };
        Self::save_in(&w, &po, None)?;
        if let Some((k, hash)) = &key {
            put(&mut w.open_table(PO_KEYS)?, k, &KeyRecord { po: id.to_string(), body_sha256: hash.clone() })?;
        }
        audited(&w, actor, id.as_str(), now)?;
        commit(w)?;
        self.bump();
        Ok((po, false))
    }

    /// One purchase order.
    pub fn po(&self, db: &Database, id: &str) -> Result<Option<PurchaseOrder>, PurchasingError> {
        get(&db.begin_read()?.open_table(POS)?, "purchase_orders", id)
    }

    /// Purchase orders after `after` (by id), optionally in one state and of one supplier, at most `limit`.
    pub fn pos(
        &self,
        db: &Database,
        state: Option<PoState>,
        supplier: Option<&SupplierId>,
        after: &str,
        limit: usize,
    ) -> Result<Vec<PurchaseOrder>, PurchasingError> {
        let r = db.begin_read()?;
        let t = r.open_table(POS)?;
        let mut out = Vec::new();
        // A state or supplier filter may skip rows; the scan is bounded all the same (20 pages' worth).
        for (scanned, item) in
            t.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?.enumerate()
        {
            if out.len() >= limit.min(PAGE_MAX) || scanned >= 20 * PAGE_MAX {
                break;
            }
            let po: PurchaseOrder = dec("purchase_orders", item?.1.value())?;
            if state.is_none_or(|s| s == po.state) && supplier.is_none_or(|s| s == &po.supplier) {
                out.push(po);
            }
        }
        Ok(out)
    }

    /// Purchase orders per state (counters kept with every change of state).
    pub fn counts(&self, db: &Database) -> Result<BTreeMap<&'static str, u64>, PurchasingError> {
        let r = db.begin_read()?;
        let meta = r.open_table(PO_META)?;
        let mut out = BTreeMap::new();
        for s in PoState::ALL {
            out.insert(s.as_str(), meta.get(state_key(s).as_str())?.map_or(0, |v| v.value()));
        }
        Ok(out)
    }

    /// Units received against every order, and units still open on open orders.
    pub fn units(&self, db: &Database) -> Result<(u64, u64), PurchasingError> {
        let received = db.begin_read()?.open_table(PO_META)?.get(UNITS_RECEIVED)?.map_or(0, |v| v.value());
        let open = self.on_order(db)?.values().map(|o| o.qty).fold(0, u64::saturating_add);
        Ok((received, open))
    }

    /// Reads PO `id` in `w`, or `purchase_order_not_found`.
    fn po_in(w: &redb::WriteTransaction, id: &str) -> Result<PurchaseOrder, PurchasingError> {
        get(&w.open_table(POS)?, "purchase_orders", id)?.ok_or_else(|| PurchasingError::PoNotFound(id.to_owned()))
    }

    /// Writes `po` in `w`, which was in state `was` (`None`: new), keeping the index of open orders and the
    /// counters per state.
    fn save_in(w: &redb::WriteTransaction, po: &PurchaseOrder, was: Option<PoState>) -> Result<(), PurchasingError> {
        put(&mut w.open_table(POS)?, po.id.as_str(), po)?;
        if was != Some(po.state) {
            let mut meta = w.open_table(PO_META)?;
            if let Some(was) = was {
                let n = meta.get(state_key(was).as_str())?.map_or(0, |v| v.value());
                meta.insert(state_key(was).as_str(), n.saturating_sub(1))?;
            }
            let n = meta.get(state_key(po.state).as_str())?.map_or(0, |v| v.value());
            meta.insert(state_key(po.state).as_str(), n + 1)?;
        }
        let mut open = w.open_table(POS_OPEN)?;
        if po.state.open() {
            open.insert(po.id.as_str(), ())?;
        } else {
            open.remove(po.id.as_str())?;
        }
        Ok(())
    }

    /// `send`, `confirm` or `cancel`. Sending writes the outbox row in the same transaction; the outbox
    /// delivers it ([`super::channel`]).
    pub fn step(
        &self,
        db: &Database,
        id: &str,
        step: PoStep,
        actor: &Actor,
        now: u64,
    ) -> Result<PurchaseOrder, PurchasingError> {
        let w = db.begin_write()?;
        let mut po = Self::po_in(&w, id)?;
        let was = po.state;
        po.step(step, now).map_err(PurchasingError::Transition)?;
        if step == PoStep::Send {
            let row = next(&w, "seq.send")?;
            let key = format!("po-send-{}", po.id);
            let send = SendRow {
                id: row,
                po: po.id.clone(),
                key: key.clone(),
                attempts: 0,
                next_at_ms: 0,
                status: "pending".into(),
                last_error: None,
            };
            w.open_table(PO_SENDS)?.insert(row, enc(&send)?.as_slice())?;
            w.open_table(PO_SENDS_OPEN)?.insert(row, ())?;
            po.send_status = "pending".into();
            po.send_key = Some(key);
        }
        Self::save_in(&w, &po, Some(was))?;
        audited(&w, actor, id, now)?;
        commit(w)?;
        self.bump();
        Ok(po)
    }

    /// Short-closes what is still open of line `n`: it will never come.
    pub fn close_line(
        &self,
        db: &Database,
        id: &str,
        n: u32,
        actor: &Actor,
        now: u64,
    ) -> Result<PurchaseOrder, PurchasingError> {
        let w = db.begin_write()?;
        let mut po = Self::po_in(&w, id)?;
        if !po.state.receivable() {
            return Err(PurchasingError::NotReceivable { po: id.to_owned(), state: po.state });
        }
        let line = po.line_mut(n).ok_or(PurchasingError::LineNotFound(n))?;
        let open = line.open_qty();
        if open == 0 {
            return Err(PurchasingError::LineSettled(n));
        }
        line.short_closed += open;
        let was = po.state;
        po.settle(now);
        Self::save_in(&w, &po, Some(was))?;
        audited(&w, actor, id, now)?;
        commit(w)?;
        self.bump();
        Ok(po)
    }

    /// Records ASN `id` against PO `po`. The same id with the same lines answers the first (`replayed`);
    /// with other lines, or another order, it is `asn_conflict`. Returns the ASN and the order.
    pub fn record_asn(
        &self,
        db: &Database,
        new: NewAsn,
        actor: &Actor,
        now: u64,
    ) -> Result<(Asn, PurchaseOrder, bool), PurchasingError> {
        let w = db.begin_write()?;
        let out = Self::record_asn_in(&w, &new, actor, now)?;
        commit(w)?;
        self.bump();
        Ok(out)
    }

    /// Records several ASNs (the CSV import) in one transaction: all of them, or, at the first refusal,
    /// none (the error names the refused ASN's first row, `rows[i]` being the row of `asns[i]`).
    pub fn record_asns(
        &self,
        db: &Database,
        asns: Vec<(u64, NewAsn)>,
        actor: &Actor,
        now: u64,
    ) -> Result<Vec<(Asn, bool)>, PurchasingError> {
        let w = db.begin_write()?;
        let mut out = Vec::with_capacity(asns.len());
        for (line, new) in &asns {
            let (asn, _, replayed) = Self::record_asn_in(&w, new, actor, now).map_err(|e| {
                PurchasingError::Csv(vec![super::http::RowError { line: *line, code: e.code(), detail: e.to_string() }])
            })?;
            out.push((asn, replayed));
        }
        commit(w)?;
        self.bump();
        Ok(out)
    }

    fn record_asn_in(
        w: &redb::WriteTransaction,
        new: &NewAsn,
        actor: &Actor,
        now: u64,
    ) -> Result<(Asn, PurchaseOrder, bool), PurchasingError> {
        let (po_id, id, lines) = (new.po.as_str(), &new.id, &new.lines);
        let mut po = Self::po_in(w, po_id)?;
        let found: Option<Asn> = get(&w.open_table(ASNS)?, "asns", id.as_str())?;
        if let Some(asn) = found {
            if asn.po == po.id && &asn.lines == lines {
                return Ok((asn, po, true));
            }
            return Err(PurchasingError::AsnConflict(id.to_string()));
        }
        if !po.state.receivable() {
            return Err(PurchasingError::NotReceivable { po: po_id.to_owned(), state: po.state });
        }
        if lines.is_empty() || lines.len() > PO_LINES_MAX {
            return Err(invalid("invalid_lines", "lines", format!("1 ..= {PO_LINES_MAX} lines")));
        }
        if po.asns.len() >= ASNS_PER_PO_MAX {
            return Err(PurchasingError::Limit("too_many_asns", format!("at most {ASNS_PER_PO_MAX} per order")));
        }
        let mut seen = BTreeSet::new();
        for (i, l) in lines.iter().enumerate() {
            let Some(pl) = po.lines.iter().find(|p| p.line == l.line) else {
                return Err(invalid("unknown_line", format!("lines[{i}].line"), format!("no line {}", l.line)));
            };
            if !seen.insert(l.line) {
                return Err(invalid("duplicate_line", format!("lines[{i}].line"), "each line once"));
            }
            if !(1..=QTY_MAX).contains(&l.qty) || l.qty > pl.ordered {
                return Err(invalid(
                    "invalid_quantity",
                    format!("lines[{i}].qty"),
                    format!("must be 1 ..= the {} ordered", pl.ordered),
                ));
            }
        }
        let asn = Asn {
            id: id.clone(),
            po: po.id.clone(),
            site: po.site.clone(),
            lines: lines.clone(),
            expected_day: new.expected_day.unwrap_or(po.expected_day),
            created_at_ms: now,
        };
        put(&mut w.open_table(ASNS)?, id.as_str(), &asn)?;
        po.asns.push(id.clone());
        Self::save_in(w, &po, Some(po.state))?;
        audited(w, actor, id.as_str(), now)?;
        Ok((asn, po, false))
    }

    /// One ASN.
    pub fn asn(&self, db: &Database, id: &str) -> Result<Option<Asn>, PurchasingError> {
        get(&db.begin_read()?.open_table(ASNS)?, "asns", id)
    }

    /// Applies a site's receipt `receipt` of `(line, units)` against `po_id`, once: a receipt already
    /// applied changes nothing (false). Units beyond a line's open quantity are kept as received (a forced
    /// over-receipt); lines the order does not have are ignored (the site booked them as unplanned).
    pub fn apply_receipt(
        &self,
        db: &Database,
        receipt: &str,
        po_id: &str,
        lines: &[(u32, u64)],
        now: u64,
    ) -> Result<bool, PurchasingError> {
        let w = db.begin_write()?;
        if w.open_table(RECEIPTS_APPLIED)?.get(receipt)?.is_some() {
            return Ok(false);
        }
        let mut po = Self::po_in(&w, po_id)?;
        let was = po.state;
        let mut units = 0u64;
        for &(n, qty) in lines {
            if let Some(l) = po.line_mut(n) {
                l.received = l.received.saturating_add(qty);
                units = units.saturating_add(qty);
            }
        }
        po.settle(now);
        Self::save_in(&w, &po, Some(was))?;
        {
            let mut meta = w.open_table(PO_META)?;
            let n = meta.get(UNITS_RECEIVED)?.map_or(0, |v| v.value());
            meta.insert(UNITS_RECEIVED, n.saturating_add(units))?;
        }
        w.open_table(RECEIPTS_APPLIED)?.insert(receipt, po_id)?;
        commit(w)?;
        self.bump();
        Ok(true)
    }

    /// Whether the site receipt `receipt` was applied already (a read, so a watcher that sees it again does
    /// not open a write transaction).
    pub fn receipt_applied(&self, db: &Database, receipt: &str) -> Result<bool, PurchasingError> {
        Ok(db.begin_read()?.open_table(RECEIPTS_APPLIED)?.get(receipt)?.is_some())
    }

    /// The open orders (`draft` to `partially_received`), at most `limit` ([`POS_OPEN_MAX`] exist at most).
    pub fn open_pos(&self, db: &Database, limit: usize) -> Result<Vec<PurchaseOrder>, PurchasingError> {
        let r = db.begin_read()?;
        let pos = r.open_table(POS)?;
        let mut out = Vec::new();
        for item in r.open_table(POS_OPEN)?.iter()?.take(limit) {
            let (k, _) = item?;
            if let Some(po) = get::<PurchaseOrder>(&pos, "purchase_orders", k.value())? {
                out.push(po);
            }
        }
        Ok(out)
    }

    /// Units on order per (SKU, site) from the open orders.
    pub fn on_order(&self, db: &Database) -> Result<OnOrderIndex, PurchasingError> {
        let r = db.begin_read()?;
        let pos = r.open_table(POS)?;
        let mut out = OnOrderIndex::new();
        for item in r.open_table(POS_OPEN)?.iter()? {
            let (k, _) = item?;
            let Some(po) = get::<PurchaseOrder>(&pos, "purchase_orders", k.value())? else { continue };
            for l in &po.lines {
                let open = l.open_qty();
                if open == 0 {
                    continue;
                }
                let e = out.entry((l.sku.to_string(), po.site.to_string())).or_default();
                e.qty = e.qty.saturating_add(open);
                e.expected_days.insert(po.expected_day);
                e.pos.insert(po.id.to_string());
            }
        }
        Ok(out)
    }

    /// Sets PO `id`'s `send_status` in `w` (the outbox's outcome).
    pub(super) fn set_send_status(
        &self,
        w: &redb::WriteTransaction,
        id: &str,
        status: &str,
    ) -> Result<(), PurchasingError> {
        let mut po = Self::po_in(w, id)?;
        po.send_status = status.to_owned();
        put(&mut w.open_table(POS)?, id, &po)?;
        Ok(())
    }
}
