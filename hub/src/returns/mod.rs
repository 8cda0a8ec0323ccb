//! Returns (RMAs) at the hub: a customer's or service's request to send units back, the approval policy,
//! the site's receipt against it, and the refund.
//!
//! **Lifecycle** ([`RmaState`]): `requested → approved | declined`; `approved → partially_received →
//! received → refunded → closed`; `cancelled` from `requested` or `approved` while nothing arrived. A request
//! is approved at once when `[returns] auto_approve` is set, otherwise by service. `refunded` means the credit
//! note is issued and the refund queued in the money outbox; `closed` follows once the outbox has settled the
//! order's rows (an order without a payment closes at `received`: there is nothing to refund).
//!
//! **Policy** (`[returns]`, [`ReturnsConfig`]): the window runs `window_days` from the fulfillment's delivery
//! as its site reported it, or from its shipment when no delivery is known (carriers without tracking);
//! `non_returnable_skus` are refused; `refund = "auto"` refunds when the last approved unit arrives, `"hold"`
//! waits for service's `POST /v1/returns/{rma}/refund` ("receive without refunding").
//!
//! **One site per RMA.** An RMA is for one fulfillment, so the units go back to the site that shipped them:
//! without `fulfillment` in the request the hub picks the one shipped fulfillment that covers every line;
//! a return spanning two sites is two requests. What may be returned of a fulfillment is what it shipped less
//! what other RMAs (not declined or cancelled) already cover.
//!
//! **Travel** ([`sites`]): an RMA past `requested` is published in the hub-owned `inbound/<site>` document
//! (under `rmas`, beside the purchase orders; see ARCHITECTURE.md for why the same document), the site
//! receives against it and its receipt comes back in its stock document (`rma_receipts`), which the hub
//! applies once per `<site>/<receipt>` id. The refund is [`crate::money::Money::refund_with`]: the credit note,
//! the outbox row and the RMA's `refunded` state commit in one transaction, so a crash never refunds twice.
//!
//! Everything is kept in `intake.redb` beside the orders and the money: tables `rmas` (JSON), `rmas_by_order`,
//! `rmas_open` (the states that still change, which the periodic pass reads) and `rma_receipts_applied`.

pub mod http;
pub mod sites;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use oms_protocol::domain::{Channel, TEXT_BYTES_MAX, ValidationError};
use oms_service::audit::{self, AUDIT, Actor};
use oms_service::lock;
use oms_service::storage::StorageError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::events::{self, EventDraft};
use crate::money::MoneyError;

/// RMA id → [`Rma`] (JSON).
const RMAS: TableDefinition<&str, &[u8]> = TableDefinition::new("rmas");
/// (order, RMA id) → (): the RMAs of an order.
const RMAS_BY_ORDER: TableDefinition<(&str, &str), ()> = TableDefinition::new("rmas_by_order");
/// RMA id → (): RMAs whose state may still change (not declined, cancelled or closed).
const RMAS_OPEN: TableDefinition<&str, ()> = TableDefinition::new("rmas_open");
/// `<site>/<receipt id>` → RMA id: the sites' receipts applied (each once).
const APPLIED: TableDefinition<&str, &str> = TableDefinition::new("rma_receipts_applied");
/// Counters: the RMA sequence.
const RETURNS_META: TableDefinition<&str, u64> = TableDefinition::new("returns_meta");
const SEQ: &str = "seq.rma";

/// RMAs per order.
pub const RMAS_PER_ORDER_MAX: usize = 100;
/// Events kept per RMA (the first is always kept).
pub const EVENTS_MAX: usize = 32;
/// Largest page of RMAs.
pub const RMAS_PAGE_MAX: usize = 1_000;
/// Most RMA rows one listing or summary reads.
pub const RMA_ROWS_READ_MAX: usize = 100_000;
/// Open RMAs the periodic pass looks at per run.
pub const OPEN_PER_PASS_MAX: usize = 1_000;
/// Most SKUs in `non_returnable_skus`.
pub const NON_RETURNABLE_MAX: usize = 10_000;
/// A day, ms.
const DAY_MS: u64 = 86_400_000;

/// When a received return is refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundPolicy {
    /// As soon as every approved unit arrived.
    Auto,
    /// When service says so (`POST /v1/returns/{rma}/refund`).
    Hold,
}

/// `[returns]`: the approval policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReturnsConfig {
    /// Days a return may be requested, from the fulfillment's delivery (from its shipment when no delivery
    /// is known). 1 ..= 3650.
    pub window_days: u32,
    /// SKUs that cannot be returned.
    pub non_returnable_skus: Vec<String>,
    /// Approve requests at once (otherwise service approves or declines each).
    pub auto_approve: bool,
    /// `auto`: refund when the last approved unit arrives; `hold`: receive without refunding, service refunds.
    pub refund: RefundPolicy,
}

impl Default for ReturnsConfig {
    fn default() -> Self {
        ReturnsConfig {
            window_days: 30,
            non_returnable_skus: Vec::new(),
            auto_approve: false,
            refund: RefundPolicy::Auto,
        }
    }
}

