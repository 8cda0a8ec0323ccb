//! Order routing: which site ships which lines of an order.
//!
//! [`route`] is a pure, deterministic function of the order, a snapshot of the sites ([`SiteView`]) and a
//! [`RoutingPolicy`]. It reads no clock and no database, so the same inputs always give the same decision,
//! the decision can be replayed and explained (`GET /v1/orders/{id}/routing` serves [`RoutingDecision`] as
//! JSON), and it can be property-tested against a brute-force search.
//!
//! # What the hub may promise
//!
//! Only a site's escrowed rights ([`SiteView::promisable`]) count: the hub never promises stock it does not
//! hold rights for, so a plan never assigns a site more of a SKU than that (property-tested). A site is a
//! candidate if it has daily capacity left, holds rights for at least one unit the order needs, matches the
//! order's region when the policy asks, and is among the `nearest_k` such sites by great-circle (Haversine)
//! distance. Stock is read nearest first and only until `nearest_k` sites with stock are found. An unreachable site stays a candidate while it holds rights: escrow makes promising its
//! stock safe. Every other site is listed in the explanation with the reason it was excluded.
//!
//! # Stale sites
//!
//! A site not heard from for longer than `stale_after_ms` (or not reachable now) may be down, so what it is
//! promised may ship late. Its escrow is still safe to spend, so it is not excluded; it is ranked lower:
//! after fill and shipment count, plans with fewer stale sites win. A fresh site that can do as well is
//! always preferred; a stale one is used when it fills more or saves a shipment.
//!
//! # Search
//!
//! Candidates are sorted by distance (then id). The search tries every set of 1, 2, … up to `max_split`
//! candidates and stops after the first size that fills the whole order, so an order is split only when no
//! smaller set can fill it. Within a set, each line is filled from the nearest site that has it:
//!
//! - `split_lines = false` (the default): a line ships whole from one site — the nearest in the set holding
//!   the full quantity, or else the one holding most (nearest on ties), the rest unfilled. One parcel per
//!   line is simpler to pick and to track; splitting happens between lines, not within one.
//! - `split_lines = true`: a line takes what the nearest site has, then the next nearest, and so on.
//!
//! Sets in which some site receives nothing are skipped: the smaller set without it gives the same plan.
//! Plans are compared by, in order: fewest unfilled units, fewest shipments, fewest stale sites, earliest
//! ship day, lowest sum of site priorities, least distance × units, and the sorted site ids (lexicographic).
//! All of these are integers (distances in whole metres, days since 1970), so ties break the same way on
//! every machine and for every input order of the sites.
//!
//! # Promised ship dates
//!
//! Each site may carry a [`SitePromise`] (`SiteView::promise`), computed by the caller from the schedule
//! the site published ([`oms_protocol::shipping::site_promise`]: the first carrier cut-off it can still make
//! given its open work; the intake asks the schedule's cache, `Schedule::promise`, which gives the same). A plan ships when its last site does, so its ship day is the latest of its sites'
//! ([`PlanScore::ship_day`]; a site without a schedule counts as never, `u32::MAX`: a promise nobody made
//! cannot beat one that was). It sits after stock, split and staleness and before priority and distance:
//!
//! - after unfilled units and shipments, because a sooner truck never justifies leaving units unfilled or
//!   sending the customer two parcels where one would do;
//! - after staleness, because a site that may be down makes no truck whatever its schedule says;
//! - before priority and distance, because a day saved at dispatch is worth more than the hours a nearer
//!   site saves in transit, and the customer sees the ship date. It compares the local **day** of the
//!   promise, not the instant, so two sites that both make today's truck tie and distance decides between
//!   them as before; only a site that misses today's cut-off (or is closed) loses to one that makes it.
//!
//! With no site publishing a schedule every plan's ship day is `u32::MAX` and the ranking is the one without
//! schedules. Each candidate's promise is in the explanation (`promised_ship_by_ms`, and `ship_day` in its
//! score), and each assignment carries its site's promise.
//!
//! # What cannot be filled
//!
//! [`ShortfallPolicy`] decides: ship what is there and backorder the rest ([`Outcome::Partial`]), hold the
//! whole order ([`Outcome::Held`]) or reject it ([`Outcome::Rejected`]). An order nothing can be assigned to
//! is held under the backorder policy (there is nothing to ship yet).
//!
//! # Cost
//!
//! Per order: the stock of each line at each site, one distance per eligible site, then at most
//! Σ_{s≤max_split} C(nearest_k, s) sets (175 for the defaults), each scored over the order's lines with no
//! allocation. With 50 sites × 10,000 SKUs the stock reads dominate: [`route`] does one map lookup per site
//! and line, and those miss the CPU caches; [`route_indexed`] reads a [`SiteTable`] (a SKU-major index built
//! once per site snapshot) with one lookup per line, and gives the same decision. See
//! `bench/routing/RESULTS.md`.

use std::collections::HashMap;

use geo::{Distance, Haversine, Point};
use oms_protocol::domain::{GeoPoint, NodeId, Sku};
use oms_protocol::shipping::SitePromise;
use serde::{Deserialize, Serialize};

/// Largest `nearest_k` honoured; larger values are clamped (bounds the search).
pub const NEAREST_K_MAX: usize = 32;
/// Largest `max_split` honoured; larger values are clamped (bounds the search).
pub const MAX_SPLIT_LIMIT: usize = 4;

/// One line to route: a SKU and a quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLine {
    /// What is ordered.
    pub sku: Sku,
    /// How many units.
    pub qty: u32,
}

/// The part of an order routing needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRequest {
    /// The lines. Lines repeating a SKU are routed as one line with the summed quantity.
    pub lines: Vec<RouteLine>,
    /// The delivery point.
    pub ship_to: GeoPoint,
    /// The delivery region, checked against [`SiteView::region`] when the policy asks.
    #[serde(default)]
    pub region: Option<String>,
}

