//! Consignments: what packing hands to a carrier (parcels, carrier and service), and the label outbox.
//!
//! Packing an order with parcels creates its consignment in `awaiting_label` in the pack's own transaction;
//! that row *is* the outbox row of the label purchase (see [`crate::labels`]), committed before any call
//! to the carrier. Before each call the outbox commits the attempt ([`LabelAttempt`]), so after a crash a
//! consignment with attempts > 0 is looked up at the carrier (by its id, the carrier's reference) before a
//! label is bought again. States: `awaiting_label → labelled → manifested → collected`, `label_failed`
//! when the carrier refuses the consignment for good, and `labelled → void_pending → voided` when staff void
//! the label (the consignment row is the void's outbox row too, see [`crate::labels`]).

use oms_protocol::domain::OrderId;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::writer::{Apply, Tx};
use super::{Command, Limits, Store, StoreError};

/// Most parcels in one consignment.
pub const PARCELS_MAX: usize = 50;
/// Heaviest parcel, grams.
pub const PARCEL_WEIGHT_G_MAX: u32 = 70_000;
/// Longest side of a parcel, millimetres.
pub const PARCEL_SIDE_MM_MAX: u32 = 3_000;
/// Largest label document kept, bytes.
pub const LABEL_BYTES_MAX: usize = 1 << 20;
/// Longest wait between two label attempts of one consignment, ms.
pub(super) const LABEL_BACKOFF_MAX_MS: u64 = 30_000;
/// First wait after a failed label attempt, ms (doubled after each failure up to [`LABEL_BACKOFF_MAX_MS`]).
pub(super) const LABEL_BACKOFF_MIN_MS: u64 = 250;

/// Where a consignment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsignmentState {
    /// Packed; the label is not bought yet (the carrier may be unreachable).
    AwaitingLabel,
    /// The label is bought and stored.
    Labelled,
    /// On a closed manifest.
    Manifested,
    /// Collected by the carrier.
    Collected,
    /// The carrier refused it for good; staff repack or switch the service.
    LabelFailed,
    /// Staff voided the label; the outbox has not told the carrier yet.
    VoidPending,
    /// The label is void at the carrier (terminal: the order stays packed; staff ship it by hand or cancel).
    Voided,
}

impl ConsignmentState {
    /// Every state, in lifecycle order.
    pub const ALL: [ConsignmentState; 7] = [
        ConsignmentState::AwaitingLabel,
        ConsignmentState::Labelled,
        ConsignmentState::Manifested,
        ConsignmentState::Collected,
        ConsignmentState::LabelFailed,
        ConsignmentState::VoidPending,
        ConsignmentState::Voided,
    ];

    /// The name used in the API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsignmentState::AwaitingLabel => "awaiting_label",
            ConsignmentState::Labelled => "labelled",
            ConsignmentState::Manifested => "manifested",
            ConsignmentState::Collected => "collected",
            ConsignmentState::LabelFailed => "label_failed",
            ConsignmentState::VoidPending => "void_pending",
            ConsignmentState::Voided => "voided",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The key of the state index (part of the file format).
    pub(super) fn tag(self) -> u8 {
        match self {
            ConsignmentState::AwaitingLabel => 0,
            ConsignmentState::Labelled => 1,
            ConsignmentState::Manifested => 2,
            ConsignmentState::Collected => 3,
            ConsignmentState::LabelFailed => 4,
            ConsignmentState::VoidPending => 5,
            ConsignmentState::Voided => 6,
        }
    }
}

/// One parcel of a consignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parcel {
    /// Weight, grams.
    pub weight_g: u32,
    /// Length, millimetres.
    pub length_mm: u32,
    /// Width, millimetres.
    pub width_mm: u32,
    /// Height, millimetres.
    pub height_mm: u32,
}

/// A consignment: the parcels of one packed order for one carrier service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Consignment {
    /// `C-` and the order id: the carrier's reference and the label purchase's idempotency key.
    pub id: String,
    /// The order packed.
    pub order: OrderId,
    /// The carrier.
    pub carrier: String,
    /// The carrier's service.
    pub service: String,
    /// The parcels.
    pub parcels: Vec<Parcel>,
    /// Where it is.
    pub state: ConsignmentState,
    /// When it was packed, ms since the Unix epoch.
    pub created_ms: u64,
    /// Label calls started (each committed before the call).
    pub label_attempts: u32,
    /// Not before this time is the label tried again, ms.
    pub next_attempt_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The carrier's tracking number, once labelled.
    pub tracking: Option<String>,
    /// When the label was stored, ms.
    pub labelled_ms: Option<u64>,
    /// Whether the label came from a lookup (bought by an attempt whose answer was lost) rather than a purchase.
    pub label_found: bool,
}

