//! Generations of the state documents in a [`DocDb`] (see [`oms_protocol::generations`]): which generation of
//! each base name is current, starting the next one when the history has grown long
//! ([`DocDb::rotate_if_due`]), and superseding older ones when a newer one is created here or arrives from a
//! peer ([`DocDb::get_or_create`]).

use oms_protocol::generations;
use oms_protocol::schema::DocKind;
use oms_protocol::sync::automerge::{AutoCommit, ReadDoc};
use oms_protocol::wire::DocId;

use redb::ReadableDatabase;

use super::{DocDb, DocDbError, OrStorage, SYNC_STATES, state_peers};

/// State documents whose generation a database reads when it opens (a site has three; a hub three per site).
const STATE_DOCS_LISTED_MAX: usize = 100_000;
/// `meta` key prefix of a state document's current generation (`generation|stock/wh-north` → 3), written in
/// the flush that writes the generation.
const GENERATION_META: &str = "generation|";
/// Sync states of superseded generations an open deletes per transaction ([`DocDb::drop_superseded_states`]).
const SUPERSEDED_STATES_PER_COMMIT: usize = 10_000;

/// Whether `doc` is a state document, whose history is bounded by generations. The prefix test first: it
/// answers for order documents without parsing their ids.
pub(super) fn generational(doc: &DocId) -> bool {
    generations::is_state_doc(doc.as_str())
        && matches!(DocKind::of(doc), Some(DocKind::Stock(_) | DocKind::Escrow(_) | DocKind::Inbound(_)))
}

/// How long the histories of the state documents held are ([`DocDb::state_history`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateHistory {
    /// New generations taken since the database opened ([`DocDb::generations_started`]).
    pub generations_started: u64,
    /// The longest history among them, in operations.
    pub history_ops_max: u64,
    /// Those whose history is over twice the bound at which a new generation starts: 0 unless a writer failed
    /// to start one.
    pub over_bound: u64,
}

impl DocDb {
    /// The histories of the current generations of the state documents held (at most `max` per kind): each
    /// document is read, and what it shows is counted only when its history is long enough to be over the
    /// bound. For `/metrics` and the demo.
    pub fn state_history(&self, max: usize) -> StateHistory {
        let mut out = StateHistory { generations_started: self.generations_started, ..StateHistory::default() };
        for prefix in generations::STATE_PREFIXES {
            for id in self.ids_with_prefix(prefix, None, max) {
                let Some(doc) = self.read(&id) else { continue };
                let ops = doc.stats().num_ops;
                out.history_ops_max = out.history_ops_max.max(ops);
                // Between two writes a history may pass the bound by one write's operations: twice the bound
                // is over it. What a document shows is counted only for a history that long.
                let over =
                    |visible: u64| ops > generations::rotation_bound(visible, self.history_ops_min).saturating_mul(2);
                if over(0) && over(generations::visible_ops(&doc)) {
                    out.over_bound += 1;
                }
            }
        }
        out
    }

    /// Deletes the sync states of generations older than the current ones, which a file written before a
    /// removed document's states went with it ([`DocDb::remove`]) still holds: one range per peer and kind
    /// of state document, so an open reads the state documents' rows, never every order's; at most
    /// [`SUPERSEDED_STATES_PER_COMMIT`] rows a transaction (an old file may hold millions). Returns how many.
    pub(super) fn drop_superseded_states(&mut self) -> Result<u64, DocDbError> {
        self.drop_superseded_states_by(SUPERSEDED_STATES_PER_COMMIT)
    }

    pub(super) fn drop_superseded_states_by(&mut self, per_commit: usize) -> Result<u64, DocDbError> {
        if !self.generations.values().any(|&g| g > 0) {
            return Ok(0);
        }
        let path = self.path.clone();
        let mut dropped = 0u64;
        // Each pass deletes what it found, so the next finds only what is left: ends when a pass finds none.
        loop {
            let stale = self.superseded_states(per_commit.max(1))?;
            if stale.is_empty() {
                break;
            }
            let w = self.db.begin_write().or_storage(&path)?;
            {
                let mut t = w.open_table(SYNC_STATES).or_storage(&path)?;
                for (peer, doc) in &stale {
                    t.remove((peer.as_str(), doc.as_str())).or_storage(&path)?;
                }
            }
            w.commit().or_storage(&path)?;
            dropped = dropped.saturating_add(u64::try_from(stale.len()).unwrap_or(u64::MAX));
        }
        if dropped > 0 {
            tracing::info!(path = %path.display(), rows = dropped, "deleted the sync states of superseded generations");
        }
        Ok(dropped)
    }

    /// At most `limit` (peer, document) keys of sync states of superseded generations.
    fn superseded_states(&self, limit: usize) -> Result<Vec<(String, String)>, DocDbError> {
        let path = &self.path;
        let r = self.db.begin_read().or_storage(path)?;
        let t = r.open_table(SYNC_STATES).or_storage(path)?;
        let mut stale = Vec::new();
        for peer in state_peers(&t).or_storage(path)? {
            for prefix in generations::STATE_PREFIXES {
                for item in t.range::<(&str, &str)>((peer.as_str(), prefix)..).or_storage(path)? {
                    let (k, _) = item.or_storage(path)?;
                    let (p, doc) = k.value();
                    if p != peer || !doc.starts_with(prefix) {
                        break;
                    }
                    if DocId::new(doc).is_some_and(|id| self.is_superseded(&id)) {
                        stale.push((peer.clone(), doc.to_owned()));
                        if stale.len() >= limit {
                            return Ok(stale);
                        }
                    }
                }
            }
        }
        Ok(stale)
    }

