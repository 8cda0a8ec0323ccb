//! The end of a consignment's life at the site: voiding a label, the end-of-day manifest, and collection.
//!
//! - [`VoidLabel`] (staff) moves a `labelled` consignment to `void_pending`: the row is the void's outbox
//!   row, and the label outbox tells the carrier ([`VoidDone`] → `voided`, [`VoidFailed`] → retry later, or
//!   back to `labelled` when the carrier refuses for good, e.g. a parcel already scanned).
//! - [`CloseManifest`] closes every `labelled` consignment (up to [`MANIFEST_CONSIGNMENTS_MAX`]) into one
//!   manifest per carrier: they become `manifested`. Nothing else is taken: awaiting, failed and voided
//!   consignments stay where they are.
//! - [`Collect`] marks a manifest collected: its consignments become `collected` and each order still
//!   `packed` is shipped with the consignment's carrier and tracking, by the same step as `POST .../ship`,
//!   in the same transaction. Collecting twice changes nothing.

use oms_protocol::domain::{FulfillmentState, OrderId, Step};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::writer::{Apply, Tx};
use super::{Command, ConsignmentState, Limits, Store, StoreError};

/// Most consignments one manifest close takes (the rest stay `labelled` for the next close).
pub const MANIFEST_CONSIGNMENTS_MAX: usize = 1_000;
/// Longest void reason, bytes.
pub const VOID_REASON_BYTES_MAX: usize = 500;
/// Wait between two void attempts of one consignment, ms.
const VOID_RETRY_MS: u64 = 2_000;
const SEQ_MANIFEST: &str = "seq.manifest";

/// A closed manifest: the consignments one carrier collects together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    /// `M-` and a number.
    pub id: String,
    /// The carrier.
    pub carrier: String,
    /// The consignments on it.
    pub consignments: Vec<String>,
    /// When it was closed, ms since the Unix epoch.
    pub closed_ms: u64,
    /// When the carrier collected it, if it did.
    pub collected_ms: Option<u64>,
}

impl Tx<'_> {
    fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let v = self.manifests.get(id)?.ok_or_else(|| StoreError::ManifestNotFound(id.to_owned()))?;
        dec("manifests", v.value())
    }

    fn in_state(&self, c: &super::Consignment, want: ConsignmentState, action: &'static str) -> Result<(), StoreError> {
        if c.state == want {
            Ok(())
        } else {
            Err(StoreError::ConsignmentState { id: c.id.clone(), state: c.state.as_str(), action })
        }
    }
}

/// Staff void a consignment's label (`labelled` → `void_pending`); the outbox voids it at the carrier.
#[derive(Debug, Clone)]
pub struct VoidLabel {
    /// The consignment.
    pub id: String,
    /// Why (kept as the consignment's last error until the carrier confirms).
    pub reason: String,
}

impl Command for VoidLabel {
    type Reply = super::Consignment;
}

impl Apply for VoidLabel {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<super::Consignment, StoreError> {
        let mut c = tx.consignment(&self.id)?;
        if c.state == ConsignmentState::VoidPending || c.state == ConsignmentState::Voided {
            return Ok(c);
        }
        tx.in_state(&c, ConsignmentState::Labelled, "void")?;
        c.state = ConsignmentState::VoidPending;
        c.next_attempt_ms = tx.now_ms;
        c.last_error = Some(format!("void requested: {}", self.reason));
        tx.save_consignment(&c, Some(ConsignmentState::Labelled))?;
        Ok(c)
    }
}

/// The carrier voided the label: `voided`.
#[derive(Debug, Clone)]
pub struct VoidDone {
    /// The consignment.
    pub id: String,
}

impl Command for VoidDone {
    type Reply = Option<super::Consignment>;
}

impl Apply for VoidDone {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Option<super::Consignment>, StoreError> {
        let mut c = tx.consignment(&self.id)?;
        if c.state != ConsignmentState::VoidPending {
            return Ok(None);
        }
        c.state = ConsignmentState::Voided;
        c.last_error = None;
        tx.save_consignment(&c, Some(ConsignmentState::VoidPending))?;
        Ok(Some(c))
    }
}

/// A void attempt failed: retry after a backoff, or (`permanent`) the label stands: back to `labelled`.
#[derive(Debug, Clone)]
pub struct VoidFailed {
    /// The consignment.
    pub id: String,
    /// Why.
    pub error: String,
    /// The carrier refused for good.
    pub permanent: bool,
}

impl Command for VoidFailed {
    type Reply = Option<super::Consignment>;
}

