//! Reports: orders per channel and day, the fill rate at intake, backorders, cancellations, shipments on time
//! against the site's promise, the time from order to ship (p50 / p90), deliveries and returns, per site and
//! for the network, over a chosen period (`GET /v1/reports`, CSV with `format=csv`, and the planner's
//! `/ui/reports` screen in [`screen`]).
//!
//! **A fold over the event log, in each event's own transaction.** [`crate::events::append`] hands every
//! event it appends to [`Days::fold`], inside the write transaction of the change the event reports. So a day's
//! figures change exactly when the change commits: a shipment re-read from a re-synced document appends no
//! second event and so counts once; a change that a crash undoes was never counted. Figures are kept per
//! (UTC day, site, channel) in `report_days` (JSON, so a later version adds fields without a migration);
//! order-level figures (orders, units, fill at intake, cancellations) are kept under the site `""`, a
//! fulfillment's (routed, shipped, on time, time to ship, delivered, returned) under its site.
//!
//! **Reads never stall sync or intake**: a report reads at most days × rows-per-day rows of `report_days` in a
//! read transaction of `intake.redb` (redb's MVCC: writers go on), and never an order, a document or the
//! documents' lock. [`PERIOD_DAYS_MAX`] and [`ROWS_MAX`] bound it.
//!
//! **Definitions** (what a planner reads on the screen):
//! - *fill rate*: units the network placed at intake ÷ units ordered, on the order's day (the rest were
//!   backordered or held);
//! - *on time*: a fulfillment shipped (by the site's clock, as its document says) no later than the ship-by
//!   the site promised when it was assigned; fulfillments assigned without a promise (a site with no schedule)
//!   are not in the ratio;
//! - *time to ship*: from the order's intake at the hub to the site's shipment, counted on the shipment's
//!   day; kept as a histogram of four buckets per doubling from one second (bucket `i` holds
//!   [1 s · 2^(i/4), 1 s · 2^((i+1)/4)), the first from 0, the last open above 2^24 s, about 194 days), so a
//!   percentile is its bucket's geometric middle, within 9.1 % of the exact figure. Clocks differ by site: a
//!   negative span counts as 0;
//! - *returns rate*: returns received ÷ fulfillments shipped in the same period. A return is an RMA, counted
//!   once on the day (and at the site) its first units arrived (`return.received` with `first`); its units
//!   are counted as each receipt arrives (`units_returned`). An RMA is for one fulfillment, so the rate is
//!   the share of shipped fulfillments that came back.
//!
//! Figures start when this version first ran: a store from before has no rows for earlier days (the screen
//! says from when figures exist, `since`).

pub mod screen;

use std::collections::BTreeMap;

use oms_service::storage::StorageError;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::Event;

/// (UTC day since the Unix epoch, site or `""`, channel) → [`Figures`] (JSON).
const DAYS: TableDefinition<(u32, &str, &str), &[u8]> = TableDefinition::new("report_days");
/// `"since"` → the first day with figures.
const META: TableDefinition<&str, u32> = TableDefinition::new("report_meta");

/// Longest period one report covers, days.
pub const PERIOD_DAYS_MAX: u32 = 366;
/// Most rows one report reads (days × sites × channels); a larger report is refused: narrow the period.
pub const ROWS_MAX: usize = 200_000;
/// Buckets of the time-to-ship histogram: 4 per doubling from one second, the last open-ended (≥ 2^(95/4) s,
/// about 160 days).
pub const SHIP_TIME_BUCKETS: usize = 96;
const MS_PER_DAY: u64 = 86_400_000;

/// What one (day, site, channel) counts. Every field defaults, so rows written by an earlier version read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Figures {
    /// Orders taken (site `""` only).
    pub orders: u64,
    /// Units ordered.
    pub units_ordered: u64,
    /// Units placed at a site at intake.
    pub units_placed_at_intake: u64,
    /// Orders whose customer cancelled.
    pub cancellations: u64,
    /// Fulfillments assigned to the site (intake or later).
    pub fulfillments_routed: u64,
    /// Units assigned to the site.
    pub units_routed: u64,
    /// Fulfillments shipped.
    pub shipped: u64,
    /// Of those, with a promised ship-by.
    pub shipped_with_promise: u64,
    /// Of those, shipped by the promise.
    pub shipped_on_time: u64,
    /// Time-to-ship histogram: bucket → fulfillments (sparse).
    pub ship_time: BTreeMap<u8, u64>,
    /// Fulfillments delivered.
    pub delivered: u64,
    /// Returns received at the site: RMAs, on the day their first units arrived.
    pub returns: u64,
    /// Units in them.
    pub units_returned: u64,
}