    /// Reads which generation of each state document is current, as the flushes that created them noted in
    /// `meta` (no document row is read: a start does not grow with the documents held).
    pub(super) fn load_generations(&mut self) -> Result<(), DocDbError> {
        for (key, g) in self.meta_with_prefix(GENERATION_META, STATE_DOCS_LISTED_MAX)? {
            let Some(base) = key.strip_prefix(GENERATION_META).and_then(DocId::new) else { continue };
            self.generations.insert(base, u32::try_from(g).unwrap_or(u32::MAX));
        }
        Ok(())
    }

    /// Operations of history a state document may keep beyond twice what it shows before
    /// [`DocDb::rotate_if_due`] starts its next generation (default [`generations::HISTORY_OPS_MIN`]; at least
    /// [`generations::HISTORY_OPS_MIN_LEAST`]).
    pub fn set_history_ops_min(&mut self, ops: u64) {
        self.history_ops_min = ops.max(generations::HISTORY_OPS_MIN_LEAST);
        self.rotation_checks.clear();
    }

    /// New generations of state documents this database took since it opened: those it started and those
    /// that arrived from a peer.
    pub fn generations_started(&self) -> u64 {
        self.generations_started
    }

    /// The id of the current generation of state document `base` (`stock/<node>` and the like): the newest
    /// held, or `base` itself if none is. Other ids are returned as they are.
    pub fn current(&self, base: &DocId) -> DocId {
        match self.generations.get(base) {
            Some(&g) if g > 0 => generations::name(base, g).unwrap_or_else(|| base.clone()),
            _ => base.clone(),
        }
    }

    /// Whether `doc` is a generation of a state document older than the one held: it must not be created
    /// again, synced or changed.
    pub fn is_superseded(&self, doc: &DocId) -> bool {
        // Asked of every document a session touches: order documents are answered by the prefix alone.
        generations::is_state_doc(doc.as_str())
            && self.generations.get(&generations::base(doc)).is_some_and(|&newest| generations::is_older(doc, newest))
    }

    /// Called by [`DocDb::get_or_create`] before `doc` is created: refuses a superseded generation, and notes a
    /// newer one as current, removing the one it supersedes (in the same flush as the new one is written).
    pub(super) fn before_create(&mut self, doc: &DocId) -> Result<(), DocDbError> {
        if !generational(doc) {
            return Ok(());
        }
        if self.is_superseded(doc) {
            return Err(DocDbError::Superseded { path: self.path.clone(), doc: doc.to_string() });
        }
        let g = generations::of(doc);
        let base = generations::base(doc);
        let held = self.generations.get(&base).copied();
        if held.is_none_or(|h| g > h) {
            if let Some(h) = held
                && let Some(old) = generations::name(&base, h)
                && self.contains(&old)
            {
                self.remove(&old);
            } else if held.is_none() && g > 0 && self.contains(&base) {
                self.remove(&base);
            }
            self.set_meta(&format!("{GENERATION_META}{base}"), u64::from(g));
            if g > 0 {
                self.generations_started = self.generations_started.saturating_add(1);
            }
            self.generations.insert(base.clone(), g);
            self.rotation_checks.remove(&base);
        }
        Ok(())
    }

    /// Starts the next generation of state document `base` if its current one's history has grown past
    /// [`generations::rotation_due`]: a fresh document with only what the current one shows, marked dirty,
    /// and the current one removed, both written by the next flush. Returns the new id if it did. Looks at
    /// the visible state only when the history has grown past the point of the last look, so a call per
    /// write costs one counter read. Commit pending changes first: uncommitted ones are committed here.
    pub fn rotate_if_due(&mut self, base: &DocId) -> Result<Option<DocId>, DocDbError> {
        if !generational(base) || generations::of(base) != 0 {
            return Ok(None);
        }
        let current = self.current(base);
        let floor = self.history_ops_min;
        let next_look = self.rotation_checks.get(base).copied().unwrap_or(floor);
        let actor = self.actor.clone();
        let path = self.path.clone();
        let Some(doc) = self.get_mut(&current) else { return Ok(None) };
        doc.commit();
        let ops = doc.stats().num_ops;
        if ops <= next_look {
            return Ok(None);
        }
        let visible = generations::visible_ops(doc);
        if !generations::rotation_due(ops, visible, floor) {
            self.rotation_checks.insert(base.clone(), generations::rotation_bound(visible, floor));
            return Ok(None);
        }
        let mut fresh = AutoCommit::new().with_actor(actor);
        generations::copy_visible(doc, &mut fresh).map_err(|e| DocDbError::Unreadable {
            path,
            doc: current.to_string(),
            detail: copy_failed(e),
        })?;
        fresh.commit();
        let g = generations::of(&current).saturating_add(1);
        let Some(next) = generations::name(base, g) else { return Ok(None) };
        // Creating it supersedes (removes) the current one.
        *self.get_or_create(&next)? = fresh;
        self.mark_dirty(&next);
        tracing::debug!(doc = %next, history_ops = ops, visible_ops = visible, "started a new generation");
        Ok(Some(next))
    }
}

/// Logs why a copy into the next generation failed and names it for `Unreadable`, whose detail is a static
/// sentence (a copy fails only on an Automerge error).
fn copy_failed(e: generations::CopyError) -> &'static str {
    tracing::error!(error = %e, "copying a state document into its next generation failed");
    "its state could not be copied into a new generation"
}
