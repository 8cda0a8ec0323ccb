//! The demand index: daily demand per SKU × site and per SKU, built from the hub's order documents.
//!
//! Two daily series per SKU × fulfilling site and per SKU for the whole network ([`Basis`]):
//!
//! - *ordered*: the ordered quantity of each order line, bucketed by the UTC day of the order's acceptance
//!   time (`created_at_ms`). Orders not yet answered by their site (no progress) count: the customer asked
//!   for the goods.
//! - *shipped*: the units the site reports shipped per line (`Progress::lines[].shipped`), bucketed by the
//!   UTC day of the carrier hand-over, i.e. the first `shipped` entry of the order's timeline (the
//!   `delivered` entry if a node never wrote one). Shipped units without either entry are counted in
//!   [`DemandIndex::shipments_undated`] and left out.
//!
//! Orders whose node status is `cancelled` or `rejected` are left out of both (a rejected order is re-routed
//! as another order, so counting it would count the demand twice). Only complete days are used: a series
//! runs from its first day with demand to yesterday (UTC), zero-filled, at most [`HISTORY_DAYS_MAX`] days;
//! day 0 of a forecast is today. Days are epoch days (days since 1970-01-01, UTC; [`DAY_MS`], [`iso_date`]).

use std::collections::BTreeMap;

use oms_protocol::domain::FulfillmentState;
use oms_protocol::schema;

#[cfg(test)]
use super::ledger::Entry;
#[cfg(test)]
use crate::docs::HubDocs;

/// One day in milliseconds.
pub(crate) const DAY_MS: u64 = 86_400_000;
/// Longest history used, in days.
pub(crate) const HISTORY_DAYS_MAX: u64 = 730;
/// Most order documents scanned for one index.
pub(crate) const ORDERS_SCAN_MAX: usize = 2_000_000;
/// Order documents read per page while scanning.
#[cfg(test)]
const SCAN_PAGE: usize = 10_000;
/// Most SKU × site series kept; further pairs are dropped and the index is marked truncated.
pub(crate) const SERIES_MAX: usize = 200_000;

/// Which quantities a demand history counts: units ordered or units shipped (see the `demand::history`
/// module docs for the day each is counted on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Basis {
    /// Units ordered, on the day the order was accepted.
    #[default]
    Ordered,
    /// Units shipped, on the day they were handed to the carrier.
    Shipped,
}

impl Basis {
    /// `ordered` or `shipped`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Basis::Ordered => "ordered",
            Basis::Shipped => "shipped",
        }
    }

    /// Parses `ordered` or `shipped`.
    pub(crate) fn parse(s: &str) -> Option<Basis> {
        match s {
            "ordered" => Some(Basis::Ordered),
            "shipped" => Some(Basis::Shipped),
            _ => None,
        }
    }
}

/// Sparse daily demand of one series: epoch day → units.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Series {
    days: BTreeMap<u64, f64>,
}

impl Series {
    fn add(&mut self, day: u64, qty: f64) {
        *self.days.entry(day).or_insert(0.0) += qty;
    }

    /// First epoch day with demand.
    fn first_day(&self) -> Option<u64> {
        self.days.keys().next().copied()
    }

    /// Zero-filled daily demand from the first demand day to `end_day` (exclusive).
    fn dense(&self, end_day: u64) -> Vec<f64> {
        let Some(first) = self.first_day() else { return Vec::new() };
        // cannot truncate (`as usize` here and below): `add_order`, `add_shipment` and the ledger's `index`
        // keep only days in [today − HISTORY_DAYS_MAX, today), and `end_day` is `today`, so both spans are at
        // most 730 days.
        let mut out = vec![0.0; end_day.saturating_sub(first) as usize];
        for (&d, &q) in self.days.range(first..end_day) {
            if let Some(slot) = out.get_mut((d - first) as usize) {
                *slot += q;
            }
        }
        out
    }
}

/// A daily demand history ready to forecast.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct History {
    /// Epoch day of the first value.
    pub(crate) start_day: u64,
    /// Daily units, oldest first; the last value is yesterday's.
    pub(crate) values: Vec<f64>,
}

