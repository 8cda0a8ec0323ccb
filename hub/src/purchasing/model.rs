//! The pure part of purchasing: suppliers, purchase orders and their states, advance shipping notices, and
//! the order-quantity rule (minimum order quantity, order multiple). No I/O; [`super::store`] keeps them.

use std::collections::BTreeMap;

use oms_protocol::domain::{AsnId, Currency, NodeId, PurchaseOrderId, Sku, SupplierId, ValidationError, check_text};
use serde::{Deserialize, Serialize};

/// Most SKUs one supplier offers.
pub const SUPPLIER_SKUS_MAX: usize = 1_000;
/// Most lines of one purchase order (or one ASN, or one receipt).
pub const PO_LINES_MAX: usize = 200;
/// Most units of one line.
pub const QTY_MAX: u64 = 1_000_000;
/// Highest unit cost, minor units: a line (at most [`QTY_MAX`] units) and a whole order (at most
/// [`PO_LINES_MAX`] lines) stay far below `u64::MAX`.
pub const COST_MINOR_MAX: u64 = 10_000_000_000;
/// Longest supplier lead time, days.
pub const LEAD_TIME_DAYS_MAX: u32 = 365;
/// Most ASNs recorded against one purchase order.
pub const ASNS_PER_PO_MAX: usize = 50;

/// What a supplier offers of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplierSku {
    /// The supplier's own code for it.
    pub supplier_sku: String,
    /// Unit cost, minor units of the supplier's currency.
    pub cost_minor: u64,
    /// Minimum order quantity (at least 1).
    #[serde(default = "one")]
    pub moq: u64,
    /// Orders are a multiple of this (at least 1).
    #[serde(default = "one")]
    pub order_multiple: u64,
}

fn one() -> u64 {
    1
}

/// How purchase orders reach a supplier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelSpec {
    /// The email/EDI stand-in: the order is written as CSV and JSON into the hub's purchase-order folder.
    #[default]
    Folder,
    /// A signed HTTP POST to the supplier's URL.
    Webhook {
        /// Where to post.
        url: String,
    },
}

/// A supplier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Supplier {
    /// Id.
    pub id: SupplierId,
    /// Name.
    pub name: String,
    /// Who to talk to (email, phone).
    pub contact: String,
    /// The currency of its prices.
    pub currency: Currency,
    /// Days from sending an order to its arrival, unless the order says otherwise.
    pub lead_time_days: u32,
    /// What it offers, by SKU.
    pub skus: BTreeMap<Sku, SupplierSku>,
    /// How orders reach it.
    pub channel: ChannelSpec,
    /// The secret its webhook deliveries are signed with (never shown after the `PUT` that made it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Last change, ms.
    pub updated_at_ms: u64,
}

impl Supplier {
    /// The supplier as the API shows it: everything but the secret (which only the answer to the `PUT` that
    /// made it carries).
    pub fn view(&self) -> Supplier {
        Supplier { webhook_secret: None, ..self.clone() }
    }
}

/// The body of `PUT /v1/suppliers/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupplierInput {
    /// Name.
    pub name: String,
    /// Contact.
    #[serde(default)]
    pub contact: String,
    /// Currency.
    pub currency: Currency,
    /// Default lead time, days.
    pub lead_time_days: u32,
    /// What it offers.
    #[serde(default)]
    pub skus: BTreeMap<Sku, SupplierSku>,
    /// How orders reach it (the folder unless said).
    #[serde(default)]
    pub channel: ChannelSpec,
}

impl SupplierInput {
    /// Why the input is not a usable supplier, naming the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_text("name", &self.name, true)?;
        check_text("contact", &self.contact, false)?;
        if self.lead_time_days > LEAD_TIME_DAYS_MAX {
            return Err(ValidationError::new(
                "invalid_lead_time",
                "lead_time_days",
                format!("must be at most {LEAD_TIME_DAYS_MAX}"),
            ));
        }
        if self.skus.len() > SUPPLIER_SKUS_MAX {
            return Err(ValidationError::new(
                "too_many_skus",
                "skus",
                format!("at most {SUPPLIER_SKUS_MAX} SKUs per supplier"),
            ));
        }
        for (sku, s) in &self.skus {
            s.validate(&format!("skus.{sku}"))?;
        }
        Ok(())
    }
}