/// What the hub knows about one site when it routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteView {
    /// The site.
    pub id: NodeId,
    /// Where it ships from.
    pub location: GeoPoint,
    /// Preference among otherwise equal plans; lower is preferred.
    pub priority: u32,
    /// Shipments it can still take today.
    pub capacity_left_shipments: u32,
    /// Its region, such as `eu-central`.
    pub region: String,
    /// Connected to the hub right now.
    pub reachable: bool,
    /// Time since the hub last heard from it.
    pub last_heard_age_ms: u64,
    /// Units per SKU the hub may promise: its escrowed rights there. Nothing else counts.
    pub promisable: HashMap<Sku, u32>,
    /// When a shipment routed there now would leave, from the site's shipping schedule; none without one.
    #[serde(default)]
    pub promise: Option<SitePromise>,
}

/// What to do with units no plan within `max_split` can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShortfallPolicy {
    /// Ship what can be filled now and backorder the rest.
    #[default]
    Backorder,
    /// Hold the whole order until it can be filled.
    Hold,
    /// Reject the order.
    Reject,
}

/// Tuning of [`route`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingPolicy {
    /// How many of the nearest eligible sites to consider (at most [`NEAREST_K_MAX`]).
    pub nearest_k: usize,
    /// Most sites one order may ship from (at most [`MAX_SPLIT_LIMIT`]).
    pub max_split: usize,
    /// Whether one line may ship from several sites.
    pub split_lines: bool,
    /// A site not heard from for longer than this is stale and ranked lower.
    pub stale_after_ms: u64,
    /// What to do with units that cannot be filled.
    pub on_shortfall: ShortfallPolicy,
    /// Consider only sites in the order's region (when the order names one).
    pub region_must_match: bool,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        Self {
            nearest_k: 10,
            max_split: 3,
            split_lines: false,
            stale_after_ms: 15 * 60 * 1000,
            on_shortfall: ShortfallPolicy::Backorder,
            region_must_match: false,
        }
    }
}

/// The overall result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every unit assigned.
    Routed,
    /// Some units assigned, the rest backordered.
    Partial,
    /// Nothing assigned; the order waits for stock.
    Held,
    /// Nothing assigned; the order is refused.
    Rejected,
}

/// Units of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkuQty {
    /// The SKU.
    pub sku: Sku,
    /// Units.
    pub qty: u32,
}

/// What one site ships.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    /// The site.
    pub site: NodeId,
    /// Its distance to the delivery point.
    pub distance_km: f64,
    /// The units it ships, in order-line order.
    pub lines: Vec<SkuQty>,
    /// The site's promise for this shipment: ship-by and, per carrier service, the estimated delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promise: Option<SitePromise>,
}

/// How a plan scored; lower is better, compared field by field in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanScore {
    /// Units not filled.
    pub unfilled_units: u64,
    /// Sites shipping.
    pub shipments: u32,
    /// Stale sites shipping.
    pub stale_sites: u32,
    /// The local date (days since 1970-01-01) of the latest promised ship date among the shipping sites;
    /// `u32::MAX` when one of them has no schedule (see the module docs).
    #[serde(default)]
    pub ship_day: u32,
    /// Sum of the shipping sites' priorities.
    pub priority_sum: u64,
    /// Σ units × distance of the site shipping them, in metres.
    pub unit_distance_m: u64,
}

/// A site that was considered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CandidateSite {
    /// The site.
    pub site: NodeId,
    /// Distance to the delivery point.
    pub distance_km: f64,
    /// Its priority.
    pub priority: u32,
    /// Not heard from recently (or unreachable).
    pub stale: bool,
    /// Units of this order it could ship (each line capped at its quantity).
    pub promisable_units: u64,
    /// The score of shipping from this site alone.
    pub alone: PlanScore,
    /// When it would ship, from its schedule, ms since the Unix epoch; none without one.
    #[serde(default)]
    pub promised_ship_by_ms: Option<u64>,
}

/// Why a site was not considered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExclusionReason {
    /// No shipments left today.
    NoCapacity,
    /// Holds no promisable units of any SKU in the order.
    NoStock,
    /// In another region than the order.
    RegionMismatch {
        /// The site's region.
        site_region: String,
    },
    /// Its coordinates give no finite distance.
    InvalidLocation,
    /// Farther than the nearest `nearest_k` sites with stock; its stock was not read.
    NotNearest {
        /// Its rank by distance among sites with capacity, region and location in order (0 = nearest).
        rank: usize,
    },
}

/// A site that was not considered, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExcludedSite {
    /// The site.
    pub site: NodeId,
    /// Why.
    pub reason: ExclusionReason,
}

/// Why the decision is what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Explanation {
    /// Sites considered, nearest first.
    pub candidates: Vec<CandidateSite>,
    /// Sites not considered, by id.
    pub excluded: Vec<ExcludedSite>,
    /// The score of the chosen plan (also for a held or rejected order: the best there was).
    pub chosen: Option<PlanScore>,
    /// Site sets scored.
    pub sets_evaluated: u32,
    /// The policy applied.
    pub policy: RoutingPolicy,
}

/// The routing decision for one order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoutingDecision {
    /// Routed, partial, held or rejected.
    pub outcome: Outcome,
    /// What each site ships, by site id. Empty when held or rejected.
    pub assignments: Vec<Assignment>,
    /// Units the best plan could not fill.
    pub unfilled: Vec<SkuQty>,
    /// Why.
    pub explanation: Explanation,
}

/// Sort key of a plan: the score, then the shipping sites' id ranks, sorted (lexicographic site ids).
type PlanKey = (PlanScore, [u16; MAX_SPLIT_LIMIT]);