impl Figures {
    /// Adds `o` to these figures.
    pub fn add(&mut self, o: &Figures) {
        self.orders += o.orders;
        self.units_ordered += o.units_ordered;
        self.units_placed_at_intake += o.units_placed_at_intake;
        self.cancellations += o.cancellations;
        self.fulfillments_routed += o.fulfillments_routed;
        self.units_routed += o.units_routed;
        self.shipped += o.shipped;
        self.shipped_with_promise += o.shipped_with_promise;
        self.shipped_on_time += o.shipped_on_time;
        for (b, n) in &o.ship_time {
            *self.ship_time.entry(*b).or_default() += n;
        }
        self.delivered += o.delivered;
        self.returns += o.returns;
        self.units_returned += o.units_returned;
    }

    /// The figures with their rates and percentiles, as reports show them.
    pub fn view(&self) -> FiguresView {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        FiguresView {
            orders: self.orders,
            units_ordered: self.units_ordered,
            fill_rate: ratio(self.units_placed_at_intake, self.units_ordered),
            // An order placed nowhere at intake appends no `order.routed`: what was not placed waited.
            units_backordered_at_intake: self.units_ordered.saturating_sub(self.units_placed_at_intake),
            cancellations: self.cancellations,
            cancellation_rate: ratio(self.cancellations, self.orders),
            units_routed: self.units_routed,
            shipped: self.shipped,
            on_time_rate: ratio(self.shipped_on_time, self.shipped_with_promise),
            ship_time_p50_s: percentile(&self.ship_time, 0.5).map(|ms| ms / 1_000),
            ship_time_p90_s: percentile(&self.ship_time, 0.9).map(|ms| ms / 1_000),
            delivered: self.delivered,
            returns: self.returns,
            units_returned: self.units_returned,
            returns_rate: ratio(self.returns, self.shipped),
        }
    }
}

/// [`Figures`] as a report shows them: counts, rates (0–1, none when nothing to divide by) and times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FiguresView {
    /// Orders taken.
    pub orders: u64,
    /// Units ordered.
    pub units_ordered: u64,
    /// Units placed at intake ÷ units ordered.
    pub fill_rate: Option<f64>,
    /// Units ordered less units placed at intake: backordered or held.
    pub units_backordered_at_intake: u64,
    /// Orders cancelled by the customer.
    pub cancellations: u64,
    /// Cancellations ÷ orders.
    pub cancellation_rate: Option<f64>,
    /// Units assigned to sites.
    pub units_routed: u64,
    /// Fulfillments shipped.
    pub shipped: u64,
    /// Shipped by the promise ÷ shipped with a promise.
    pub on_time_rate: Option<f64>,
    /// Median time from order to ship, seconds.
    pub ship_time_p50_s: Option<u64>,
    /// 90th percentile of the time from order to ship, seconds.
    pub ship_time_p90_s: Option<u64>,
    /// Fulfillments delivered.
    pub delivered: u64,
    /// Returns received.
    pub returns: u64,
    /// Units returned.
    pub units_returned: u64,
    /// Returns ÷ fulfillments shipped.
    pub returns_rate: Option<f64>,
}

/// The bucket of a time to ship of `ms`.
pub fn bucket(ms: u64) -> u8 {
    let seconds = ms as f64 / 1_000.0;
    if seconds < 1.0 {
        return 0;
    }
    let i = (seconds.log2() * 4.0).floor();
    (i as usize).min(SHIP_TIME_BUCKETS - 1) as u8
}

/// The geometric middle of bucket `b`, ms.
fn bucket_middle_ms(b: u8) -> u64 {
    (1_000.0 * 2f64.powf((f64::from(b) + 0.5) / 4.0)) as u64
}

/// The `q` percentile (0–1) of a histogram, ms; none if it is empty.
pub fn percentile(h: &BTreeMap<u8, u64>, q: f64) -> Option<u64> {
    let total: u64 = h.values().sum();
    if total == 0 {
        return None;
    }
    // The smallest bucket at which the running count reaches q of the total (nearest rank).
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (b, n) in h {
        seen += n;
        if seen >= rank {
            return Some(bucket_middle_ms(*b));
        }
    }
    None
}

