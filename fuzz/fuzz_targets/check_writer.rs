//! The hub's ownership check over decoded documents (`schema::check_writer`): a node's order document, created
//! by its site, then changed by up to 32 arbitrary map operations made by one of three writers (its site,
//! another site, the hub). No panic, and the check is sound: it never accepts a change set that touches a root
//! key the writer does not own (the site: `node`; the hub: `hub`; another site: nothing), nor any change after
//! the order was frozen; and it is not over-strict for the hub, whose writes into `hub` alone always pass.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use oms_protocol::domain::{NodeId, OrderId, Sku};
use oms_protocol::records::OrderRecord;
use oms_protocol::schema::{Writer, check_writer, keys, order_doc, write_order};
use oms_protocol::sync::automerge::transaction::Transactable;
use oms_protocol::sync::automerge::{AutoCommit, ObjType, ROOT, ReadDoc};

/// Root keys the operations pick from: every key of the layout and one outside it.
const ROOT_KEYS: [&str; 10] = [
    keys::V,
    keys::ID,
    keys::ORIGIN,
    keys::SITE,
    keys::CREATED_AT_MS,
    keys::DRAFT,
    keys::NODE,
    keys::HUB,
    keys::UPDATED_AT_MS,
    "x",
];
/// Keys inside the `node` and `hub` maps.
const INNER_KEYS: [&str; 6] =
    [keys::STATUS, keys::PROGRESS, keys::CANCEL_REQUESTED_AT_MS, keys::PARENT, keys::FROZEN_AT_MS, "y"];

#[derive(Debug, Arbitrary)]
enum Who {
    Site,
    OtherSite,
    Hub,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Put a scalar at a root key.
    PutRoot(u8, u64),
    /// Delete a root key.
    DeleteRoot(u8),
    /// Put a scalar inside the `node` (false) or `hub` (true) map, creating the map if missing.
    PutInner(bool, u8, u64),
    /// Put bytes inside the `node` or `hub` map (garbage where postcard is expected).
    PutInnerBytes(bool, u8, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    frozen_before: bool,
    who: Who,
    ops: Vec<Op>,
}

fn record(site: &NodeId) -> OrderRecord {
    oms_protocol::fixtures::accepted(OrderId::new(site, 1), site, &Sku::parse("SKU-1").expect("sku"), 2)
}

fn inner_map(doc: &mut AutoCommit, hub: bool) -> oms_protocol::sync::automerge::ObjId {
    let key = if hub { keys::HUB } else { keys::NODE };
    match doc.get(ROOT, key) {
        Ok(Some((oms_protocol::sync::automerge::Value::Object(ObjType::Map), id))) => id,
        _ => doc.put_object(ROOT, key, ObjType::Map).expect("put map"),
    }
}

fuzz_target!(|input: Input| {
    let site = NodeId::parse("wh-1").expect("node");
    let other = NodeId::parse("wh-2").expect("node");
    let rec = record(&site);
    let name = order_doc(&rec.id).expect("doc id");
    let mut doc = AutoCommit::new();
    write_order(&mut doc, &site, &rec, 10).expect("creation");
    if input.frozen_before {
        let node = inner_map(&mut doc, false);
        doc.put(&node, keys::FROZEN_AT_MS, 20u64).expect("freeze");
    }
    doc.commit();
    let before = doc.get_heads();
    // The root keys the operations touch (a put into `node`/`hub` may create that map: it touches it too).
    let mut touched = std::collections::BTreeSet::new();
    for op in input.ops.iter().take(32) {
        let r = match op {
            Op::PutRoot(k, v) => {
                let key = ROOT_KEYS[usize::from(*k) % ROOT_KEYS.len()];
                touched.insert(key);
                doc.put(ROOT, key, *v)
            }
            Op::DeleteRoot(k) => {
                let key = ROOT_KEYS[usize::from(*k) % ROOT_KEYS.len()];
                if doc.get(ROOT, key).ok().flatten().is_some() {
                    touched.insert(key);
                }
                doc.delete(ROOT, key)
            }
            Op::PutInner(hub, k, v) => {
                touched.insert(if *hub { keys::HUB } else { keys::NODE });
                let m = inner_map(&mut doc, *hub);
                doc.put(&m, INNER_KEYS[usize::from(*k) % INNER_KEYS.len()], *v)
            }
            Op::PutInnerBytes(hub, k, bytes) => {
                touched.insert(if *hub { keys::HUB } else { keys::NODE });
                let m = inner_map(&mut doc, *hub);
                doc.put(&m, INNER_KEYS[usize::from(*k) % INNER_KEYS.len()], bytes.clone())
            }
        };
        // Automerge refuses some operations (a put into a map that a root put just replaced by a scalar is
        // still a map id here, so none should fail); a refused one changes nothing.
        let _ = r;
    }
    doc.commit();
    let writer = match input.who {
        Who::Site => Writer::Node(&site),
        Who::OtherSite => Writer::Node(&other),
        Who::Hub => Writer::Hub,
    };
    let owned: &[&str] = match input.who {
        Who::Site => &[keys::NODE],
        Who::OtherSite => &[],
        Who::Hub => &[keys::HUB],
    };
    let verdict = check_writer(&mut doc, &name, &before, writer);
    if input.frozen_before {
        assert!(verdict.is_err(), "a change to a frozen order was accepted: {input:?}");
        return;
    }
    if verdict.is_ok() {
        // Sound: every root key the writer does not own reads the same as before the change, down to the
        // entries of a map.
        for key in ROOT_KEYS.iter().filter(|k| !owned.contains(k)) {
            assert_eq!(
                subtree(&doc, key, None),
                subtree(&doc, key, Some(&before)),
                "{key:?} changed by a writer that does not own it, and accepted: {input:?}"
            );
        }
    }
    if matches!(input.who, Who::Hub) && touched.iter().all(|k| *k == keys::HUB) {
        assert!(verdict.is_ok(), "the hub's own writes refused: {verdict:?} for {input:?}");
    }
});

/// What root key `key` holds (at `heads`, or now): a scalar's value, or a map's entries (one level: the order
/// layout nests no deeper), as text to compare.
fn subtree(doc: &AutoCommit, key: &str, heads: Option<&[oms_protocol::sync::automerge::ChangeHash]>) -> String {
    let got = match heads {
        Some(h) => doc.get_at(ROOT, key, h),
        None => doc.get(ROOT, key),
    };
    match got.ok().flatten() {
        None => "absent".into(),
        Some((oms_protocol::sync::automerge::Value::Object(_), obj)) => {
            let keys: Vec<String> = match heads {
                Some(h) => doc.keys_at(&obj, h).collect(),
                None => doc.keys(&obj).collect(),
            };
            let entries: Vec<String> = keys
                .iter()
                .map(|k| {
                    let v = match heads {
                        Some(h) => doc.get_at(&obj, k.as_str(), h),
                        None => doc.get(&obj, k.as_str()),
                    };
                    format!("{k}={:?}", v.ok().flatten().map(|(v, _)| v))
                })
                .collect();
            format!("map {entries:?}")
        }
        Some((v, _)) => format!("{v:?}"),
    }
}
