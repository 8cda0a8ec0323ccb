//! Generations of a site's state documents: how their history is kept bounded.
//!
//! A stock document (`stock/<node>`, written by the site), an escrow view (`escrow/<node>`) and the expected
//! receipts (`inbound/<node>`, both written by the hub) hold a *current state* that their one writer
//! overwrites for as long as the site exists: balances, counters, receipts. Automerge keeps every overwritten
//! value, and both applying a peer's change to a map and receiving a sync message walk that history (a
//! one-change sync round costs 0.3 ms at 1,000 changes, 2 ms at 10,000 and 21 ms at 100,000: see
//! BENCHMARKS.md). A busy site writes hundreds of operations a second into these documents, so left alone
//! every sync round of a long-running site would slow down without bound.
//!
//! So the writer starts a new *generation* once the history has grown past both [`HISTORY_OPS_MIN`] and twice
//! what the document currently shows ([`rotation_due`]): a fresh document named `<base>#<n>` holding only the
//! current state ([`copy_visible`]; Automerge has no way to drop history from a document that peers share,
//! hence this copy), after which the older generation is removed. A reader that receives generation `n`
//! removes every older one and refuses changes to them ([`is_older`]), so an old generation is never merged
//! back. Readers look a document up by its base name and read the newest generation they hold; the content
//! of a generation is complete, so a reader that sees only the newest one misses nothing. Generation 0 is
//! the base name itself, so documents written before generations existed are generation 0.

use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, Value, ValueRef, transaction::Transactable};

use crate::schema;
use crate::wire::DocId;

/// Separator of a base name and its generation: `stock/wh-north#3`. Not a character of node ids.
pub const SEPARATOR: char = '#';

/// Prefixes of the state documents, whose history generations bound.
pub const STATE_PREFIXES: [&str; 3] = [schema::STOCK_PREFIX, schema::ESCROW_PREFIX, schema::INBOUND_PREFIX];

/// Whether `doc` may name a state document (or a generation of one): a prefix test, without parsing or
/// allocating, for the paths that ask it of every document (a session's entitlement check, every write).
pub fn is_state_doc(doc: &str) -> bool {
    STATE_PREFIXES.iter().any(|p| doc.starts_with(p))
}

/// Operations of history a state document may keep beyond twice its visible state before its writer starts a
/// new generation (the default of the node's and the hub's `state_history_ops_min`). 1,000 rather than 5,000
/// since 2026-12-07: every change a peer applies to these documents costs in proportion to their history, and
/// the lower bound took about a tenth off the sites' CPU per order at 16 and 64 clients (BENCHMARKS.md, "State
/// documents in generations").
pub const HISTORY_OPS_MIN: u64 = 1_000;
/// The least `state_history_ops_min` a configuration may set.
pub const HISTORY_OPS_MIN_LEAST: u64 = 100;

/// Nesting depth [`copy_visible`] and [`visible_ops`] follow; the state documents nest three levels.
const DEPTH_MAX: usize = 16;

/// Splits `doc` into its base name and generation: `("stock/a", 3)` for `stock/a#3`, `("stock/a", 0)` for
/// `stock/a`. `None` for a suffix that is not the canonical decimal of a generation ≥ 1 (`#0`, `#03`, `#x`),
/// so that one generation has one name.
pub fn split(doc: &str) -> Option<(&str, u32)> {
    match doc.rsplit_once(SEPARATOR) {
        None => Some((doc, 0)),
        Some((base, n)) => {
            let g: u32 = n.parse().ok()?;
            (g >= 1 && !n.starts_with('0') && !n.starts_with('+')).then_some((base, g))
        }
    }
}

/// The generation of `doc` (0 for a base name or an id that is not one of a generation).
pub fn of(doc: &DocId) -> u32 {
    split(doc.as_str()).map_or(0, |(_, g)| g)
}

/// The base name of `doc`: the id without its generation.
pub fn base(doc: &DocId) -> DocId {
    match split(doc.as_str()) {
        Some((b, g)) if g > 0 => DocId::new(b).unwrap_or_else(|| doc.clone()),
        _ => doc.clone(),
    }
}

/// The id of generation `g` of `base` (`base` itself for 0); `None` if that id would be too long.
pub fn name(base: &DocId, g: u32) -> Option<DocId> {
    if g == 0 { Some(base.clone()) } else { DocId::new(format!("{}{SEPARATOR}{g}", base.as_str())) }
}

/// Whether `doc` is an older generation than `current` of the same base.
pub fn is_older(doc: &DocId, current: u32) -> bool {
    of(doc) < current
}

