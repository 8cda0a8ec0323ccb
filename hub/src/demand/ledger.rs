//! The demand ledger: what each order document adds to the demand, kept up to date one changed document
//! at a time, and the daily units per SKU × site summed over them.
//!
//! The hub notes every order document a node or the hub itself changes
//! ([`crate::docs::HubDocs::take_order_changes`]); the ledger reads those documents again (a few per hold of
//! the documents' lock, see [`crate::demand::DemandCache`]), takes each one's old contribution out of the sums
//! and puts its new one in. A [`DemandIndex`] for a day is then cut from the sums ([`Ledger::index`]): the
//! history window is applied there, so a new day costs no document read. The sums are integers, so taking a
//! contribution out gives back exactly what was there before it went in, and the result equals a full
//! rebuild (`DemandIndex::build`) over the same documents (a property test says so).

use std::collections::{BTreeMap, HashMap};

use oms_protocol::domain::FulfillmentState;
use oms_protocol::schema;
use oms_protocol::sync::automerge::AutoCommit;
use oms_protocol::wire::DocId;

use super::history::{DemandIndex, HISTORY_DAYS_MAX, ORDERS_SCAN_MAX, Shipment, shipment};

/// What one order document adds to the demand (see the `demand::history` module docs for the rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A readable order.
    Order {
        /// The fulfilling site.
        site: String,
        /// Epoch day of acceptance.
        ordered_day: u64,
        /// Cancelled or rejected: counts as read and excluded, adds nothing.
        excluded: bool,
        /// Ordered (sku, units).
        lines: Vec<(String, u32)>,
        /// Shipped units and the epoch day of the hand-over; `None` if nothing shipped or no day is known.
        shipped: Option<(u64, Vec<(String, u32)>)>,
        /// Units shipped but no hand-over day in the timeline.
        undated: bool,
    },
    /// An order document that does not read.
    Unreadable,
}

impl Entry {
    /// The entry of order document `id`.
    pub(crate) fn of(doc: &AutoCommit, id: &DocId) -> Entry {
        let view = match schema::read_order(doc, id.as_str()) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(doc = %id, error = %e, "order document skipped for demand");
                return Entry::Unreadable;
            }
        };
        let status = view.progress.as_ref().map(|p| p.status);
        let excluded = matches!(status, Some(FulfillmentState::Cancelled | FulfillmentState::Rejected));
        let (shipped, undated) = match view.progress.as_ref().filter(|_| !excluded).map(shipment) {
            Some(Shipment::On(day, lines)) => (Some((day, lines)), false),
            Some(Shipment::Undated) => (None, true),
            Some(Shipment::Nothing) | None => (None, false),
        };
        Entry::Order {
            site: view.site.as_str().to_owned(),
            ordered_day: view.created_at_ms / super::DAY_MS,
            excluded,
            lines: view.draft.lines.iter().map(|l| (l.sku.as_str().to_owned(), l.qty)).collect(),
            shipped,
            undated,
        }
    }
}

/// Units per epoch day of one SKU × site.
type Days = BTreeMap<u64, u64>;

/// The entries of every order document read, and their sums. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    entries: HashMap<DocId, Entry>,
    /// (sku, site) → day → units ordered.
    ordered: BTreeMap<(String, String), Days>,
    /// (sku, site) → day → units shipped.
    shipped: BTreeMap<(String, String), Days>,
    orders_read: u64,
    orders_excluded: u64,
    orders_unreadable: u64,
    shipments_undated: u64,
    /// More than [`ORDERS_SCAN_MAX`] order documents: the rest are left out.
    pub(crate) truncated: bool,
    /// Bumped by every change of the sums.
    pub(crate) version: u64,
}

/// Adds (`sign` true) or takes out `units` of `key` on `day`, dropping what reaches zero.
fn bump(sums: &mut BTreeMap<(String, String), Days>, key: (String, String), day: u64, units: u64, sign: bool) {
    if units == 0 {
        return;
    }
    if sign {
        *sums.entry(key).or_default().entry(day).or_insert(0) += units;
        return;
    }
    let Some(days) = sums.get_mut(&key) else { return };
    if let Some(v) = days.get_mut(&day) {
        *v = v.saturating_sub(units);
        if *v == 0 {
            days.remove(&day);
        }
    }
    if days.is_empty() {
        sums.remove(&key);
    }
}

impl Ledger {
    /// Forgets every entry (before all orders are read again); the version moves on.
    pub(crate) fn clear(&mut self) {
        let version = self.version.wrapping_add(1);
        *self = Ledger { version, ..Ledger::default() };
    }

    /// Puts `entry` in for `doc` (replacing what it held), or takes `doc` out (`None`: removed).
    pub(crate) fn set(&mut self, doc: &DocId, entry: Option<Entry>) {
        if self.entries.get(doc) == entry.as_ref() {
            return;
        }
        if entry.is_some() && !self.entries.contains_key(doc) && self.entries.len() >= ORDERS_SCAN_MAX {
            self.truncated = true;
            return;
        }
        self.version = self.version.wrapping_add(1);
        if let Some(old) = self.entries.remove(doc) {
            self.apply(&old, false);
        }
        if let Some(new) = entry {
            self.apply(&new, true);
            self.entries.insert(doc.clone(), new);
        }
    }

    fn apply(&mut self, entry: &Entry, sign: bool) {
        let count = |c: &mut u64, yes: bool| {
            if yes {
                *c = if sign { *c + 1 } else { c.saturating_sub(1) };
            }
        };
        let Entry::Order { site, ordered_day, excluded, lines, shipped, undated } = entry else {
            count(&mut self.orders_unreadable, true);
            return;
        };
        count(&mut self.orders_read, true);
        count(&mut self.orders_excluded, *excluded);
        count(&mut self.shipments_undated, *undated);
        if *excluded {
            return;
        }
        for (sku, qty) in lines {
            bump(&mut self.ordered, (sku.clone(), site.clone()), *ordered_day, u64::from(*qty), sign);
        }
        if let Some((day, lines)) = shipped {
            for (sku, qty) in lines {
                bump(&mut self.shipped, (sku.clone(), site.clone()), *day, u64::from(*qty), sign);
            }
        }
    }

    /// The demand index for epoch day `today`: the sums cut to the history window (no document read).
    pub(crate) fn index(&self, today: u64) -> DemandIndex {
        let mut index = DemandIndex::new(today);
        let window = today.saturating_sub(HISTORY_DAYS_MAX)..today;
        for (key, days) in &self.ordered {
            index.put_ordered(key, days.range(window.clone()).map(|(d, u)| (*d, *u)));
        }
        for (key, days) in &self.shipped {
            index.put_shipped(key, days.range(window.clone()).map(|(d, u)| (*d, *u)));
        }
        index.set_counts(self.orders_read, self.orders_excluded, self.orders_unreadable, self.shipments_undated);
        index.truncated |= self.truncated;
        index
    }
}
