//! Power loss under the documents of sync (`sync.redb` on a node, `hub.redb` at the hub): a recorded run of
//! flushes, each writing new documents, changes to older ones, a sync state and the feed cursor that
//! produced them in one transaction, cut at every few operations (only what was synced; some of what was
//! written since; a torn page). After each cut the file opens, the cursor is at least that of the last
//! flush acknowledged before the cut, and the documents match the cursor exactly: everything it covers, in
//! full, nothing beyond it. So sync resumes from the cursor and sends nothing twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use oms_protocol::sync::automerge::transaction::Transactable;
use oms_protocol::sync::automerge::{ROOT, ReadDoc};
use oms_protocol::wire::{DocId, PeerId};
use oms_service::storage::crash::{CrashBackend, Cut, OpLog, image_at};
use oms_sync::DocDb;

const ROUNDS: u64 = 24;

fn doc(r: u64) -> DocId {
    DocId::new(format!("order/wh-a-{r:010}")).unwrap()
}

fn value(db: &DocDb, d: &DocId, key: &str) -> Option<i64> {
    let doc = db.read(d)?;
    let (v, _) = doc.get(ROOT, key).ok()??;
    v.as_i64()
}

#[test]
fn every_cut_leaves_documents_and_cursor_all_old_or_all_new() {
    let log = OpLog::default();
    let path = Path::new("sync.redb");
    let peer = PeerId::new("oms://t/hub").unwrap();
    let mut acked = Vec::new();
    {
        let mut db = DocDb::open_on(path, Box::new(CrashBackend::recording(log.clone())), vec![1; 16], 10_000).unwrap();
        for r in 1..=ROUNDS {
            // A new document for round r, and round r written into every earlier one too.
            db.get_or_create(&doc(r)).unwrap().put(ROOT, "created", r as i64).unwrap();
            db.mark_dirty(&doc(r));
            for e in 1..=r {
                db.get_or_create(&doc(e)).unwrap().put(ROOT, "round", r as i64).unwrap();
                db.mark_dirty(&doc(e));
            }
            db.set_sync_state(&peer, &doc(r), vec![r as u8; 8]);
            db.set_meta("feed.cursor", r);
            db.flush().unwrap();
            acked.push((r, log.lock().unwrap().len()));
        }
    }
    let ops = log.lock().unwrap().clone();
    let mut points = 0;
    for cut in (0..=ops.len()).step_by((ops.len() / 120).max(1)) {
        points += 1;
        for how in [Cut::DropUnsynced, Cut::KeepSome(cut as u64), Cut::TearPage(cut as u64)] {
            let want = acked.iter().filter(|(_, at)| *at <= cut).map(|(r, _)| *r).max().unwrap_or(0);
            let image = image_at(&ops, cut, how);
            let db = match DocDb::open_on(path, Box::new(CrashBackend::from_image(image)), vec![2; 16], 10_000) {
                Ok(db) => db,
                Err(e) => {
                    assert_eq!(want, 0, "cut {cut} {how:?}: does not open ({e}) after flush {want}");
                    continue;
                }
            };
            let cursor = db.meta("feed.cursor").unwrap().unwrap_or(0);
            assert!(cursor >= want, "cut {cut} {how:?}: cursor {cursor} behind acknowledged flush {want}");
            assert_eq!(db.len() as u64, cursor, "cut {cut} {how:?}: documents ≠ cursor");
            // The figures kept with the rows are those of the same commit.
            let (kept, walked) = db.audit_totals().unwrap();
            assert_eq!(kept, walked, "cut {cut} {how:?}: kept totals ≠ a walk of the rows");
            for r in 1..=cursor {
                assert_eq!(value(&db, &doc(r), "created"), Some(r as i64), "cut {cut} {how:?}: doc {r}");
                assert_eq!(value(&db, &doc(r), "round"), Some(cursor as i64), "cut {cut} {how:?}: doc {r} half old");
            }
            assert_eq!(db.sync_state(&peer, &doc(cursor.max(1))).is_some(), cursor > 0, "cut {cut} {how:?}");
        }
    }
    assert!(points > 100, "{points} cut points");
    eprintln!("sync.redb power cuts: {points} points × 3 ways over {} operations", ops.len());
}