/// A candidate site, with its per-line stock in `Search::stock`.
struct Cand {
    site: usize,
    distance_m: u64,
    stale: bool,
    ship_day: u32,
    priority: u32,
    id_rank: u16,
}

/// Per-order scratch for the subset search.
struct Search<'a> {
    cands: &'a [Cand],
    /// `stock[c * lines + l]`: units of line `l` candidate `c` may ship, capped at the line's quantity.
    stock: &'a [u64],
    qty: &'a [u64],
    split_lines: bool,
}

impl Search<'_> {
    /// Which site of `set` ships how much of line `l`; calls `take(position in set, units)`. Returns unfilled.
    #[inline]
    fn fill_line(&self, set: &[usize], l: usize, mut take: impl FnMut(usize, u64)) -> u64 {
        let lines = self.qty.len();
        let need = self.qty[l];
        if self.split_lines {
            let mut left = need;
            for (p, &c) in set.iter().enumerate() {
                if left == 0 {
                    break;
                }
                let t = self.stock[c * lines + l].min(left);
                if t > 0 {
                    take(p, t);
                    left -= t;
                }
            }
            return left;
        }
        // Whole line from the nearest site holding it all, else from the one holding most (nearest on ties).
        let mut best: Option<(usize, u64)> = None;
        for (p, &c) in set.iter().enumerate() {
            let s = self.stock[c * lines + l];
            if s >= need {
                best = Some((p, need));
                break;
            }
            if s > 0 && best.is_none_or(|(_, b)| s > b) {
                best = Some((p, s));
            }
        }
        match best {
            Some((p, t)) => {
                take(p, t);
                need - t
            }
            None => need,
        }
    }

    /// The key of the plan for `set` (candidate indices, nearest first), or `None` if some site in it would
    /// ship nothing (a smaller set gives the same plan).
    fn score(&self, set: &[usize]) -> Option<PlanKey> {
        let mut used = [false; MAX_SPLIT_LIMIT];
        let mut unfilled = 0u64;
        let mut unit_distance_m = 0u64;
        for l in 0..self.qty.len() {
            unfilled += self.fill_line(set, l, |p, t| {
                used[p] = true;
                unit_distance_m = unit_distance_m.saturating_add(t.saturating_mul(self.cands[set[p]].distance_m));
            });
        }
        if !used[..set.len()].iter().all(|&u| u) {
            return None;
        }
        let mut ids = [u16::MAX; MAX_SPLIT_LIMIT];
        let mut stale_sites = 0;
        let mut priority_sum = 0u64;
        let mut ship_day = 0u32;
        for (p, &c) in set.iter().enumerate() {
            ids[p] = self.cands[c].id_rank;
            stale_sites += u32::from(self.cands[c].stale);
            priority_sum += u64::from(self.cands[c].priority);
            ship_day = ship_day.max(self.cands[c].ship_day);
        }
        ids[..set.len()].sort_unstable();
        let shipments = u32::try_from(set.len()).unwrap_or(u32::MAX);
        let score =
            PlanScore { unfilled_units: unfilled, shipments, stale_sites, ship_day, priority_sum, unit_distance_m };
        Some((score, ids))
    }
}

fn distance_m(a: GeoPoint, b: GeoPoint) -> Option<u64> {
    let d = Haversine.distance(Point::new(a.lon, a.lat), Point::new(b.lon, b.lat));
    // Rounded to whole metres. A finite haversine distance is ≥ 0 and at most half the Earth's circumference
    // (~2.0e7 m), so `as` neither saturates nor truncates; NaN (from non-finite coordinates) is refused here.
    d.is_finite().then(|| d.round() as u64)
}

fn km(distance_m: u64) -> f64 {
    // Exact: distances from `distance_m` are at most ~2.0e7 m, far below 2^53.
    distance_m as f64 / 1000.0
}

/// Routes one order. Pure and deterministic: the same inputs, in any site order, give the same decision.
///
/// Looks each line's SKU up in the sites' [`SiteView::promisable`] maps, nearest first, until `nearest_k`
/// sites with stock are found. With a large catalogue those lookups dominate (they miss the CPU caches);
/// [`SiteTable`] with [`route_indexed`] gives the same decision from a SKU-major index.
pub fn route(order: &RouteRequest, sites: &[SiteView], policy: &RoutingPolicy) -> RoutingDecision {
    let (skus, qty) = demand(order);
    route_core(order, sites, policy, &skus, &qty, |s, l| sites[s].promisable.get(skus[l]).copied())
}

/// Sites prepared for routing: the views plus a SKU-major index of their promisable stock, so routing an
/// order costs one lookup per line instead of one per site and line. Build it when the site snapshot
/// changes, not per order.
#[derive(Debug, Clone, Default)]
pub struct SiteTable {
    sites: Vec<SiteView>,
    /// Per SKU: (index into `sites`, promisable units), by site index.
    by_sku: HashMap<Sku, Vec<(u32, u32)>>,
}

impl SiteTable {
    /// Indexes `sites`.
    pub fn new(sites: Vec<SiteView>) -> Self {
        let mut by_sku: HashMap<Sku, Vec<(u32, u32)>> = HashMap::new();
        for (s, site) in sites.iter().enumerate() {
            let s = u32::try_from(s).unwrap_or(u32::MAX);
            for (sku, &units) in &site.promisable {
                by_sku.entry(sku.clone()).or_default().push((s, units));
            }
        }
        Self { sites, by_sku }
    }

    /// The site views, in the order given.
    pub fn sites(&self) -> &[SiteView] {
        &self.sites
    }
}