/// Values (scalars and objects) `doc` shows, counted through at most `DEPTH_MAX` levels of objects; text
/// counts one per character, as Automerge stores it.
pub fn visible_ops(doc: &AutoCommit) -> u64 {
    fn count(doc: &AutoCommit, obj: &ObjId, depth: usize) -> u64 {
        let children: Vec<(bool, ObjId)> = match doc.object_type(obj) {
            Ok(ObjType::Map | ObjType::Table) => {
                doc.map_range(obj, ..).map(|i| (matches!(i.value, ValueRef::Object(_)), i.id())).collect()
            }
            Ok(ObjType::List) => {
                doc.list_range(obj, ..).map(|i| (matches!(i.value, ValueRef::Object(_)), i.id())).collect()
            }
            Ok(ObjType::Text) => return doc.length(obj) as u64,
            Err(_) => return 0,
        };
        let mut n = children.len() as u64;
        if depth < DEPTH_MAX {
            for (_, child) in children.iter().filter(|(object, _)| *object) {
                n = n.saturating_add(count(doc, child, depth + 1));
            }
        }
        n
    }
    count(doc, &ROOT, 0)
}

/// The history size (operations) past which a document showing `visible` values starts a new generation:
/// `floor` ([`HISTORY_OPS_MIN`] unless configured) beyond twice what it shows, so that a rotation's copy is
/// paid for by at least as many overwrites.
pub fn rotation_bound(visible: u64, floor: u64) -> u64 {
    floor.saturating_add(visible.saturating_mul(2))
}

/// Whether a document whose history holds `ops` operations, of which `visible` are still shown, should start
/// a new generation ([`rotation_bound`]).
pub fn rotation_due(ops: u64, visible: u64, floor: u64) -> bool {
    ops > rotation_bound(visible, floor)
}

/// Why a state could not be copied.
#[derive(Debug, thiserror::Error)]
#[error("copying a document's state: {0}")]
pub struct CopyError(String);

impl From<automerge::AutomergeError> for CopyError {
    fn from(e: automerge::AutomergeError) -> Self {
        CopyError(e.to_string())
    }
}

/// Writes what `from` shows (maps, lists, text and scalars, through `DEPTH_MAX` levels) into the empty
/// document `to`, without `from`'s history. Not committed.
pub fn copy_visible(from: &AutoCommit, to: &mut AutoCommit) -> Result<(), CopyError> {
    copy_obj(from, &ROOT, to, &ROOT, 0)
}