/// Power cuts during a sync session: a node and a hub, each on a recording backend, syncing through real
/// [`oms_protocol::sync::SyncSession`]s in memory the way `node/src/sync` and `hub/src/server.rs` drive them
/// (apply, flush, only then answer). Either side's file is cut at many points; it is reopened, the other side
/// taken as it was at that moment, and the two resume and converge.
mod session {
    use std::collections::{BTreeMap, VecDeque};
    use std::path::Path;

    use oms_protocol::sync::automerge::transaction::Transactable;
    use oms_protocol::sync::automerge::{ChangeHash, ObjType, ROOT, ReadDoc, Value};
    use oms_protocol::sync::{Event, SessionConfig, SyncSession};
    use oms_protocol::wire::{DocId, Frame, PeerId};
    use oms_service::storage::crash::{CrashBackend, Cut, OpLog, image_at};
    use oms_sync::Everything;
    use oms_sync::{DocDb, DocDbError, SyncDocs};

    /// Documents the node's feed writes into, and events in the feed.
    const DOCS: u64 = 6;
    const EVENTS: u64 = 60;
    /// Feed events the node applies per step.
    const EVENTS_PER_STEP: u64 = 3;
    /// Steps a run (or a resume) may take to take in the feed and converge.
    const STEPS_MAX: usize = 400;
    const CURSOR: &str = "feed.cursor";

    fn doc(i: u64) -> DocId {
        DocId::new(format!("order/wh-a-{i:010}")).unwrap()
    }

    fn open(path: &str, backend: CrashBackend, actor: u8) -> Result<DocDb, DocDbError> {
        DocDb::open_on(Path::new(path), Box::new(backend), vec![actor; 16], 1_000)
    }

    /// What one side told the other in a transmission: every document's heads then (all flushed before it
    /// sent) and the node's feed cursor; `at` is the side's storage operations by then.
    struct Told {
        at: usize,
        cursor: u64,
        heads: BTreeMap<DocId, Vec<ChangeHash>>,
    }

    fn told(db: &mut DocDb, at: usize) -> Told {
        let ids: Vec<DocId> = db.ids().collect();
        let heads = ids.into_iter().filter_map(|d| db.heads(&d).map(|h| (d, h))).collect();
        Told { at, cursor: cursor(db), heads }
    }

    /// What a recorded run left: each side's operations and transmissions, and (node operations, hub
    /// operations) after every flush of either side, to find the one side as it was when the other went down.
    #[derive(Default)]
    struct Record {
        node_ops: Vec<oms_service::storage::crash::Op>,
        hub_ops: Vec<oms_service::storage::crash::Op>,
        node_told: Vec<Told>,
        hub_told: Vec<Told>,
        timeline: Vec<(usize, usize)>,
        steps: usize,
        end_ms: u64,
    }

    struct Pair {
        node: SyncDocs<Everything>,
        hub: SyncDocs<Everything>,
        ns: SyncSession,
        hs: SyncSession,
        to_node: VecDeque<Frame>,
        now: u64,
        step: u64,
        /// While recording: the node's and the hub's logs.
        logs: Option<(OpLog, OpLog)>,
        record: Record,
    }

