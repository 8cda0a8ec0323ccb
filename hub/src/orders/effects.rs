//! Writing the intake's decisions into the hub's documents: the fulfillment documents it created and the
//! escrow views it changed ([`apply_all_effects`], on the intake's documents thread), and the sites' facts
//! routing reads.

use oms_protocol::sync::automerge::{ActorId, AutoCommit};

use super::*;

/// Why the intake's decisions could not be written into the hub's documents.
#[derive(Debug, thiserror::Error)]
pub enum EffectsError {
    /// A fulfillment or escrow document could not be written.
    #[error("document {doc}: {source}")]
    Document {
        /// The document.
        doc: DocId,
        /// Why.
        source: schema::SchemaError,
    },
    /// The intake's records could not be read.
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

impl From<EffectsError> for Problem {
    fn from(e: EffectsError) -> Self {
        match e {
            EffectsError::Intake(e) => e.into(),
            EffectsError::Document { .. } => {
                tracing::error!(error = %e, "cannot write a hub document");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "document_failed", e.to_string())
            }
        }
    }
}

/// How old the sites' facts the intake's writer reuses may be, ms, when the documents' lock is busy.
pub const SITE_FACTS_REUSE_MS: u64 = 250;

/// The sites' facts for the intake's writer ([`crate::intake::SiteSource`]): read from the documents once per
/// batch when their lock is free; while a session holds it, the last facts (at most
/// [`SITE_FACTS_REUSE_MS`] old, their ages moved on) are used instead of waiting, so no batch waits for a
/// session's frame or flush preparation. A site's location, capacity and priority change when its stock
/// document does; whether it is connected, and since when it was heard from, move on a scale of seconds.
pub fn site_source(hub: std::sync::Weak<Hub>) -> crate::intake::SiteSource {
    let mut last: Option<(u64, Vec<SiteFacts>)> = None;
    Box::new(move |now| {
        let Some(hub) = hub.upgrade() else { return Vec::new() };
        if let Some((at, facts)) = &last
            && now.saturating_sub(*at) <= SITE_FACTS_REUSE_MS
            && hub.docs.try_lock().is_none()
        {
            let aged = now.saturating_sub(*at);
            return facts
                .iter()
                .map(|f| SiteFacts { last_heard_age_ms: f.last_heard_age_ms.saturating_add(aged), ..f.clone() })
                .collect();
        }
        let facts = site_facts(&hub, now);
        last = Some((now, facts.clone()));
        facts
    })
}

/// What routing needs about every site, from the documents and connections.
pub fn site_facts(hub: &Hub, now: u64) -> Vec<SiteFacts> {
    let mut docs = hub.docs.lock();
    docs.sites(SITES_MAX)
        .into_iter()
        .map(|(id, site)| {
            let st = docs.nodes.get(id.as_str());
            let heard = st.and_then(|s| s.last_frame_at_ms);
            SiteFacts {
                reachable: st.is_some_and(|s| s.connected),
                last_heard_age_ms: heard.map_or(u64::MAX, |t| now.saturating_sub(t)),
                id,
                info: site.info,
                schedule: site.schedule,
            }
        })
        .collect()
}

/// Writes fulfillment documents and escrow views into the hub's documents and wakes the sites' sessions.
///
/// No flush here: what these documents say is already committed in `intake.redb` (and rebuilt from it by
/// [`recover`] after a crash). A session sends a new fulfillment document before the flush that writes it (it
/// is the record alone, rebuilt the same, see [`build_orders`]) and everything else after one, so a site never
/// sees anything the hub could lose for good.
pub fn apply_effects(hub: &Hub, effects: &Effects) -> Result<(), EffectsError> {
    apply_all_effects(hub, &[effects])
}

