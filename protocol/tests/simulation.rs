//! Deterministic simulation of the hub, two sites, sync and escrow: a week in a few hundred steps per seed.
//!
//! Everything here is the real contract code: [`SyncSession`]s on both ends of each link (the sans-IO core the
//! node and the hub drive over QUIC), the document layout of [`oms_protocol::schema`] (order documents,
//! `stock/<site>` carrying the site's escrow view, `escrow/<site>` carrying the hub's) and the bounded
//! counter of [`oms_protocol::escrow`]. What stands in for the processes is small and stated: the site keeps a
//! ledger of available units (received − sold − reserved for the hub) and follows the node's escrow duties
//! (grant the hub a lease while it is reachable, acknowledge what it saw the hub spend, give it rights by a
//! simple policy, reclaim after the lease and a margin when it is not); the hub sells within the rights its
//! view holds and creates one order document per sale, as its intake does.
//!
//! Per seed: clocks skewed up to ±1 hour per party; lease, margin and unacknowledged budget drawn at random
//! (margins far below the skew too: safety must rest on the budget, not on clocks); one site cut off for 1 to
//! 7 days while the hub keeps selling what it holds; short outages at both; frames lost (the connection then
//! breaks and is made again), duplicated and reordered. After every step:
//! - no site's available stock is negative (a hub order always finds its units);
//! - per site and SKU, units promised (site sales + hub orders, each counted when its party committed it)
//!   never exceed units received: no unit promised twice;
//! - every counter view decodes and passes its own check.
//!
//! At the end the network heals; within a bounded number of rounds every document the hub and a site share has
//! the same heads on both, every hub order is accepted at its site exactly once, every site order is at the
//! hub once, and available = received − sold − reserved.
//!
//! `OMS_SIM_SEEDS` (1,000) seeds, the first being `OMS_SIM_FIRST_SEED` (0), run on two threads within
//! `OMS_SIM_BUDGET_S` (600) seconds; the last line gives the simulated days and the seeds per minute. A failure
//! (a broken invariant, or a panic) names its seed, and one command replays it alone:
//! `OMS_SIM_SEED=<seed> cargo test -p oms-protocol --test simulation -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use oms_protocol::domain::{FulfillmentState, HUB_ORIGIN, NodeId, OrderId, Sku};
use oms_protocol::escrow::{EscrowCounter, Party};
use oms_protocol::fixtures;
use oms_protocol::records::OrderRecord;
use oms_protocol::schema::{self, DocKind};
use oms_protocol::sync::automerge::{ActorId, AutoCommit, ChangeHash};
use oms_protocol::sync::{DocStore, Event, SessionConfig, StoreError, SyncSession};
use oms_protocol::wire::{DocId, Frame, LENGTH_PREFIX_BYTES, PeerId, decode_body, encode_frame};

const SITES: usize = 2;
const SKUS: [&str; 2] = ["SKU-A", "SKU-B"];
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// Simulated time per seed: the week of the longest outage, and a day around it.
const SIM_MS: u64 = 8 * DAY_MS;
/// The simulation's epoch (2026-01-01), so that a skew of −1 hour stays a valid Unix time.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// Frames delivered per step at most: the network's bandwidth per step.
const FRAMES_PER_STEP_MAX: usize = 64;
/// Rounds of a clean network allowed for convergence after the run.
const HEAL_ROUNDS_MAX: usize = 40;
/// Deliveries per heal round at most.
const HEAL_FRAMES_MAX: usize = 20_000;

/// SplitMix64. Written here rather than taken from `rand` on purpose: a seed must replay the same run after
/// any dependency upgrade, and `rand` does not promise a stable stream across versions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `permille` / 1000.
    fn chance(&mut self, permille: u64) -> bool {
        self.next() % 1000 < permille
    }
}

fn node_name(i: usize) -> NodeId {
    NodeId::parse(&format!("wh-{i}")).unwrap()
}

fn peer(i: usize) -> PeerId {
    PeerId::new(format!("oms://sim/node/wh-{i}")).unwrap()
}

fn hub_peer() -> PeerId {
    PeerId::new("oms://sim/hub").unwrap()
}

fn sku(k: usize) -> Sku {
    sku_of(SKUS[k])
}

/// One party's documents and sync states.
struct Store {
    /// `None` for the hub, `Some(i)` for site `i`.
    site: Option<usize>,
    actor: Vec<u8>,
    docs: BTreeMap<DocId, AutoCommit>,
    states: HashMap<(PeerId, DocId), Vec<u8>>,
    /// At the hub: the site each hub order is assigned to (the real hub keeps such an index too, rather
    /// than reading every document's `site` for every manifest).
    assigned: HashMap<DocId, usize>,
}