fn copy_obj(from: &AutoCommit, src: &ObjId, to: &mut AutoCommit, dst: &ObjId, depth: usize) -> Result<(), CopyError> {
    if depth > DEPTH_MAX {
        return Err(CopyError(format!("objects nest deeper than {DEPTH_MAX} levels")));
    }
    match from.object_type(src)? {
        ObjType::Map | ObjType::Table => {
            let items: Vec<(String, Value<'static>, ObjId)> =
                from.map_range(src, ..).map(|i| (i.key.to_string(), i.value.clone().into_value(), i.id())).collect();
            for (key, value, id) in items {
                match value {
                    Value::Scalar(s) => to.put(dst, key.as_str(), s.into_owned())?,
                    Value::Object(t) => {
                        let child = to.put_object(dst, key.as_str(), t)?;
                        copy_obj(from, &id, to, &child, depth + 1)?;
                    }
                }
            }
        }
        ObjType::List => {
            let items: Vec<(Value<'static>, ObjId)> =
                from.list_range(src, ..).map(|i| (i.value.clone().into_value(), i.id())).collect();
            for (index, (value, id)) in items.into_iter().enumerate() {
                match value {
                    Value::Scalar(s) => to.insert(dst, index, s.into_owned())?,
                    Value::Object(t) => {
                        let child = to.insert_object(dst, index, t)?;
                        copy_obj(from, &id, to, &child, depth + 1)?;
                    }
                }
            }
        }
        ObjType::Text => {
            let text = from.text(src)?;
            to.splice_text(dst, 0, 0, &text)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DocId {
        DocId::new(s).unwrap()
    }

    #[test]
    fn a_generation_has_one_name() {
        assert_eq!(split("stock/wh-1"), Some(("stock/wh-1", 0)));
        assert_eq!(split("stock/wh-1#3"), Some(("stock/wh-1", 3)));
        assert_eq!(split("stock/wh-1#12"), Some(("stock/wh-1", 12)));
        for bad in
            ["stock/a#0", "stock/a#03", "stock/a#x", "stock/a#", "stock/a#-1", "stock/a#+2", "stock/a#99999999999"]
        {
            assert_eq!(split(bad), None, "{bad}");
        }
        assert_eq!(name(&id("escrow/a"), 0), Some(id("escrow/a")));
        assert_eq!(name(&id("escrow/a"), 7), Some(id("escrow/a#7")));
        assert_eq!(base(&id("escrow/a#7")), id("escrow/a"));
        assert_eq!(base(&id("escrow/a")), id("escrow/a"));
        assert_eq!(of(&id("escrow/a#7")), 7);
        assert!(is_older(&id("escrow/a#6"), 7));
        assert!(is_older(&id("escrow/a"), 1));
        assert!(!is_older(&id("escrow/a#7"), 7));
        assert!(!is_older(&id("escrow/a#8"), 7));
        for state in ["stock/a", "escrow/a#2", "inbound/a"] {
            assert!(is_state_doc(state), "{state}");
        }
        for other in ["order/wh-1-0000000001", "stocks", "a/stock/x"] {
            assert!(!is_state_doc(other), "{other}");
        }
    }

    #[test]
    fn a_copy_shows_the_same_state_without_the_history() {
        let mut d = AutoCommit::new();
        d.put(ROOT, "v", 1u64).unwrap();
        d.put(ROOT, "owner", "wh-1").unwrap();
        let stock = d.put_object(ROOT, "stock", ObjType::Map).unwrap();
        let list = d.put_object(ROOT, "list", ObjType::List).unwrap();
        d.insert(&list, 0, "a").unwrap();
        let inner = d.insert_object(&list, 1, ObjType::Map).unwrap();
        d.put(&inner, "x", -4i64).unwrap();
        let text = d.put_object(ROOT, "note", ObjType::Text).unwrap();
        d.splice_text(&text, 0, 0, "hello").unwrap();
        // 1,000 overwrites of 10 keys: history far beyond what shows.
        for i in 0..1_000u64 {
            d.put(&stock, format!("SKU-{}", i % 10), vec![i as u8, 1, 2]).unwrap();
            d.commit();
        }
        d.delete(ROOT, "owner").unwrap();
        d.commit();
        let ops = d.stats().num_ops;
        let visible = visible_ops(&d);
        // v, stock, list, note + 10 SKUs + 2 list items + x + 5 characters.
        assert_eq!(visible, 4 + 10 + 2 + 1 + 5);
        assert!(rotation_due(ops.max(HISTORY_OPS_MIN + 2 * visible + 1), visible, HISTORY_OPS_MIN));
        assert!(!rotation_due(HISTORY_OPS_MIN + 2 * visible, visible, HISTORY_OPS_MIN));
        assert!(rotation_due(1_000, visible, 100));

        let mut copy = AutoCommit::new();
        copy_visible(&d, &mut copy).unwrap();
        copy.commit();
        assert_eq!(
            serde_json::to_value(automerge::AutoSerde::from(&copy)).unwrap(),
            serde_json::to_value(automerge::AutoSerde::from(&d)).unwrap()
        );
        assert!(copy.stats().num_ops < 30, "{} ops in the copy", copy.stats().num_ops);
        assert!(d.stats().num_ops > 1_000);
    }

    /// What a one-change sync round costs against the history of the document (BENCHMARKS.md, "State documents
    /// in generations"): a document of 4 keys overwritten `h` times, synced to a peer; then 50 rounds of one
    /// change each, timed (medians and p99 of generating and receiving both ways). With generations a state
    /// document's history stays under [`HISTORY_OPS_MIN`] + 2 × what it shows; without, it grows with every
    /// write. `cargo test --release -p oms-protocol --lib sync_round_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run by hand"]
    fn sync_round_cost() {
        use automerge::sync::{State, SyncDoc};
        let round = |a: &mut AutoCommit, b: &mut AutoCommit, sa: &mut State, sb: &mut State| {
            for _ in 0..10 {
                let m1 = a.sync().generate_sync_message(sa);
                let m2 = b.sync().generate_sync_message(sb);
                if m1.is_none() && m2.is_none() {
                    return;
                }
                if let Some(m) = m1 {
                    b.sync().receive_sync_message(sb, m).unwrap();
                }
                if let Some(m) = m2 {
                    a.sync().receive_sync_message(sa, m).unwrap();
                }
            }
        };
        let mut base = None;
        for history in [1_000u64, 5_000, 20_000, 100_000] {
            let (mut a, mut b) = (AutoCommit::new(), AutoCommit::new());
            let (mut sa, mut sb) = (State::new(), State::new());
            for i in 0..history {
                a.put(ROOT, format!("k{}", i % 4), i).unwrap();
                a.commit();
            }
            round(&mut a, &mut b, &mut sa, &mut sb);
            let mut times = Vec::new();
            for i in 0..50u64 {
                let t = std::time::Instant::now();
                a.put(ROOT, "k0", i).unwrap();
                a.commit();
                round(&mut a, &mut b, &mut sa, &mut sb);
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
            let ratio = p50 / *base.get_or_insert(p50);
            println!(
                "history {history:>7} operations: one-change round p50 {p50:.3} ms, p99 {p99:.3} ms, {ratio:.1}x the 1,000-operation round"
            );
        }
    }
}