/// Demand per SKU × site and per SKU, built from order documents. See the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DemandIndex {
    /// Epoch day the index was built for ("today"); history ends the day before.
    pub(crate) today: u64,
    /// (sku, site) → series.
    by_site: BTreeMap<(String, String), Series>,
    /// sku → network series.
    network: BTreeMap<String, Series>,
    /// (sku, site) → shipped units per day.
    shipped_by_site: BTreeMap<(String, String), Series>,
    /// sku → shipped units per day, whole network.
    shipped_network: BTreeMap<String, Series>,
    /// Orders with shipped units but no shipment time in their timeline (left out of the shipped series).
    shipments_undated: u64,
    /// Order documents read.
    orders_scanned: u64,
    /// Orders left out as cancelled or rejected.
    orders_excluded: u64,
    /// Order documents that could not be read.
    orders_unreadable: u64,
    /// Some orders or series were dropped by the bounds.
    pub(crate) truncated: bool,
}

impl DemandIndex {
    /// An empty index for epoch day `today`.
    pub(crate) fn new(today: u64) -> DemandIndex {
        DemandIndex { today, ..DemandIndex::default() }
    }

    /// Adds one order: accepted at `created_at_ms` for `site`, with node status `status` (`None` if the site
    /// has not answered yet) and `(sku, qty)` lines. Returns true if it counted as demand.
    #[cfg(test)]
    pub(crate) fn add_order<'a>(
        &mut self,
        site: &str,
        created_at_ms: u64,
        status: Option<FulfillmentState>,
        lines: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> bool {
        self.orders_scanned += 1;
        if matches!(status, Some(FulfillmentState::Cancelled | FulfillmentState::Rejected)) {
            self.orders_excluded += 1;
            return false;
        }
        let day = created_at_ms / DAY_MS;
        if day >= self.today || day < self.today.saturating_sub(HISTORY_DAYS_MAX) {
            return false;
        }
        for (sku, qty) in lines {
            let key = (sku.to_owned(), site.to_owned());
            if !self.by_site.contains_key(&key) && self.by_site.len() >= SERIES_MAX {
                self.truncated = true;
                continue;
            }
            self.by_site.entry(key).or_default().add(day, f64::from(qty));
            self.network.entry(sku.to_owned()).or_default().add(day, f64::from(qty));
        }
        true
    }

    /// Adds the units an order shipped from `site` on the day of `shipped_at_ms` (call only for orders that
    /// [`DemandIndex::add_order`] counted). Returns true if the day is inside the history window.
    #[cfg(test)]
    fn add_shipment<'a>(
        &mut self,
        site: &str,
        shipped_at_ms: u64,
        lines: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> bool {
        let day = shipped_at_ms / DAY_MS;
        if day >= self.today || day < self.today.saturating_sub(HISTORY_DAYS_MAX) {
            return false;
        }
        for (sku, qty) in lines {
            if qty == 0 {
                continue;
            }
            let key = (sku.to_owned(), site.to_owned());
            if !self.shipped_by_site.contains_key(&key) && self.shipped_by_site.len() >= SERIES_MAX {
                self.truncated = true;
                continue;
            }
            self.shipped_by_site.entry(key).or_default().add(day, f64::from(qty));
            self.shipped_network.entry(sku.to_owned()).or_default().add(day, f64::from(qty));
        }
        true
    }

    /// Adds an order's shipped units from its progress (see the module docs for the day used).
    #[cfg(test)]
    fn add_progress(&mut self, site: &str, progress: &schema::Progress) {
        match shipment(progress) {
            Shipment::Nothing => {}
            Shipment::Undated => self.shipments_undated += 1,
            Shipment::On(day, lines) => {
                self.add_shipment(site, day * DAY_MS, lines.iter().map(|(s, q)| (s.as_str(), *q)));
            }
        }
    }

    /// Adds what one order document's entry says.
    #[cfg(test)]
    fn add_entry(&mut self, entry: &Entry) {
        let Entry::Order { site, ordered_day, excluded, lines, shipped, undated } = entry else {
            self.orders_unreadable += 1;
            return;
        };
        let status = excluded.then_some(FulfillmentState::Cancelled);
        self.add_order(site, ordered_day * DAY_MS, status, lines.iter().map(|(s, q)| (s.as_str(), *q)));
        if *excluded {
            return;
        }
        if *undated {
            self.shipments_undated += 1;
        }
        if let Some((day, lines)) = shipped {
            self.add_shipment(site, day * DAY_MS, lines.iter().map(|(s, q)| (s.as_str(), *q)));
        }
    }