impl Store {
    fn new(site: Option<usize>) -> Self {
        let actor = vec![site.map_or(0xA0, |i| i as u8 + 1); 16];
        Self { site, actor, docs: BTreeMap::new(), states: HashMap::new(), assigned: HashMap::new() }
    }

    fn doc(&mut self, id: &DocId) -> &mut AutoCommit {
        let actor = ActorId::from(self.actor.clone());
        self.docs.entry(id.clone()).or_insert_with(|| AutoCommit::new().with_actor(actor))
    }

    fn heads(&mut self, id: &DocId) -> Option<Vec<ChangeHash>> {
        self.docs.get_mut(id).map(|d| {
            let mut h = d.get_heads();
            h.sort_unstable();
            h
        })
    }
}

/// Whether site `i` may hold `doc`, as the hub decides it: its stock and escrow documents, the orders it
/// took, and the hub's orders assigned to it (`assigned`: the site a hub order went to).
fn site_entitled(i: usize, doc: &DocId, assigned: Option<usize>) -> bool {
    match DocKind::of(doc) {
        Some(DocKind::Stock(n) | DocKind::Escrow(n) | DocKind::Inbound(n)) => n == node_name(i),
        Some(DocKind::Order(id)) => match assigned {
            Some(site) => site == i,
            None => schema::order_origin(&id) == Some(node_name(i).as_str()),
        },
        None => false,
    }
}

impl DocStore for Store {
    fn entitled(&self, peer_id: &PeerId, doc: &DocId) -> bool {
        match self.site {
            // A site trusts the hub with everything it holds.
            Some(_) => *peer_id == hub_peer(),
            None => (0..SITES).any(|i| *peer_id == peer(i) && site_entitled(i, doc, self.assigned.get(doc).copied())),
        }
    }

    fn docs_for(&self, peer_id: &PeerId) -> Vec<DocId> {
        self.docs.keys().filter(|d| self.entitled(peer_id, d)).cloned().collect()
    }

    fn doc_mut(&mut self, doc: &DocId) -> Option<&mut AutoCommit> {
        self.docs.get_mut(doc)
    }

    fn create_doc(&mut self, doc: &DocId) -> Result<&mut AutoCommit, StoreError> {
        Ok(self.doc(doc))
    }

    fn load_sync_state(&self, peer_id: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        self.states.get(&(peer_id.clone(), doc.clone())).cloned()
    }

    fn save_sync_state(&mut self, peer_id: &PeerId, doc: &DocId, state: Vec<u8>) {
        self.states.insert((peer_id.clone(), doc.clone()), state);
    }
}

/// What one seed draws.
#[derive(Debug, Clone)]
struct Params {
    /// Clock skew of the hub (index 0) and of each site, ms.
    skew_ms: [i64; SITES + 1],
    lease_ms: u64,
    margin_ms: u64,
    unacked_max: u64,
    /// Rights the site tries to keep at the hub per SKU.
    hub_target: u64,
    /// The long outage: which site, from when, until when (simulated ms).
    cut_site: usize,
    cut_from_ms: u64,
    cut_until_ms: u64,
    /// Per frame, per mille: lost (the connection breaks), duplicated, delivered out of order.
    loss: u64,
    dup: u64,
    reorder: u64,
}

impl Params {
    fn draw(rng: &mut Rng) -> Self {
        let mut skew_ms = [0i64; SITES + 1];
        for s in &mut skew_ms {
            *s = rng.range(0, 2 * HOUR_MS) as i64 - HOUR_MS as i64;
        }
        let cut_from_ms = rng.range(HOUR_MS, DAY_MS / 2);
        Self {
            skew_ms,
            lease_ms: rng.range(60_000, 2 * DAY_MS),
            margin_ms: rng.range(1_000, 2 * HOUR_MS),
            unacked_max: rng.range(0, 12),
            hub_target: rng.range(0, 30),
            cut_site: rng.range(0, SITES as u64 - 1) as usize,
            cut_from_ms,
            cut_until_ms: cut_from_ms + rng.range(DAY_MS, 7 * DAY_MS),
            loss: rng.range(0, 10),
            dup: rng.range(0, 60),
            reorder: rng.range(0, 200),
        }
    }
}

struct Link {
    site: SyncSession,
    hub: SyncSession,
    to_hub: VecDeque<Frame>,
    to_site: VecDeque<Frame>,
    /// A short outage lasts until this simulated time.
    flap_until_ms: u64,
    /// The site was unreachable at the previous step (so the connection is made anew).
    was_down: bool,
}