/// The UTC day of `ms`.
pub fn day_of(ms: u64) -> u32 {
    u32::try_from(ms / MS_PER_DAY).unwrap_or(u32::MAX)
}

/// Creates the tables (so readers find them) and records the first day with figures.
pub(crate) fn init(w: &redb::WriteTransaction, now_ms: u64) -> Result<(), StorageError> {
    w.open_table(DAYS).map_err(redb::Error::from)?;
    let mut meta = w.open_table(META).map_err(redb::Error::from)?;
    if meta.get("since").map_err(redb::Error::from)?.is_none() {
        meta.insert("since", day_of(now_ms)).map_err(redb::Error::from)?;
    }
    Ok(())
}

/// What the events appended in one write transaction add to the figures' rows: each (day, site, channel)
/// row is read and written once, at [`Days::finish`], however many events of the transaction count in it (an
/// intake batch of a hundred orders from one channel bumps the same row two hundred times: decoding and
/// encoding its JSON each time was a tenth of the intake writer's work). The table is opened only then, and
/// only if an event counted: most one-off appends (a node's acceptance, a payment) count for nothing.
pub struct Days<'t> {
    w: &'t redb::WriteTransaction,
    /// Row → what the transaction's events add to it.
    added: BTreeMap<(u32, String, String), Figures>,
}