impl ReturnsConfig {
    /// Why the section is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=3_650).contains(&self.window_days) {
            return Err("[returns] window_days must be 1 ..= 3650".into());
        }
        if self.non_returnable_skus.len() > NON_RETURNABLE_MAX {
            return Err(format!("[returns] non_returnable_skus holds at most {NON_RETURNABLE_MAX} SKUs"));
        }
        Ok(())
    }
}

/// Where an RMA stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RmaState {
    /// Asked for; service has to approve or decline.
    Requested,
    /// Approved: the site may receive against it.
    Approved,
    /// Refused by service.
    Declined,
    /// Some approved units arrived at the site.
    PartiallyReceived,
    /// Every approved unit arrived.
    Received,
    /// Credit note issued, refund queued.
    Refunded,
    /// Refund settled (or nothing to refund).
    Closed,
    /// Withdrawn before anything arrived.
    Cancelled,
}

impl RmaState {
    /// Every state, in lifecycle order.
    pub const ALL: [RmaState; 8] = [
        RmaState::Requested,
        RmaState::Approved,
        RmaState::Declined,
        RmaState::PartiallyReceived,
        RmaState::Received,
        RmaState::Refunded,
        RmaState::Closed,
        RmaState::Cancelled,
    ];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RmaState::Requested => "requested",
            RmaState::Approved => "approved",
            RmaState::Declined => "declined",
            RmaState::PartiallyReceived => "partially_received",
            RmaState::Received => "received",
            RmaState::Refunded => "refunded",
            RmaState::Closed => "closed",
            RmaState::Cancelled => "cancelled",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<RmaState> {
        RmaState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether a site may receive units against it.
    pub fn receivable(self) -> bool {
        matches!(self, RmaState::Approved | RmaState::PartiallyReceived)
    }

    /// Whether it may still change (kept in `rmas_open`).
    pub fn open(self) -> bool {
        !matches!(self, RmaState::Declined | RmaState::Closed | RmaState::Cancelled)
    }

    /// Whether its units count against what may still be returned.
    pub fn counts(self) -> bool {
        !matches!(self, RmaState::Declined | RmaState::Cancelled)
    }
}

/// One line of an RMA.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RmaLine {
    /// SKU.
    pub sku: String,
    /// Units to return.
    pub qty: u64,
    /// Why (the customer's words).
    pub reason: String,
    /// Units the site received.
    pub received: u64,
    /// Of those, back on the shelf.
    pub restocked: u64,
    /// Of those, written off.
    pub scrapped: u64,
}

/// Something that happened to an RMA (the order's timeline shows these).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RmaEvent {
    /// When, ms.
    pub at_ms: u64,
    /// The state it moved to.
    pub state: RmaState,
    /// What happened.
    pub note: String,
}

/// A return authorization.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Rma {
    /// `RMA-<seq>`.
    pub id: String,
    /// The hub order.
    pub order: String,
    /// Its channel.
    pub channel: Channel,
    /// The fulfillment whose units come back.
    pub fulfillment: String,
    /// The site that shipped them (and receives them).
    pub site: String,
    /// Where it stands.
    pub state: RmaState,
    /// Lines.
    pub lines: Vec<RmaLine>,
    /// When it was asked for.
    pub created_at_ms: u64,
    /// Who asked (the API key's name).
    pub requested_by: String,
    /// Refund at full receipt or held for service (the policy when it was asked for).
    pub refund: RefundPolicy,
    /// Credit notes issued for it.
    pub credit_notes: Vec<String>,
    /// Refunded (credited), gross minor units.
    pub refunded_minor: u64,
    /// Units credited.
    pub refunded_units: u64,
    /// The sites' receipts applied (`<site>/<receipt>`).
    pub receipts: Vec<String>,
    /// Why the last refund attempt did not go through, if it did not.
    pub refund_error: Option<String>,
    /// Why it was declined or cancelled.
    pub reason: Option<String>,
    /// What happened (at most [`EVENTS_MAX`]).
    pub events: Vec<RmaEvent>,
}

impl Rma {
    /// Units approved.
    pub fn units(&self) -> u64 {
        self.lines.iter().map(|l| l.qty).sum()
    }

    /// Units received.
    pub fn received(&self) -> u64 {
        self.lines.iter().map(|l| l.received).sum()
    }

    fn event(&mut self, at_ms: u64, state: RmaState, note: String) {
        self.state = state;
        if self.events.len() >= EVENTS_MAX {
            self.events.remove(1);
        }
        self.events.push(RmaEvent { at_ms, state, note });
    }
}