impl SupplierSku {
    /// Why these terms are not usable; `field` names them.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        check_text(&format!("{field}.supplier_sku"), &self.supplier_sku, true)?;
        if self.cost_minor > COST_MINOR_MAX {
            return Err(ValidationError::new(
                "invalid_cost",
                format!("{field}.cost_minor"),
                format!("must be at most {COST_MINOR_MAX}"),
            ));
        }
        for (name, v) in [("moq", self.moq), ("order_multiple", self.order_multiple)] {
            if !(1..=QTY_MAX).contains(&v) {
                return Err(ValidationError::new(
                    "invalid_quantity",
                    format!("{field}.{name}"),
                    format!("must be 1 ..= {QTY_MAX}"),
                ));
            }
        }
        Ok(())
    }
}

/// What to order to cover `need` units under a minimum order quantity and an order multiple: nothing for no
/// need, else the smallest multiple of `multiple` that is at least `need` and at least `moq`.
pub fn order_qty(need: u64, moq: u64, multiple: u64) -> u64 {
    if need == 0 {
        return 0;
    }
    let m = multiple.max(1);
    let at_least = need.max(moq);
    at_least.div_ceil(m).saturating_mul(m)
}

/// Where a purchase order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoState {
    /// Written, not sent.
    Draft,
    /// Sent to the supplier (through the outbox).
    Sent,
    /// The supplier confirmed it.
    Confirmed,
    /// Some units arrived.
    PartiallyReceived,
    /// Every ordered unit arrived.
    Received,
    /// Every line settled, some short-closed (will never come).
    Closed,
    /// Cancelled before any receipt.
    Cancelled,
}

impl PoState {
    /// Every state, in lifecycle order.
    pub const ALL: [PoState; 7] = [
        PoState::Draft,
        PoState::Sent,
        PoState::Confirmed,
        PoState::PartiallyReceived,
        PoState::Received,
        PoState::Closed,
        PoState::Cancelled,
    ];

    /// The name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PoState::Draft => "draft",
            PoState::Sent => "sent",
            PoState::Confirmed => "confirmed",
            PoState::PartiallyReceived => "partially_received",
            PoState::Received => "received",
            PoState::Closed => "closed",
            PoState::Cancelled => "cancelled",
        }
    }

    /// Whether units may still arrive against it (what counts as on order).
    pub fn open(self) -> bool {
        matches!(self, PoState::Draft | PoState::Sent | PoState::Confirmed | PoState::PartiallyReceived)
    }

    /// Whether a site may receive against it (it was sent and is not settled).
    pub fn receivable(self) -> bool {
        matches!(self, PoState::Sent | PoState::Confirmed | PoState::PartiallyReceived)
    }
}

/// A step a caller asks of a purchase order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoStep {
    /// `draft → sent`.
    Send,
    /// `sent → confirmed`.
    Confirm,
    /// `draft | sent | confirmed → cancelled`, before any receipt.
    Cancel,
}

impl PoStep {
    /// The name in routes and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            PoStep::Send => "send",
            PoStep::Confirm => "confirm",
            PoStep::Cancel => "cancel",
        }
    }
}

/// A step that the state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a purchase order in state {} cannot {}", .state.as_str(), .step.as_str())]
pub struct TransitionError {
    /// The state.
    pub state: PoState,
    /// The step.
    pub step: PoStep,
}

/// One line of a purchase order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoLine {
    /// Its number, from 1.
    pub line: u32,
    /// SKU.
    pub sku: Sku,
    /// The supplier's code.
    pub supplier_sku: String,
    /// Units ordered.
    pub ordered: u64,
    /// Units received so far (may exceed `ordered` after a forced over-receipt).
    pub received: u64,
    /// Units that will never come (short-closed).
    pub short_closed: u64,
    /// Unit cost, minor units.
    pub cost_minor: u64,
}