impl<'t> Days<'t> {
    /// The figures of events appended in `w`.
    pub(crate) fn open(w: &'t redb::WriteTransaction) -> Days<'t> {
        Days { w, added: BTreeMap::new() }
    }

    /// Folds `event` into the figures (kept until [`Days::finish`]). Events that count for nothing (payments,
    /// nodes) change nothing. `promises` tells when a shipped fulfillment's order was taken and its ship-by.
    pub(crate) fn fold(
        &mut self,
        event: &Event,
        promises: &mut crate::events::Promises<'_>,
    ) -> Result<(), StorageError> {
        let channel = event.channel.as_deref().unwrap_or("");
        let day = day_of(event.created_at_ms);
        let d = &event.data;
        let mut bump = |day: u32, site: &str, change: &dyn Fn(&mut Figures)| {
            change(self.added.entry((day, site.to_owned(), channel.to_owned())).or_default());
        };
        match event.kind.as_str() {
            crate::events::ORDER_CREATED => {
                let units = lines_units(&d["lines"]);
                bump(day, "", &|f| {
                    f.orders += 1;
                    f.units_ordered += units;
                });
            }
            crate::events::ORDER_ROUTED => {
                let placed = d["fulfillments"].as_array().map(Vec::as_slice).unwrap_or_default();
                if d["trigger"].as_str() == Some("intake") {
                    let units: u64 = placed.iter().map(|f| lines_units(&f["lines"])).sum();
                    bump(day, "", &|f| f.units_placed_at_intake += units);
                }
                for p in placed {
                    let units = lines_units(&p["lines"]);
                    bump(day, p["site"].as_str().unwrap_or(""), &|f| {
                        f.fulfillments_routed += 1;
                        f.units_routed += units;
                    });
                }
            }
            crate::events::ORDER_CANCELLED => bump(day, "", &|f| f.cancellations += 1),
            crate::events::FULFILLMENT_SHIPPED => {
                let site = d["site"].as_str().unwrap_or("");
                let shipped_at = d["shipped_at_ms"].as_u64().unwrap_or(event.created_at_ms);
                let (ordered_at, promise) = match (event.order_id.as_deref(), d["fulfillment_id"].as_str()) {
                    (Some(order), Some(fid)) => promises(order, fid)?,
                    _ => (None, None),
                };
                bump(day_of(shipped_at), site, &|f| {
                    f.shipped += 1;
                    if let Some(by) = promise {
                        f.shipped_with_promise += 1;
                        f.shipped_on_time += u64::from(shipped_at <= by);
                    }
                    if let Some(at) = ordered_at {
                        *f.ship_time.entry(bucket(shipped_at.saturating_sub(at))).or_default() += 1;
                    }
                });
            }
            crate::events::ORDER_DELIVERED => bump(day, d["site"].as_str().unwrap_or(""), &|f| f.delivered += 1),
            // One return per RMA (on the receipt that brought its first units), every unit received.
            crate::events::RETURN_RECEIVED => {
                let units = d["units"].as_u64().unwrap_or(0);
                let first = d["first"].as_bool().unwrap_or(false);
                bump(day, d["site"].as_str().unwrap_or(""), &|f| {
                    f.returns += u64::from(first);
                    f.units_returned += units;
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Adds what the events folded add to their rows, each row read and written once.
    pub(crate) fn finish(self) -> Result<(), StorageError> {
        if self.added.is_empty() {
            return Ok(());
        }
        let mut table = self.w.open_table(DAYS).map_err(redb::Error::from)?;
        for ((day, site, channel), added) in self.added {
            let key = (day, site.as_str(), channel.as_str());
            let mut f = match table.get(key).map_err(redb::Error::from)? {
                // A row this version cannot read is started again rather than failing the change it counts.
                Some(v) => serde_json::from_slice(v.value()).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, day, site, "a report row cannot be read; it starts again");
                    Figures::default()
                }),
                None => Figures::default(),
            };
            f.add(&added);
            let bytes = serde_json::to_vec(&f).map_err(|e| StorageError::encode("report figures", e))?;
            table.insert(key, bytes.as_slice()).map_err(redb::Error::from)?;
        }
        Ok(())
    }
}

/// Σ `qty` over a JSON array of lines.
fn lines_units(lines: &Value) -> u64 {
    lines.as_array().map_or(0, |ls| ls.iter().filter_map(|l| l["qty"].as_u64()).sum())
}

/// What a report asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// First day, inclusive.
    pub from: u32,
    /// Last day, inclusive.
    pub to: u32,
    /// Only this site's fulfillment figures (order-level figures are the network's and are left out).
    pub site: Option<String>,
    /// Only this channel.
    pub channel: Option<String>,
}

/// Why a report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The query is malformed or out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// More rows than [`ROWS_MAX`].
    #[error("the report would read more than {ROWS_MAX} rows; choose a shorter period or one site or channel")]
    TooLarge,
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<redb::Error> for ReportError {
    fn from(e: redb::Error) -> Self {
        ReportError::Storage(StorageError::from(e))
    }
}

/// Parses `YYYY-MM-DD` to a UTC day.
pub fn parse_day(s: &str) -> Result<u32, ReportError> {
    let d: jiff::civil::Date =
        s.parse().map_err(|_| ReportError::Invalid(format!("{s:?} is not a date (YYYY-MM-DD)")))?;
    let days = d.since(jiff::civil::date(1970, 1, 1)).map_err(|e| ReportError::Invalid(e.to_string()))?.get_days();
    u32::try_from(days).map_err(|_| ReportError::Invalid(format!("{s} is before 1970")))
}

/// A UTC day as `YYYY-MM-DD`.
pub fn format_day(day: u32) -> String {
    jiff::civil::date(1970, 1, 1)
        .checked_add(jiff::Span::new().days(i64::from(day)))
        .map_or_else(|_| day.to_string(), |d| d.to_string())
}

impl Period {
    /// A period from the query's `from` and `to` (`YYYY-MM-DD`, UTC; default: the 14 days to `today`).
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        site: Option<String>,
        channel: Option<String>,
        today: u32,
    ) -> Result<Period, ReportError> {
        let to = match to {
            Some(s) => parse_day(s)?,
            None => today,
        };
        let from = match from {
            Some(s) => parse_day(s)?,
            None => to.saturating_sub(13),
        };
        if from > to {
            return Err(ReportError::Invalid("`from` is after `to`".into()));
        }
        if to - from >= PERIOD_DAYS_MAX {
            return Err(ReportError::Invalid(format!("a report covers at most {PERIOD_DAYS_MAX} days")));
        }
        let empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(Period { from, to, site: empty(site), channel: empty(channel) })
    }
}

/// A report: the period's figures for the network (or the chosen site), per day, per site and per channel.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// Last day.
    pub to: String,
    /// The site chosen, if any.
    pub site: Option<String>,
    /// The channel chosen, if any.
    pub channel: Option<String>,
    /// The first day this hub has figures for.
    pub since: Option<String>,
    /// The whole period.
    pub total: FiguresView,
    /// Per day, every day of the period.
    pub days: Vec<DayView>,
    /// Per site, the fulfillment figures.
    pub sites: Vec<NamedView>,
    /// Per channel.
    pub channels: Vec<NamedView>,
}

/// One day of a [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DayView {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: FiguresView,
}

/// One site's or channel's figures in a [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NamedView {
    /// The site or channel.
    pub name: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: FiguresView,
}

