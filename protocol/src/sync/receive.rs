//! Receiving a sync message without walking a document's whole history.
//!
//! Automerge's `receive_sync_message` trims the state's `sent_hashes` (changes we sent that the peer may not
//! have) to those the peer's heads do not descend from, and it does so by visiting every ancestor of those
//! heads, inserting each into a set, whether or not anything was sent: a stock or escrow document carries a
//! few thousand changes between generations, so each message about one cost a walk of them all. Profiles at
//! 64 clients put that walk at 11 % of the hub's samples and of a node's: the hub receives the nodes' stock
//! documents, which it never writes (nothing sent), and a node the hub's escrow views, likewise.
//!
//! [`receive_sync_message`] does what Automerge's does, step for step, through Automerge's public API, and
//! trims the changes sent without that walk: not at all when nothing was sent or everything sent is among the
//! peer's heads (every sent change is then an ancestor-or-self of a head, and all are trimmed), otherwise by
//! a walk down from the peer's heads that stops at changes older than every change still to find (see
//! [`trim_sent`]): it visits the changes made since the oldest one sent, not the whole history. No library
//! offers this: the walk is inside `automerge` 0.12 and runs unconditionally. The tests hold every step to
//! Automerge's own receive on a twin, so an upgrade of Automerge that changes its receive fails them.

use std::collections::{BTreeSet, HashSet};

use automerge::sync::{Capability, Message, MessageFlags, State};
use automerge::{AutoCommit, AutomergeError, ChangeHash};

/// How the changes sent were trimmed, for the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trim {
    /// Nothing to walk: nothing was sent, or all of it is among the peer's heads.
    ByHeads,
    /// By [`trim_sent`]'s walk, which visited this many changes.
    Walked(usize),
}

/// Applies `message` from the peer to `doc` and `state` exactly as Automerge's `receive_sync_message` does
/// (same document, same state), without its walk of the whole history (see the module docs).
pub(crate) fn receive_sync_message(
    doc: &mut AutoCommit,
    state: &mut State,
    message: Message,
) -> Result<Trim, AutomergeError> {
    state.in_flight = false;
    let before_heads = doc.get_heads();
    let Message { heads: message_heads, changes, need, have, flags, .. } = message;
    if let Some(flags) = flags {
        // A peer that sends flags speaks version 2 messages.
        let mut caps = vec![Capability::MessageV2];
        if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
            caps.push(Capability::SyncReset);
        }
        state.their_capabilities = Some(caps);
        if flags.contains(MessageFlags::SYNC_RESET) {
            state.sent_hashes.clear();
        }
        state.peer_read_only = flags.contains(MessageFlags::READ_ONLY);
    }
    let changes_is_empty = changes.is_empty();
    if !changes_is_empty && !state.read_only {
        let mut joined = Vec::with_capacity(changes.iter().map(<[u8]>::len).sum());
        for chunk in changes.iter() {
            joined.extend_from_slice(chunk);
        }
        doc.load_incremental(&joined)?;
        state.shared_heads = advance_heads(&before_heads, &doc.get_heads(), &state.shared_heads);
    }
    // Only the changes the peer's heads do not descend from stay unacknowledged.
    let trim = if state.sent_hashes.iter().all(|h| message_heads.contains(h)) {
        state.sent_hashes.clear();
        Trim::ByHeads
    } else {
        Trim::Walked(trim_sent(doc, &mut state.sent_hashes, &message_heads))
    };
    if changes_is_empty && message_heads == before_heads {
        state.last_sent_heads.clone_from(&message_heads);
    }
    let known: Vec<ChangeHash> =
        message_heads.iter().filter(|h| doc.get_change_meta_by_hash(h).is_some()).copied().collect();
    if known.len() == message_heads.len() {
        state.shared_heads.clone_from(&message_heads);
        // A peer that lost everything: sync again from nothing.
        if message_heads.is_empty() {
            state.last_sent_heads = Vec::new();
            state.sent_hashes = Default::default();
        }
    } else {
        let mut shared: Vec<ChangeHash> = state.shared_heads.iter().chain(&known).copied().collect();
        shared.sort();
        shared.dedup();
        state.shared_heads = shared;
    }
    state.their_have = Some(have);
    state.their_heads = Some(message_heads);
    state.their_need = Some(need);
    Ok(trim)
}