/// [`apply_effects`] for many orders under one hold of the documents' lock: each site's escrow view gets one
/// change for all of them, with each counter written once, merged (element-wise max) with what the view holds,
/// so that effects applied out of order (two batches, two orders of one, a cancel beside an intake) never put
/// an older state over a newer one: the intake's counters only ever grow.
pub fn apply_all_effects(hub: &Hub, all: &[&Effects]) -> Result<(), EffectsError> {
    if all.iter().all(|e| e.fulfillments.is_empty() && e.escrow.is_empty()) {
        return Ok(());
    }
    let now = now_ms();
    // The newest counter per site and SKU: later effects hold larger counters, and the merge keeps every cell's
    // largest value whichever comes last.
    let mut escrow: BTreeMap<(NodeId, String), EscrowCounter> = BTreeMap::new();
    for (site, c) in all.iter().flat_map(|e| &e.escrow) {
        match escrow.entry((site.clone(), c.sku().as_str().to_owned())) {
            std::collections::btree_map::Entry::Occupied(mut held) => {
                if held.get_mut().merge(c).is_err() {
                    // Same SKU by the key: cannot happen; the later counter stands.
                    held.insert(c.clone());
                }
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(c.clone());
            }
        }
    }
    let fulfillments: Vec<&NewFulfillment> = all.iter().flat_map(|e| &e.fulfillments).collect();
    let built = build_orders(&fulfillments)?;
    let mut tell = Vec::new();
    {
        let mut docs = hub.docs.lock();
        for (f, name, d) in built {
            let created =
                docs.create_local(&name, d).map_err(|source| EffectsError::Document { doc: name.clone(), source })?;
            let nodes = match created {
                Some(nodes) => nodes,
                // Already held (an order replayed, or re-applied after a crash): written as any change is, which
                // changes nothing if it was created.
                None => docs
                    .write_local(&name, |d| {
                        schema::create_hub_order(d, &f.id, &f.parent, &f.site, &f.draft, f.assigned_at_ms)
                    })
                    .map_err(|source| EffectsError::Document { doc: name.clone(), source })?,
            };
            tell.extend(nodes);
        }
        let mut by_site: BTreeMap<&NodeId, Vec<&EscrowCounter>> = BTreeMap::new();
        for ((site, _), c) in &escrow {
            by_site.entry(site).or_default().push(c);
        }
        for (site, counters) in by_site {
            let Some(name) = schema::escrow_doc(site) else { continue };
            let nodes = docs
                .write_local(&name, |d| {
                    let mut changed = false;
                    for c in counters {
                        changed |= schema::merge_escrow(d, site, c, now)?;
                    }
                    Ok(changed)
                })
                .map_err(|source| EffectsError::Document { doc: name.clone(), source })?;
            tell.extend(nodes);
        }
    }
    tell.sort();
    tell.dedup();
    hub.poke(&tell);
    Ok(())
}

/// The documents of `fulfillments`, built and committed before the documents' lock is taken: their Automerge
/// work is most of a documents round's, and every sync session waits for that lock. (Building half of a
/// large round on a second thread was tried: slower, 2,011-2,051 orders/s against 2,526-2,977 for the hub
/// alone at 64 clients, as the thread's start and the two cores' contention cost more than it saved.)
///
/// Each is a function of its committed record alone, down to the change's hash: the first change's actor is
/// [`fulfillment_actor`], taken from that record (the hub's later changes to it are its process's, set when the
/// document is held), and its `created_at_ms` the record's `assigned_at_ms`. So the start after a crash builds
/// a document `hub.redb` lost as the one a site may already hold (a session sends a new one before the flush
/// that writes it).
fn build_orders<'a>(
    fulfillments: &[&'a NewFulfillment],
) -> Result<Vec<(&'a NewFulfillment, DocId, AutoCommit)>, EffectsError> {
    fulfillments
        .iter()
        .filter_map(|f| Some((*f, schema::order_doc(&f.id)?)))
        .map(|(f, name)| {
            let actor = fulfillment_actor(f);
            let d = schema::new_hub_order(&actor, &f.id, &f.parent, &f.site, &f.draft, f.assigned_at_ms)
                .map_err(|source| EffectsError::Document { doc: name.clone(), source })?;
            Ok((f, name, d))
        })
        .collect()
}

/// The Automerge actor of the first change of `f`'s document: 16 bytes of SHA-256 over everything that change
/// holds (its layout `schema::HUB_ORDER_LAYOUT`, the schema version, id, parent, site, the draft's postcard
/// bytes, `assigned_at_ms`), the same in every process. The process's own actor is fresh at each start, so that
/// two incarnations never reuse a sequence number; this one writes one change, sequence 1, ever. Taken from the
/// content rather than the id alone: if a start after a crash ran a build that writes the record differently,
/// its change has another actor, and a site's older copy of the document conflicts with it (the hub quarantines
/// that one document for that site) rather than being a second change numbered 1 of one actor, which Automerge
/// refuses, and the site's whole sync session with it.
pub(crate) fn fulfillment_actor(f: &NewFulfillment) -> ActorId {
    use sha2::Digest as _;
    // An encoding that fails here fails the document's build too.
    let draft = postcard::to_allocvec(&f.draft).unwrap_or_default();
    let mut h = sha2::Sha256::new();
    h.update(b"oms fulfillment document\0");
    h.update((schema::HUB_ORDER_LAYOUT.len() as u64).to_le_bytes());
    h.update(schema::HUB_ORDER_LAYOUT);
    h.update(schema::SCHEMA_VERSION.to_le_bytes());
    for part in [f.id.as_str().as_bytes(), f.parent.as_str().as_bytes(), f.site.as_str().as_bytes(), &draft] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(f.assigned_at_ms.to_le_bytes());
    ActorId::from(&h.finalize()[..16])
}

