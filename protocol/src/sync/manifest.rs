//! Anti-entropy of a [`SyncSession`]: manifests, digest rounds and bucket rounds.
//!
//! The first manifest after the handshake is full: it is what makes a reconnect resume. Later periodic rounds
//! depend on what both sides announced.
//!
//! **Digest rounds** (capability [`capabilities::MANIFEST_DIGEST`]): a full manifest every interval costs the
//! hub a pass over every node's documents to encode, deflate, inflate and compare, although in steady state
//! nothing differs. Once both sides announced the capability, the first manifest after the handshake is still
//! full (it is what makes a reconnect resume), but every later periodic round sends a [`Frame::Digest`]: the
//! number of documents the manifest would list and one hash over their ids and heads ([`ManifestDigest`]),
//! computed from [`DocStore::heads`] alone, so a store that keeps heads apart from its documents loads none.
//! The receiver computes its own digest over what it would list for the peer. Equal: nothing is sent, and
//! the peer's round counts as the receiver's own, so that in steady state one side per interval does the
//! work. Different: the receiver answers with its full manifest, the existing path, which schedules every
//! document whose heads differ and every one the peer lacks. What only the peer holds, the receiver cannot
//! ask for; so a side whose peer's manifest names documents it lacks answers with its own manifest too, and
//! the peer then sends them. Bounds: such answers come at most once per `manifest_interval_ms` (a full
//! manifest counts), and a peer digest is compared at most once per half interval, so a peer sending
//! digests in a loop makes us neither build manifests nor pass over our documents in a loop. A digest
//! without the capability closes the session as a protocol violation; a peer without it gets full
//! manifests, as before.
//!
//! **Bucket rounds** (capability [`capabilities::MANIFEST_BUCKETS`], with the digest's): under steady load the
//! two sides' digests never match, since documents change between the two computations, and every round then
//! cost a full manifest each way: a pass over, and a frame for, every document held, up to a million a site,
//! while only the few in flight differ. With this capability a periodic round sends [`Frame::Buckets`]
//! instead: the documents split into a power of two of buckets by a hash of their id ([`bucket_of`]; about
//! [`BUCKET_DOCS_TARGET`] a bucket, at most [`BUCKETS_MAX`] buckets, as the sender chooses), one digest per
//! bucket. The receiver computes its own per bucket with the same count and answers only the buckets that
//! differ: a [`Frame::Scope`] naming them, then a manifest round of its documents in them. To the side that
//! receives that round, a document of a covered bucket it holds and the round does not name is one the peer
//! lacks (it schedules it), and it answers a round naming documents it lacks with its own manifest of the
//! same buckets; of documents in other buckets the round says nothing. The rate bounds of full manifests
//! hold for partial ones (they count as full). The first manifest after the handshake is still full.

use super::*;

/// The peer manifest being assembled from chunks.
#[derive(Default)]
pub(super) struct PeerManifest {
    round: u32,
    seen: BTreeSet<DocId>,
    /// The round names a document we may hold but do not: the peer learns that only from our manifest.
    lists_what_we_lack: bool,
    /// The buckets the round covers, announced by a [`Frame::Scope`] before it; `None`: every document.
    scope: Option<PeerScope>,
}

/// What a [`Frame::Scope`] announced: a manifest round that lists only the documents of some buckets.
#[derive(Clone, Default)]
pub(super) struct PeerScope {
    round: u32,
    buckets: u32,
    covered: BTreeSet<u32>,
}

impl PeerScope {
    fn covers(&self, doc: &DocId) -> bool {
        self.covered.contains(&bucket_of(doc, self.buckets))
    }
}

/// About how many documents a bucket holds when the sender chooses the number of buckets ([`buckets_for`]):
/// a document in flight makes its whole bucket differ, so small buckets keep a partial manifest short.
pub const BUCKET_DOCS_TARGET: usize = 16;

/// The bucket of `doc` among `buckets` (a power of two): the low bits of the 64-bit FNV-1a hash of the id's
/// bytes. Part of the wire contract (`bucket_of_is_pinned`): both sides must put a document in the same
/// bucket. Not a cryptographic hash, and it need not be: a peer that chose ids to crowd one bucket would only
/// make its own rounds longer, and every round passes over every document held, so the hash is kept cheap
/// (written out here: FNV-1a is a few lines, and the constants are the standard's).
pub fn bucket_of(doc: &DocId, buckets: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let h = doc.as_str().bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // The mask keeps the value below `buckets`, a u32: the cast cannot truncate.
    (h & u64::from(buckets.max(1) - 1)) as u32
}