/// Why a returns operation was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReturnsError {
    /// A field is not usable (its code names why).
    #[error("{}: {}", .0.field, .0.message)]
    Invalid(ValidationError),
    /// No such order (or not the caller's).
    #[error("order {0:?} not found")]
    OrderNotFound(String),
    /// No such RMA (or not the caller's).
    #[error("RMA {0:?} not found")]
    RmaNotFound(String),
    /// The SKU is not returnable (`[returns] non_returnable_skus`).
    #[error("{0} is not returnable")]
    NotReturnable(String),
    /// More units than were shipped less what other RMAs already cover.
    #[error(
        "{requested} units of {sku} asked for, {returnable} may still be returned (shipped less what other RMAs cover)"
    )]
    OverReturn {
        /// The SKU.
        sku: String,
        /// Units asked for.
        requested: u64,
        /// Units that may still be returned.
        returnable: u64,
    },
    /// The lines were shipped by different fulfillments: one request per fulfillment.
    #[error("the lines were shipped by different sites; send one request per fulfillment (name it in `fulfillment`)")]
    SpansFulfillments,
    /// The return window is over.
    #[error("the return window closed at {closed_at_ms} ms ({window_days} days from the {from})")]
    WindowClosed {
        /// When it closed.
        closed_at_ms: u64,
        /// The window.
        window_days: u32,
        /// `delivery` or `shipment`.
        from: &'static str,
    },
    /// The RMA's state does not allow the action.
    #[error("RMA {rma} is {}: cannot {action} it", .state.as_str())]
    WrongState {
        /// The RMA.
        rma: String,
        /// Its state.
        state: RmaState,
        /// What was asked.
        action: &'static str,
    },
    /// A bound was reached.
    #[error("{0}")]
    Limit(String),
    /// The refund was refused by money (not captured yet, nothing to credit, ...).
    #[error("{0}")]
    Money(MoneyError),
    /// Storage failed; nothing was written.
    #[error("storage failure, nothing was written: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// A stored record does not decode.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Why.
        detail: String,
    },
}

oms_service::storage_errors_from_redb!(ReturnsError);

impl From<MoneyError> for ReturnsError {
    fn from(e: MoneyError) -> Self {
        match e {
            MoneyError::Storage(s) => ReturnsError::Storage(s),
            e => ReturnsError::Money(e),
        }
    }
}

impl From<crate::intake::IntakeError> for ReturnsError {
    fn from(e: crate::intake::IntakeError) -> Self {
        ReturnsError::Storage(Arc::new(StorageError::encode("the intake's order", e)))
    }
}

impl ReturnsError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ReturnsError::Invalid(v) => v.code,
            ReturnsError::OrderNotFound(_) => "order_not_found",
            ReturnsError::RmaNotFound(_) => "rma_not_found",
            ReturnsError::NotReturnable(_) => "sku_not_returnable",
            ReturnsError::OverReturn { .. } => "over_return",
            ReturnsError::SpansFulfillments => "return_spans_fulfillments",
            ReturnsError::WindowClosed { .. } => "return_window_closed",
            ReturnsError::WrongState { .. } => "invalid_rma_state",
            ReturnsError::Limit(_) => "too_many_returns",
            ReturnsError::Money(e) => e.code(),
            ReturnsError::Storage(_) => "storage_unavailable",
            ReturnsError::Corrupt { .. } => "corrupt_record",
        }
    }
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, ReturnsError> {
    serde_json::to_vec(v).map_err(|e| ReturnsError::Storage(Arc::new(StorageError::encode("an RMA", e))))
}

fn dec(b: &[u8]) -> Result<Rma, ReturnsError> {
    serde_json::from_slice(b).map_err(|e| ReturnsError::Corrupt { table: "rmas", detail: e.to_string() })
}

/// Creates the tables (at the intake's open).
pub fn create_tables(db: &Database) -> Result<(), ReturnsError> {
    let w = db.begin_write()?;
    w.open_table(RMAS)?;
    w.open_table(RMAS_BY_ORDER)?;
    w.open_table(RMAS_OPEN)?;
    w.open_table(APPLIED)?;
    w.open_table(RETURNS_META)?;
    w.commit()?;
    Ok(())
}

/// One requested line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    /// SKU.
    pub sku: String,
    /// Units.
    pub qty: u64,
    /// Why.
    pub reason: String,
}

/// `POST /v1/orders/{id}/returns`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// Lines, each SKU once.
    pub lines: Vec<RequestLine>,
    /// The fulfillment the units were shipped by (by default the one shipped fulfillment that covers every
    /// line).
    #[serde(default)]
    pub fulfillment: Option<String>,
}

/// What a shipped fulfillment is, as its site last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    /// The fulfillment.
    pub id: String,
    /// Its site.
    pub site: String,
    /// Units shipped per SKU.
    pub units: BTreeMap<String, u64>,
    /// Units the site recorded returned per SKU (against RMAs or not), as it last reported.
    pub returned: BTreeMap<String, u64>,
    /// When it shipped, ms.
    pub shipped_at_ms: Option<u64>,
    /// When it was delivered, ms, if the site reported it.
    pub delivered_at_ms: Option<u64>,
}