/// A label document as the carrier returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelDoc {
    /// Its media type (`application/pdf`, `application/zpl`, `text/plain`).
    pub content_type: String,
    /// The document.
    pub body: Vec<u8>,
}

/// The consignment id of an order's consignment.
pub fn consignment_id(order: &OrderId) -> String {
    format!("C-{order}")
}

/// What packing asks for besides the order: the consignment to create.
#[derive(Debug, Clone)]
pub struct NewConsignment {
    /// The carrier.
    pub carrier: String,
    /// The service.
    pub service: String,
    /// The parcels (1 to [`PARCELS_MAX`], checked by the API).
    pub parcels: Vec<Parcel>,
}

/// Consignments waiting for their label: how many, and since when the oldest waits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AwaitingLabel {
    /// How many.
    pub count: u64,
    /// When the oldest was packed, ms since the Unix epoch.
    pub oldest_since_ms: Option<u64>,
}

/// Counters of [`Store::consignment_counts`].
#[derive(Debug, Clone, Default)]
pub struct ConsignmentCounts {
    /// Consignments per state.
    pub by_state: Vec<(ConsignmentState, u64)>,
    /// Labels stored (bought or found).
    pub labels_stored: u64,
    /// Of them, labels found at the carrier after an attempt whose answer was lost.
    pub labels_found: u64,
}

fn counter(s: ConsignmentState) -> String {
    format!("consignments.{}", s.as_str())
}

/// META counter: labels stored by the node (bought or found).
const LABELS_STORED: &str = "labels.stored";
/// META counter: labels found at the carrier instead of bought (an earlier attempt's answer was lost).
const LABELS_FOUND: &str = "labels.found";

impl Tx<'_> {
    pub(super) fn consignment(&self, id: &str) -> Result<Consignment, StoreError> {
        let v = self.consignments.get(id)?.ok_or_else(|| StoreError::ConsignmentNotFound(id.to_owned()))?;
        dec("consignments", v.value())
    }

    pub(super) fn save_consignment(
        &mut self,
        c: &Consignment,
        prev: Option<ConsignmentState>,
    ) -> Result<(), StoreError> {
        if prev != Some(c.state) {
            if let Some(p) = prev {
                self.consignments_by_state.remove((p.tag(), c.id.as_str()))?;
                self.bump(&counter(p), -1)?;
            }
            self.consignments_by_state.insert((c.state.tag(), c.id.as_str()), ())?;
            self.bump(&counter(c.state), 1)?;
        }
        self.consignments.insert(c.id.as_str(), enc(c)?.as_slice())?;
        Ok(())
    }

    /// Creates the order's consignment in `awaiting_label` (called by pack after its checks, so it cannot be
    /// refused here).
    pub(super) fn create_consignment(&mut self, order: &OrderId, new: NewConsignment) -> Result<(), StoreError> {
        let c = Consignment {
            id: consignment_id(order),
            order: order.clone(),
            carrier: new.carrier,
            service: new.service,
            parcels: new.parcels,
            state: ConsignmentState::AwaitingLabel,
            created_ms: self.now_ms,
            label_attempts: 0,
            next_attempt_ms: self.now_ms,
            last_error: None,
            tracking: None,
            labelled_ms: None,
            label_found: false,
        };
        let prev = self.consignments.get(c.id.as_str())?.map(|v| dec::<Consignment>("consignments", v.value()));
        self.save_consignment(&c, prev.transpose()?.map(|p| p.state))
    }

    fn awaiting(&self, id: &str) -> Result<Option<Consignment>, StoreError> {
        let c = self.consignment(id)?;
        Ok((c.state == ConsignmentState::AwaitingLabel).then_some(c))
    }
}

/// The outbox starts a label call: counts the attempt before the call, so that after a crash the next
/// attempt looks the label up first. Answers the consignment, or `None` if it no longer awaits a label.
#[derive(Debug, Clone)]
pub struct LabelAttempt {
    /// The consignment.
    pub id: String,
}

impl Command for LabelAttempt {
    type Reply = Option<Consignment>;
}

impl Apply for LabelAttempt {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Option<Consignment>, StoreError> {
        let Some(mut c) = tx.awaiting(&self.id)? else { return Ok(None) };
        c.label_attempts = c.label_attempts.saturating_add(1);
        tx.save_consignment(&c, Some(c.state))?;
        Ok(Some(c))
    }
}

/// The carrier answered a label (bought now, or found from an earlier attempt): store it, `labelled`.
#[derive(Debug, Clone)]
pub struct LabelStored {
    /// The consignment.
    pub id: String,
    /// Tracking number.
    pub tracking: String,
    /// The document.
    pub label: LabelDoc,
    /// Whether it was found by a lookup rather than bought by this attempt.
    pub found: bool,
}