/// How many buckets a sender of `docs` documents splits them into: about [`BUCKET_DOCS_TARGET`] per bucket,
/// a power of two, at least 1 and at most [`BUCKETS_MAX`].
pub fn buckets_for(docs: usize) -> u32 {
    let wanted = docs.div_ceil(BUCKET_DOCS_TARGET).max(1);
    u32::try_from(wanted).unwrap_or(BUCKETS_MAX).min(BUCKETS_MAX).next_power_of_two().min(BUCKETS_MAX)
}

/// Domain separation of the per-document hash of a [`ManifestDigest`], with the version of its layout.
const DIGEST_ENTRY_DOMAIN: &[u8] = b"oms/manifest-digest-entry/1";

/// The digest of a manifest carried by [`Frame::Digest`]: how many documents it lists and a combination of
/// one SHA-256 per document over (id, sorted heads).
///
/// Each document's hash covers a domain tag, the id's length and bytes, the number of heads and the heads in
/// ascending order; the lengths make the encoding injective, so two different entries never hash the same
/// input. The per-document hashes are combined by adding them as four little-endian `u64` lanes, each
/// wrapping. The combination is order-independent, so a store may one day keep the digest up to date as
/// documents change (add the new entry, subtract the old) instead of re-reading every document's heads each
/// round; addition rather than XOR so that an entry counted twice does not cancel out and look absent. A
/// false match needs a 256-bit collision of sums of SHA-256 outputs, which honest divergence does not
/// produce; a hostile peer gains nothing from faking one but missing its own updates.
///
/// Both sides must compute it the same way: the test `manifest_digest_is_pinned` fixes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ManifestDigest {
    docs: u64,
    lanes: [u64; 4],
}

// The `usize as u64` length casts in `ManifestDigest::add` rely on this.
const _: () = assert!(usize::BITS <= 64);

impl ManifestDigest {
    /// Adds one document with its heads in ascending order (as a [`ManifestEntry`] lists them).
    pub fn add(&mut self, doc: &DocId, sorted_heads: &[Hash]) {
        let mut h = sha2::Sha256::new();
        h.update(DIGEST_ENTRY_DOMAIN);
        // cannot truncate: usize has at most 64 bits (asserted below), so these are the exact lengths the pinned
        // digest expects.
        h.update((doc.as_str().len() as u64).to_le_bytes());
        h.update(doc.as_str().as_bytes());
        h.update((sorted_heads.len() as u64).to_le_bytes());
        for head in sorted_heads {
            h.update(head);
        }
        let entry: Hash = h.finalize().into();
        for (lane, bytes) in self.lanes.iter_mut().zip(entry.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            *lane = lane.wrapping_add(u64::from_le_bytes(le));
        }
        self.docs = self.docs.wrapping_add(1);
    }

    /// How many documents were added.
    pub fn docs(&self) -> u64 {
        self.docs
    }

    /// The combined hash, as it travels in [`Digest::hash`].
    pub fn hash(&self) -> Hash {
        let mut out = [0u8; 32];
        for (bytes, lane) in out.chunks_exact_mut(8).zip(self.lanes) {
            bytes.copy_from_slice(&lane.to_le_bytes());
        }
        out
    }

    /// True if `digest` describes the same manifest.
    pub fn matches(&self, digest: &Digest) -> bool {
        self.docs == digest.docs && self.hash() == digest.hash
    }

    /// This digest as one bucket of a [`Frame::Buckets`]: the count and the first [`BUCKET_HASH_BYTES`] of
    /// the hash.
    pub fn bucket(&self) -> BucketDigest {
        let mut hash = [0u8; BUCKET_HASH_BYTES];
        hash.copy_from_slice(&self.hash()[..BUCKET_HASH_BYTES]);
        BucketDigest { docs: self.docs, hash }
    }
}

/// What a manifest for `peer` lists, in id order, each document once ([`DocStore::manifest_heads`], so a
/// store that keeps heads apart from its documents loads none).
fn manifest_entries_of<S: DocStore + ?Sized>(store: &mut S, peer: &PeerId) -> Vec<ManifestEntry> {
    manifest_entries_where(store, peer, |_| true)
}

/// What [`manifest_entries_of`] lists, of the documents `keep` keeps only.
fn manifest_entries_where<S: DocStore + ?Sized>(
    store: &mut S,
    peer: &PeerId,
    keep: impl Fn(&DocId) -> bool,
) -> Vec<ManifestEntry> {
    let mut entries: Vec<ManifestEntry> = store
        .manifest_heads(peer)
        .into_iter()
        .filter(|(doc, _)| keep(doc))
        .map(|(doc, heads)| ManifestEntry { doc, heads: sorted(hashes(&heads)) })
        .collect();
    entries.sort_by(|a, b| a.doc.cmp(&b.doc));
    entries.dedup_by(|a, b| a.doc == b.doc);
    entries
}