/// Removes from `sent` every change that one of `heads` (those `doc` holds) is or descends from, as
/// Automerge's walk does, and answers how many changes it visited. Operation counters are Lamport clocks: a
/// change's operations come after those of every change it depends on, so a change whose last operation
/// precedes the last operation of every change still to find is none of them and descends from none of them;
/// the walk goes no further down from it. Changes still to find that nothing reaches are walked to the
/// bottom of that bound only.
fn trim_sent(doc: &mut AutoCommit, sent: &mut BTreeSet<ChangeHash>, heads: &[ChangeHash]) -> usize {
    // The last operation of each change still to find (a change we do not hold cannot be reached).
    let mut wanted: Vec<(ChangeHash, u64)> =
        sent.iter().filter_map(|h| doc.get_change_meta_by_hash(h).map(|m| (*h, m.max_op))).collect();
    let floor_of = |wanted: &[(ChangeHash, u64)]| wanted.iter().map(|(_, op)| *op).min();
    let mut floor = floor_of(&wanted);
    let mut stack: Vec<ChangeHash> = heads.to_vec();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    while let Some(f) = floor {
        let Some(h) = stack.pop() else { break };
        if !seen.insert(h) {
            continue;
        }
        let Some((max_op, deps)) = doc.get_change_meta_by_hash(&h).map(|m| (m.max_op, m.deps)) else { continue };
        if max_op < f {
            continue;
        }
        if sent.remove(&h) {
            wanted.retain(|(w, _)| *w != h);
            floor = floor_of(&wanted);
        }
        stack.extend(deps);
    }
    seen.len()
}