impl PoLine {
    /// Units still expected.
    pub fn open_qty(&self) -> u64 {
        self.ordered.saturating_sub(self.received.saturating_add(self.short_closed))
    }
}

/// One state change of a purchase order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoEvent {
    /// The state entered.
    pub state: PoState,
    /// When, ms.
    pub at_ms: u64,
}

/// Most state changes kept per order (a lifecycle has at most seven).
pub const PO_EVENTS_MAX: usize = 16;

/// A purchase order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PurchaseOrder {
    /// Id.
    pub id: PurchaseOrderId,
    /// Supplier.
    pub supplier: SupplierId,
    /// Destination site.
    pub site: NodeId,
    /// Currency of the costs.
    pub currency: Currency,
    /// Where it is.
    pub state: PoState,
    /// Expected arrival, epoch day.
    pub expected_day: u64,
    /// Lines.
    pub lines: Vec<PoLine>,
    /// ASNs recorded against it.
    pub asns: Vec<AsnId>,
    /// How it was made: `lines` or `replenishment`.
    pub origin: String,
    /// When it was made, ms.
    pub created_at_ms: u64,
    /// State changes.
    pub history: Vec<PoEvent>,
    /// Where sending it stands: `not_sent`, `pending`, `delivered`, `failed` or `withdrawn` (cancelled first).
    pub send_status: String,
    /// The idempotency key of its sending, once sent.
    pub send_key: Option<String>,
}

impl PurchaseOrder {
    /// The total, minor units (bounded by [`COST_MINOR_MAX`] × [`QTY_MAX`] × [`PO_LINES_MAX`]).
    pub fn total_minor(&self) -> u64 {
        self.lines.iter().map(|l| l.ordered.saturating_mul(l.cost_minor)).fold(0u64, u64::saturating_add)
    }

    fn enter(&mut self, state: PoState, at_ms: u64) {
        if self.state == state {
            return;
        }
        self.state = state;
        if self.history.len() >= PO_EVENTS_MAX {
            self.history.remove(1);
        }
        self.history.push(PoEvent { state, at_ms });
    }

    /// Applies a caller's step.
    pub fn step(&mut self, step: PoStep, at_ms: u64) -> Result<(), TransitionError> {
        let received_any = self.lines.iter().any(|l| l.received > 0);
        let next = match (self.state, step) {
            (PoState::Draft, PoStep::Send) => PoState::Sent,
            (PoState::Sent, PoStep::Confirm) => PoState::Confirmed,
            (PoState::Draft | PoState::Sent | PoState::Confirmed, PoStep::Cancel) if !received_any => {
                PoState::Cancelled
            }
            (state, step) => return Err(TransitionError { state, step }),
        };
        self.enter(next, at_ms);
        Ok(())
    }

    /// The state its lines put it in after a receipt or a short-close: `received` when every ordered unit
    /// came, `closed` when every line is settled and some were short-closed, `partially_received` when some
    /// came; otherwise unchanged.
    pub fn settle(&mut self, at_ms: u64) {
        if !self.state.receivable() {
            return;
        }
        let settled = self.lines.iter().all(|l| l.open_qty() == 0);
        let short = self.lines.iter().any(|l| l.short_closed > 0);
        let any = self.lines.iter().any(|l| l.received > 0);
        let next = match (settled, short, any) {
            (true, true, _) => PoState::Closed,
            (true, false, _) => PoState::Received,
            (false, _, true) => PoState::PartiallyReceived,
            (false, _, false) => self.state,
        };
        self.enter(next, at_ms);
    }

    /// The line numbered `n`.
    pub fn line_mut(&mut self, n: u32) -> Option<&mut PoLine> {
        self.lines.iter_mut().find(|l| l.line == n)
    }
}

/// One line of an ASN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AsnLine {
    /// The PO line.
    pub line: u32,
    /// Units shipped.
    pub qty: u64,
}

/// An advance shipping notice: units of some lines of a PO on their way to its site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Asn {
    /// Id.
    pub id: AsnId,
    /// The purchase order.
    pub po: PurchaseOrderId,
    /// Where it goes.
    pub site: NodeId,
    /// Lines.
    pub lines: Vec<AsnLine>,
    /// Expected arrival, epoch day.
    pub expected_day: u64,
    /// When recorded, ms.
    pub created_at_ms: u64,
}