impl Command for LabelStored {
    type Reply = Option<Consignment>;
}

impl Apply for LabelStored {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Option<Consignment>, StoreError> {
        let Some(mut c) = tx.awaiting(&self.id)? else { return Ok(None) };
        c.state = ConsignmentState::Labelled;
        c.tracking = Some(self.tracking);
        c.labelled_ms = Some(tx.now_ms);
        c.label_found = self.found;
        c.last_error = None;
        tx.labels.insert(c.id.as_str(), enc(&self.label)?.as_slice())?;
        tx.save_consignment(&c, Some(ConsignmentState::AwaitingLabel))?;
        tx.bump(LABELS_STORED, 1)?;
        if self.found {
            tx.bump(LABELS_FOUND, 1)?;
        }
        Ok(Some(c))
    }
}

/// A label attempt failed: retry after a backoff, or (`permanent`) the consignment is `label_failed`.
#[derive(Debug, Clone)]
pub struct LabelFailed {
    /// The consignment.
    pub id: String,
    /// Why.
    pub error: String,
    /// The carrier refused for good.
    pub permanent: bool,
}

impl Command for LabelFailed {
    type Reply = Option<Consignment>;
}

impl Apply for LabelFailed {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Option<Consignment>, StoreError> {
        let Some(mut c) = tx.awaiting(&self.id)? else { return Ok(None) };
        let shift = c.label_attempts.saturating_sub(1).min(16);
        let wait = LABEL_BACKOFF_MIN_MS.saturating_mul(1 << shift).min(LABEL_BACKOFF_MAX_MS);
        c.next_attempt_ms = tx.now_ms.saturating_add(wait);
        c.last_error = Some(self.error);
        if self.permanent {
            c.state = ConsignmentState::LabelFailed;
        }
        tx.save_consignment(&c, Some(ConsignmentState::AwaitingLabel))?;
        Ok(Some(c))
    }
}

impl Store {
    /// The longest page a listing answers.
    pub fn page_max(&self) -> usize {
        self.limits.page_max
    }

    /// One consignment.
    pub fn consignment(&self, id: &str) -> Result<Option<Consignment>, StoreError> {
        let t = self.db.begin_read()?.open_table(CONSIGNMENTS)?;
        t.get(id)?.map(|v| dec("consignments", v.value())).transpose()
    }

    /// The stored label of a consignment.
    pub fn label(&self, id: &str) -> Result<Option<LabelDoc>, StoreError> {
        let t = self.db.begin_read()?.open_table(LABELS)?;
        t.get(id)?.map(|v| dec("labels", v.value())).transpose()
    }

    /// A page of consignments in one state (or all), ids after `after`.
    pub fn consignments(
        &self,
        state: Option<ConsignmentState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Consignment>, StoreError> {
        let limit = limit.min(self.limits.page_max);
        let r = self.db.begin_read()?;
        let rows = r.open_table(CONSIGNMENTS)?;
        let Some(s) = state else { return super::reads::page(&rows, after, limit, "consignments") };
        let idx = r.open_table(CONSIGNMENTS_BY_STATE)?;
        super::reads::state_page(&idx, &rows, s.tag(), after, limit, ("consignments_by_state", "consignments"))
    }

    /// Consignments per state, and labels stored and found, from counters kept in the same transactions.
    pub fn consignment_counts(&self) -> Result<ConsignmentCounts, StoreError> {
        let t = self.db.begin_read()?.open_table(META)?;
        let get = |k: &str| -> Result<u64, StoreError> { Ok(t.get(k)?.map(|v| v.value()).unwrap_or(0)) };
        let mut by_state = Vec::new();
        for s in ConsignmentState::ALL {
            by_state.push((s, get(&counter(s))?));
        }
        Ok(ConsignmentCounts { by_state, labels_stored: get(LABELS_STORED)?, labels_found: get(LABELS_FOUND)? })
    }

    /// How many consignments wait for a label and since when the oldest waits. Reads at most `scan_max`
    /// of them to find the oldest (ids are not in packing order).
    pub fn awaiting_label(&self, scan_max: usize) -> Result<AwaitingLabel, StoreError> {
        let counts = self.consignment_counts()?.by_state;
        let count = counts.iter().find(|(s, _)| *s == ConsignmentState::AwaitingLabel).map_or(0, |(_, n)| *n);
        let oldest = self
            .consignments(Some(ConsignmentState::AwaitingLabel), None, scan_max)?
            .iter()
            .map(|c| c.created_ms)
            .min();
        Ok(AwaitingLabel { count, oldest_since_ms: oldest })
    }
}