    /// Scans the hub's order documents: the full rebuild, which the incremental ledger
    /// ([`super::ledger::Ledger`]) must equal. Holds the documents' lock for the whole scan: for tests.
    #[cfg(test)]
    pub(crate) fn build(docs: &HubDocs, today: u64) -> DemandIndex {
        let mut index = DemandIndex::new(today);
        let mut after: Option<String> = None;
        let mut seen = 0usize;
        loop {
            let ids = docs.order_ids(None, after.as_deref(), SCAN_PAGE);
            for d in &ids {
                let Some(doc) = docs.get(d) else { continue };
                index.add_entry(&Entry::of(&doc, d));
            }
            seen += ids.len();
            if ids.len() < SCAN_PAGE {
                break;
            }
            if seen >= ORDERS_SCAN_MAX {
                index.truncated = true;
                break;
            }
            after = ids.last().and_then(|d| d.as_str().strip_prefix(schema::ORDER_PREFIX)).map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        index
    }

    /// Puts the ordered units of one SKU × site (`key`) per day, as the ledger summed them; days outside the
    /// window are the caller's to leave out.
    pub(crate) fn put_ordered(&mut self, key: &(String, String), days: impl Iterator<Item = (u64, u64)>) {
        self.put(Basis::Ordered, key, days);
    }

    /// Puts the shipped units of one SKU × site per day, as [`DemandIndex::put_ordered`].
    pub(crate) fn put_shipped(&mut self, key: &(String, String), days: impl Iterator<Item = (u64, u64)>) {
        self.put(Basis::Shipped, key, days);
    }

    fn put(&mut self, basis: Basis, key: &(String, String), days: impl Iterator<Item = (u64, u64)>) {
        let (by_site, network) = match basis {
            Basis::Ordered => (&mut self.by_site, &mut self.network),
            Basis::Shipped => (&mut self.shipped_by_site, &mut self.shipped_network),
        };
        let mut days = days.peekable();
        if days.peek().is_none() {
            return;
        }
        if !by_site.contains_key(key) && by_site.len() >= SERIES_MAX {
            self.truncated = true;
            return;
        }
        let series = by_site.entry(key.clone()).or_default();
        let net = network.entry(key.0.clone()).or_default();
        for (day, units) in days {
            // cannot lose precision: units per day are far below 2^53.
            let units = units as f64;
            series.add(day, units);
            net.add(day, units);
        }
    }

    /// Sets the counts of orders read, excluded and unreadable and of undated shipments.
    pub(crate) fn set_counts(&mut self, read: u64, excluded: u64, unreadable: u64, undated: u64) {
        self.orders_scanned = read;
        self.orders_excluded = excluded;
        self.orders_unreadable = unreadable;
        self.shipments_undated = undated;
    }

    /// The ordered series of `sku` at `site`, or for the network when `site` is `None`.
    pub(crate) fn series(&self, sku: &str, site: Option<&str>) -> Option<&Series> {
        self.series_of(Basis::Ordered, sku, site)
    }

    /// The series of `sku` at `site` (network when `None`) on `basis`.
    fn series_of(&self, basis: Basis, sku: &str, site: Option<&str>) -> Option<&Series> {
        let (by_site, network) = match basis {
            Basis::Ordered => (&self.by_site, &self.network),
            Basis::Shipped => (&self.shipped_by_site, &self.shipped_network),
        };
        match site {
            Some(site) => by_site.get(&(sku.to_owned(), site.to_owned())),
            None => network.get(sku),
        }
    }

    /// The dense ordered history of `sku` at `site` (network when `None`). Only the tests read the ordered
    /// basis without naming it; the crate calls [`DemandIndex::history_of`].
    #[cfg(test)]
    fn history(&self, sku: &str, site: Option<&str>) -> Option<History> {
        self.history_of(Basis::Ordered, sku, site)
    }

    /// The dense history of `sku` at `site` (network when `None`) on `basis`.
    pub(crate) fn history_of(&self, basis: Basis, sku: &str, site: Option<&str>) -> Option<History> {
        let s = self.series_of(basis, sku, site)?;
        Some(History { start_day: s.first_day()?, values: s.dense(self.today) })
    }

    /// The (sku, site) pairs with a history on `basis`.
    pub(crate) fn pairs(&self, basis: Basis) -> impl Iterator<Item = &(String, String)> {
        match basis {
            Basis::Ordered => self.by_site.keys(),
            Basis::Shipped => self.shipped_by_site.keys(),
        }
    }

    /// True if some order was fulfilled by `site`.
    pub(crate) fn has_site(&self, site: &str) -> bool {
        self.by_site.keys().chain(self.shipped_by_site.keys()).any(|(_, s)| s == site)
    }
}

/// What an order's progress shipped: nothing, units without a hand-over day, or units on an epoch day.
pub(crate) enum Shipment {
    /// No unit shipped.
    Nothing,
    /// Units shipped, but the timeline has neither a `shipped` nor a `delivered` entry.
    Undated,
    /// (epoch day of the hand-over, (sku, units shipped) of the lines that shipped any).
    On(u64, Vec<(String, u32)>),
}

/// What `progress` shipped and on which day (see the module docs for the day used).
pub(crate) fn shipment(progress: &schema::Progress) -> Shipment {
    if !progress.lines.iter().any(|l| l.shipped > 0) {
        return Shipment::Nothing;
    }
    let at = |status: FulfillmentState| progress.timeline.iter().find(|e| e.status == status).map(|e| e.at_ms);
    match at(FulfillmentState::Shipped).or_else(|| at(FulfillmentState::Delivered)) {
        Some(ms) => Shipment::On(
            ms / DAY_MS,
            progress.lines.iter().filter(|l| l.shipped > 0).map(|l| (l.sku.as_str().to_owned(), l.shipped)).collect(),
        ),
        None => Shipment::Undated,
    }
}

/// ISO 8601 date (`YYYY-MM-DD`) of an epoch day (days since 1970-01-01, UTC).
pub(crate) fn iso_date(day: u64) -> String {
    // Howard Hinnant's civil_from_days. Callers pass days of u64 millisecond timestamps (at most
    // u64::MAX / DAY_MS, ~2.1e11) plus a horizon, far inside i64; a day beyond that saturates instead of
    // wrapping into a negative year (or overflowing the addition).
    let z = i64::try_from(day).unwrap_or(i64::MAX).saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::stock::StockIndex;
    use crate::demand::test_support::{TODAY, TestOrder, hub_docs};
    use oms_protocol::domain::Sku;
    use oms_protocol::records::{FulfillmentLine, TimelineEntry};
    use oms_sync::DocDb;

    #[test]
    fn history_sums_per_day_and_excludes_cancelled_and_rejected() {
        use FulfillmentState::*;
        let dir = tempfile::tempdir().unwrap();
        let orders: &[TestOrder] = &[
            ("wh1", 1, TODAY - 3, 1, Accepted, &[("A", 2), ("B", 1)]),
            ("wh1", 2, TODAY - 3, 23, Shipped, &[("A", 3)]),
            ("wh1", 3, TODAY - 2, 5, Cancelled, &[("A", 100)]),
            ("wh1", 4, TODAY - 1, 5, Rejected, &[("A", 100)]),
            ("wh1", 5, TODAY - 1, 6, Delivered, &[("A", 4)]),
            ("wh2", 1, TODAY - 2, 6, Picking, &[("A", 7)]),
            // Today's orders are not part of the (complete-day) history.
            ("wh1", 6, TODAY, 1, Accepted, &[("A", 50)]),
        ];
        let docs = hub_docs(dir.path(), orders, &[]);
        let idx = DemandIndex::build(&docs, TODAY);
        assert_eq!(idx.orders_scanned, 7);
        assert_eq!(idx.orders_excluded, 2);
        let h = idx.history("A", Some("wh1")).unwrap();
        assert_eq!(h.start_day, TODAY - 3);
        assert_eq!(h.values, vec![5.0, 0.0, 4.0]);
        assert_eq!(idx.history("B", Some("wh1")).unwrap().values, vec![1.0, 0.0, 0.0]);
        assert_eq!(idx.history("A", Some("wh2")).unwrap().values, vec![7.0, 0.0]);
        assert_eq!(idx.history("A", None).unwrap().values, vec![5.0, 7.0, 4.0]);
        assert!(idx.history("C", None).is_none());
        // Shipped: order 2 (3 A, accepted day −3 at 23:00) shipped 30 h later, on day −1; order 5 (delivered,
        // 4 A, day −1 at 06:00) on day 0, which is not complete yet. The cancelled and rejected orders ship nothing.
        let s = idx.history_of(Basis::Shipped, "A", Some("wh1")).unwrap();
        assert_eq!((s.start_day, s.values.clone()), (TODAY - 1, vec![3.0]));
        assert!(idx.history_of(Basis::Shipped, "B", Some("wh1")).is_none());
        assert!(idx.history_of(Basis::Shipped, "A", Some("wh2")).is_none());
        assert_eq!(idx.history_of(Basis::Shipped, "A", None).unwrap().values, vec![3.0]);
        assert_eq!(idx.shipments_undated, 0);
    }

    #[test]
    fn a_scan_keeps_no_document_loaded() {
        use FulfillmentState::*;
        let dir = tempfile::tempdir().unwrap();
        let orders: &[TestOrder] =
            &[("wh1", 1, TODAY - 2, 1, Accepted, &[("A", 2)]), ("wh1", 2, TODAY - 1, 1, Picking, &[("A", 3)])];
        let mut docs = hub_docs(dir.path(), orders, &[("wh1", "A", 9)]);
        docs.flush().unwrap();
        drop(docs);
        // A hub opened over a million documents loads none of them; a demand scan must not load them all.
        let docs = HubDocs::new(DocDb::open(&dir.path().join("hub.redb"), vec![8; 16], 100_000).unwrap()).unwrap();
        assert_eq!(docs.db().loaded(), 0);
        let idx = DemandIndex::build(&docs, TODAY);
        assert_eq!(idx.history("A", Some("wh1")).unwrap().values, vec![2.0, 3.0]);
        assert_eq!(StockIndex::build(&docs).available("A", Some("wh1")), 9);
        assert_eq!(docs.db().loaded(), 0, "the scan left documents loaded");
    }

    #[test]
    fn shipped_units_follow_the_timeline_not_the_order() {
        use oms_protocol::schema::Progress;
        let line = |sku: &str, qty, shipped| FulfillmentLine {
            sku: Sku::parse(sku).unwrap(),
            qty,
            picked: Some(shipped),
            shipped,
            returned: 0,
        };
        let entry = |day: u64, status| TimelineEntry { at_ms: day * DAY_MS + 1, status, note: String::new() };
        let progress = |lines, timeline| Progress {
            status: FulfillmentState::Shipped,
            lines,
            wave: None,
            parcels: None,
            shipment: None,
            returns: vec![],
            timeline,
        };
        let mut idx = DemandIndex::new(TODAY);
        // Short-shipped: 10 ordered, 7 shipped two days later.
        idx.add_progress(
            "wh1",
            &progress(
                vec![line("A", 10, 7)],
                vec![entry(TODAY - 5, FulfillmentState::Accepted), entry(TODAY - 3, FulfillmentState::Shipped)],
            ),
        );
        // No `shipped` entry, only `delivered`: the delivery day stands in.
        idx.add_progress("wh1", &progress(vec![line("A", 2, 2)], vec![entry(TODAY - 2, FulfillmentState::Delivered)]));
        // No date at all: counted as undated, not guessed.
        idx.add_progress("wh1", &progress(vec![line("A", 5, 5)], vec![]));
        // Nothing shipped: nothing to date.
        idx.add_progress("wh1", &progress(vec![line("A", 5, 0)], vec![]));
        let s = idx.history_of(Basis::Shipped, "A", Some("wh1")).unwrap();
        assert_eq!((s.start_day, s.values), (TODAY - 3, vec![7.0, 2.0, 0.0]));
        assert_eq!(idx.shipments_undated, 1);
        assert!(idx.history("A", Some("wh1")).is_none(), "ordered units come from add_order only");
    }

    #[test]
    fn history_is_bounded_to_the_window() {
        let mut idx = DemandIndex::new(TODAY);
        assert!(!idx.add_order("wh1", (TODAY - HISTORY_DAYS_MAX - 1) * DAY_MS, None, [("A", 1)]));
        assert!(idx.add_order("wh1", (TODAY - HISTORY_DAYS_MAX) * DAY_MS, None, [("A", 1)]));
        assert_eq!(idx.history("A", None).unwrap().values.len(), HISTORY_DAYS_MAX as usize);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(20_000), "2024-10-04");
        assert_eq!(iso_date(19_782), "2024-02-29");
        assert_eq!(iso_date(10_957), "2000-01-01");
        // Days beyond i64 saturate: u64::MAX used to wrap to day −1 (1969-12-31), and i64::MAX overflowed.
        assert_ne!(iso_date(u64::MAX), "1969-12-31");
        assert_eq!(iso_date(u64::MAX), iso_date(u64::MAX / 2));
    }
}