/// The intake's [`crate::intake::EffectsSink`]: writes what each committed batch of channel orders created,
/// before their callers are answered (see `intake::writer`).
///
/// Sessions flush what it writes (before they send it, or right after for a new fulfillment document); with no
/// session up (every site unreachable) nothing else would, and every document it created would stay loaded.
/// So past `docs_loaded_max` documents loaded it flushes them itself, on its own thread (the write of the next
/// batch waits for it, which bounds the intake by the disk rather than by memory).
pub fn effects_sink(hub: std::sync::Weak<Hub>) -> crate::intake::EffectsSink {
    Box::new(move |all| {
        let Some(hub) = hub.upgrade() else { return Err("the hub is shutting down".into()) };
        apply_all_effects(&hub, all).map_err(|e| e.to_string())?;
        crate::server::flush_docs_if_full(&hub);
        Ok(())
    })
}

pub(super) fn replay_effects(order: &HubOrder) -> Effects {
    let fulfillments = order.fulfillments.iter().map(|f| NewFulfillment::of(order, f)).collect();
    Effects { fulfillments, escrow: vec![] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docs::HubDocs;
    use crate::intake::NewFulfillment;
    use oms_protocol::domain::{NodeId, OrderId, Sku};
    use oms_sync::docdb::DocDb;

    /// A hub over `dir` with no session, its documents' cache 16 and `docs_loaded_max` as given.
    fn hub(dir: &std::path::Path, docs_loaded_max: usize) -> Arc<Hub> {
        hub_as(dir, docs_loaded_max, 9)
    }

    /// [`hub`], its documents written by the Automerge actor `[actor; 16]` (a process's, fresh at each start).
    fn hub_as(dir: &std::path::Path, docs_loaded_max: usize, actor: u8) -> Arc<Hub> {
        let mut docs = HubDocs::new(DocDb::open(&dir.join("hub.redb"), vec![actor; 16], 100_000).unwrap()).unwrap();
        docs.set_cache_max(16);
        let tuning = crate::server::ServerTuning { docs_loaded_max, ..Default::default() };
        Arc::new(crate::demand::test_support::hub_over(dir, docs, crate::demand::test_support::money(), tuning))
    }

    /// Site `wh-a`, fulfillment `hub-0000000001.1` (assigned at 5 ms), its document, and the effects creating it.
    fn one_fulfillment() -> (NodeId, OrderId, DocId, Effects) {
        let site = NodeId::parse("wh-a").unwrap();
        let parent = OrderId::parse("hub-0000000001").unwrap();
        let id = OrderId::parse(&format!("{parent}.1")).unwrap();
        let draft = oms_protocol::fixtures::draft("r", &Sku::parse("SKU-1").unwrap(), 1);
        let f = NewFulfillment { id: id.clone(), parent, site: site.clone(), draft, assigned_at_ms: 5 };
        (site, id.clone(), schema::order_doc(&id).unwrap(), Effects { fulfillments: vec![f], escrow: vec![] })
    }

    /// A fulfillment document is built away from the documents' lock, then held: its site is told, and the same
    /// effects applied again (a replay, a restart's recovery) change nothing, even after the document moved on.
    #[test]
    fn a_fulfillment_document_applied_again_is_kept_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), 1_000);
        let (site, id, name, effects) = one_fulfillment();
        apply_effects(&hub, &effects).unwrap();
        let cancel = |d: &mut oms_protocol::sync::automerge::AutoCommit| schema::request_cancel(d, 5);
        let heads = {
            let mut docs = hub.docs.lock();
            assert_eq!(docs.take_local(site.as_str()), BTreeSet::from([name.clone()]));
            let view = schema::read_order(&docs.get(&name).unwrap(), name.as_str()).unwrap();
            assert_eq!((view.id, view.site), (id, site.clone()));
            // This process's actor writes the document's later changes.
            assert_eq!(docs.write_local(&name, cancel).unwrap(), vec![site.to_string()]);
            docs.take_local(site.as_str());
            docs.heads(&name)
        };
        let held = hub.docs.lock().db().len();
        apply_effects(&hub, &effects).unwrap();
        let mut docs = hub.docs.lock();
        assert_eq!(docs.db().len(), held);
        assert_eq!(docs.heads(&name), heads, "replaced or changed again");
        assert!(docs.take_local(site.as_str()).is_empty(), "nothing changed, nobody to tell");
    }

    /// A new fulfillment document is a function of its committed record alone: built by two hubs (as before a
    /// crash and by the start after it, each process with its own actor), at different times, it is the same
    /// change, hash for hash, stamped with the record's `assigned_at_ms`; the hub's later changes to it are its
    /// process's. A session may send one before the flush that writes it (it is fresh until a session takes it
    /// or anyone writes to it); built with the process's actor or the documents thread's clock instead, the
    /// site's copy and the one rebuilt after a crash would be two different first changes.
    #[test]
    fn a_fulfillment_document_is_its_record_alone_and_fresh_until_written() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (before, after) = (hub_as(a.path(), 1_000, 1), hub_as(b.path(), 1_000, 2));
        let (site, _, name, effects) = one_fulfillment();
        let f = &effects.fulfillments[0];
        let other = NewFulfillment { assigned_at_ms: 6, ..f.clone() };
        assert_ne!(fulfillment_actor(f), fulfillment_actor(&other), "another record, another first actor");
        apply_effects(&before, &effects).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
        apply_effects(&after, &effects).unwrap();
        let (mut x, mut y) = (before.docs.lock(), after.docs.lock());
        assert_eq!(x.heads(&name), y.heads(&name), "two builds of one record differ");
        assert_eq!(schema::read_order(&x.get(&name).unwrap(), name.as_str()).unwrap().created_at_ms, 5);
        assert_eq!(x.take_local_split(site.as_str()), (BTreeSet::from([name.clone()]), BTreeSet::new()));
        let cancel = |d: &mut oms_protocol::sync::automerge::AutoCommit| schema::request_cancel(d, 7);
        x.write_local(&name, cancel).unwrap();
        let last = x.get(&name).unwrap().into_owned().get_last_local_change().map(|c| c.actor_id().clone());
        assert_eq!(last, Some(ActorId::from(vec![1u8; 16])), "the hub's later change is its process's");
        assert_eq!(x.take_local_split(site.as_str()), (BTreeSet::new(), BTreeSet::from([name.clone()])));
        // A node's change before the session takes it: no longer the record alone (in a flush or not).
        drop(y.prepare_flush());
        y.mark_dirty(&name);
        assert_eq!(y.take_local_split(site.as_str()), (BTreeSet::new(), BTreeSet::from([name.clone()])));
        // And the hub's: a document it wrote to before the session took it waits for the flush too.
        let c = tempfile::tempdir().unwrap();
        let third = hub_as(c.path(), 1_000, 3);
        apply_effects(&third, &effects).unwrap();
        let mut z = third.docs.lock();
        z.write_local(&name, cancel).unwrap();
        assert_eq!(z.take_local_split(site.as_str()), (BTreeSet::new(), BTreeSet::from([name.clone()])));
    }

    /// The site's word that `effects`' fulfillment shipped, written into its document as the site's session
    /// would bring it, and queued for the watcher.
    fn ship(hub: &Hub, effects: &Effects) {
        let f = &effects.fulfillments[0];
        let rec = crate::demand::test_support::shipped(f);
        let name = schema::order_doc(&f.id).unwrap();
        let mut docs = hub.docs.lock();
        docs.write_local(&name, |d| schema::write_order(d, &f.site, &rec, 7)).unwrap();
        docs.requeue_docs([name]);
    }

    /// The watcher acts on a site's word that ends a fulfillment only once `hub.redb` holds its document as
    /// read (a session may have sent it before the flush that writes it, a start rebuilds only live ones, and
    /// the site's change is flushed at the end of its session's pass): it flushes first if the document was
    /// never written, or the site's change not yet, and not otherwise (the usual case: the session's flush came
    /// first), which would cost an fsync a pass that the sessions wait for.
    #[test]
    fn the_watcher_flushes_before_acting_only_for_a_document_not_written_as_read() {
        for case in ["never written", "change not written", "written"] {
            let dir = tempfile::tempdir().unwrap();
            let hub = hub(dir.path(), 1_000);
            let effects = placed_at_wh_a(&hub);
            let name = schema::order_doc(&effects.fulfillments[0].id).unwrap();
            apply_effects(&hub, &effects).unwrap();
            if case != "never written" {
                crate::server::flush_docs_blocking(&hub).unwrap();
            }
            ship(&hub, &effects);
            if case == "written" {
                // The session's flush, then another document's change that no flush has written yet.
                crate::server::flush_docs_blocking(&hub).unwrap();
                hub.docs.lock().mark_dirty(&schema::escrow_doc(&effects.fulfillments[0].site).unwrap());
            }
            assert_eq!(hub.docs.lock().db().written(&name), case == "written", "{case}");
            assert_eq!(hub.intake.live_fulfillments().unwrap().len(), 1);
            crate::orders::watch_once(&hub, false);
            assert!(hub.intake.live_fulfillments().unwrap().is_empty(), "{case}: the shipment was not acted on");
            let docs = hub.docs.lock();
            assert!(docs.db().written(&name), "{case}: acted on a shipment a crash would lose");
            // No flush when it was written: the other document is still dirty.
            assert_eq!(docs.db().dirty_docs() > 0, case == "written", "{case}");
        }
    }

    /// A channel order of one unit of `SKU-1` placed at `wh-a` (where the hub holds five units' rights) by
    /// `hub`'s intake: the effects that create its fulfillment document.
    fn placed_at_wh_a(hub: &Hub) -> Effects {
        let (site, sku) = (NodeId::parse("wh-a").unwrap(), Sku::parse("SKU-1").unwrap());
        let draft = oms_protocol::fixtures::draft("r", &sku, 1);
        let placed = crate::demand::test_support::place_at(hub, &site, &[("SKU-1", 5)], "k1", draft, 5);
        assert_eq!(placed.effects.fulfillments.len(), 1, "{placed:?}");
        placed.effects
    }

    /// The first change of a fixed record, pinned: its actor and its hash. A change to what `new_hub_order`
    /// writes, to the draft's encoding or to Automerge's change encoding fails here; such a change must bump
    /// `schema::HUB_ORDER_LAYOUT` (and then these values), so that a start on the new build never makes a
    /// different first change under the actor of a document a site may hold from the old one.
    #[test]
    fn the_first_change_of_a_fixed_record_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), 1_000);
        let (_, _, name, effects) = one_fulfillment();
        let actor = fulfillment_actor(&effects.fulfillments[0]);
        apply_effects(&hub, &effects).unwrap();
        let heads: Vec<String> = hub.docs.lock().heads(&name).iter().map(ToString::to_string).collect();
        assert_eq!(actor.to_hex_string(), "f20e771f24e681f942ff972c380e9784");
        assert_eq!(heads, ["8ec1a0fc0aa37d4c1b3084c813f4dcdbe27e52c2cdc4b14467e6c4ae4a96861d"]);
    }

    /// With no session up (every site unreachable), what the intake's documents thread writes is flushed once
    /// `docs_loaded_max` documents are loaded, so the hub's memory stays bounded and the documents reach the
    /// disk. Without that flush nothing else writes them: all 400 would stay loaded.
    #[test]
    fn with_no_session_up_the_documents_thread_flushes_past_the_loaded_bound() {
        const LOADED_MAX: usize = 32;
        const PER_BATCH: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), LOADED_MAX);
        let held_before = hub.docs.lock().db().len();
        let mut sink = effects_sink(Arc::downgrade(&hub));
        let site = NodeId::parse("wh-a").unwrap();
        let sku = Sku::parse("SKU-1").unwrap();
        for batch in 0..50 {
            let fulfillments = (0..PER_BATCH)
                .map(|i| {
                    let parent = OrderId::parse(&format!("hub-{:010}", batch * PER_BATCH + i)).unwrap();
                    NewFulfillment {
                        id: OrderId::parse(&format!("{parent}.1")).unwrap(),
                        parent,
                        site: site.clone(),
                        draft: oms_protocol::fixtures::draft("r", &sku, 1),
                        assigned_at_ms: 5,
                    }
                })
                .collect();
            sink(&[&Effects { fulfillments, escrow: vec![] }]).unwrap();
            let loaded = hub.docs.lock().db().loaded();
            assert!(loaded < LOADED_MAX + PER_BATCH, "batch {batch}: {loaded} documents loaded");
        }
        let docs = hub.docs.lock();
        assert_eq!(docs.db().len(), held_before + 400, "every fulfillment document is held");
        assert!(docs.db().dirty_docs() < LOADED_MAX, "{} documents never written", docs.db().dirty_docs());
    }
}