/// A site: its documents, its escrow views and the ground truth of its stock.
struct Site {
    id: NodeId,
    store: Store,
    counters: BTreeMap<Sku, EscrowCounter>,
    /// Available units per SKU: received − sold here − reserved for hub orders. Signed so that a violation
    /// shows as a negative figure instead of an overflow.
    available: BTreeMap<Sku, i64>,
    /// Hub orders accepted (reserved), with the count of times, which must be 1.
    accepted: BTreeMap<OrderId, u32>,
    /// Orders this site took.
    sold: BTreeSet<OrderId>,
    seq: u64,
    changed: BTreeSet<DocId>,
}

struct Hub {
    store: Store,
    /// The hub's view of each site's counter per SKU.
    counters: BTreeMap<(usize, Sku), EscrowCounter>,
    /// Orders the hub created: order → (site, SKU, units).
    orders: BTreeMap<OrderId, (usize, Sku, u32)>,
    seq: u64,
    changed: BTreeSet<DocId>,
}

/// The ground truth the invariants are checked against, kept apart from every party's state.
#[derive(Default)]
struct Truth {
    received: BTreeMap<(usize, Sku), u64>,
    promised: BTreeMap<(usize, Sku), u64>,
}

struct Sim {
    p: Params,
    rng: Rng,
    cfg: SessionConfig,
    now_ms: u64,
    hub: Hub,
    sites: Vec<Site>,
    links: Vec<Link>,
    truth: Truth,
    /// Figures for the trace.
    frames: u64,
    reconnects: u64,
}