/// Same decision as [`route`] over `table.sites()`, reading stock from the table's SKU-major index.
pub fn route_indexed(order: &RouteRequest, table: &SiteTable, policy: &RoutingPolicy) -> RoutingDecision {
    let (skus, qty) = demand(order);
    let n = table.sites.len();
    let lines = skus.len();
    // Site-major matrix of this order's stock: n × lines cells, a few hundred bytes for typical orders.
    let mut matrix: Vec<Option<u32>> = vec![None; n * lines];
    for (l, sku) in skus.iter().enumerate() {
        for &(s, units) in table.by_sku.get(*sku).map_or(&[][..], Vec::as_slice) {
            // cannot truncate: `s` is a u32 and usize has at least 32 bits on the targets we build for.
            if let Some(cell) = matrix.get_mut(s as usize * lines + l) {
                *cell = Some(units);
            }
        }
    }
    route_core(order, &table.sites, policy, &skus, &qty, |s, l| matrix[s * lines + l])
}

/// One demand line per SKU, in first-seen order, so a site's rights for a SKU are never counted twice.
fn demand(order: &RouteRequest) -> (Vec<&Sku>, Vec<u64>) {
    let mut skus: Vec<&Sku> = Vec::with_capacity(order.lines.len());
    let mut qty: Vec<u64> = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        match skus.iter().position(|s| **s == line.sku) {
            Some(i) => qty[i] += u64::from(line.qty),
            None => {
                skus.push(&line.sku);
                qty.push(u64::from(line.qty));
            }
        }
    }
    (skus, qty)
}

