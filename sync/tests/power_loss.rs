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