/// The digest of each bucket of the manifest `store` would send `peer` now, computed from
/// [`DocStore::manifest_heads`]: `buckets` of them, or [`buckets_for`] the number of documents when `None`.
/// The default of [`DocStore::manifest_buckets`], for stores that cache it to call when they recompute.
pub fn manifest_buckets_of<S: DocStore + ?Sized>(
    store: &mut S,
    peer: &PeerId,
    buckets: Option<u32>,
) -> Vec<ManifestDigest> {
    let entries = manifest_entries_of(store, peer);
    let count = buckets.unwrap_or_else(|| buckets_for(entries.len())).clamp(1, BUCKETS_MAX);
    let mut out = vec![ManifestDigest::default(); count as usize];
    for e in entries {
        if let Some(d) = out.get_mut(bucket_of(&e.doc, count) as usize) {
            d.add(&e.doc, &e.heads);
        }
    }
    out
}

/// The digest of the manifest `store` would send `peer` now, computed from [`DocStore::manifest_heads`]: the
/// default of [`DocStore::manifest_digest`], for stores that cache it to call when they recompute.
pub fn manifest_digest_of<S: DocStore + ?Sized>(store: &mut S, peer: &PeerId) -> ManifestDigest {
    let mut digest = ManifestDigest::default();
    for e in manifest_entries_of(store, peer) {
        digest.add(&e.doc, &e.heads);
    }
    digest
}

impl SyncSession {
    /// True once both sides announced [`capabilities::MANIFEST_DIGEST`]: periodic rounds send digests.
    pub(super) fn digest_rounds(&self) -> bool {
        matches!(self.phase, Phase::Established { capabilities: caps, .. } if caps & capabilities::MANIFEST_DIGEST != 0)
    }

    /// True once both sides announced [`capabilities::MANIFEST_BUCKETS`] as well: periodic rounds send
    /// bucket digests, and mismatches are answered with manifests of the differing buckets.
    pub(super) fn bucket_rounds(&self) -> bool {
        let both = capabilities::MANIFEST_DIGEST | capabilities::MANIFEST_BUCKETS;
        matches!(self.phase, Phase::Established { capabilities: caps, .. } if caps & both == both)
    }

    /// The digest of the manifest we would send now ([`DocStore::manifest_digest`]).
    fn manifest_digest<S: DocStore + ?Sized>(&self, store: &mut S) -> ManifestDigest {
        store.manifest_digest(&self.peer)
    }

    /// A periodic round with [`capabilities::MANIFEST_DIGEST`]: the digest instead of the manifest.
    pub(super) fn send_digest<S: DocStore + ?Sized>(&mut self, store: &mut S) {
        self.manifest_round = self.manifest_round.wrapping_add(1);
        self.last_manifest_ms = self.now_ms;
        self.anti_entropy.digests_sent += 1;
        let digest = self.manifest_digest(store);
        self.outbound.push_back(Frame::Digest(Digest {
            round: self.manifest_round,
            docs: digest.docs(),
            hash: digest.hash(),
        }));
    }

    /// A periodic round with [`capabilities::MANIFEST_BUCKETS`]: a digest per bucket of our documents.
    pub(super) fn send_buckets<S: DocStore + ?Sized>(&mut self, store: &mut S) {
        self.manifest_round = self.manifest_round.wrapping_add(1);
        self.last_manifest_ms = self.now_ms;
        self.anti_entropy.digests_sent += 1;
        let buckets = store.manifest_buckets(&self.peer, None).iter().map(ManifestDigest::bucket).collect();
        self.outbound.push_back(Frame::Buckets(Buckets { round: self.manifest_round, buckets }));
    }

    /// Sends our manifest in answer to a digest that differs from ours, or to a manifest that names documents
    /// we lack: of the buckets in `scope` only when one is given, else whole. At most once per
    /// `manifest_interval_ms`, so a peer cannot make us build manifests in a loop. One that is held back is not
    /// lost: the next digest round differs again.
    fn answer_with_manifest<S: DocStore + ?Sized>(&mut self, store: &mut S, scope: Option<(u32, BTreeSet<u32>)>) {
        if self.now_ms - self.last_full_manifest_ms < self.cfg.manifest_interval_ms {
            return;
        }
        match scope {
            Some((buckets, covered)) => self.send_partial_manifest(store, buckets, covered),
            None => self.send_manifest(store),
        }
    }