/// Units of `sku` that fulfillment `f` may still take back given the order's RMAs `rmas`: what it shipped,
/// less what live RMAs cover, less what its site took back without an RMA (the site's `returned` less the
/// units the hub applied against RMAs; a receipt the hub has not applied yet makes this smaller for a
/// moment, never larger).
pub fn returnable(f: &Shipped, sku: &str, rmas: &[Rma]) -> u64 {
    let (mut covered, mut received_against_rmas) = (0u64, 0u64);
    for r in rmas.iter().filter(|r| r.fulfillment == f.id) {
        for l in r.lines.iter().filter(|l| l.sku == sku) {
            covered += if r.state.counts() { l.qty } else { 0 };
            received_against_rmas += l.received;
        }
    }
    let outside = f.returned.get(sku).copied().unwrap_or(0).saturating_sub(received_against_rmas);
    f.units.get(sku).copied().unwrap_or(0).saturating_sub(covered).saturating_sub(outside)
}

/// Totals over every RMA (`GET /v1/returns/summary`, the demo).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReturnsSummary {
    /// RMAs per state.
    pub rmas: BTreeMap<String, u64>,
    /// Units approved (RMAs past `requested`, not declined or cancelled).
    pub units_approved: u64,
    /// Units the sites reported received.
    pub units_received: u64,
    /// Of those, restocked.
    pub units_restocked: u64,
    /// Of those, scrapped.
    pub units_scrapped: u64,
    /// Refunded through credit notes, gross minor units.
    pub refunded_minor: u64,
    /// RMAs refunded whose credit notes do not credit exactly the units received, or whose credit notes' totals
    /// differ from what the RMA recorded as refunded; and RMAs with more received than approved. Must be 0.
    pub rma_mismatches: u64,
}

/// The returns' handle: the policy and the lock every RMA write holds.
#[derive(Debug, Clone)]
pub struct Returns {
    cfg: Arc<ReturnsConfig>,
    write: Arc<Mutex<()>>,
}

impl Default for Returns {
    fn default() -> Self {
        Returns::new(ReturnsConfig::default())
    }
}

/// Checks a reason: 1 to [`TEXT_BYTES_MAX`] bytes without control characters.
fn text(field: String, v: &str) -> Result<String, ReturnsError> {
    let v = v.trim();
    if v.is_empty() || v.len() > TEXT_BYTES_MAX || v.chars().any(char::is_control) {
        return Err(ReturnsError::Invalid(ValidationError::new(
            "invalid_text",
            field,
            format!("1 to {TEXT_BYTES_MAX} bytes without control characters"),
        )));
    }
    Ok(v.to_owned())
}

impl Returns {
    /// Returns under `cfg` (checked by the caller).
    pub fn new(cfg: ReturnsConfig) -> Returns {
        Returns { cfg: Arc::new(cfg), write: Arc::default() }
    }

    /// The policy in force.
    pub fn config(&self) -> &ReturnsConfig {
        &self.cfg
    }

    /// One RMA.
    pub fn rma(&self, db: &Database, id: &str) -> Result<Option<Rma>, ReturnsError> {
        let r = db.begin_read()?;
        r.open_table(RMAS)?.get(id)?.map(|v| dec(v.value())).transpose()
    }

    /// The RMAs of an order, oldest first (at most [`RMAS_PER_ORDER_MAX`]).
    pub fn of_order(&self, db: &Database, order: &str) -> Result<Vec<Rma>, ReturnsError> {
        let r = db.begin_read()?;
        let (by, rmas) = (r.open_table(RMAS_BY_ORDER)?, r.open_table(RMAS)?);
        let mut out = Vec::new();
        for item in by.range((order, "")..)?.take(RMAS_PER_ORDER_MAX) {
            let (k, _) = item?;
            let (o, id) = k.value();
            if o != order {
                break;
            }
            if let Some(v) = rmas.get(id)? {
                out.push(dec(v.value())?);
            }
        }
        out.sort_by_key(|r| (r.created_at_ms, r.id.len(), r.id.clone()));
        Ok(out)
    }