/// Epoch day of an ISO date `YYYY-MM-DD` (the inverse of `iso_date`), `None` when it is not one.
pub fn parse_iso_date(s: &str) -> Option<u64> {
    // Howard Hinnant's days_from_civil; a few lines, where a date crate would be a dependency for one parse.
    let mut parts = s.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let day = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    // 2026-02-31 maps to a day that prints differently: not a date.
    (crate::demand::iso_date(day) == s).then_some(day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What `order_qty` orders covers the need, respects the MOQ, is a multiple, and is the least such.
        #[test]
        fn order_qty_respects_moq_and_multiples(need in 0u64..100_000, moq in 1u64..5_000, multiple in 1u64..500) {
            let q = order_qty(need, moq, multiple);
            if need == 0 {
                prop_assert_eq!(q, 0);
            } else {
                prop_assert!(q >= need);
                prop_assert!(q >= moq);
                prop_assert_eq!(q % multiple, 0);
                prop_assert!(q - multiple < need.max(moq), "not the least: {} for need {}", q, need);
            }
        }
    }

    #[test]
    fn dates_round_trip_and_bad_ones_are_refused() {
        for day in [0u64, 19_000, 20_792, 20_820] {
            assert_eq!(parse_iso_date(&crate::demand::iso_date(day)), Some(day));
        }
        for bad in ["2026-02-31", "2026-13-01", "26-01-01", "2026-1-01", "x", "2026-01-01-01"] {
            assert_eq!(parse_iso_date(bad), None, "{bad}");
        }
    }

    fn po(lines: &[(u64, u64, u64)]) -> PurchaseOrder {
        PurchaseOrder {
            id: PurchaseOrderId::parse("PO-1").unwrap(),
            supplier: SupplierId::parse("s").unwrap(),
            site: NodeId::parse("wh1").unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            state: PoState::Draft,
            expected_day: 0,
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, &(ordered, received, short_closed))| PoLine {
                    line: i as u32 + 1,
                    sku: Sku::parse("A").unwrap(),
                    supplier_sku: "a".into(),
                    ordered,
                    received,
                    short_closed,
                    cost_minor: 100,
                })
                .collect(),
            asns: vec![],
            origin: "lines".into(),
            created_at_ms: 0,
            history: vec![],
            send_status: "not_sent".into(),
            send_key: None,
        }
    }

    #[test]
    fn the_lifecycle_allows_exactly_the_listed_steps() {
        let mut p = po(&[(10, 0, 0)]);
        assert_eq!(p.step(PoStep::Confirm, 1), Err(TransitionError { state: PoState::Draft, step: PoStep::Confirm }));
        p.step(PoStep::Send, 1).unwrap();
        assert!(p.step(PoStep::Send, 2).is_err());
        p.step(PoStep::Confirm, 2).unwrap();
        p.lines[0].received = 4;
        p.settle(3);
        assert_eq!(p.state, PoState::PartiallyReceived);
        assert!(p.step(PoStep::Cancel, 4).is_err(), "no cancel after a receipt");
        p.lines[0].received = 10;
        p.settle(5);
        assert_eq!(p.state, PoState::Received);
        let mut q = po(&[(10, 6, 0), (5, 5, 0)]);
        q.step(PoStep::Send, 1).unwrap();
        q.settle(2);
        assert_eq!(q.state, PoState::PartiallyReceived);
        q.lines[0].short_closed = 4;
        q.settle(3);
        assert_eq!(q.state, PoState::Closed);
        let states: Vec<_> = q.history.iter().map(|e| e.state).collect();
        assert_eq!(states, [PoState::Sent, PoState::PartiallyReceived, PoState::Closed]);
        let mut c = po(&[(1, 0, 0)]);
        c.step(PoStep::Cancel, 1).unwrap();
        assert_eq!(c.state, PoState::Cancelled);
        c.settle(2);
        assert_eq!(c.state, PoState::Cancelled);
    }
}