    /// Peer bucket digests (capability [`capabilities::MANIFEST_BUCKETS`]): ours are computed with the
    /// peer's number of buckets; the buckets that differ are answered with a manifest of our documents in them.
    pub(super) fn on_buckets<S: DocStore + ?Sized>(&mut self, store: &mut S, theirs: &Buckets) {
        if !self.bucket_rounds() {
            return self.refuse(ErrorCode::ProtocolViolation, "Buckets without the manifest-buckets capability");
        }
        if !self.may_compare_peer_digest() {
            return;
        }
        // `validate` let through only a power of two within BUCKETS_MAX: the cast cannot truncate.
        let count = theirs.buckets.len() as u32;
        let ours = store.manifest_buckets(&self.peer, Some(count));
        let differing: BTreeSet<u32> = (0..count)
            .zip(&theirs.buckets)
            .filter(|(i, t)| ours.get(*i as usize).map(ManifestDigest::bucket).as_ref() != Some(*t))
            .map(|(i, _)| i)
            .collect();
        self.anti_entropy.buckets_differing += differing.len() as u64;
        if differing.is_empty() {
            // As for a matching digest: the peer's round counts as ours.
            self.last_manifest_ms = self.now_ms;
        } else {
            self.answer_with_manifest(store, Some((count, differing)));
        }
    }

    /// A peer [`Frame::Scope`]: kept for the manifest round it names, which follows it.
    pub(super) fn on_scope(&mut self, scope: Scope) {
        if !self.bucket_rounds() {
            return self.refuse(ErrorCode::ProtocolViolation, "Scope without the manifest-buckets capability");
        }
        self.peer_scope = Some(PeerScope {
            round: scope.round,
            buckets: scope.buckets,
            covered: scope.covered.into_iter().collect(),
        });
    }

    /// Comparing a peer digest costs a pass over the heads of every document we share with the peer: an honest
    /// peer sends one per interval, so one compared per half interval is plenty, and a flood costs us decoding
    /// only. True if this one may be compared (and notes it).
    fn may_compare_peer_digest(&mut self) -> bool {
        let half_interval_ms = self.cfg.manifest_interval_ms / 2;
        if self.peer_digest_checked_ms.is_some_and(|t| self.now_ms - t < half_interval_ms) {
            return false;
        }
        self.peer_digest_checked_ms = Some(self.now_ms);
        true
    }

    pub(super) fn on_digest<S: DocStore + ?Sized>(&mut self, store: &mut S, digest: &Digest) {
        if !self.digest_rounds() {
            return self.refuse(ErrorCode::ProtocolViolation, "Digest without the manifest-digest capability");
        }
        if !self.may_compare_peer_digest() {
            return;
        }
        if self.manifest_digest(store).matches(digest) {
            // The peer's round showed both sides hold the same: it counts as ours, so that in steady state only
            // one side computes a digest per interval.
            self.last_manifest_ms = self.now_ms;
        } else {
            self.answer_with_manifest(store, None);
        }
    }

    pub(super) fn send_manifest<S: DocStore + ?Sized>(&mut self, store: &mut S) {
        self.manifest_round = self.manifest_round.wrapping_add(1);
        self.last_manifest_ms = self.now_ms;
        self.last_full_manifest_ms = self.now_ms;
        self.anti_entropy.full_manifests += 1;
        let entries = manifest_entries_of(store, &self.peer);
        self.push_manifest(&entries);
    }

    /// A manifest round of our documents in the `covered` buckets of `buckets` only, announced by a
    /// [`Frame::Scope`].
    fn send_partial_manifest<S: DocStore + ?Sized>(&mut self, store: &mut S, buckets: u32, covered: BTreeSet<u32>) {
        self.manifest_round = self.manifest_round.wrapping_add(1);
        self.last_manifest_ms = self.now_ms;
        self.last_full_manifest_ms = self.now_ms;
        self.anti_entropy.partial_manifests += 1;
        let entries = manifest_entries_where(store, &self.peer, |doc| covered.contains(&bucket_of(doc, buckets)));
        // Ascending, as the frame requires: a set's order.
        let covered = covered.into_iter().collect();
        self.outbound.push_back(Frame::Scope(Scope { round: self.manifest_round, buckets, covered }));
        self.push_manifest(&entries);
    }