/// The routing itself; `stock_of(site, line)` is what `sites[site]` may promise of `skus[line]`.
fn route_core(
    order: &RouteRequest,
    sites: &[SiteView],
    policy: &RoutingPolicy,
    skus: &[&Sku],
    qty: &[u64],
    stock_of: impl Fn(usize, usize) -> Option<u32>,
) -> RoutingDecision {
    let nearest_k = policy.nearest_k.min(NEAREST_K_MAX);
    let max_split = policy.max_split.clamp(1, MAX_SPLIT_LIMIT);
    let lines = skus.len();

    // Cheap checks and one distance per site, then stock reads nearest first until `nearest_k` sites with
    // stock are found: farther sites' stock is never read, which is most of the cost with large catalogues.
    let mut excluded: Vec<(usize, ExclusionReason)> = Vec::new();
    let mut located: Vec<(u64, usize)> = Vec::with_capacity(sites.len());
    for (s, site) in sites.iter().enumerate() {
        if site.capacity_left_shipments == 0 {
            excluded.push((s, ExclusionReason::NoCapacity));
            continue;
        }
        if policy.region_must_match
            && let Some(region) = &order.region
            && *region != site.region
        {
            excluded.push((s, ExclusionReason::RegionMismatch { site_region: site.region.clone() }));
            continue;
        }
        match distance_m(site.location, order.ship_to) {
            Some(d) => located.push((d, s)),
            None => excluded.push((s, ExclusionReason::InvalidLocation)),
        }
    }
    located.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| sites[a.1].id.cmp(&sites[b.1].id)));
    let mut eligible: Vec<(u64, usize)> = Vec::with_capacity(nearest_k);
    let mut stock: Vec<u64> = Vec::with_capacity(nearest_k * lines);
    for (rank, &(d, s)) in located.iter().enumerate() {
        if eligible.len() == nearest_k {
            excluded.push((s, ExclusionReason::NotNearest { rank }));
            continue;
        }
        let row = stock.len();
        let mut any = false;
        for (l, &q) in qty.iter().enumerate() {
            let have = stock_of(s, l).map_or(0, u64::from).min(q);
            any |= have > 0;
            stock.push(have);
        }
        if any {
            eligible.push((d, s));
        } else {
            stock.truncate(row);
            excluded.push((s, ExclusionReason::NoStock));
        }
    }
    // Excluded sites by id, so the explanation does not depend on the order sites were passed in.
    excluded.sort_unstable_by(|a, b| sites[a.0].id.cmp(&sites[b.0].id));
    let excluded = excluded.into_iter().map(|(s, reason)| ExcludedSite { site: sites[s].id.clone(), reason }).collect();

    let mut by_id: Vec<usize> = (0..eligible.len()).collect();
    by_id.sort_unstable_by(|&a, &b| sites[eligible[a].1].id.cmp(&sites[eligible[b].1].id));
    let mut id_rank = vec![0u16; eligible.len()];
    for (r, &c) in by_id.iter().enumerate() {
        id_rank[c] = u16::try_from(r).unwrap_or(u16::MAX);
    }
    let cands: Vec<Cand> = eligible
        .iter()
        .enumerate()
        .map(|(c, &(distance_m, s))| {
            let site = &sites[s];
            Cand {
                site: s,
                distance_m,
                stale: !site.reachable || site.last_heard_age_ms > policy.stale_after_ms,
                ship_day: site.promise.as_ref().map_or(u32::MAX, |p| p.ship_day),
                priority: site.priority,
                id_rank: id_rank[c],
            }
        })
        .collect();
    let search = Search { cands: &cands, stock: &stock, qty, split_lines: policy.split_lines };

    // Sets of 1, 2, … candidates, each in nearest-first order; stop after the first size that fills all.
    let mut best: Option<(PlanKey, [usize; MAX_SPLIT_LIMIT], usize)> = None;
    let mut alone = Vec::with_capacity(cands.len());
    let mut sets_evaluated = 0u32;
    let mut idx = [0usize; MAX_SPLIT_LIMIT];
    for size in 1..=max_split.min(cands.len()) {
        for (p, slot) in idx.iter_mut().enumerate().take(size) {
            *slot = p;
        }
        loop {
            let set = &idx[..size];
            sets_evaluated += 1;
            let key = search.score(set);
            if size == 1 {
                // A single site always ships something: it is a candidate only if it holds some stock.
                alone.push(key.map(|k| k.0));
            }
            if let Some(key) = key
                && best.as_ref().is_none_or(|(b, _, _)| key < *b)
            {
                best = Some((key, idx, size));
            }
            // Next combination in lexicographic order.
            let mut i = size;
            while i > 0 && idx[i - 1] == cands.len() - size + i - 1 {
                i -= 1;
            }
            if i == 0 {
                break;
            }
            idx[i - 1] += 1;
            for j in i..size {
                idx[j] = idx[j - 1] + 1;
            }
        }
        if best.as_ref().is_some_and(|(k, _, _)| k.0.unfilled_units == 0) {
            break;
        }
    }

    // Materialize the winning plan.
    let mut per_site: Vec<Vec<SkuQty>> = Vec::new();
    let mut unfilled = Vec::new();
    let chosen = best.as_ref().map(|b| b.0.0);
    match &best {
        Some((_, set_idx, size)) => {
            let set = &set_idx[..*size];
            per_site = vec![Vec::new(); set.len()];
            for (l, sku) in skus.iter().enumerate() {
                let short = search.fill_line(set, l, |p, t| {
                    per_site[p].push(SkuQty { sku: (*sku).clone(), qty: u32::try_from(t).unwrap_or(u32::MAX) });
                });
                if short > 0 {
                    unfilled.push(SkuQty { sku: (*sku).clone(), qty: u32::try_from(short).unwrap_or(u32::MAX) });
                }
            }
        }
        None => {
            for (l, sku) in skus.iter().enumerate() {
                if qty[l] > 0 {
                    unfilled.push(SkuQty { sku: (*sku).clone(), qty: u32::try_from(qty[l]).unwrap_or(u32::MAX) });
                }
            }
        }
    }
    let mut assignments: Vec<Assignment> = match &best {
        Some((_, set_idx, size)) => set_idx[..*size]
            .iter()
            .zip(per_site)
            .map(|(&c, lines)| Assignment {
                site: sites[cands[c].site].id.clone(),
                distance_km: km(cands[c].distance_m),
                lines,
                promise: sites[cands[c].site].promise.clone(),
            })
            .collect(),
        None => Vec::new(),
    };
    assignments.sort_by(|a, b| a.site.cmp(&b.site));

    let outcome = if unfilled.is_empty() {
        Outcome::Routed
    } else {
        match policy.on_shortfall {
            ShortfallPolicy::Backorder if !assignments.is_empty() => Outcome::Partial,
            ShortfallPolicy::Backorder | ShortfallPolicy::Hold => Outcome::Held,
            ShortfallPolicy::Reject => Outcome::Rejected,
        }
    };
    if matches!(outcome, Outcome::Held | Outcome::Rejected) {
        assignments.clear();
    }

    let candidates = cands
        .iter()
        .zip(alone.iter().copied().chain(std::iter::repeat(None)))
        .enumerate()
        .map(|(c, (cand, alone))| {
            let site = &sites[cand.site];
            CandidateSite {
                site: site.id.clone(),
                distance_km: km(cand.distance_m),
                priority: cand.priority,
                stale: cand.stale,
                promisable_units: stock[c * lines..(c + 1) * lines].iter().sum(),
                alone: alone.unwrap_or(PlanScore {
                    unfilled_units: qty.iter().sum(),
                    shipments: 0,
                    stale_sites: 0,
                    ship_day: 0,
                    priority_sum: 0,
                    unit_distance_m: 0,
                }),
                promised_ship_by_ms: site.promise.as_ref().map(|p| p.ship_by_ms),
            }
        })
        .collect();

    RoutingDecision {
        outcome,
        assignments,
        unfilled,
        explanation: Explanation { candidates, excluded, chosen, sets_evaluated, policy: policy.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }

    fn site(id: &str, lat: f64, lon: f64, stock: &[(&str, u32)]) -> SiteView {
        SiteView {
            id: NodeId::parse(id).unwrap(),
            location: GeoPoint { lat, lon },
            priority: 0,
            capacity_left_shipments: 100,
            region: "eu".into(),
            reachable: true,
            last_heard_age_ms: 0,
            promisable: stock.iter().map(|&(s, q)| (sku(s), q)).collect(),
            promise: None,
        }
    }

    fn order(lines: &[(&str, u32)]) -> RouteRequest {
        RouteRequest {
            lines: lines.iter().map(|&(s, qty)| RouteLine { sku: sku(s), qty }).collect(),
            ship_to: GeoPoint { lat: 0.0, lon: 0.0 },
            region: None,
        }
    }

    fn shipped(d: &RoutingDecision) -> Vec<(&str, Vec<(&str, u32)>)> {
        d.assignments
            .iter()
            .map(|a| (a.site.as_str(), a.lines.iter().map(|l| (l.sku.as_str(), l.qty)).collect()))
            .collect()
    }

    #[test]
    fn nearest_site_with_stock_wins() {
        let sites = [
            site("far", 0.0, 3.0, &[("A", 5)]),
            site("near-empty", 0.0, 1.0, &[("B", 5)]),
            site("mid", 0.0, 2.0, &[("A", 5)]),
        ];
        let d = route(&order(&[("A", 2)]), &sites, &RoutingPolicy::default());
        assert_eq!(d.outcome, Outcome::Routed);
        assert_eq!(shipped(&d), vec![("mid", vec![("A", 2)])]);
        assert_eq!(d.explanation.excluded[0].reason, ExclusionReason::NoStock);
        assert_eq!(d.explanation.candidates[0].site.as_str(), "mid");
        assert!((d.explanation.candidates[0].distance_km - 222.4).abs() < 1.0, "{:?}", d.explanation);
    }

    #[test]
    fn split_only_when_no_single_site_can_fill() {
        let mut sites = vec![
            site("a", 0.0, 1.0, &[("A", 5)]),
            site("b", 0.0, 1.1, &[("B", 5)]),
            site("both-far", 0.0, 9.0, &[("A", 5), ("B", 5)]),
        ];
        let o = order(&[("A", 1), ("B", 1)]);
        let d = route(&o, &sites, &RoutingPolicy::default());
        assert_eq!(shipped(&d), vec![("both-far", vec![("A", 1), ("B", 1)])], "one shipment beats two nearer");
        sites.pop();
        let d = route(&o, &sites, &RoutingPolicy::default());
        assert_eq!(d.outcome, Outcome::Routed);
        assert_eq!(shipped(&d), vec![("a", vec![("A", 1)]), ("b", vec![("B", 1)])]);
    }

    #[test]
    fn lines_split_across_sites_only_if_policy_allows() {
        let sites = [site("a", 0.0, 1.0, &[("A", 2)]), site("b", 0.0, 2.0, &[("A", 2)])];
        let o = order(&[("A", 3)]);
        let d = route(&o, &sites, &RoutingPolicy::default());
        assert_eq!(d.outcome, Outcome::Partial);
        assert_eq!(shipped(&d), vec![("a", vec![("A", 2)])]);
        assert_eq!(d.unfilled, vec![SkuQty { sku: sku("A"), qty: 1 }]);
        let d = route(&o, &sites, &RoutingPolicy { split_lines: true, ..RoutingPolicy::default() });
        assert_eq!(d.outcome, Outcome::Routed);
        assert_eq!(shipped(&d), vec![("a", vec![("A", 2)]), ("b", vec![("A", 1)])]);
    }

    #[test]
    fn max_split_holds_and_shortfall_policy_applies() {
        let sites: Vec<_> =
            ["A", "B", "C", "D"].iter().enumerate().map(|(i, s)| site(s, 0.0, i as f64, &[(s, 1)])).collect();
        let o = order(&[("A", 1), ("B", 1), ("C", 1), ("D", 1)]);
        let d = route(&o, &sites, &RoutingPolicy::default());
        assert_eq!(d.outcome, Outcome::Partial);
        assert_eq!(d.assignments.len(), 3);
        assert_eq!(d.unfilled, vec![SkuQty { sku: sku("D"), qty: 1 }], "the farthest is left out");
        let hold = RoutingPolicy { on_shortfall: ShortfallPolicy::Hold, ..RoutingPolicy::default() };
        let d = route(&o, &sites, &hold);
        assert_eq!((d.outcome, d.assignments.len()), (Outcome::Held, 0));
        let reject = RoutingPolicy { on_shortfall: ShortfallPolicy::Reject, ..RoutingPolicy::default() };
        assert_eq!(route(&o, &sites, &reject).outcome, Outcome::Rejected);
        let four = RoutingPolicy { max_split: 4, ..RoutingPolicy::default() };
        assert_eq!(route(&o, &sites, &four).outcome, Outcome::Routed);
        assert_eq!(route(&order(&[("Z", 1)]), &sites, &RoutingPolicy::default()).outcome, Outcome::Held);
    }

    #[test]
    fn stale_sites_rank_below_fresh_ones_that_do_as_well() {
        let mut stale = site("stale-near", 0.0, 1.0, &[("A", 1)]);
        stale.last_heard_age_ms = 3_600_000;
        let fresh = site("fresh-far", 0.0, 5.0, &[("A", 1)]);
        let d = route(&order(&[("A", 1)]), &[stale.clone(), fresh], &RoutingPolicy::default());
        assert_eq!(shipped(&d), vec![("fresh-far", vec![("A", 1)])]);
        // A stale site that is the only one with stock is still used: its escrow is safe to spend.
        stale.reachable = false;
        let d = route(&order(&[("A", 1)]), &[stale], &RoutingPolicy::default());
        assert_eq!(d.outcome, Outcome::Routed);
        assert!(d.explanation.candidates[0].stale);
    }

    #[test]
    fn exclusions_are_explained_and_serialize() {
        let mut busy = site("busy", 0.0, 0.5, &[("A", 1)]);
        busy.capacity_left_shipments = 0;
        let mut other_region = site("us", 0.0, 0.6, &[("A", 1)]);
        other_region.region = "us".into();
        let mut sites = vec![busy, other_region];
        sites.extend((0..12).map(|i| site(&format!("s{i:02}"), 0.0, 1.0 + f64::from(i), &[("A", 1)])));
        let mut o = order(&[("A", 1)]);
        o.region = Some("eu".into());
        let policy = RoutingPolicy { region_must_match: true, ..RoutingPolicy::default() };
        let d = route(&o, &sites, &policy);
        let reasons: Vec<_> = d.explanation.excluded.iter().map(|e| (e.site.as_str(), e.reason.clone())).collect();
        assert_eq!(
            reasons,
            vec![
                ("busy", ExclusionReason::NoCapacity),
                ("s10", ExclusionReason::NotNearest { rank: 10 }),
                ("s11", ExclusionReason::NotNearest { rank: 11 }),
                ("us", ExclusionReason::RegionMismatch { site_region: "us".into() }),
            ]
        );
        assert_eq!(d.explanation.candidates.len(), 10);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["outcome"], "routed");
        assert_eq!(json["assignments"][0]["site"], "s00");
        assert_eq!(json["explanation"]["excluded"][0]["reason"], "no_capacity");
        assert_eq!(json["explanation"]["excluded"][1]["reason"]["not_nearest"]["rank"], 10);
        let back: RoutingDecision = serde_json::from_value(json).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn equal_sites_break_ties_by_priority_then_id() {
        let mut a = site("b-site", 0.0, 1.0, &[("A", 1)]);
        let b = site("a-site", 0.0, -1.0, &[("A", 1)]);
        let o = order(&[("A", 1)]);
        assert_eq!(shipped(&route(&o, &[a.clone(), b.clone()], &RoutingPolicy::default()))[0].0, "a-site");
        assert_eq!(shipped(&route(&o, &[b.clone(), a.clone()], &RoutingPolicy::default()))[0].0, "a-site");
        a.priority = 0;
        let mut b = b;
        b.priority = 1;
        assert_eq!(shipped(&route(&o, &[b, a], &RoutingPolicy::default()))[0].0, "b-site");
    }

    fn promise(ship_day: u32) -> Option<SitePromise> {
        Some(SitePromise {
            ship_by_ms: u64::from(ship_day) * 86_400_000 + 15 * 3_600_000,
            ship_day,
            services: Vec::new(),
        })
    }

    /// With stock and distance tied, the site that makes today's truck wins, whatever the ids say; two sites
    /// that both make it tie on the day and the id decides, as without schedules. The explanation shows it.
    #[test]
    fn the_site_that_makes_todays_truck_wins_a_tie() {
        let o = order(&[("A", 1)]);
        let (mut a, mut b) = (site("a-site", 0.0, 1.0, &[("A", 1)]), site("b-site", 0.0, 1.0, &[("A", 1)]));
        assert_eq!(shipped(&route(&o, &[a.clone(), b.clone()], &RoutingPolicy::default()))[0].0, "a-site");
        a.promise = promise(20_001); // missed today's cut-off: tomorrow
        b.promise = promise(20_000); // makes today's
        let d = route(&o, &[a.clone(), b.clone()], &RoutingPolicy::default());
        assert_eq!(shipped(&d)[0].0, "b-site");
        assert_eq!(d.explanation.chosen.unwrap().ship_day, 20_000);
        assert_eq!(d.assignments[0].promise, b.promise);
        let cand = |id: &str| d.explanation.candidates.iter().find(|c| c.site.as_str() == id).unwrap().clone();
        assert_eq!(cand("a-site").alone.ship_day, 20_001);
        assert_eq!(cand("b-site").promised_ship_by_ms, Some(20_000 * 86_400_000 + 15 * 3_600_000));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["explanation"]["chosen"]["ship_day"], 20_000);
        // Both make today's truck: the day ties, the id decides.
        a.promise = promise(20_000);
        assert_eq!(shipped(&route(&o, &[a.clone(), b.clone()], &RoutingPolicy::default()))[0].0, "a-site");
        // A site without a schedule loses to one with a promise; but a nearer site beats an earlier promise
        // only when it fills more or ships fewer parcels, never by distance alone.
        a.promise = None;
        assert_eq!(shipped(&route(&o, &[a.clone(), b.clone()], &RoutingPolicy::default()))[0].0, "b-site");
        let near = site("c-near", 0.0, 0.5, &[("A", 1)]);
        b.location = GeoPoint { lat: 0.0, lon: 2.0 };
        let d = route(&o, &[near, b], &RoutingPolicy::default());
        assert_eq!(shipped(&d)[0].0, "b-site", "a day sooner beats a nearer site without a schedule");
    }

    /// A small random instance: sites on a coarse grid (so distances tie), few SKUs, small stocks.
    fn instance() -> impl Strategy<Value = (RouteRequest, Vec<SiteView>, RoutingPolicy)> {
        let sites = proptest::collection::vec(
            (
                (0i32..4, 0i32..4, 0u32..3, 0u32..3, any::<bool>(), proptest::collection::vec(0u32..4, 4)),
                proptest::option::of(0u32..3),
            ),
            1..7,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, ((x, y, priority, cap, stale, stock), ship_day))| SiteView {
                    id: NodeId::parse(&format!("s{}", (i * 7) % 10)).unwrap(),
                    location: GeoPoint { lat: f64::from(y), lon: f64::from(x) },
                    priority,
                    capacity_left_shipments: cap,
                    region: "eu".into(),
                    reachable: true,
                    last_heard_age_ms: if stale { 10_000_000 } else { 0 },
                    promisable: stock
                        .iter()
                        .enumerate()
                        .filter(|&(_, &q)| q > 0)
                        .map(|(k, &q)| (sku(&format!("K{k}")), q))
                        .collect(),
                    promise: ship_day.map(|ship_day| SitePromise {
                        ship_by_ms: u64::from(ship_day) * 86_400_000,
                        ship_day,
                        services: Vec::new(),
                    }),
                })
                .collect::<Vec<_>>()
        });
        let lines = proptest::collection::vec((0usize..4, 1u32..5), 1..5);
        let policy = (1usize..4, any::<bool>(), 1usize..8).prop_map(|(max_split, split_lines, nearest_k)| {
            RoutingPolicy { max_split, split_lines, nearest_k, ..RoutingPolicy::default() }
        });
        (sites, lines, policy).prop_map(|(sites, lines, policy)| {
            let o = RouteRequest {
                lines: lines.into_iter().map(|(k, qty)| RouteLine { sku: sku(&format!("K{k}")), qty }).collect(),
                ship_to: GeoPoint { lat: 1.5, lon: 1.5 },
                region: None,
            };
            (o, sites, policy)
        })
    }

    /// The best plan by exhaustive search over every subset, up to `max_split`, of the `nearest_k` nearest
    /// sites with capacity and stock, written independently of [`route`]: its score and the shipping sites.
    fn brute_force(o: &RouteRequest, sites: &[SiteView], p: &RoutingPolicy) -> Option<(PlanScore, Vec<String>)> {
        let mut demand: Vec<(Sku, u64)> = Vec::new();
        for l in &o.lines {
            match demand.iter_mut().find(|(s, _)| *s == l.sku) {
                Some(d) => d.1 += u64::from(l.qty),
                None => demand.push((l.sku.clone(), u64::from(l.qty))),
            }
        }
        let stock = |s: &SiteView, k: &Sku| u64::from(s.promisable.get(k).copied().unwrap_or(0));
        let mut eligible: Vec<&SiteView> = sites
            .iter()
            .filter(|s| s.capacity_left_shipments > 0 && demand.iter().any(|(k, _)| stock(s, k) > 0))
            .collect();
        eligible.sort_by_key(|s| (distance_m(s.location, o.ship_to).unwrap(), s.id.clone()));
        eligible.truncate(p.nearest_k);
        let mut best: Option<(PlanScore, Vec<String>)> = None;
        for mask in 1u32..(1 << eligible.len()) {
            if mask.count_ones() as usize > p.max_split {
                continue;
            }
            let mut set: Vec<(&SiteView, u64)> = (0..eligible.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| (eligible[i], distance_m(eligible[i].location, o.ship_to).unwrap()))
                .collect();
            set.sort_by(|a, b| (a.1, &a.0.id).cmp(&(b.1, &b.0.id)));
            let mut used = vec![false; set.len()];
            let (mut unfilled, mut unit_distance_m) = (0u64, 0u64);
            for (k, q) in &demand {
                let mut left = *q;
                if p.split_lines {
                    for (i, (s, d)) in set.iter().enumerate() {
                        let t = stock(s, k).min(left);
                        if t > 0 {
                            used[i] = true;
                            unit_distance_m += t * d;
                            left -= t;
                        }
                    }
                } else {
                    let whole = set.iter().position(|(s, _)| stock(s, k) >= *q);
                    let most = set.iter().enumerate().filter(|(_, (s, _))| stock(s, k) > 0).fold(
                        None,
                        |acc: Option<usize>, (i, (s, _))| match acc {
                            Some(j) if stock(set[j].0, k) >= stock(s, k) => Some(j),
                            _ => Some(i),
                        },
                    );
                    if let Some(i) = whole.or(most) {
                        let t = stock(set[i].0, k).min(*q);
                        used[i] = true;
                        unit_distance_m += t * set[i].1;
                        left -= t;
                    }
                }
                unfilled += left;
            }
            if used.contains(&false) {
                continue;
            }
            let mut ids: Vec<String> = set.iter().map(|(s, _)| s.id.as_str().to_owned()).collect();
            ids.sort();
            let score = PlanScore {
                unfilled_units: unfilled,
                shipments: set.len() as u32,
                stale_sites: set.iter().filter(|(s, _)| s.last_heard_age_ms > p.stale_after_ms).count() as u32,
                ship_day: set.iter().map(|(s, _)| s.promise.as_ref().map_or(u32::MAX, |x| x.ship_day)).max().unwrap(),
                priority_sum: set.iter().map(|(s, _)| u64::from(s.priority)).sum(),
                unit_distance_m,
            };
            if best.as_ref().is_none_or(|b| (&score, &ids) < (&b.0, &b.1)) {
                best = Some((score, ids));
            }
        }
        best
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// `route` finds the same best plan as exhaustive search over all site subsets up to `max_split`.
        #[test]
        fn matches_brute_force((o, sites, p) in instance()) {
            // Ids must be unique for "the same plan" to be well defined.
            let mut ids: Vec<_> = sites.iter().map(|s| s.id.clone()).collect();
            ids.sort();
            ids.dedup();
            prop_assume!(ids.len() == sites.len());
            let d = route(&o, &sites, &p);
            let want = brute_force(&o, &sites, &p);
            prop_assert_eq!(d.explanation.chosen, want.as_ref().map(|w| w.0));
            if matches!(d.outcome, Outcome::Routed | Outcome::Partial) {
                let got: Vec<String> = d.assignments.iter().map(|a| a.site.as_str().to_owned()).collect();
                prop_assert_eq!(Some(got), want.map(|w| w.1));
            }
        }

        /// No site is ever assigned more of a SKU than it may promise, assigned plus unfilled equals demand,
        /// shipments never exceed `max_split`, and permuting the sites gives the same decision, with or
        /// without the SKU-major index.
        #[test]
        fn never_over_assigns_and_ignores_input_order(
            (o, sites, p) in instance(),
            perm in any::<u64>(),
        ) {
            let mut ids: Vec<_> = sites.iter().map(|s| s.id.clone()).collect();
            ids.sort();
            ids.dedup();
            prop_assume!(ids.len() == sites.len());
            let d = route(&o, &sites, &p);
            prop_assert!(d.assignments.len() <= p.max_split);
            let mut assigned: HashMap<&Sku, u64> = HashMap::new();
            for a in &d.assignments {
                let s = sites.iter().find(|s| s.id == a.site).unwrap();
                for l in &a.lines {
                    prop_assert!(l.qty <= s.promisable.get(&l.sku).copied().unwrap_or(0), "{} over-assigned {}", a.site, l.sku);
                    *assigned.entry(&l.sku).or_default() += u64::from(l.qty);
                }
            }
            if matches!(d.outcome, Outcome::Routed | Outcome::Partial) {
                for l in &o.lines {
                    let demand: u64 = o.lines.iter().filter(|m| m.sku == l.sku).map(|m| u64::from(m.qty)).sum();
                    let short = d.unfilled.iter().find(|u| u.sku == l.sku).map_or(0, |u| u64::from(u.qty));
                    prop_assert_eq!(assigned.get(&l.sku).copied().unwrap_or(0) + short, demand);
                }
            }
            // A deterministic shuffle from the seed.
            let mut shuffled = sites.clone();
            let mut x = perm | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(&route(&o, &shuffled, &p), &d);
            prop_assert_eq!(&route_indexed(&o, &SiteTable::new(shuffled), &p), &d);
        }
    }
}