impl Apply for VoidFailed {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Option<super::Consignment>, StoreError> {
        let mut c = tx.consignment(&self.id)?;
        if c.state != ConsignmentState::VoidPending {
            return Ok(None);
        }
        c.next_attempt_ms = tx.now_ms.saturating_add(VOID_RETRY_MS);
        c.last_error = Some(format!("void: {}", self.error));
        if self.permanent {
            c.state = ConsignmentState::Labelled;
        }
        tx.save_consignment(&c, Some(ConsignmentState::VoidPending))?;
        Ok(Some(c))
    }
}

/// Closes the labelled consignments (of one carrier, or all) into one manifest per carrier.
#[derive(Debug, Clone)]
pub struct CloseManifest {
    /// Only this carrier's consignments; `None` for every carrier.
    pub carrier: Option<String>,
}

/// What a close made.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Closed {
    /// The manifests, one per carrier.
    pub manifests: Vec<Manifest>,
    /// Labelled consignments left for the next close ([`MANIFEST_CONSIGNMENTS_MAX`] reached).
    pub left: bool,
}

impl Command for CloseManifest {
    type Reply = Closed;
}

impl Apply for CloseManifest {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Closed, StoreError> {
        let tag = ConsignmentState::Labelled.tag();
        let mut ids = Vec::new();
        let mut left = false;
        for row in tx.consignments_by_state.range((tag, "")..(tag.saturating_add(1), ""))? {
            let (k, _) = row?;
            if ids.len() == MANIFEST_CONSIGNMENTS_MAX {
                left = true;
                break;
            }
            ids.push(k.value().1.to_owned());
        }
        let mut per: std::collections::BTreeMap<String, Vec<super::Consignment>> = Default::default();
        for id in ids {
            let c = tx.consignment(&id)?;
            if self.carrier.as_ref().is_none_or(|want| *want == c.carrier) {
                per.entry(c.carrier.clone()).or_default().push(c);
            }
        }
        if per.is_empty() {
            return Err(StoreError::NothingToManifest(self.carrier));
        }
        let mut manifests = Vec::new();
        for (carrier, list) in per {
            let n = tx.bump(SEQ_MANIFEST, 1)?;
            let m = Manifest {
                id: format!("M-{n}"),
                carrier,
                consignments: list.iter().map(|c| c.id.clone()).collect(),
                closed_ms: tx.now_ms,
                collected_ms: None,
            };
            for mut c in list {
                c.state = ConsignmentState::Manifested;
                tx.save_consignment(&c, Some(ConsignmentState::Labelled))?;
            }
            tx.manifests.insert(m.id.as_str(), enc(&m)?.as_slice())?;
            manifests.push(m);
        }
        Ok(Closed { manifests, left })
    }
}

/// The carrier collected a manifest: its consignments are `collected`, their packed orders shipped.
#[derive(Debug, Clone)]
pub struct Collect {
    /// The manifest.
    pub manifest: String,
}

/// What a collection did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Collected {
    /// The manifest after the change.
    pub manifest: Manifest,
    /// Orders this collection shipped.
    pub shipped: Vec<OrderId>,
}

impl Command for Collect {
    type Reply = Collected;
}

impl Apply for Collect {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Collected, StoreError> {
        let mut m = tx.manifest(&self.manifest)?;
        if m.collected_ms.is_some() {
            return Ok(Collected { manifest: m, shipped: Vec::new() });
        }
        // Every read and check before the first write: a refusal leaves nothing in the shared transaction.
        let mut todo = Vec::new();
        for id in &m.consignments {
            let c = tx.consignment(id)?;
            if c.state != ConsignmentState::Manifested {
                continue;
            }
            let rec = tx.order(&c.order)?;
            let frozen = tx.frozen.get(c.order.as_str())?.is_some();
            let ship = !frozen && rec.status == FulfillmentState::Packed && rec.status.next(Step::Ship).is_ok();
            todo.push((c, ship));
        }
        let mut shipped = Vec::new();
        for (mut c, ship) in todo {
            c.state = ConsignmentState::Collected;
            tx.save_consignment(&c, Some(ConsignmentState::Manifested))?;
            if ship {
                let tracking = c.tracking.clone().unwrap_or_else(|| c.id.clone());
                tx.ship(c.order.clone(), c.carrier.clone(), tracking)?;
                shipped.push(c.order);
            }
        }
        m.collected_ms = Some(tx.now_ms);
        tx.manifests.insert(m.id.as_str(), enc(&m)?.as_slice())?;
        Ok(Collected { manifest: m, shipped })
    }
}

impl Store {
    /// One manifest.
    pub fn manifest(&self, id: &str) -> Result<Option<Manifest>, StoreError> {
        use redb::ReadableDatabase;
        let t = self.db.begin_read()?.open_table(MANIFESTS)?;
        t.get(id)?.map(|v| dec("manifests", v.value())).transpose()
    }
}