    fn drain_events(s: &mut SyncSession, db: &mut DocDb) {
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::DocChanged { doc } => db.mark_dirty(&doc),
                Event::Closed { code, reason, .. } => panic!("session closed: {code} {reason}"),
                Event::PeerRefused { doc, code } | Event::DocFailed { doc, code } => panic!("{doc}: {code}"),
                _ => {}
            }
        }
    }

    /// Feed event `e`: appended to its document's `events` list, the cursor moved, both in the next flush.
    fn apply_event(db: &mut DocDb, e: u64) -> DocId {
        let d = doc(e % DOCS);
        let am = db.get_or_create(&d).unwrap();
        let list = match am.get(ROOT, "events").unwrap() {
            Some((Value::Object(ObjType::List), id)) => id,
            _ => am.put_object(ROOT, "events", ObjType::List).unwrap(),
        };
        let len = am.length(&list);
        am.insert(&list, len, e as i64).unwrap();
        db.mark_dirty(&d);
        db.set_meta(CURSOR, e);
        d
    }

    fn events_of(db: &mut DocDb, d: &DocId) -> Vec<u64> {
        let Some(am) = db.get(d) else { return vec![] };
        let Some((Value::Object(ObjType::List), list)) = am.get(ROOT, "events").unwrap() else { return vec![] };
        (0..am.length(&list)).map(|i| am.get(&list, i).unwrap().and_then(|(v, _)| v.as_i64()).unwrap() as u64).collect()
    }

    fn hub_write(db: &mut DocDb, d: &DocId) -> Option<i64> {
        db.get(d)?.get(ROOT, "hub").unwrap().and_then(|(v, _)| v.as_i64())
    }

    fn cursor(db: &DocDb) -> u64 {
        db.meta(CURSOR).unwrap().unwrap_or(0)
    }

    fn len(log: &OpLog) -> usize {
        log.lock().unwrap().len()
    }

    fn sorted(mut h: Vec<ChangeHash>) -> Vec<ChangeHash> {
        h.sort();
        h
    }

    /// The feed's events of document `i` up to `upto`, in order.
    fn want_events(i: u64, upto: u64) -> Vec<u64> {
        (1..=upto).filter(|e| e % DOCS == i).collect()
    }

    impl Pair {
        fn new(node: DocDb, hub: DocDb, logs: Option<(OpLog, OpLog)>, now: u64) -> Pair {
            let (n, h) = (PeerId::new("oms://t/node/wh-a").unwrap(), PeerId::new("oms://t/hub").unwrap());
            let cfg = SessionConfig { manifest_interval_ms: 5_000, ..SessionConfig::default() };
            Pair {
                node: SyncDocs::new(node, Everything),
                hub: SyncDocs::new(hub, Everything),
                ns: SyncSession::new_client(cfg.clone(), n.clone(), h.clone(), vec![1; 16], now),
                hs: SyncSession::new_server(cfg, h, n, vec![2; 16], now),
                to_node: VecDeque::new(),
                now,
                step: 0,
                logs,
                record: Record::default(),
            }
        }

        /// One step: the node takes feed events and the hub's frames, flushes, and only then answers; the hub
        /// takes those frames, sometimes writes a document of its own, flushes, and only then answers.
        fn step(&mut self) {
            self.now += 100;
            self.step += 1;
            let from = cursor(&self.node.db) + 1;
            for e in from..(from + EVENTS_PER_STEP).min(EVENTS + 1) {
                let d = apply_event(&mut self.node.db, e);
                self.ns.local_change(&mut self.node, &d);
            }
            while let Some(f) = self.to_node.pop_front() {
                self.ns.handle_frame(&mut self.node, f);
            }
            self.ns.tick(&mut self.node, self.now);
            drain_events(&mut self.ns, &mut self.node.db);
            for f in self.flush_then_send(true) {
                self.hs.handle_frame(&mut self.hub, f);
            }
            self.hs.tick(&mut self.hub, self.now);
            drain_events(&mut self.hs, &mut self.hub.db);
            let mine = doc(self.step % DOCS);
            if self.step.is_multiple_of(4) && self.hub.db.contains(&mine) {
                self.hub.db.get_mut(&mine).unwrap().put(ROOT, "hub", self.step as i64).unwrap();
                self.hub.db.mark_dirty(&mine);
                self.hs.local_change(&mut self.hub, &mine);
            }
            let out = self.flush_then_send(false);
            self.to_node.extend(out);
        }

        /// Flushes the node's (`node`) or the hub's documents, and only then takes what its session has to
        /// send; while recording, notes what it told.
        fn flush_then_send(&mut self, node: bool) -> Vec<Frame> {
            let (docs, session) = if node { (&mut self.node, &mut self.ns) } else { (&mut self.hub, &mut self.hs) };
            docs.db.flush().unwrap();
            let out: Vec<Frame> = std::iter::from_fn(|| session.poll_transmit()).collect();
            if let Some((n, h)) = &self.logs {
                self.record.timeline.push((len(n), len(h)));
                if !out.is_empty() {
                    let t = told(&mut docs.db, len(if node { n } else { h }));
                    if node { self.record.node_told.push(t) } else { self.record.hub_told.push(t) }
                }
            }
            out
        }

        fn converged(&mut self) -> bool {
            if cursor(&self.node.db) < EVENTS || !self.to_node.is_empty() || !self.ns.is_idle() || !self.hs.is_idle() {
                return false;
            }
            (0..DOCS).all(|i| {
                let h = self.hub.db.heads(&doc(i));
                h.is_some() && self.node.db.heads(&doc(i)).map(sorted) == h.map(sorted)
            })
        }

        /// Steps until the whole feed is in and both sides hold the same heads of every document; the steps.
        fn run(&mut self) -> usize {
            for n in 0..STEPS_MAX {
                self.step();
                if self.converged() {
                    return n + 1;
                }
            }
            panic!("no convergence within {STEPS_MAX} steps (cursor {})", cursor(&self.node.db));
        }
    }

    /// The recorded run: the whole feed through a session until both sides agree.
    fn record() -> Record {
        let (node_log, hub_log) = (OpLog::default(), OpLog::default());
        let node = open("sync.redb", CrashBackend::recording(node_log.clone()), 1).unwrap();
        let hub = open("hub.redb", CrashBackend::recording(hub_log.clone()), 2).unwrap();
        let mut pair = Pair::new(node, hub, Some((node_log.clone(), hub_log.clone())), 1_000);
        let steps = pair.run();
        let mut record = std::mem::take(&mut pair.record);
        (record.steps, record.end_ms) = (steps, pair.now);
        drop(pair);
        record.node_ops = node_log.lock().unwrap().clone();
        record.hub_ops = hub_log.lock().unwrap().clone();
        record
    }

    #[derive(Debug, Default)]
    struct Tally {
        points: usize,
        /// Images the store refused to open (a typed error, only before it told anything).
        refused: usize,
        resumed: usize,
        heads_checked: usize,
    }

    /// Cuts the node's file (`node`) or the hub's at about `cuts` points, three ways each, and checks each cut
    /// (see the tests).
    fn cut_and_resume(rec: &Record, node: bool, cuts: usize) -> Tally {
        let (ops, told, other_ops) = if node {
            (&rec.node_ops, &rec.node_told, &rec.hub_ops)
        } else {
            (&rec.hub_ops, &rec.hub_told, &rec.node_ops)
        };
        let split = |t: &(usize, usize)| if node { (t.0, t.1) } else { (t.1, t.0) };
        let mut tally = Tally::default();
        for cut in (0..=ops.len()).step_by((ops.len() / cuts).max(1)) {
            tally.points += 1;
            // The other side as it was when this one went down: after every flush of either before the cut.
            let other_at = rec.timeline.iter().rev().map(split).find(|(m, _)| *m <= cut).map_or(0, |(_, o)| o);
            let last_told = told.iter().rev().find(|t| t.at <= cut);
            for (way, how) in
                [Cut::DropUnsynced, Cut::KeepSome(cut as u64), Cut::TearPage(cut as u64)].into_iter().enumerate()
            {
                let (name, other_name) = if node { ("sync.redb", "hub.redb") } else { ("hub.redb", "sync.redb") };
                let mut db = match open(name, CrashBackend::from_image(image_at(ops, cut, how)), 10 + way as u8) {
                    Ok(db) => db,
                    Err(e) => {
                        assert!(last_told.is_none(), "{name} cut {cut} {how:?}: does not open ({e}) after telling");
                        tally.refused += 1;
                        continue;
                    }
                };
                let (kept, walked) = db.audit_totals().unwrap();
                assert_eq!(kept, walked, "{name} cut {cut} {how:?}: kept totals ≠ a walk of the rows");
                assert_eq!(kept.documents, db.len() as u64, "{name} cut {cut} {how:?}");
                // Nothing told to the other side is lost.
                if let Some(t) = last_told {
                    for (d, heads) in &t.heads {
                        let am = db.get_mut(d).unwrap_or_else(|| panic!("{name} cut {cut} {how:?}: {d} told, lost"));
                        for h in heads {
                            assert!(
                                am.get_change_by_hash(h).is_some(),
                                "{name} cut {cut} {how:?}: {d}: a told change lost"
                            );
                            tally.heads_checked += 1;
                        }
                    }
                }
                // The node's documents are exactly what its cursor covers; the hub holds each event once.
                let at = cursor(&db);
                if let (true, Some(t)) = (node, last_told) {
                    assert!(at >= t.cursor, "cut {cut} {how:?}: cursor {at} behind {} told to the hub", t.cursor);
                }
                for i in 0..DOCS {
                    let got = events_of(&mut db, &doc(i));
                    if node {
                        assert_eq!(got, want_events(i, at), "cut {cut} {how:?}: doc {i} ≠ cursor {at}");
                    } else {
                        assert!(got.windows(2).all(|w| w[0] < w[1]), "hub cut {cut} {how:?}: doc {i} twice: {got:?}");
                    }
                }
                let other = open(
                    other_name,
                    CrashBackend::from_image(image_at(other_ops, other_at, Cut::DropUnsynced)),
                    20 + way as u8,
                )
                .unwrap();
                let (n, h) = if node { (db, other) } else { (other, db) };
                // Both come back (the node with a new actor, as a restarted process): the node takes the feed
                // up from its cursor, and the two converge with every event once and the hub's writes at
                // the node.
                let mut pair = Pair::new(n, h, None, rec.end_ms + 60_000);
                pair.run();
                for i in 0..DOCS {
                    let d = doc(i);
                    assert_eq!(
                        events_of(&mut pair.hub.db, &d),
                        want_events(i, EVENTS),
                        "{name} cut {cut} {how:?}: hub doc {i}"
                    );
                    assert_eq!(
                        events_of(&mut pair.node.db, &d),
                        want_events(i, EVENTS),
                        "{name} cut {cut} {how:?}: node doc {i}"
                    );
                    let hub_val = hub_write(&mut pair.hub.db, &d);
                    assert_eq!(
                        hub_write(&mut pair.node.db, &d),
                        hub_val,
                        "{name} cut {cut} {how:?}: the hub's write of doc {i}"
                    );
                }
                tally.resumed += 1;
            }
        }
        assert!(tally.points >= cuts.min(ops.len()) / 2, "{tally:?}");
        tally
    }

    /// Power cuts of the node's `sync.redb` and of the hub's `hub.redb` at many points of a sync session
    /// (the other side keeps what it had). After each: the file opens, or refuses with a typed error before
    /// it told the other side anything; every change it told the other side it holds is still there; the
    /// node's feed cursor and documents are all old or all new (each document's events exactly those up to
    /// the cursor), the hub's documents hold no event twice. Then both resume, the node taking up its feed
    /// from its cursor with a new actor: they converge, every event is in its document exactly once on both
    /// sides, and the hub's own writes reach the node.
    ///
    /// `OMS_POWER_CUTS` sets how many cut points per file (default 30), each tried three ways.
    #[test]
    fn a_cut_on_either_side_of_a_sync_session_resumes_and_converges_with_nothing_twice() {
        let cuts: usize = std::env::var("OMS_POWER_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
        let started = std::time::Instant::now();
        let rec = record();
        assert!(rec.node_told.len() > 10 && rec.hub_told.len() > 10, "too few transmissions to cut between");
        for node in [true, false] {
            let t = cut_and_resume(&rec, node, cuts);
            eprintln!(
                "{} power cuts in a sync session: {} points × 3 ways over {} operations, {} refused to open (before \
                 telling anything), {} resumed and converged, {} told heads checked",
                if node { "sync.redb (node)" } else { "hub.redb (hub)" },
                t.points,
                if node { rec.node_ops.len() } else { rec.hub_ops.len() },
                t.refused,
                t.resumed,
                t.heads_checked
            );
        }
        eprintln!(
            "recorded run: {} steps, {} node and {} hub transmissions; {:.1} s in all",
            rec.steps,
            rec.node_told.len(),
            rec.hub_told.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