/// The report for `p`, read in one read transaction of `db` (one consistent commit).
pub fn report(db: &redb::Database, p: &Period) -> Result<Report, ReportError> {
    let r = db.begin_read().map_err(redb::Error::from).map_err(StorageError::from)?;
    let mut days: BTreeMap<u32, Figures> = (p.from..=p.to).map(|d| (d, Figures::default())).collect();
    let mut sites: BTreeMap<String, Figures> = BTreeMap::new();
    let mut channels: BTreeMap<String, Figures> = BTreeMap::new();
    let mut since = None;
    if let Some(meta) = crate::events::read_table(&r, META)? {
        since = meta.get("since").map_err(redb::Error::from)?.map(|v| format_day(v.value()));
    }
    if let Some(t) = crate::events::read_table(&r, DAYS)? {
        let end = p.to.checked_add(1).ok_or_else(|| ReportError::Invalid("`to` is too late".into()))?;
        for (n, row) in t.range((p.from, "", "")..(end, "", "")).map_err(redb::Error::from)?.enumerate() {
            if n >= ROWS_MAX {
                return Err(ReportError::TooLarge);
            }
            let (k, v) = row.map_err(redb::Error::from)?;
            let (day, site, channel) = k.value();
            if p.channel.as_deref().is_some_and(|c| c != channel) {
                continue;
            }
            if p.site.as_deref().is_some_and(|s| s != site) {
                continue;
            }
            let f: Figures = match serde_json::from_slice(v.value()) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, day, site, "a report row cannot be read; left out");
                    continue;
                }
            };
            if let Some(d) = days.get_mut(&day) {
                d.add(&f);
            }
            if !site.is_empty() {
                sites.entry(site.to_owned()).or_default().add(&f);
            }
            channels.entry(channel.to_owned()).or_default().add(&f);
        }
    }
    let mut total = Figures::default();
    for f in days.values() {
        total.add(f);
    }
    let named = |m: BTreeMap<String, Figures>| -> Vec<NamedView> {
        m.into_iter().map(|(name, f)| NamedView { name, figures: f.view() }).collect()
    };
    Ok(Report {
        from: format_day(p.from),
        to: format_day(p.to),
        site: p.site.clone(),
        channel: p.channel.clone(),
        since,
        total: total.view(),
        days: days.into_iter().map(|(d, f)| DayView { day: format_day(d), figures: f.view() }).collect(),
        sites: named(sites),
        channels: named(channels),
    })
}

/// The CSV of a report: one row per day, then one per site and one per channel, then the total (the same
/// figures as the JSON; rates as fractions, times in seconds).
pub fn csv(r: &Report) -> Result<Vec<u8>, StorageError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let enc = |e: csv::Error| StorageError::encode("a report's CSV", e);
    w.write_record([
        "scope",
        "name",
        "orders",
        "units_ordered",
        "fill_rate",
        "units_backordered_at_intake",
        "cancellations",
        "cancellation_rate",
        "units_routed",
        "shipped",
        "on_time_rate",
        "ship_time_p50_s",
        "ship_time_p90_s",
        "delivered",
        "returns",
        "units_returned",
        "returns_rate",
    ])
    .map_err(enc)?;
    let rows = r
        .days
        .iter()
        .map(|d| ("day", d.day.as_str(), &d.figures))
        .chain(r.sites.iter().map(|s| ("site", s.name.as_str(), &s.figures)))
        .chain(r.channels.iter().map(|c| ("channel", c.name.as_str(), &c.figures)))
        .chain(std::iter::once(("total", "", &r.total)));
    for (scope, name, f) in rows {
        let opt = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x:.4}"));
        let optu = |v: Option<u64>| v.map_or_else(String::new, |x| x.to_string());
        w.write_record([
            scope.to_owned(),
            name.to_owned(),
            f.orders.to_string(),
            f.units_ordered.to_string(),
            opt(f.fill_rate),
            f.units_backordered_at_intake.to_string(),
            f.cancellations.to_string(),
            opt(f.cancellation_rate),
            f.units_routed.to_string(),
            f.shipped.to_string(),
            opt(f.on_time_rate),
            optu(f.ship_time_p50_s),
            optu(f.ship_time_p90_s),
            f.delivered.to_string(),
            f.returns.to_string(),
            f.units_returned.to_string(),
            opt(f.returns_rate),
        ])
        .map_err(enc)?;
    }
    w.into_inner().map_err(|e| StorageError::encode("a report's CSV", e.into_error()))
}

#[cfg(test)]
mod tests;