/// The shared heads after applying the peer's changes: our new heads that are new, and the old shared heads
/// still among our heads, sorted (Automerge's `advance_heads`).
fn advance_heads(old: &[ChangeHash], new: &[ChangeHash], shared: &[ChangeHash]) -> Vec<ChangeHash> {
    let mut out: Vec<ChangeHash> = new.iter().filter(|h| !old.contains(h)).copied().collect();
    out.extend(shared.iter().filter(|h| new.contains(h)));
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::{ActorId, ROOT};
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// One peer twice: `direct` receives through [`receive_sync_message`], `reference` through Automerge's.
    struct Peer {
        direct: (AutoCommit, State),
        reference: (AutoCommit, State),
        inbox: VecDeque<Message>,
    }

    impl Peer {
        fn new(actor: u8) -> Peer {
            let doc = AutoCommit::new().with_actor(ActorId::from(vec![actor; 16]));
            Peer { direct: (doc.clone(), State::new()), reference: (doc, State::new()), inbox: VecDeque::new() }
        }

        fn write(&mut self, key: u8, value: u64) {
            for (doc, _) in [&mut self.direct, &mut self.reference] {
                doc.put(ROOT, format!("k{key}"), value).unwrap();
                doc.commit_with(CommitOptions::default().with_time(0));
            }
        }

        /// The next message of both copies, which must be the same.
        fn generate(&mut self) -> Result<Option<Message>, TestCaseError> {
            let a = self.direct.0.sync().generate_sync_message(&mut self.direct.1);
            let b = self.reference.0.sync().generate_sync_message(&mut self.reference.1);
            prop_assert_eq!(&a, &b);
            Ok(a)
        }

        /// Receives the oldest message of the inbox in both copies; how the direct one trimmed.
        fn receive(&mut self) -> Result<Option<Trim>, TestCaseError> {
            let Some(m) = self.inbox.pop_front() else { return Ok(None) };
            let a = receive_sync_message(&mut self.direct.0, &mut self.direct.1, m.clone());
            let b = self.reference.0.sync().receive_sync_message(&mut self.reference.1, m);
            prop_assert_eq!(a.is_ok(), b.is_ok());
            prop_assert_eq!(self.direct.0.get_heads(), self.reference.0.get_heads());
            prop_assert_eq!(&self.direct.1, &self.reference.1);
            prop_assert_eq!(self.direct.0.save(), self.reference.0.save());
            Ok(a.ok())
        }

        /// Keeps only what is persisted of both states, as after a lost message or a reconnect.
        fn reset(&mut self) {
            for (_, state) in [&mut self.direct, &mut self.reference] {
                *state = State::decode(&state.encode()).unwrap();
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Peer writes key = value.
        Write(usize, u8, u64),
        /// Peer generates its next message, sent to the other.
        Send(usize),
        /// Peer receives its oldest message.
        Deliver(usize),
        /// Peer's oldest message is lost.
        Lose(usize),
        /// Peer's sync state is reset to what is persisted.
        Reset(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..2usize, 0..4u8, any::<u64>()).prop_map(|(p, k, v)| Step::Write(p, k, v)),
            4 => (0..2usize).prop_map(Step::Send),
            4 => (0..2usize).prop_map(Step::Deliver),
            1 => (0..2usize).prop_map(Step::Lose),
            1 => (0..2usize).prop_map(Step::Reset),
        ]
    }

    /// How the messages of a run were trimmed.
    #[derive(Debug, Default)]
    struct Counts {
        by_heads: usize,
        walked: usize,
        /// The most changes one walk visited.
        visited_max: usize,
    }

    /// Runs `steps` between two peers, then lets them sync to the end.
    fn run(steps: &[Step]) -> Result<Counts, TestCaseError> {
        let mut peers = [Peer::new(1), Peer::new(2)];
        let mut counts = Counts::default();
        let mut count = |r: Option<Trim>| match r {
            Some(Trim::ByHeads) => counts.by_heads += 1,
            Some(Trim::Walked(n)) => {
                counts.walked += 1;
                counts.visited_max = counts.visited_max.max(n);
            }
            None => {}
        };
        for s in steps {
            match *s {
                Step::Write(p, k, v) => peers[p].write(k, v),
                Step::Send(p) => {
                    if let Some(m) = peers[p].generate()? {
                        peers[1 - p].inbox.push_back(m);
                    }
                }
                Step::Deliver(p) => count(peers[p].receive()?),
                Step::Lose(p) => drop(peers[p].inbox.pop_front()),
                Step::Reset(p) => peers[p].reset(),
            }
        }
        // Then a clean exchange to the end (bounded): both copies of both peers converge alike.
        for peer in &mut peers {
            peer.inbox.clear();
            peer.reset();
        }
        for round in 0..40 {
            let p = round % 2;
            if let Some(m) = peers[p].generate()? {
                peers[1 - p].inbox.push_back(m);
                count(peers[1 - p].receive()?);
            }
        }
        let [a, b] = &mut peers;
        prop_assert_eq!(a.direct.0.get_heads(), b.direct.0.get_heads());
        Ok(counts)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any exchange (concurrent writes, messages crossing, lost, states reset) leaves the document and the
        /// sync state exactly as Automerge's own receive would, message after message.
        #[test]
        fn receives_as_automerge_does(steps in proptest::collection::vec(step(), 0..60)) {
            run(&steps)?;
        }
    }

    /// One peer writes, the other only reads (as the hub a node's stock document): the reader never sent a
    /// change and the writer is answered with its own heads, so no message needs a walk. When the writer
    /// sent more before the answer came, the walk visits the changes since the first unanswered one, not the
    /// history before it.
    #[test]
    fn a_walk_visits_only_what_followed_the_changes_sent() {
        let mut steps = Vec::new();
        for i in 0..40u64 {
            steps.push(Step::Write(0, (i % 4) as u8, i));
            steps.extend([Step::Send(0), Step::Deliver(1), Step::Send(1), Step::Deliver(0)]);
        }
        let first = run(&steps).unwrap();
        assert!(first.by_heads >= 80, "{first:?}");
        assert!(first.visited_max <= 2, "a walk of the history: {first:?}");
        // Two more writes sent before the answer to the first: its heads are not all that was sent.
        steps.extend([
            Step::Write(0, 0, 1),
            Step::Send(0),
            Step::Deliver(1),
            Step::Send(1),
            Step::Write(0, 1, 2),
            Step::Send(0),
            Step::Write(0, 2, 3),
            Step::Send(0),
            Step::Deliver(0),
        ]);
        let counts = run(&steps).unwrap();
        assert!(counts.walked > first.walked, "{counts:?}");
        assert!(counts.visited_max <= 3, "a walk of the history: {counts:?}");
    }
}