type SimResult<T = ()> = Result<T, String>;

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let p = Params::draw(&mut rng);
        let cfg = SessionConfig {
            hello_retry_ms: 2_000,
            doc_stall_ms: 5_000,
            manifest_interval_ms: 30_000,
            docs_in_flight_max: 8,
            ..SessionConfig::default()
        };
        let sites = (0..SITES)
            .map(|i| Site {
                id: node_name(i),
                store: Store::new(Some(i)),
                counters: SKUS.iter().map(|s| (sku_of(s), EscrowCounter::new(sku_of(s)))).collect(),
                available: SKUS.iter().map(|s| (sku_of(s), 0)).collect(),
                accepted: BTreeMap::new(),
                sold: BTreeSet::new(),
                seq: 0,
                changed: BTreeSet::new(),
            })
            .collect();
        let hub = Hub {
            store: Store::new(None),
            counters: (0..SITES)
                .flat_map(|i| SKUS.iter().map(move |s| ((i, sku_of(s)), EscrowCounter::new(sku_of(s)))))
                .collect(),
            orders: BTreeMap::new(),
            seq: 0,
            changed: BTreeSet::new(),
        };
        let mut sim = Sim {
            p,
            rng,
            cfg,
            now_ms: 0,
            hub,
            sites,
            links: Vec::new(),
            truth: Truth::default(),
            frames: 0,
            reconnects: 0,
        };
        sim.links = (0..SITES).map(|i| sim.connect(i)).collect();
        sim
    }

    /// Party `who`'s clock (0 = hub, 1.. = sites): the simulated time plus its skew, as Unix ms.
    fn clock(&self, who: usize) -> u64 {
        (EPOCH_MS + self.now_ms).saturating_add_signed(self.p.skew_ms[who])
    }

    fn connect(&self, i: usize) -> Link {
        let cfg = self.cfg.clone();
        Link {
            site: SyncSession::new_client(
                cfg.clone(),
                peer(i),
                hub_peer(),
                self.sites[i].store.actor.clone(),
                self.clock(i + 1),
            ),
            hub: SyncSession::new_server(cfg, hub_peer(), peer(i), self.hub.store.actor.clone(), self.clock(0)),
            to_hub: VecDeque::new(),
            to_site: VecDeque::new(),
            flap_until_ms: 0,
            was_down: false,
        }
    }

    fn reachable(&self, i: usize) -> bool {
        let cut = i == self.p.cut_site && (self.p.cut_from_ms..self.p.cut_until_ms).contains(&self.now_ms);
        !cut && self.now_ms >= self.links[i].flap_until_ms
    }

    /// Moves every session's outbound frames onto the wire (through encode and decode) and its events to the
    /// party's list of changed documents. A closed session (a duplicate or reordered frame may close one, as
    /// a broken stream would) is replaced by a new connection.
    fn flush(&mut self) -> SimResult {
        for i in 0..SITES {
            let link = &mut self.links[i];
            while let Some(f) = link.site.poll_transmit() {
                link.to_hub.push_back(roundtrip(&f)?);
            }
            while let Some(f) = link.hub.poll_transmit() {
                if let Frame::Sync { doc, .. } = &f
                    && !site_entitled(i, doc, self.hub.store.assigned.get(doc).copied())
                {
                    return Err(format!("the hub sent {doc} to site {i}, which may not hold it"));
                }
                link.to_site.push_back(roundtrip(&f)?);
            }
            while let Some(e) = link.site.poll_event() {
                if let Event::DocChanged { doc } = e {
                    self.sites[i].changed.insert(doc);
                }
            }
            while let Some(e) = link.hub.poll_event() {
                if let Event::DocChanged { doc } = e {
                    self.hub.changed.insert(doc);
                }
            }
            if link.site.is_closed() || link.hub.is_closed() {
                self.reconnects += 1;
                self.links[i] = Link { flap_until_ms: self.links[i].flap_until_ms, ..self.connect(i) };
            }
        }
        Ok(())
    }

    /// Delivers up to `max` frames on link `i`, with loss, duplication and reordering when `chaos`.
    fn pump(&mut self, i: usize, max: usize, chaos: bool) -> SimResult<usize> {
        let mut delivered = 0;
        while delivered < max {
            let link = &mut self.links[i];
            let to_hub = match (link.to_hub.is_empty(), link.to_site.is_empty()) {
                (true, true) => break,
                (false, true) => true,
                (true, false) => false,
                (false, false) => self.rng.chance(500),
            };
            let queue = if to_hub { &mut link.to_hub } else { &mut link.to_site };
            let pick =
                if chaos && self.rng.chance(self.p.reorder) { self.rng.range(0, 2) as usize % queue.len() } else { 0 };
            let Some(frame) = queue.remove(pick) else { break };
            delivered += 1;
            if chaos && self.rng.chance(self.p.loss) {
                // A lost frame on a stream is a broken connection: both ends start over.
                self.reconnects += 1;
                self.links[i] = Link { flap_until_ms: self.links[i].flap_until_ms, ..self.connect(i) };
                self.flush()?;
                continue;
            }
            let copies = if chaos && self.rng.chance(self.p.dup) { 2 } else { 1 };
            for _ in 0..copies {
                self.frames += 1;
                let link = &mut self.links[i];
                if to_hub {
                    link.hub.handle_frame(&mut self.hub.store, frame.clone());
                } else {
                    link.site.handle_frame(&mut self.sites[i].store, frame.clone());
                }
            }
            self.flush()?;
        }
        Ok(delivered)
    }

    fn tick_sessions(&mut self) -> SimResult {
        for i in 0..SITES {
            let (site_now, hub_now) = (self.clock(i + 1), self.clock(0));
            let link = &mut self.links[i];
            link.site.tick(&mut self.sites[i].store, site_now);
            link.hub.tick(&mut self.hub.store, hub_now);
        }
        self.flush()
    }

    fn site_changed(&mut self, i: usize, doc: &DocId) -> SimResult {
        self.links[i].site.local_change(&mut self.sites[i].store, doc);
        self.flush()
    }

    fn hub_changed(&mut self, doc: &DocId) -> SimResult {
        for i in 0..SITES {
            if site_entitled(i, doc, self.hub.store.assigned.get(doc).copied()) {
                self.links[i].hub.local_change(&mut self.hub.store, doc);
            }
        }
        self.flush()
    }

    /// Writes site `i`'s view of `sku` into its stock document.
    fn site_publish(&mut self, i: usize, sku: &Sku) -> SimResult {
        let now = self.clock(i + 1);
        let site = &mut self.sites[i];
        let doc_id = schema::stock_doc(&site.id).unwrap();
        let counter = site.counters[sku].clone();
        let id = site.id.clone();
        if schema::write_escrow(site.store.doc(&doc_id), &id, &counter, now).map_err(|e| e.to_string())? {
            self.site_changed(i, &doc_id)?;
        }
        Ok(())
    }

    fn hub_publish(&mut self, i: usize, sku: &Sku) -> SimResult {
        let now = self.clock(0);
        let doc_id = schema::escrow_doc(&node_name(i)).unwrap();
        let counter = self.hub.counters[&(i, sku.clone())].clone();
        if schema::write_escrow(self.hub.store.doc(&doc_id), &node_name(i), &counter, now).map_err(|e| e.to_string())? {
            self.hub_changed(&doc_id)?;
        }
        Ok(())
    }

    /// Goods arrive at site `i`.
    fn receive(&mut self, i: usize, k: usize, n: u64) -> SimResult {
        let s = sku(k);
        let site = &mut self.sites[i];
        site.counters.get_mut(&s).unwrap().add(Party::Site, n).map_err(|e| format!("add: {e}"))?;
        *site.available.get_mut(&s).unwrap() += n as i64;
        *self.truth.received.entry((i, s.clone())).or_default() += n;
        self.site_publish(i, &s)
    }

    /// A customer buys at site `i`, within the site's own rights.
    fn site_sale(&mut self, i: usize, k: usize, qty: u32) -> SimResult {
        let s = sku(k);
        let now = self.clock(i + 1);
        let site = &mut self.sites[i];
        if site.counters.get_mut(&s).unwrap().consume(Party::Site, u64::from(qty), now).is_err() {
            return Ok(());
        }
        site.seq += 1;
        let id = OrderId::new(&site.id, site.seq);
        let rec = fixtures::accepted(id.clone(), &site.id, &s, qty);
        let doc_id = schema::order_doc(&id).unwrap();
        let origin = site.id.clone();
        schema::write_order(site.store.doc(&doc_id), &origin, &rec, now).map_err(|e| e.to_string())?;
        *site.available.get_mut(&s).unwrap() -= i64::from(qty);
        site.sold.insert(id);
        *self.truth.promised.entry((i, s.clone())).or_default() += u64::from(qty);
        self.site_changed(i, &doc_id)?;
        self.site_publish(i, &s)
    }

    /// A channel order at the hub, placed at the first site whose rights (in the hub's view) cover it.
    fn hub_sale(&mut self, k: usize, qty: u32) -> SimResult {
        let s = sku(k);
        let now = self.clock(0);
        let first = self.rng.range(0, SITES as u64 - 1) as usize;
        for i in (0..SITES).map(|j| (first + j) % SITES) {
            let counter = self.hub.counters.get_mut(&(i, s.clone())).unwrap();
            if counter.consume(Party::Hub, u64::from(qty), now).is_err() {
                continue;
            }
            self.hub.seq += 1;
            let id = OrderId::parse(&format!("{HUB_ORIGIN}-{:010}.1", self.hub.seq)).map_err(|e| e.to_string())?;
            let parent = OrderId::parse(&format!("{HUB_ORIGIN}-{:010}", self.hub.seq)).map_err(|e| e.to_string())?;
            let draft = fixtures::draft(id.as_str(), &s, qty);
            let doc_id = schema::order_doc(&id).unwrap();
            schema::create_hub_order(self.hub.store.doc(&doc_id), &id, &parent, &node_name(i), &draft, now)
                .map_err(|e| e.to_string())?;
            self.hub.store.assigned.insert(doc_id.clone(), i);
            self.hub.orders.insert(id, (i, s.clone(), qty));
            *self.truth.promised.entry((i, s.clone())).or_default() += u64::from(qty);
            self.hub_changed(&doc_id)?;
            return self.hub_publish(i, &s);
        }
        Ok(())
    }

    /// The site takes in what sync brought: the hub's escrow view (merged, and the hub's spending
    /// acknowledged) and the hub's new orders (accepted, reserving their units).
    fn site_absorb(&mut self, i: usize) -> SimResult {
        let changed = std::mem::take(&mut self.sites[i].changed);
        let now = self.clock(i + 1);
        for doc_id in changed {
            match DocKind::of(&doc_id) {
                Some(DocKind::Escrow(_)) => {
                    let (views, bad) =
                        schema::read_escrow(&self.sites[i].store.docs[&doc_id], 16).map_err(|e| e.to_string())?;
                    if !bad.is_empty() {
                        return Err(format!("site {i}: escrow views that do not decode: {bad:?}"));
                    }
                    for v in views {
                        let s = v.sku().clone();
                        let mine = self.sites[i].counters.get_mut(&s).ok_or("unknown SKU")?;
                        mine.merge(&v).map_err(|e| format!("site {i} merge: {e}"))?;
                        mine.acknowledge(Party::Site);
                        self.site_publish(i, &s)?;
                    }
                }
                Some(DocKind::Order(id))
                    if self.hub.orders.contains_key(&id) || id.as_str().starts_with(HUB_ORIGIN) =>
                {
                    if self.sites[i].accepted.contains_key(&id) {
                        continue;
                    }
                    let view = schema::read_order(&self.sites[i].store.docs[&doc_id], doc_id.as_str())
                        .map_err(|e| e.to_string())?;
                    let draft = view.draft;
                    let line = &draft.lines[0];
                    let site = &mut self.sites[i];
                    *site.available.get_mut(&line.sku).ok_or("unknown SKU")? -= i64::from(line.qty);
                    *site.accepted.entry(id.clone()).or_default() += 1;
                    let mut rec: OrderRecord = fixtures::accepted(id.clone(), &site.id, &line.sku, line.qty);
                    rec.order = draft.clone();
                    rec.status = FulfillmentState::Accepted;
                    let origin = NodeId::parse(HUB_ORIGIN).map_err(|e| e.to_string())?;
                    schema::write_order(site.store.doc(&doc_id), &origin, &rec, now).map_err(|e| e.to_string())?;
                    self.site_changed(i, &doc_id)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The hub takes in the sites' escrow views.
    fn hub_absorb(&mut self) -> SimResult {
        let changed = std::mem::take(&mut self.hub.changed);
        for doc_id in changed {
            let Some(DocKind::Stock(node)) = DocKind::of(&doc_id) else { continue };
            let i = (0..SITES).find(|i| node_name(*i) == node).ok_or("unknown site")?;
            let (views, bad) = schema::read_escrow(&self.hub.store.docs[&doc_id], 16).map_err(|e| e.to_string())?;
            if !bad.is_empty() {
                return Err(format!("hub: escrow views of site {i} that do not decode: {bad:?}"));
            }
            for v in views {
                let s = v.sku().clone();
                let mine = self.hub.counters.get_mut(&(i, s.clone())).ok_or("unknown SKU")?;
                mine.merge(&v).map_err(|e| format!("hub merge of site {i}: {e}"))?;
                self.hub_publish(i, &s)?;
            }
        }
        Ok(())
    }

    /// The site's escrow duties: with the hub reachable, keep its lease half a lease ahead and top its
    /// rights up to the target; without, reclaim after the lease and the margin.
    fn site_duties(&mut self, i: usize) -> SimResult {
        let now = self.clock(i + 1);
        let reachable = self.reachable(i) && self.links[i].site.is_established();
        for k in 0..SKUS.len() {
            let s = sku(k);
            let c = self.sites[i].counters.get_mut(&s).unwrap();
            let before = c.clone();
            if reachable {
                if c.lease_until_ms(Party::Hub) < now + self.p.lease_ms / 2 {
                    let until = now + self.p.lease_ms;
                    let _ = c.grant_lease(
                        Party::Site,
                        Party::Hub,
                        until,
                        self.p.unacked_max.max(c.unacked_max(Party::Hub)),
                    );
                }
                let at_hub = c.local(Party::Hub);
                if at_hub < self.p.hub_target {
                    let n = (self.p.hub_target - at_hub).min(c.local(Party::Site) / 2);
                    if n > 0 {
                        let _ = c.transfer(Party::Site, Party::Hub, n, now);
                    }
                }
            } else if c.lease_until_ms(Party::Hub) > 0 {
                let _ = c.reclaim(Party::Site, Party::Hub, now, self.p.margin_ms);
            }
            if *c != before {
                self.site_publish(i, &s)?;
            }
        }
        Ok(())
    }

    /// The invariants that hold after every step.
    fn check(&self) -> SimResult {
        for (i, site) in self.sites.iter().enumerate() {
            for (s, a) in &site.available {
                if *a < 0 {
                    return Err(format!("site {i} {s}: available {a} (a promise found no unit)"));
                }
                let c = &site.counters[s];
                c.check().map_err(|e| format!("site {i} {s}: {e}"))?;
                if c.local(Party::Site) as i64 > *a {
                    return Err(format!("site {i} {s}: own rights {} above available {a}", c.local(Party::Site)));
                }
            }
            for (id, n) in &site.accepted {
                if *n != 1 {
                    return Err(format!("site {i} accepted {id} {n} times"));
                }
            }
        }
        for ((i, s), promised) in &self.truth.promised {
            let received = self.truth.received.get(&(*i, s.clone())).copied().unwrap_or(0);
            if *promised > received {
                return Err(format!("site {i} {s}: {promised} units promised of {received} received"));
            }
        }
        for ((i, s), c) in &self.hub.counters {
            c.check().map_err(|e| format!("hub view of site {i} {s}: {e}"))?;
        }
        Ok(())
    }

    fn step(&mut self) -> SimResult {
        // Time moves on: mostly seconds, sometimes minutes, now and then hours.
        let dt = match self.rng.range(0, 9) {
            0..=3 => self.rng.range(100, 10_000),
            4..=6 => self.rng.range(10_000, 60 * 60_000),
            _ => self.rng.range(HOUR_MS, 8 * HOUR_MS),
        };
        self.now_ms += dt;
        for i in 0..SITES {
            if self.rng.chance(8) {
                self.links[i].flap_until_ms = self.now_ms + self.rng.range(1_000, 20 * 60_000);
            }
            let up = self.reachable(i);
            if !up {
                // Whatever was on the wire is gone.
                self.links[i].to_hub.clear();
                self.links[i].to_site.clear();
            } else if self.links[i].was_down {
                self.reconnects += 1;
                self.links[i] = self.connect(i);
            }
            self.links[i].was_down = !up;
        }
        self.tick_sessions()?;
        // Business.
        for i in 0..SITES {
            if self.rng.chance(120) {
                let k = self.rng.range(0, 1) as usize;
                let n = self.rng.range(5, 40);
                self.receive(i, k, n)?;
            }
            if self.rng.chance(250) {
                let k = self.rng.range(0, 1) as usize;
                let q = self.rng.range(1, 4) as u32;
                self.site_sale(i, k, q)?;
            }
        }
        if self.rng.chance(500) {
            let k = self.rng.range(0, 1) as usize;
            let q = self.rng.range(1, 4) as u32;
            self.hub_sale(k, q)?;
        }
        // The network carries what it can; each side takes in what arrived and does its duties.
        for i in 0..SITES {
            if self.reachable(i) {
                self.pump(i, FRAMES_PER_STEP_MAX, true)?;
            }
            self.site_absorb(i)?;
            self.site_duties(i)?;
        }
        self.hub_absorb()?;
        self.check()
    }

    /// Everything a site and the hub share: the same heads on both.
    fn converged(&mut self) -> SimResult {
        for i in 0..SITES {
            let ids: BTreeSet<DocId> = self.sites[i]
                .store
                .docs
                .keys()
                .cloned()
                .chain(
                    self.hub
                        .store
                        .docs
                        .keys()
                        .filter(|d| site_entitled(i, d, self.hub.store.assigned.get(*d).copied()))
                        .cloned(),
                )
                .collect();
            for id in ids {
                let (a, b) = (self.sites[i].store.heads(&id), self.hub.store.heads(&id));
                if a != b {
                    return Err(format!("site {i} and the hub differ on {id}"));
                }
            }
        }
        Ok(())
    }

    /// A clean network until every shared document agrees, then the end-state checks.
    fn heal(&mut self) -> SimResult<usize> {
        self.p.cut_until_ms = 0;
        for i in 0..SITES {
            self.links[i].flap_until_ms = 0;
            self.links[i] = self.connect(i);
        }
        let mut last = Err("not run".to_owned());
        for round in 0..HEAL_ROUNDS_MAX {
            self.now_ms += 1_000;
            self.tick_sessions()?;
            for i in 0..SITES {
                self.pump(i, HEAL_FRAMES_MAX, false)?;
                self.site_absorb(i)?;
                self.site_duties(i)?;
            }
            self.hub_absorb()?;
            for i in 0..SITES {
                self.pump(i, HEAL_FRAMES_MAX, false)?;
            }
            self.check()?;
            let quiet = self.links.iter().all(|l| l.to_hub.is_empty() && l.to_site.is_empty())
                && self.hub.changed.is_empty()
                && self.sites.iter().all(|s| s.changed.is_empty());
            last = self.converged();
            if quiet && last.is_ok() {
                self.end_state()?;
                return Ok(round);
            }
        }
        last.map(|()| HEAL_ROUNDS_MAX).map_err(|e| format!("no convergence in {HEAL_ROUNDS_MAX} rounds: {e}"))
    }

    fn end_state(&self) -> SimResult {
        for (i, site) in self.sites.iter().enumerate() {
            let assigned: BTreeSet<&OrderId> =
                self.hub.orders.iter().filter(|(_, o)| o.0 == i).map(|(id, _)| id).collect();
            let accepted: BTreeSet<&OrderId> = site.accepted.keys().collect();
            if assigned != accepted {
                return Err(format!("site {i}: {} hub orders, {} accepted", assigned.len(), accepted.len()));
            }
            for id in &site.sold {
                if !self.hub.store.docs.contains_key(&schema::order_doc(id).unwrap()) {
                    return Err(format!("the hub never got site {i}'s order {id}"));
                }
            }
            for k in 0..SKUS.len() {
                let s = sku(k);
                let received = self.truth.received.get(&(i, s.clone())).copied().unwrap_or(0) as i64;
                let sold: i64 = site
                    .sold
                    .iter()
                    .filter_map(|id| site.store.docs.get(&schema::order_doc(id).unwrap()))
                    .filter_map(|d| schema::read_order(d, "order").ok().map(|v| v.draft))
                    .filter(|d| d.lines[0].sku == s)
                    .map(|d| i64::from(d.lines[0].qty))
                    .sum();
                let reserved: i64 =
                    self.hub.orders.values().filter(|o| o.0 == i && o.1 == s).map(|o| i64::from(o.2)).sum();
                if site.available[&s] != received - sold - reserved {
                    return Err(format!(
                        "site {i} {s}: available {} ≠ received {received} − sold {sold} − reserved {reserved}",
                        site.available[&s]
                    ));
                }
            }
        }
        Ok(())
    }
}

fn sku_of(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}

fn roundtrip(f: &Frame) -> SimResult<Frame> {
    let bytes = encode_frame(f).map_err(|e| format!("encode: {e}"))?;
    decode_body(&bytes[LENGTH_PREFIX_BYTES..]).map_err(|e| format!("decode: {e}"))
}

/// What one seed did.
#[derive(Debug, Default)]
struct Report {
    steps: u64,
    hub_orders: usize,
    site_orders: usize,
    frames: u64,
    reconnects: u64,
    heal_rounds: usize,
}

impl Report {
    fn add(&mut self, r: &Report) {
        self.steps += r.steps;
        self.hub_orders += r.hub_orders;
        self.site_orders += r.site_orders;
        self.frames += r.frames;
        self.reconnects += r.reconnects;
        self.heal_rounds = self.heal_rounds.max(r.heal_rounds);
    }
}

/// Runs one seed to the end; on a broken invariant, the step and what broke.
fn run(seed: u64) -> Result<Report, String> {
    let mut sim = Sim::new(seed);
    let mut steps = 0;
    while sim.now_ms < SIM_MS {
        steps += 1;
        sim.step().map_err(|e| format!("step {steps} (t = {} s): {e}", sim.now_ms / 1000))?;
    }
    let heal_rounds = sim.heal().map_err(|e| format!("heal after {steps} steps: {e}"))?;
    Ok(Report {
        steps,
        hub_orders: sim.hub.orders.len(),
        site_orders: sim.sites.iter().map(|s| s.sold.len()).sum(),
        frames: sim.frames,
        reconnects: sim.reconnects,
        heal_rounds,
    })
}

/// [`run`], with a panic (in the simulation or in the code it drives) reported as that seed's failure, so it
/// too names the seed and its replay command instead of ending the thread.
fn run_caught(seed: u64) -> Result<Report, String> {
    std::panic::catch_unwind(|| run(seed)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(format!("panicked: {what}"))
    })
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn replay_hint(seed: u64) -> String {
    format!("replay: OMS_SIM_SEED={seed} cargo test -p oms-protocol --test simulation -- --nocapture")
}

#[test]
fn a_week_offline_keeps_every_invariant_across_seeds() {
    if let Some(seed) = std::env::var("OMS_SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        println!("seed {seed}: {:?}", Params::draw(&mut Rng(seed)));
        match run(seed) {
            Ok(r) => println!("seed {seed}: {r:?}"),
            Err(e) => panic!("seed {seed}: {e}"),
        }
        return;
    }
    let seeds = env_u64("OMS_SIM_SEEDS", 1_000);
    let first = env_u64("OMS_SIM_FIRST_SEED", 0);
    let budget = Duration::from_secs(env_u64("OMS_SIM_BUDGET_S", 600));
    let start = Instant::now();
    let threads = 2u64;
    let results: Vec<(u64, Result<Report, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for seed in (first.saturating_add(t)..first.saturating_add(seeds)).step_by(threads as usize) {
                        if start.elapsed() > budget {
                            break;
                        }
                        let r = run_caught(seed);
                        let failed = r.is_err();
                        out.push((seed, r));
                        if failed {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(seed, r)| r.as_ref().err().map(|e| format!("seed {seed}: {e}\n  {}", replay_hint(*seed))))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let ran = results.len() as u64;
    let mut total = Report::default();
    for r in results.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        total.add(r);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{ran} seeds in {secs:.1} s, in all (heal rounds: the most): {total:?}");
    println!(
        "{} simulated days, {:.0} seeds ({:.0} simulated days) per minute",
        ran * SIM_MS / DAY_MS,
        ran as f64 * 60.0 / secs,
        (ran * SIM_MS / DAY_MS) as f64 * 60.0 / secs
    );
    assert_eq!(ran, seeds, "only {ran} of {seeds} seeds ran within the {} s budget", budget.as_secs());
    assert!(
        total.hub_orders > 0 && total.site_orders > 0,
        "the seeds sold nothing: the simulation would check nothing"
    );
}

/// The simulation is deterministic: a seed replays the same run.
#[test]
fn a_seed_replays_the_same_run() {
    let (a, b) = (run(7).unwrap(), run(7).unwrap());
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.hub_orders > 0 && a.site_orders > 0 && a.reconnects > 0, "{a:?}");
}