    /// Queues `entries` as the chunks of manifest round `manifest_round` (one empty chunk if none).
    fn push_manifest(&mut self, entries: &[ManifestEntry]) {
        self.anti_entropy.entries_sent += entries.len() as u64;
        let per_frame = self.cfg.manifest_docs_per_frame_max.max(1);
        let mut chunks = entries.chunks(per_frame).peekable();
        if chunks.peek().is_none() {
            self.outbound.push_back(Frame::Manifest(Manifest { round: self.manifest_round, docs: vec![], last: true }));
            return;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.outbound.push_back(Frame::Manifest(Manifest {
                round: self.manifest_round,
                docs: chunk.to_vec(),
                last,
            }));
        }
    }

    /// True if a peer manifest round `round` may be taken now: its chunks belong to a round already taken, or
    /// fewer than `peer_manifests_per_interval_max` rounds began within the last interval. A round that may
    /// not is ignored whole (its later chunks too) and reported once.
    fn take_peer_round(&mut self, round: u32) -> bool {
        if self.peer_manifest.as_ref().is_some_and(|p| p.round == round) {
            return true;
        }
        if self.ignored_round == Some(round) {
            return false;
        }
        let interval = self.cfg.manifest_interval_ms;
        while self.peer_rounds_at.front().is_some_and(|t| self.now_ms.saturating_sub(*t) >= interval) {
            self.peer_rounds_at.pop_front();
        }
        if self.peer_rounds_at.len() >= self.cfg.peer_manifests_per_interval_max.max(1) {
            self.ignored_round = Some(round);
            self.events.push_back(Event::Limited { doc: None, code: ErrorCode::RateLimited });
            return false;
        }
        self.peer_rounds_at.push_back(self.now_ms);
        true
    }

    pub(super) fn on_manifest<S: DocStore + ?Sized>(&mut self, store: &mut S, m: Manifest) {
        if !self.take_peer_round(m.round) {
            return;
        }
        // The scope announced for this round, if any: a later round's scope replaces it.
        let scope = self.peer_scope.as_ref().filter(|s| s.round == m.round).cloned();
        let fresh = || PeerManifest { round: m.round, scope: scope.clone(), ..Default::default() };
        let assembling = self.peer_manifest.get_or_insert_with(fresh);
        if m.round != assembling.round {
            // A newer round replaces a half-assembled older one; chunks of an older round are stale.
            if m.round.wrapping_sub(assembling.round) < u32::MAX / 2 {
                *assembling = fresh();
            } else {
                return;
            }
        }
        if assembling.seen.len() + m.docs.len() > self.cfg.manifest_docs_max {
            return self
                .refuse(ErrorCode::Overloaded, format!("manifest exceeds {} documents", self.cfg.manifest_docs_max));
        }
        let mut to_schedule = Vec::new();
        let mut to_refuse = Vec::new();
        let mut to_finish = Vec::new();
        for entry in m.docs {
            if !store.entitled(&self.peer, &entry.doc) {
                to_refuse.push(entry.doc);
                continue;
            }
            assembling.seen.insert(entry.doc.clone());
            let Some(ours) = store.heads(&entry.doc).map(|h| sorted(hashes(&h))) else {
                // We do not hold it: the peer does, and sends it when it sees our manifest without it (or on
                // its own change). Scheduling it here would only keep a sync state for nothing.
                assembling.lists_what_we_lack = true;
                continue;
            };
            if ours != sorted(entry.heads) {
                to_schedule.push(entry.doc);
            } else if self.in_flight.contains(&entry.doc) {
                to_finish.push((entry.doc, ours));
            }
        }
        let mut lacking = None;
        if m.last {
            let done = self.peer_manifest.take().unwrap_or_default();
            // What the peer's round does not name, it lacks: within the buckets it covers, if it named them.
            for doc in store.docs_for(&self.peer) {
                if !done.seen.contains(&doc)
                    && done.scope.as_ref().is_none_or(|s| s.covers(&doc))
                    && store.entitled(&self.peer, &doc)
                {
                    to_schedule.push(doc);
                }
            }
            if done.lists_what_we_lack {
                lacking = Some(done.scope.map(|s| (s.buckets, s.covered)));
            }
        }
        for (doc, heads) in to_finish {
            self.finish(doc, heads);
        }
        for doc in to_refuse {
            self.refused(doc);
        }
        for doc in to_schedule {
            self.schedule(doc);
        }
        // A manifest converges every document we hold (the differing ones and those the peer lacks are
        // scheduled above), but not those only the peer holds: it sends them once it sees our manifest without
        // them. Periodic rounds used to carry our manifest; with digest rounds the peer may only have our
        // digest, so a manifest naming what we lack is answered with ours.
        // A partial round is answered with ours of the same buckets.
        if let Some(scope) = lacking
            && self.digest_rounds()
        {
            self.answer_with_manifest(store, scope);
        }
    }
}