    /// A page of RMAs in id order after `after`, in `state` if given, a channel key's own only.
    pub fn list(
        &self,
        db: &Database,
        state: Option<RmaState>,
        confined_to: Option<&Channel>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Rma>, Option<String>), ReturnsError> {
        let r = db.begin_read()?;
        let t = r.open_table(RMAS)?;
        let limit = limit.clamp(1, RMAS_PAGE_MAX);
        let mut out = Vec::new();
        let range = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
            None => t.range::<&str>(..)?,
        };
        let mut read = 0;
        for item in range {
            let (k, v) = item?;
            read += 1;
            let last = k.value().to_owned();
            let rma = dec(v.value())?;
            if state.is_none_or(|s| s == rma.state) && confined_to.is_none_or(|c| c == &rma.channel) {
                out.push(rma);
            }
            if out.len() >= limit || read >= RMA_ROWS_READ_MAX {
                return Ok((out, Some(last)));
            }
        }
        Ok((out, None))
    }

    /// Asks for a return of `order`'s units: validates `req` against the policy and what `shipped` says the
    /// order's fulfillments shipped, then, in one transaction, the RMA (approved at once under
    /// `auto_approve`) and the audit row. A refusal writes only the audit row.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        db: &Database,
        order: &str,
        channel: &Channel,
        shipped: &[Shipped],
        req: &ReturnRequest,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<Rma, ReturnsError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let decided = self.decide(&w, order, channel, shipped, req, actor, now_ms);
        let rma = match decided {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, ReturnsError::Storage(_)) {
                    audit::append(&mut w.open_table(AUDIT)?, actor, Some(order), now_ms, e.code())?;
                    w.commit()?;
                }
                return Err(e);
            }
        };
        put(&w, &rma)?;
        w.open_table(RMAS_BY_ORDER)?.insert((order, rma.id.as_str()), ())?;
        let reasons: Vec<&str> = rma.lines.iter().map(|l| l.reason.as_str()).collect();
        let asked = serde_json::json!({"requested_by": actor.key, "reasons": reasons});
        events::append(&w, EventDraft::rma(events::RETURN_REQUESTED, &rma, now_ms, asked))?;
        if rma.state == RmaState::Approved {
            let by = serde_json::json!({"by": "policy"});
            events::append(&w, EventDraft::rma(events::RETURN_APPROVED, &rma, now_ms, by))?;
        }
        audit::append(&mut w.open_table(AUDIT)?, actor, Some(order), now_ms, "ok")?;
        w.commit()?;
        Ok(rma)
    }

    /// Reads and checks a request; writes nothing but the sequence it takes (in the caller's transaction).
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        w: &redb::WriteTransaction,
        order: &str,
        channel: &Channel,
        shipped: &[Shipped],
        req: &ReturnRequest,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<Rma, ReturnsError> {
        let invalid = |code, field: String, msg: String| ReturnsError::Invalid(ValidationError::new(code, field, msg));
        if req.lines.is_empty() || req.lines.len() > oms_protocol::domain::ORDER_LINES_MAX {
            let max = oms_protocol::domain::ORDER_LINES_MAX;
            return Err(invalid("invalid_lines", "lines".into(), format!("1 ..= {max} lines")));
        }
        let mut lines = Vec::with_capacity(req.lines.len());
        for (i, l) in req.lines.iter().enumerate() {
            if oms_protocol::domain::Sku::parse(&l.sku).is_err() {
                return Err(invalid("invalid_sku", format!("lines[{i}].sku"), "not a SKU".into()));
            }
            if l.qty == 0 || l.qty > u64::from(oms_protocol::domain::QTY_MAX) {
                let max = oms_protocol::domain::QTY_MAX;
                return Err(invalid("invalid_quantity", format!("lines[{i}].qty"), format!("1 ..= {max}")));
            }
            if req.lines[..i].iter().any(|o| o.sku == l.sku) {
                return Err(invalid("duplicate_sku", format!("lines[{i}].sku"), "each SKU once".into()));
            }
            let reason = text(format!("lines[{i}].reason"), &l.reason)?;
            lines.push(RmaLine { sku: l.sku.clone(), qty: l.qty, reason, received: 0, restocked: 0, scrapped: 0 });
        }
        if let Some(l) = lines.iter().find(|l| self.cfg.non_returnable_skus.contains(&l.sku)) {
            return Err(ReturnsError::NotReturnable(l.sku.clone()));
        }
        // What each shipped fulfillment may still take back: shipped less what other RMAs cover.
        let existing = rmas_of(w, order)?;
        if existing.len() >= RMAS_PER_ORDER_MAX {
            return Err(ReturnsError::Limit(format!("an order has at most {RMAS_PER_ORDER_MAX} RMAs")));
        }
        let returnable = |f: &Shipped, sku: &str| returnable(f, sku, &existing);
        let candidates: Vec<&Shipped> = match &req.fulfillment {
            Some(id) => match shipped.iter().find(|f| &f.id == id) {
                Some(f) => vec![f],
                None => {
                    let msg = "not a shipped fulfillment of this order".to_owned();
                    return Err(invalid("unknown_fulfillment", "fulfillment".into(), msg));
                }
            },
            None => shipped.iter().collect(),
        };
        let fits = |f: &Shipped| lines.iter().all(|l| l.qty <= returnable(f, &l.sku));
        let Some(f) = candidates.iter().copied().find(|f| fits(f)) else {
            // Over-return when no candidate (or all of them together) has the units; otherwise they span sites.
            for l in &lines {
                let total: u64 = candidates.iter().map(|f| returnable(f, &l.sku)).sum();
                if l.qty > total {
                    return Err(ReturnsError::OverReturn { sku: l.sku.clone(), requested: l.qty, returnable: total });
                }
            }
            return Err(ReturnsError::SpansFulfillments);
        };
        let (from, base) = match (f.delivered_at_ms, f.shipped_at_ms) {
            (Some(d), _) => ("delivery", d),
            (None, Some(s)) => ("shipment", s),
            // Shipped, but the site's timeline does not say when: the window runs from now on.
            (None, None) => ("shipment", now_ms),
        };
        let closes = base.saturating_add(u64::from(self.cfg.window_days).saturating_mul(DAY_MS));
        if now_ms > closes {
            return Err(ReturnsError::WindowClosed { closed_at_ms: closes, window_days: self.cfg.window_days, from });
        }
        let seq = {
            let mut meta = w.open_table(RETURNS_META)?;
            let n = meta.get(SEQ)?.map(|v| v.value()).unwrap_or(0).saturating_add(1);
            meta.insert(SEQ, n)?;
            n
        };
        let mut rma = Rma {
            id: format!("RMA-{seq}"),
            order: order.to_owned(),
            channel: channel.clone(),
            fulfillment: f.id.clone(),
            site: f.site.clone(),
            state: RmaState::Requested,
            lines,
            created_at_ms: now_ms,
            requested_by: actor.key.clone(),
            refund: self.cfg.refund,
            credit_notes: Vec::new(),
            refunded_minor: 0,
            refunded_units: 0,
            receipts: Vec::new(),
            refund_error: None,
            reason: None,
            events: Vec::new(),
        };
        rma.event(now_ms, RmaState::Requested, format!("return of {} units requested", rma.units()));
        if self.cfg.auto_approve {
            rma.event(now_ms, RmaState::Approved, format!("approved by policy; {} receives it", rma.site));
        }
        Ok(rma)
    }

    /// Service's step on an RMA (`approve`, `decline`, `cancel`), with a reason where one is needed, in one
    /// transaction with its audit row. A refusal writes only the audit row.
    pub fn step(
        &self,
        db: &Database,
        id: &str,
        action: &'static str,
        reason: Option<String>,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<Rma, ReturnsError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let decided = Self::decide_step(&w, id, action, reason, actor, now_ms);
        let rma = match decided {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, ReturnsError::Storage(_)) {
                    audit::append(&mut w.open_table(AUDIT)?, actor, Some(id), now_ms, e.code())?;
                    w.commit()?;
                }
                return Err(e);
            }
        };
        put(&w, &rma)?;
        let kind = match rma.state {
            RmaState::Approved => events::RETURN_APPROVED,
            RmaState::Declined => events::RETURN_DECLINED,
            _ => events::RETURN_CANCELLED,
        };
        let by = serde_json::json!({"by": actor.key, "reason": rma.reason});
        events::append(&w, EventDraft::rma(kind, &rma, now_ms, by))?;
        audit::append(&mut w.open_table(AUDIT)?, actor, Some(id), now_ms, "ok")?;
        w.commit()?;
        Ok(rma)
    }

    /// Reads and checks a service step; writes nothing.
    fn decide_step(
        w: &redb::WriteTransaction,
        id: &str,
        action: &'static str,
        reason: Option<String>,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<Rma, ReturnsError> {
        let mut rma = get(w, id)?.ok_or_else(|| ReturnsError::RmaNotFound(id.to_owned()))?;
        let wrong = |rma: &Rma| ReturnsError::WrongState { rma: rma.id.clone(), state: rma.state, action };
        match action {
            "approve" if rma.state == RmaState::Requested => {
                let note = format!("approved by {}; {} receives it", actor.key, rma.site);
                rma.event(now_ms, RmaState::Approved, note);
            }
            "decline" if rma.state == RmaState::Requested => {
                let why = text("reason".into(), reason.as_deref().unwrap_or(""))?;
                rma.event(now_ms, RmaState::Declined, format!("declined by {}: {why}", actor.key));
                rma.reason = Some(why);
            }
            "cancel" if matches!(rma.state, RmaState::Requested | RmaState::Approved) && rma.received() == 0 => {
                let why = reason.as_deref().map(|r| text("reason".into(), r)).transpose()?;
                let note =
                    format!("cancelled by {}{}", actor.key, why.as_ref().map(|w| format!(": {w}")).unwrap_or_default());
                rma.event(now_ms, RmaState::Cancelled, note);
                rma.reason = why;
            }
            _ => return Err(wrong(&rma)),
        }
        Ok(rma)
    }

    /// Applies a site's receipt against an RMA once (`applied_id` = `<site>/<receipt>`): adds its units (never
    /// past what was approved) and moves the RMA to `partially_received` or `received`. Returns the RMA when
    /// the receipt was new. A receipt for another site's RMA, or one that is not known, is refused.
    pub fn apply_receipt(
        &self,
        db: &Database,
        site: &str,
        applied_id: &str,
        receipt: &oms_protocol::schema::SiteRmaReceipt,
        now_ms: u64,
    ) -> Result<Option<Rma>, ReturnsError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        if w.open_table(APPLIED)?.get(applied_id)?.is_some() {
            return Ok(None);
        }
        let mut rma = get(&w, &receipt.rma)?
            .filter(|r| r.site == site && r.fulfillment == receipt.order)
            .ok_or_else(|| ReturnsError::RmaNotFound(receipt.rma.clone()))?;
        let mut units = 0;
        let before = rma.received();
        for l in &receipt.lines {
            let Some(line) = rma.lines.iter_mut().find(|x| x.sku == l.sku.as_str()) else {
                tracing::warn!(rma = %rma.id, sku = %l.sku, "returns: a site received a SKU the RMA does not have");
                continue;
            };
            // The site checks against what it was told; never count past what was approved.
            let qty = l.qty.min(line.qty.saturating_sub(line.received));
            line.received += qty;
            match l.disposition {
                oms_protocol::domain::Disposition::Restock => line.restocked += qty,
                oms_protocol::domain::Disposition::Scrap => line.scrapped += qty,
            }
            units += qty;
        }
        rma.receipts.push(applied_id.to_owned());
        let note = format!("{units} units received at {site} (receipt {})", receipt.id);
        if rma.state.receivable() {
            let next = if rma.received() >= rma.units() { RmaState::Received } else { RmaState::PartiallyReceived };
            rma.event(now_ms, next, note);
        } else {
            // A site cut off from the hub received against what it last knew; the units are there.
            tracing::warn!(rma = %rma.id, state = rma.state.as_str(), "returns: units received against an RMA no longer receivable");
            let state = rma.state;
            rma.event(now_ms, state, format!("{note}, after it was {}", state.as_str()));
        }
        put(&w, &rma)?;
        w.open_table(APPLIED)?.insert(applied_id, rma.id.as_str())?;
        // `first`: this receipt brought the RMA's first units (the reports count it as one return).
        let got = serde_json::json!({"units": units, "first": before == 0 && units > 0, "receipt": applied_id});
        events::append(&w, EventDraft::rma(events::RETURN_RECEIVED, &rma, now_ms, got))?;
        w.commit()?;
        Ok(Some(rma))
    }

    /// Refunds what an RMA received: a credit note for the received units on the fulfillment's invoice and the
    /// refund through the outbox, with the RMA's `refunded` state in the same transaction. `by_service` is
    /// service's explicit refund of a held (or partly received) RMA. An order without a payment closes.
    pub fn refund(
        &self,
        money: &crate::money::Money,
        db: &Database,
        id: &str,
        by_service: bool,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<Rma, ReturnsError> {
        let _g = lock(&self.write);
        let mut rma = {
            let r = db.begin_read()?;
            r.open_table(RMAS)?.get(id)?.map(|v| dec(v.value())).transpose()?
        }
        .ok_or_else(|| ReturnsError::RmaNotFound(id.to_owned()))?;
        let ready = match rma.state {
            RmaState::Received => true,
            RmaState::PartiallyReceived => by_service,
            _ => false,
        };
        if !ready || !rma.credit_notes.is_empty() || rma.received() == 0 {
            return Err(ReturnsError::WrongState { rma: rma.id.clone(), state: rma.state, action: "refund" });
        }
        let lines: Vec<crate::money::RefundLine> = rma
            .lines
            .iter()
            .filter(|l| l.received > 0)
            .map(|l| crate::money::RefundLine { sku: l.sku.clone(), qty: l.received })
            .collect();
        let units: u64 = lines.iter().map(|l| l.qty).sum();
        let req = crate::money::RefundRequest {
            invoice: money.invoice_of_fulfillment(db, &rma.fulfillment)?,
            lines: Some(lines),
            amount_minor: None,
            reason: format!("return {}", rma.id),
        };
        let mut done = rma.clone();
        let outcome = money.refund_with(db, &rma.order, None, &req, actor, now_ms, |w, note| {
            let amount = u64::try_from(note.total_minor).unwrap_or(0);
            done.credit_notes.push(note.number.clone());
            done.refunded_minor = done.refunded_minor.saturating_add(amount);
            done.refunded_units = units;
            done.refund_error = None;
            done.event(now_ms, RmaState::Refunded, format!("credit note {} for {amount} (minor units)", note.number));
            put(w, &done).map_err(|e| match e {
                ReturnsError::Storage(s) => MoneyError::Storage(s),
                e => MoneyError::Corrupt { table: "rmas", detail: e.to_string() },
            })?;
            let paid = serde_json::json!({"amount_minor": amount, "units": units, "credit_note": note.number});
            events::append(w, EventDraft::rma(events::RETURN_REFUNDED, &done, now_ms, paid))
                .map_err(|e| MoneyError::Storage(Arc::new(e)))?;
            Ok(())
        });
        match outcome {
            Ok(_) => Ok(done),
            Err(MoneyError::NotFound { what: "paid order", .. }) => {
                // No payment (a channel order taken without one): nothing to refund.
                let w = db.begin_write()?;
                rma.event(now_ms, RmaState::Closed, "received; the order has no payment to refund".into());
                put(&w, &rma)?;
                let why = serde_json::json!({"why": "no_payment"});
                events::append(&w, EventDraft::rma(events::RETURN_CLOSED, &rma, now_ms, why))?;
                w.commit()?;
                Ok(rma)
            }
            Err(e) => {
                let e = ReturnsError::from(e);
                if !matches!(e, ReturnsError::Storage(_)) {
                    let w = db.begin_write()?;
                    rma.refund_error = Some(format!("{}: {e}", e.code()));
                    put(&w, &rma)?;
                    w.commit()?;
                }
                Err(e)
            }
        }
    }

    /// Closes a refunded RMA once its order's refunds settled at the provider.
    pub fn close_if_settled(
        &self,
        money: &crate::money::Money,
        db: &Database,
        id: &str,
        now_ms: u64,
    ) -> Result<bool, ReturnsError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let Some(mut rma) = get(&w, id)? else { return Ok(false) };
        if rma.state != RmaState::Refunded || money.unsettled(db, &rma.order)? {
            return Ok(false);
        }
        rma.event(now_ms, RmaState::Closed, "refund settled".into());
        put(&w, &rma)?;
        let why = serde_json::json!({"why": "refund_settled"});
        events::append(&w, EventDraft::rma(events::RETURN_CLOSED, &rma, now_ms, why))?;
        w.commit()?;
        Ok(true)
    }

    /// The open RMAs (at most `limit`), for the periodic pass and the start.
    pub fn open(&self, db: &Database, limit: usize) -> Result<Vec<Rma>, ReturnsError> {
        let r = db.begin_read()?;
        let (open, rmas) = (r.open_table(RMAS_OPEN)?, r.open_table(RMAS)?);
        let mut out = Vec::new();
        for item in open.range::<&str>(..)?.take(limit) {
            let (k, _) = item?;
            if let Some(v) = rmas.get(k.value())? {
                out.push(dec(v.value())?);
            }
        }
        Ok(out)
    }

    /// Totals over every RMA (at most [`RMA_ROWS_READ_MAX`] read) and the mismatch counter.
    pub fn summary(&self, money: &crate::money::Money, db: &Database) -> Result<ReturnsSummary, ReturnsError> {
        let mut s = ReturnsSummary::default();
        for st in RmaState::ALL {
            s.rmas.insert(st.as_str().to_owned(), 0);
        }
        let r = db.begin_read()?;
        for item in r.open_table(RMAS)?.range::<&str>(..)?.take(RMA_ROWS_READ_MAX) {
            let (_, v) = item?;
            let rma = dec(v.value())?;
            *s.rmas.entry(rma.state.as_str().to_owned()).or_default() += 1;
            if rma.state.counts() && rma.state != RmaState::Requested {
                s.units_approved += rma.units();
            }
            s.units_received += rma.received();
            s.units_restocked += rma.lines.iter().map(|l| l.restocked).sum::<u64>();
            s.units_scrapped += rma.lines.iter().map(|l| l.scrapped).sum::<u64>();
            s.refunded_minor += rma.refunded_minor;
            let mut bad = rma.lines.iter().any(|l| l.received > l.qty || l.restocked + l.scrapped != l.received);
            if !rma.credit_notes.is_empty() {
                let (mut units, mut total) = (0u64, 0u64);
                for n in &rma.credit_notes {
                    if let Some(note) = money.credit_note(db, n)? {
                        units += note.lines.iter().map(|l| l.qty).sum::<u64>();
                        total += u64::try_from(note.total_minor).unwrap_or(0);
                    }
                }
                bad |= units != rma.refunded_units || total != rma.refunded_minor;
                // A full refund credits every unit received.
                bad |= rma.state != RmaState::PartiallyReceived && units != rma.received();
            }
            s.rma_mismatches += u64::from(bad);
        }
        Ok(s)
    }
}

fn get(w: &redb::WriteTransaction, id: &str) -> Result<Option<Rma>, ReturnsError> {
    w.open_table(RMAS)?.get(id)?.map(|v| dec(v.value())).transpose()
}

/// Writes `rma` and keeps `rmas_open` in step with its state.
fn put(w: &redb::WriteTransaction, rma: &Rma) -> Result<(), ReturnsError> {
    w.open_table(RMAS)?.insert(rma.id.as_str(), enc(rma)?.as_slice())?;
    let mut open = w.open_table(RMAS_OPEN)?;
    if rma.state.open() {
        open.insert(rma.id.as_str(), ())?;
    } else {
        open.remove(rma.id.as_str())?;
    }
    Ok(())
}

fn rmas_of(w: &redb::WriteTransaction, order: &str) -> Result<Vec<Rma>, ReturnsError> {
    let (by, rmas) = (w.open_table(RMAS_BY_ORDER)?, w.open_table(RMAS)?);
    let mut out = Vec::new();
    for item in by.range((order, "")..)?.take(RMAS_PER_ORDER_MAX) {
        let (k, _) = item?;
        let (o, id) = k.value();
        if o != order {
            break;
        }
        if let Some(v) = rmas.get(id)? {
            out.push(dec(v.value())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
