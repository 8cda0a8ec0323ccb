//! Escrowed stock: a bounded counter that lets a site and the hub both promise the site's units while they
//! cannot talk, without ever promising the same unit twice.
//!
//! A plain replicated counter merges by addition, so two sides that each sell "the last unit" converge to −1.
//! Escrow (Balegas et al., "Extending Eventually Consistent Cloud Databases for Enforcing Numeric
//! Invariants", SRDS 2015) splits the *right* to promise ahead of time: each replica spends only rights it
//! holds, and rights move only by their holder's own transfer. AntidoteDB's `antidote_crdt_counter_b` is
//! the reference implementation of the same counter.
//!
//! # State
//!
//! One [`EscrowCounter`] per SKU at one site, replicated at every party in a small, fixed set of replicas
//! ([`ReplicaId`]; [`Party`] is the site and the hub, and a second promising party is one more variant).
//!
//! - `R[i][j]`: rights moved from `i` to `j`; `R[i][i]`: rights created at `i` (goods received).
//! - `U[i]`: rights consumed at `i` (reservations, assignments, losses).
//! - Owner-written lease cells, one per holder `j` (see below): `lease_until_ms[j]`, `unacked_max[j]`,
//!   `acked_spent[j]` and `reclaimed[j]`.
//!
//! Every cell has exactly one writer (`i` writes row `i` and `U[i]`; the owner — the site — writes the lease
//! cells) and only grows, so [`EscrowCounter::merge`] is an element-wise max: commutative, associative and
//! idempotent. States can be exchanged in any order, any number of times.
//!
//! Derived: `total = Σ R[i][i] − Σ U[i]` (units not promised anywhere) and
//! `local(i) = R[i][i] + Σ_{j≠i} R[j][i] − Σ_{j≠i} R[i][j] − U[i]`, adjusted by reclaims (a reclaim of `q`
//! from holder `j` moves `q` from `local(j)` to `local(owner)`).
//!
//! # Why it is safe
//!
//! A replica consumes or transfers only if its own view says `local(i) ≥ n`. Its view contains its own row
//! and every inflow it has seen, and any merged state that contains that row also contains those inflows
//! (the state that carried the row carried them too). So in every join of replica states, `local(i) ≥ 0`
//! for every `i`, and summing over replicas, consumed ≤ created. The property tests check exactly this on
//! random interleavings, partitions and merge orders.
//!
//! # Physical loss
//!
//! A loss (damage, miscount) is a consumption at the site. If the site's own rights cannot cover it, the
//! part it can cover is recorded and the rest surfaces as a typed [`LossShortfall`]: those units are
//! promised by rights the hub holds, so the caller must re-route or backorder and ask the hub to give rights
//! back (a transfer back), then record the remainder. Never a negative balance.
//!
//! # Leases: rights at an unreachable holder are neither spent twice nor lost
//!
//! Rights parked at the hub cannot be used by the site while the hub is away. A lease lets the site take
//! them back without the hub, and without ever double-spending:
//!
//! 1. **Grant.** The site (owner) records for each holder `j` a lease expiry `lease_until_ms[j]` and an
//!    unacknowledged-spend budget `unacked_max[j]`. Both only grow (a shorter lease or a smaller budget is
//!    refused), so every replica's view of them is at most the owner's.
//! 2. **Holder rule.** `j` may consume or transfer (give-backs included) only while `now_ms <
//!    lease_until_ms[j]` by `j`'s own clock, passed in. After expiry `j`'s row is frozen.
//! 3. **Acknowledgement.** After merging the holder's state, the owner calls
//!    [`EscrowCounter::acknowledge`], recording in `acked_spent[j]` how much of `j`'s spending (consumed
//!    plus transferred out) it has seen. `j` may spend only while its spending not yet acknowledged stays
//!    within `unacked_max[j]`. This bounds what `j` can have spent that the owner has not seen — the part a
//!    lease alone cannot bound, since `j`'s last spends before expiry may still be in flight.
//! 4. **Reclaim.** Once `now_ms ≥ lease_until_ms[j] + margin_ms` by the owner's clock (the margin covers
//!    clock skew between the two), the owner may [`EscrowCounter::reclaim`]
//!    `local_seen(j) − unacked_max[j]` units: what it sees `j` holding, less the most `j` can have spent
//!    unseen. Both sides reason on the same recorded expiry, so with clocks within the margin `j` has
//!    stopped before the owner reclaims and nothing it holds vanishes under it.
//! 5. **Return.** At most `unacked_max[j]` units stay at `j` until it is heard from again, when a later
//!    reclaim (after a later expiry) or a give-back returns them. Nothing is lost; a small budget is the
//!    price of a short wait.
//!
//! Safety rests on the budget, not on clocks. `j`'s true spending `s` satisfies `s ≤ acked_seen_by_j +
//! unacked_max_seen_by_j ≤ s_seen + unacked_max` at every moment, and inflows to `j` only grow, so
//! `local(j) − reclaimed ≥ 0` in every merge, whenever the reclaim happens. The lease decides *when* the
//! owner may take rights back, so the hub can rely on what it holds until the recorded expiry; a clock off
//! by more than the margin costs availability (the hub finds its rights gone or its budget spent), never a
//! double promise. The property test runs with skews beyond the margin.
//!
//! # Rebalancing
//!
//! [`rebalance`] decides how many rights the site should grant the hub (or ask back) from recent demand.
//! It is policy, not safety: any sequence of transfers by the holder keeps every invariant above.
//!
//! This module never reads a clock: every time is a parameter in Unix milliseconds.

use crate::domain::Sku;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;

/// A small, fixed set of replicas that may hold rights to one site's stock.
///
/// Implementors list every replica in [`ReplicaId::ALL`] in a fixed order; [`ReplicaId::index`] is the
/// position in that list. The order is part of the wire format: append new replicas, never reorder.
pub trait ReplicaId: Copy + Eq + fmt::Debug + 'static {
    /// Every replica, in index order.
    const ALL: &'static [Self];
    /// The replica that owns the physical stock and writes the lease cells (the site).
    const OWNER: Self;
    /// Position of this replica in [`ReplicaId::ALL`].
    fn index(self) -> usize;
    /// Short name for error messages, such as `site`.
    fn name(self) -> &'static str;
}

/// The two parties that promise a site's stock today: the site's own node and the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    /// The site's node: owns the stock, sells at the counter, grants leases.
    Site,
    /// The hub: routes channel orders to the site within the rights it holds.
    Hub,
}

impl ReplicaId for Party {
    const ALL: &'static [Self] = &[Party::Site, Party::Hub];
    const OWNER: Self = Party::Site;
    fn index(self) -> usize {
        match self {
            Party::Site => 0,
            Party::Hub => 1,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Party::Site => "site",
            Party::Hub => "hub",
        }
    }
}

/// Why rights could not be consumed or transferred.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpendError {
    /// The replica holds fewer rights than requested.
    #[error("{sku}: {replica} holds {held} units, {requested} requested")]
    Insufficient {
        /// The SKU.
        sku: Sku,
        /// Who tried to spend.
        replica: &'static str,
        /// Rights it holds.
        held: u64,
        /// Units requested.
        requested: u64,
    },
    /// A holder's lease has expired (or was never granted); it may not spend until the owner renews it.
    #[error("{sku}: {replica}'s lease ended at {lease_until_ms} ms, now {now_ms} ms")]
    LeaseExpired {
        /// The SKU.
        sku: Sku,
        /// The holder.
        replica: &'static str,
        /// Recorded expiry (0: never granted).
        lease_until_ms: u64,
        /// The holder's clock.
        now_ms: u64,
    },
    /// The holder would have more spending unacknowledged by the owner than its lease allows.
    #[error("{sku}: {replica} would have {unacked} units unacknowledged by the site, at most {unacked_max} allowed")]
    UnackedBudget {
        /// The SKU.
        sku: Sku,
        /// The holder.
        replica: &'static str,
        /// Spending not yet acknowledged, including this request.
        unacked: u64,
        /// The budget in the lease.
        unacked_max: u64,
    },
    /// A transfer to oneself.
    #[error("{sku}: {replica} cannot transfer rights to itself")]
    SelfTransfer {
        /// The SKU.
        sku: Sku,
        /// The replica.
        replica: &'static str,
    },
    /// A count would exceed u64.
    #[error("{sku}: escrow counter overflow")]
    Overflow {
        /// The SKU.
        sku: Sku,
    },
}

/// A physical loss the site's own rights could not cover. The covered part (`absorbed`) has been recorded;
/// `uncovered` units are promised by rights another party holds and must be re-routed or backordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{sku}: lost {lost} units, the site's rights covered {absorbed}, {uncovered} short")]
pub struct LossShortfall {
    /// The SKU.
    pub sku: Sku,
    /// Units lost.
    pub lost: u64,
    /// Units the site's rights covered (recorded as consumed).
    pub absorbed: u64,
    /// Units not covered.
    pub uncovered: u64,
}

/// Why a lease could not be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Only the owner grants leases, and not to itself.
    #[error("{sku}: only the site grants leases, to another party ({by} → {to})")]
    NotOwner {
        /// The SKU.
        sku: Sku,
        /// Who tried.
        by: &'static str,
        /// To whom.
        to: &'static str,
    },
    /// A lease may only be extended: a holder may already have spent on the longer one.
    #[error("{sku}: lease for {to} already runs to {current_ms} ms, cannot shorten to {requested_ms} ms")]
    Shortening {
        /// The SKU.
        sku: Sku,
        /// The holder.
        to: &'static str,
        /// Recorded expiry.
        current_ms: u64,
        /// Requested expiry.
        requested_ms: u64,
    },
    /// The unacknowledged budget may only grow: the owner's reclaim relies on the largest one granted.
    #[error("{sku}: unacknowledged budget for {to} is {current}, cannot lower to {requested}")]
    BudgetLowered {
        /// The SKU.
        sku: Sku,
        /// The holder.
        to: &'static str,
        /// Recorded budget.
        current: u64,
        /// Requested budget.
        requested: u64,
    },
}

/// Why rights could not be reclaimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReclaimError {
    /// Only the owner reclaims, and not from itself.
    #[error("{sku}: only the site reclaims rights from another party ({by} → {from})")]
    NotOwner {
        /// The SKU.
        sku: Sku,
        /// Who tried.
        by: &'static str,
        /// From whom.
        from: &'static str,
    },
    /// The lease plus the safety margin has not run out yet.
    #[error(
        "{sku}: {from}'s lease ends at {lease_until_ms} ms; reclaim allowed from {allowed_from_ms} ms, now {now_ms} ms"
    )]
    TooEarly {
        /// The SKU.
        sku: Sku,
        /// The holder.
        from: &'static str,
        /// Recorded expiry.
        lease_until_ms: u64,
        /// Expiry plus margin.
        allowed_from_ms: u64,
        /// The owner's clock.
        now_ms: u64,
    },
}

/// Why two states could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The states count different SKUs.
    #[error("cannot merge escrow for {theirs} into escrow for {ours}")]
    SkuMismatch {
        /// This counter's SKU.
        ours: Sku,
        /// The other one's.
        theirs: Sku,
    },
}

/// Why a decoded state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A vector has the wrong length for the replica set.
    #[error("escrow state for {sku}: {field} has {got} cells, expected {expected}")]
    Shape {
        /// The SKU.
        sku: Sku,
        /// Which vector.
        field: &'static str,
        /// Cells found.
        got: usize,
        /// Cells expected.
        expected: usize,
    },
    /// The state breaks the counter's invariant (a replica holds negative rights).
    #[error("escrow state for {sku}: {replica} would hold {local} rights")]
    Negative {
        /// The SKU.
        sku: Sku,
        /// The replica.
        replica: &'static str,
        /// Its derived holding.
        local: i128,
    },
}

/// The serialized shape of an [`EscrowCounter`]: plain vectors, postcard-friendly, checked on decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowWire {
    /// The SKU.
    pub sku: Sku,
    /// `R`, row-major, `n × n`.
    pub rights: Vec<u64>,
    /// `U`, one per replica.
    pub consumed: Vec<u64>,
    /// Lease expiry per holder, Unix ms (0: none).
    pub lease_until_ms: Vec<u64>,
    /// Unacknowledged-spend budget per holder.
    pub unacked_max: Vec<u64>,
    /// Holder spending acknowledged by the owner.
    pub acked_spent: Vec<u64>,
    /// Rights reclaimed by the owner from each holder.
    pub reclaimed: Vec<u64>,
}

/// The escrow counter for one SKU at one site. See the module docs for the model and its safety argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EscrowWire", into = "EscrowWire", bound = "R: ReplicaId")]
pub struct EscrowCounter<R: ReplicaId = Party> {
    w: EscrowWire,
    _r: PhantomData<R>,
}

impl<R: ReplicaId> From<EscrowCounter<R>> for EscrowWire {
    fn from(c: EscrowCounter<R>) -> Self {
        c.w
    }
}

impl<R: ReplicaId> TryFrom<EscrowWire> for EscrowCounter<R> {
    type Error = DecodeError;
    fn try_from(w: EscrowWire) -> Result<Self, DecodeError> {
        let n = R::ALL.len();
        let shapes: [(&'static str, usize, usize); 6] = [
            ("rights", w.rights.len(), n * n),
            ("consumed", w.consumed.len(), n),
            ("lease_until_ms", w.lease_until_ms.len(), n),
            ("unacked_max", w.unacked_max.len(), n),
            ("acked_spent", w.acked_spent.len(), n),
            ("reclaimed", w.reclaimed.len(), n),
        ];
        for (field, got, expected) in shapes {
            if got != expected {
                return Err(DecodeError::Shape { sku: w.sku, field, got, expected });
            }
        }
        let c = Self { w, _r: PhantomData };
        c.check()?;
        Ok(c)
    }
}

impl<R: ReplicaId> EscrowCounter<R> {
    /// An empty counter: no rights anywhere, no leases.
    pub fn new(sku: Sku) -> Self {
        let n = R::ALL.len();
        Self {
            w: EscrowWire {
                sku,
                rights: vec![0; n * n],
                consumed: vec![0; n],
                lease_until_ms: vec![0; n],
                unacked_max: vec![0; n],
                acked_spent: vec![0; n],
                reclaimed: vec![0; n],
            },
            _r: PhantomData,
        }
    }

    /// The SKU this counter is for.
    pub fn sku(&self) -> &Sku {
        &self.w.sku
    }

    fn n() -> usize {
        R::ALL.len()
    }

    fn r(&self, from: usize, to: usize) -> u64 {
        self.w.rights[from * Self::n() + to]
    }

    /// Rights moved from `from` to `to` (`from == to`: rights created there).
    pub fn rights(&self, from: R, to: R) -> u64 {
        self.r(from.index(), to.index())
    }

    /// Rights consumed at `at`.
    pub fn consumed(&self, at: R) -> u64 {
        self.w.consumed[at.index()]
    }

    /// The lease expiry recorded for holder `at`, Unix ms (0: never granted).
    pub fn lease_until_ms(&self, at: R) -> u64 {
        self.w.lease_until_ms[at.index()]
    }

    /// The unacknowledged-spend budget the owner granted `at`.
    pub fn unacked_max(&self, at: R) -> u64 {
        self.w.unacked_max[at.index()]
    }

    /// How much of `at`'s spending the owner has acknowledged ([`EscrowCounter::acknowledge`]): what refills
    /// `at`'s unacknowledged budget once `at` sees it.
    pub fn acked_spent(&self, at: R) -> u64 {
        self.w.acked_spent[at.index()]
    }

    /// Units `at` may spend right now by its own view and clock: its rights, limited for a non-owner by its
    /// lease (nothing after expiry) and by what is left of its unacknowledged budget.
    pub fn spendable(&self, at: R, now_ms: u64) -> u64 {
        let held = self.local(at);
        if at == R::OWNER {
            return held;
        }
        let i = at.index();
        if now_ms >= self.w.lease_until_ms[i] {
            return 0;
        }
        let unacked = self.spent(i).saturating_sub(u128::from(self.w.acked_spent[i]));
        let left = u128::from(self.w.unacked_max[i]).saturating_sub(unacked);
        held.min(u64::try_from(left).unwrap_or(u64::MAX))
    }

    /// Units not yet promised anywhere: Σ created − Σ consumed. Negative only in a corrupt state.
    pub fn total(&self) -> i128 {
        let n = Self::n();
        let created: i128 = (0..n).map(|i| i128::from(self.r(i, i))).sum();
        let used: i128 = self.w.consumed.iter().map(|&u| i128::from(u)).sum();
        created - used
    }

    /// Σ created − Σ consumed, as units (see [`EscrowCounter::total`]); 0 if the state were corrupt.
    pub fn unpromised(&self) -> u64 {
        u64::try_from(self.total().max(0)).unwrap_or(u64::MAX)
    }

    /// How much replica `i` has spent: consumed plus transferred out (not counting rights it created).
    fn spent(&self, i: usize) -> u128 {
        let out: u128 = (0..Self::n()).filter(|&j| j != i).map(|j| u128::from(self.r(i, j))).sum();
        out + u128::from(self.w.consumed[i])
    }

    fn local_signed(&self, i: usize) -> i128 {
        let n = Self::n();
        let owner = R::OWNER.index();
        let inflow: i128 = (0..n).map(|j| i128::from(self.r(j, i))).sum(); // includes R[i][i]
        let reclaim_in: i128 = if i == owner { self.w.reclaimed.iter().map(|&q| i128::from(q)).sum() } else { 0 };
        let reclaim_out = if i == owner { 0 } else { i128::from(self.w.reclaimed[i]) };
        // `spent` is at most n·u64::MAX + u64::MAX, far inside i128, so the conversion cannot fail; were it to,
        // saturating makes `local` negative, which `check` refuses.
        let spent = i128::try_from(self.spent(i)).unwrap_or(i128::MAX);
        (inflow + reclaim_in - reclaim_out).saturating_sub(spent)
    }

    /// Rights replica `i` may still promise, in this replica's view.
    pub fn local(&self, at: R) -> u64 {
        u64::try_from(self.local_signed(at.index()).max(0)).unwrap_or(u64::MAX)
    }

    /// Checks `local(i) ≥ 0` for every replica. Holds for every state built by this module's operations
    /// and merges; a decoded state that breaks it is refused.
    pub fn check(&self) -> Result<(), DecodeError> {
        for &r in R::ALL {
            let local = self.local_signed(r.index());
            if local < 0 {
                return Err(DecodeError::Negative { sku: self.w.sku.clone(), replica: r.name(), local });
            }
        }
        Ok(())
    }

    fn overflow(&self) -> SpendError {
        SpendError::Overflow { sku: self.w.sku.clone() }
    }

    /// Goods received (or rights created) at `at`: always allowed.
    pub fn add(&mut self, at: R, n: u64) -> Result<(), SpendError> {
        let k = at.index() * Self::n() + at.index();
        self.w.rights[k] = self.w.rights[k].checked_add(n).ok_or_else(|| self.overflow())?;
        Ok(())
    }

    /// Checks that `at` may spend `n` units now: enough rights, and for a holder, a live lease and room in
    /// its unacknowledged budget.
    fn may_spend(&self, at: R, n: u64, now_ms: u64) -> Result<(), SpendError> {
        let i = at.index();
        let held = self.local(at);
        if held < n {
            return Err(SpendError::Insufficient { sku: self.w.sku.clone(), replica: at.name(), held, requested: n });
        }
        if at == R::OWNER {
            return Ok(());
        }
        let lease_until_ms = self.w.lease_until_ms[i];
        if now_ms >= lease_until_ms {
            return Err(SpendError::LeaseExpired {
                sku: self.w.sku.clone(),
                replica: at.name(),
                lease_until_ms,
                now_ms,
            });
        }
        let unacked = (self.spent(i) + u128::from(n)).saturating_sub(u128::from(self.w.acked_spent[i]));
        let unacked_max = self.w.unacked_max[i];
        if unacked > u128::from(unacked_max) {
            return Err(SpendError::UnackedBudget {
                sku: self.w.sku.clone(),
                replica: at.name(),
                unacked: u64::try_from(unacked).unwrap_or(u64::MAX),
                unacked_max,
            });
        }
        Ok(())
    }

    /// Consumes `n` rights at `at` (a reservation or an assignment), if `at` holds them. `now_ms` is `at`'s
    /// clock, checked against its lease when `at` is not the owner.
    pub fn consume(&mut self, at: R, n: u64, now_ms: u64) -> Result<(), SpendError> {
        self.may_spend(at, n, now_ms)?;
        let i = at.index();
        self.w.consumed[i] = self.w.consumed[i].checked_add(n).ok_or_else(|| self.overflow())?;
        Ok(())
    }

    /// Moves `n` rights from `from` to `to`; only `from` may call this, on its own replica. A give-back is a
    /// transfer back.
    pub fn transfer(&mut self, from: R, to: R, n: u64, now_ms: u64) -> Result<(), SpendError> {
        if from == to {
            return Err(SpendError::SelfTransfer { sku: self.w.sku.clone(), replica: from.name() });
        }
        self.may_spend(from, n, now_ms)?;
        let k = from.index() * Self::n() + to.index();
        self.w.rights[k] = self.w.rights[k].checked_add(n).ok_or_else(|| self.overflow())?;
        Ok(())
    }

    /// Records a physical loss of `n` units at the site (a negative adjustment). The site's own rights
    /// cover what they can; anything beyond is a [`LossShortfall`], with the covered part already recorded.
    pub fn record_loss(&mut self, n: u64) -> Result<(), LossShortfall> {
        let o = R::OWNER.index();
        let absorbed = self.local(R::OWNER).min(n);
        // Cannot overflow: absorbed ≤ local(owner) ≤ Σ inflows, and consumed + local ≤ that sum.
        self.w.consumed[o] = self.w.consumed[o].saturating_add(absorbed);
        if absorbed < n {
            return Err(LossShortfall { sku: self.w.sku.clone(), lost: n, absorbed, uncovered: n - absorbed });
        }
        Ok(())
    }

    /// The owner grants (or extends) holder `to` a lease to `until_ms` with an unacknowledged-spend budget of
    /// `unacked_max` units. Neither may shrink.
    pub fn grant_lease(&mut self, by: R, to: R, until_ms: u64, unacked_max: u64) -> Result<(), LeaseError> {
        let sku = || self.w.sku.clone();
        if by != R::OWNER || to == R::OWNER {
            return Err(LeaseError::NotOwner { sku: sku(), by: by.name(), to: to.name() });
        }
        let j = to.index();
        let current_ms = self.w.lease_until_ms[j];
        if until_ms < current_ms {
            return Err(LeaseError::Shortening { sku: sku(), to: to.name(), current_ms, requested_ms: until_ms });
        }
        let current = self.w.unacked_max[j];
        if unacked_max < current {
            return Err(LeaseError::BudgetLowered { sku: sku(), to: to.name(), current, requested: unacked_max });
        }
        self.w.lease_until_ms[j] = until_ms;
        self.w.unacked_max[j] = unacked_max;
        Ok(())
    }

    /// The owner records how much of every holder's spending it has now seen. Call on the owner's replica
    /// after merging holders' states; a holder's unacknowledged budget refills as this reaches it.
    /// On any other replica it does nothing, since only the owner writes these cells.
    pub fn acknowledge(&mut self, by: R) {
        if by != R::OWNER {
            return;
        }
        for &r in R::ALL {
            let j = r.index();
            if r != R::OWNER {
                let seen = u64::try_from(self.spent(j)).unwrap_or(u64::MAX);
                self.w.acked_spent[j] = self.w.acked_spent[j].max(seen);
            }
        }
    }

    /// The owner takes back rights from holder `from` after its lease plus `margin_ms` has run out by the
    /// owner's clock `now_ms`. Reclaims what the owner sees `from` holding less `from`'s unacknowledged
    /// budget (what it may have spent unseen), and returns the units reclaimed (possibly 0).
    pub fn reclaim(&mut self, by: R, from: R, now_ms: u64, margin_ms: u64) -> Result<u64, ReclaimError> {
        if by != R::OWNER || from == R::OWNER {
            return Err(ReclaimError::NotOwner { sku: self.w.sku.clone(), by: by.name(), from: from.name() });
        }
        let j = from.index();
        let lease_until_ms = self.w.lease_until_ms[j];
        let allowed_from_ms = lease_until_ms.saturating_add(margin_ms);
        if now_ms < allowed_from_ms {
            return Err(ReclaimError::TooEarly {
                sku: self.w.sku.clone(),
                from: from.name(),
                lease_until_ms,
                allowed_from_ms,
                now_ms,
            });
        }
        let q = self.local(from).saturating_sub(self.w.unacked_max[j]);
        self.w.reclaimed[j] = self.w.reclaimed[j].saturating_add(q);
        Ok(q)
    }

    /// Merges another replica's state into this one: element-wise max of every cell.
    pub fn merge(&mut self, other: &Self) -> Result<(), MergeError> {
        if self.w.sku != other.w.sku {
            return Err(MergeError::SkuMismatch { ours: self.w.sku.clone(), theirs: other.w.sku.clone() });
        }
        let join = |a: &mut Vec<u64>, b: &Vec<u64>| a.iter_mut().zip(b).for_each(|(x, y)| *x = (*x).max(*y));
        join(&mut self.w.rights, &other.w.rights);
        join(&mut self.w.consumed, &other.w.consumed);
        join(&mut self.w.lease_until_ms, &other.w.lease_until_ms);
        join(&mut self.w.unacked_max, &other.w.unacked_max);
        join(&mut self.w.acked_spent, &other.w.acked_spent);
        join(&mut self.w.reclaimed, &other.w.reclaimed);
        Ok(())
    }
}

/// Tuning of [`rebalance`]. Shares are in basis points (1/100 of a percent) so the policy is integer-exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalancePolicy {
    /// Smallest share of the site's pool the hub should hold, bp.
    pub hub_share_min_bp: u32,
    /// Largest share of the site's pool the hub should hold, bp.
    pub hub_share_max_bp: u32,
    /// Share used when there is no recent demand at all, bp.
    pub hub_share_default_bp: u32,
    /// Do nothing unless the hub is off target by at least this share of the pool, bp (hysteresis).
    pub deadband_bp: u32,
    /// Do nothing unless at least this many units would move (hysteresis).
    pub move_units_min: u64,
    /// Move at most this many units in one decision, unless `move_share_max_bp` of the pool is more.
    pub move_units_max: u64,
    /// Move at most this share of the pool (site's and hub's rights together) in one decision, bp, when that
    /// is more than `move_units_max`: so the hub's share of a large pool is reached in a bounded number of
    /// decisions (ten at 1,000 bp) however many units the site holds, instead of `pool / move_units_max`
    /// decisions that each rewrite the SKU's counter. 0: `move_units_max` alone.
    pub move_share_max_bp: u32,
}

impl Default for RebalancePolicy {
    fn default() -> Self {
        Self {
            hub_share_min_bp: 1_000,
            hub_share_max_bp: 8_000,
            hub_share_default_bp: 3_000,
            deadband_bp: 1_000,
            move_units_min: 1,
            move_units_max: 1_000,
            move_share_max_bp: 1_000,
        }
    }
}

/// What [`rebalance`] sees: the site's figures for one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceInput {
    /// Rights the site holds (`local(site)`).
    pub site_available: u64,
    /// Rights the hub holds, as the site sees them (`local(hub)`).
    pub hub_rights: u64,
    /// Units the hub promised recently (channel demand).
    pub hub_demand_recent: u64,
    /// Units the site sold itself recently (counter demand).
    pub site_demand_recent: u64,
}

/// What [`rebalance`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rebalance {
    /// Within the deadband: move nothing.
    Hold,
    /// The site transfers this many rights to the hub.
    GrantToHub {
        /// Units.
        units: u64,
    },
    /// The site asks the hub to give this many rights back (the hub's own transfer).
    AskHubBack {
        /// Units.
        units: u64,
    },
}

/// The rebalancing policy: the hub's target share of the site's pool follows its share of recent demand,
/// clamped to `[hub_share_min_bp, hub_share_max_bp]`; nothing moves inside the deadband or below
/// `move_units_min` (hysteresis, so rights do not flap), and at most `move_units_max` units or
/// `move_share_max_bp` of the pool, whichever is more, move at once.
///
/// This is a policy, not part of safety: the result is executed as a transfer by the holder, which the
/// counter checks.
pub fn rebalance(input: &RebalanceInput, policy: &RebalancePolicy) -> Rebalance {
    let pool = u128::from(input.site_available) + u128::from(input.hub_rights);
    let demand = u128::from(input.hub_demand_recent) + u128::from(input.site_demand_recent);
    let share_bp = (u128::from(input.hub_demand_recent) * 10_000)
        .checked_div(demand)
        .unwrap_or(u128::from(policy.hub_share_default_bp));
    let lo = u128::from(policy.hub_share_min_bp.min(policy.hub_share_max_bp));
    let hi = u128::from(policy.hub_share_max_bp.max(policy.hub_share_min_bp)).min(10_000);
    let share_bp = share_bp.clamp(lo.min(hi), hi);
    let target = pool * share_bp / 10_000;
    let have = u128::from(input.hub_rights);
    let gap = target.abs_diff(have);
    let deadband = pool * u128::from(policy.deadband_bp) / 10_000;
    if gap == 0 || gap < deadband || gap < u128::from(policy.move_units_min) {
        return Rebalance::Hold;
    }
    let share_cap = (pool * u128::from(policy.move_share_max_bp.min(10_000))).div_ceil(10_000);
    let cap = u128::from(policy.move_units_max).max(share_cap);
    if target > have {
        let units = gap.min(cap).min(u128::from(input.site_available));
        match u64::try_from(units) {
            Ok(0) | Err(_) => Rebalance::Hold,
            Ok(units) => Rebalance::GrantToHub { units },
        }
    } else {
        match u64::try_from(gap.min(cap)) {
            Ok(0) | Err(_) => Rebalance::Hold,
            Ok(units) => Rebalance::AskHubBack { units },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type C = EscrowCounter<Party>;
    const S: Party = Party::Site;
    const H: Party = Party::Hub;

    fn sku() -> Sku {
        Sku::parse("SKU-1").unwrap()
    }

    /// Sums over the replicas' views: consumed ≤ created and no negative holding.
    fn assert_safe(c: &C) {
        let created: u64 = Party::ALL.iter().map(|&p| c.rights(p, p)).sum();
        let used: u64 = Party::ALL.iter().map(|&p| c.consumed(p)).sum();
        assert!(used <= created, "consumed {used} > created {created}: {c:?}");
        c.check().unwrap();
    }

    #[test]
    fn consume_within_rights_and_typed_refusal() {
        let mut c = C::new(sku());
        c.add(S, 10).unwrap();
        c.consume(S, 4, 0).unwrap();
        assert_eq!(c.local(S), 6);
        let e = c.consume(S, 7, 0).unwrap_err();
        assert_eq!(e, SpendError::Insufficient { sku: sku(), replica: "site", held: 6, requested: 7 });
        assert!(e.to_string().contains("SKU-1") && e.to_string().contains('6') && e.to_string().contains('7'));
        assert_eq!(c.total(), 6);
    }

    #[test]
    fn spendable_is_exactly_what_consume_allows() {
        let mut site = C::new(sku());
        site.add(S, 20).unwrap();
        site.transfer(S, H, 12, 0).unwrap();
        site.grant_lease(S, H, 1_000, 5).unwrap();
        let mut hub = C::new(sku());
        hub.merge(&site).unwrap();
        for now in [0, 500, 999, 1_000, 2_000] {
            let n = hub.spendable(H, now);
            let mut probe = hub.clone();
            if n > 0 {
                probe.consume(H, n, now).unwrap();
            }
            assert!(hub.clone().consume(H, n + 1, now).is_err(), "now {now}: {n} + 1 must be refused");
            assert_eq!(n, if now < 1_000 { 5 } else { 0 }, "now {now}");
        }
        assert_eq!(site.spendable(S, 0), 8);
    }

    #[test]
    fn hub_needs_a_live_lease_and_budget() {
        let mut site = C::new(sku());
        site.add(S, 10).unwrap();
        site.transfer(S, H, 6, 0).unwrap();
        let mut hub = C::new(sku());
        hub.merge(&site).unwrap();
        assert!(matches!(hub.consume(H, 1, 5), Err(SpendError::LeaseExpired { lease_until_ms: 0, .. })));
        site.grant_lease(S, H, 1_000, 3).unwrap();
        hub.merge(&site).unwrap();
        hub.consume(H, 3, 10).unwrap();
        assert!(matches!(hub.consume(H, 1, 10), Err(SpendError::UnackedBudget { unacked: 4, unacked_max: 3, .. })));
        site.merge(&hub).unwrap();
        site.acknowledge(S);
        hub.merge(&site).unwrap();
        hub.consume(H, 3, 999).unwrap();
        assert!(matches!(hub.consume(H, 0, 1_000), Err(SpendError::LeaseExpired { .. })));
        assert!(site.grant_lease(S, H, 900, 3).is_err(), "leases never shrink");
        assert!(site.grant_lease(S, H, 2_000, 2).is_err(), "budgets never shrink");
        assert!(hub.grant_lease(H, H, 2_000, 3).is_err(), "only the site grants");
    }

    #[test]
    fn reclaim_waits_for_margin_and_keeps_the_unacked_budget() {
        let mut site = C::new(sku());
        site.add(S, 10).unwrap();
        site.grant_lease(S, H, 1_000, 2).unwrap();
        site.transfer(S, H, 8, 0).unwrap();
        let mut hub = site.clone();
        // The hub spends 2 units the site never hears about, then goes dark.
        hub.consume(H, 2, 500).unwrap();
        assert!(matches!(site.reclaim(S, H, 1_099, 100), Err(ReclaimError::TooEarly { allowed_from_ms: 1_100, .. })));
        assert_eq!(site.reclaim(S, H, 1_100, 100).unwrap(), 6);
        assert_eq!(site.local(S), 8);
        site.consume(S, 8, 2_000).unwrap();
        // The hub comes back: nothing was promised twice, and the hub still holds what it did not spend.
        site.merge(&hub).unwrap();
        assert_safe(&site);
        assert_eq!(site.total(), 0);
        assert_eq!(site.local(H), 0);
        assert!(hub.consume(H, 1, 1_500).is_err(), "frozen after expiry");
    }

    #[test]
    fn loss_beyond_site_rights_is_a_typed_shortfall() {
        let mut c = C::new(sku());
        c.add(S, 10).unwrap();
        c.grant_lease(S, H, 1_000, 10).unwrap();
        c.transfer(S, H, 7, 0).unwrap();
        let e = c.record_loss(5).unwrap_err();
        assert_eq!(e, LossShortfall { sku: sku(), lost: 5, absorbed: 3, uncovered: 2 });
        assert_eq!(c.local(S), 0);
        // The hub gives back rights; the site records the rest of the loss.
        c.transfer(H, S, 2, 10).unwrap();
        c.record_loss(2).unwrap();
        assert_safe(&c);
        assert_eq!(c.total(), 5);
    }

    #[test]
    fn merge_refuses_another_sku_and_decode_checks_shape() {
        let mut a = C::new(sku());
        let b = C::new(Sku::parse("OTHER").unwrap());
        assert!(matches!(a.merge(&b), Err(MergeError::SkuMismatch { .. })));
        a.add(S, 3).unwrap();
        let bytes = postcard::to_allocvec(&a).unwrap();
        assert_eq!(postcard::from_bytes::<C>(&bytes).unwrap(), a);
        let mut w: EscrowWire = a.clone().into();
        w.consumed.push(0);
        assert!(matches!(C::try_from(w), Err(DecodeError::Shape { field: "consumed", .. })));
        let mut w: EscrowWire = a.into();
        w.consumed[0] = 9;
        assert!(matches!(C::try_from(w), Err(DecodeError::Negative { replica: "site", .. })));
    }

    #[test]
    fn rebalance_follows_demand_with_hysteresis() {
        let p = RebalancePolicy::default();
        let inp = |site, hub, hd, sd| RebalanceInput {
            site_available: site,
            hub_rights: hub,
            hub_demand_recent: hd,
            site_demand_recent: sd,
        };
        // Hub sells half: target 50 of 100.
        assert_eq!(rebalance(&inp(100, 0, 5, 5), &p), Rebalance::GrantToHub { units: 50 });
        // Within the deadband (10% of pool): hold.
        assert_eq!(rebalance(&inp(55, 45, 5, 5), &p), Rebalance::Hold);
        // Hub demand dried up: clamp to the 10% floor, ask back.
        assert_eq!(rebalance(&inp(20, 80, 0, 10), &p), Rebalance::AskHubBack { units: 70 });
        // Never grants more than the site holds, nor more than move_units_max or move_share_max_bp of the pool,
        // whichever is more.
        let cap = RebalancePolicy { move_units_max: 5, move_share_max_bp: 0, ..p };
        assert_eq!(rebalance(&inp(100, 0, 10, 0), &cap), Rebalance::GrantToHub { units: 5 });
        let share = RebalancePolicy { move_units_max: 5, ..p };
        assert_eq!(rebalance(&inp(100, 0, 10, 0), &share), Rebalance::GrantToHub { units: 10 });
        assert_eq!(rebalance(&inp(0, 0, 10, 0), &p), Rebalance::Hold);
        // A large pool: a tenth of it at once (the default), not move_units_max.
        assert_eq!(rebalance(&inp(1_000_000, 0, 0, 0), &p), Rebalance::GrantToHub { units: 100_000 });
        assert_eq!(rebalance(&inp(0, 1_000_000, 0, 10), &p), Rebalance::AskHubBack { units: 100_000 });
    }

    proptest! {
        /// Whatever the pool, the hub's share is reached (the policy holds) within `10,000 / move_share_max_bp`
        /// decisions and two more, each executed as the transfer it asks for; no decision moves more than its
        /// cap or more than the giver holds; with `move_share_max_bp` 0 every move stays within
        /// `move_units_max`.
        #[test]
        fn rebalancing_reaches_its_target_in_a_bounded_number_of_decisions(
            pool in 1u64..1_000_000_000_000,
            hub_part in 0u64..=10_000,
            hub_demand in 0u64..1_000_000,
            site_demand in 0u64..1_000_000,
            move_units_max in 1u64..100_000,
            move_share_max_bp in 0u32..=10_000,
            deadband_bp in 0u32..2_000,
        ) {
            let p = RebalancePolicy { move_units_max, move_share_max_bp, deadband_bp, ..RebalancePolicy::default() };
            let mut hub = u64::try_from(u128::from(pool) * u128::from(hub_part) / 10_000).unwrap();
            let mut site = pool - hub;
            let share_cap = (u128::from(pool) * u128::from(move_share_max_bp)).div_ceil(10_000);
            let cap = u128::from(move_units_max).max(share_cap);
            let bound = match move_share_max_bp {
                0 => usize::MAX,
                bp => 10_000usize.div_ceil(usize::try_from(bp).unwrap()) + 2,
            };
            let mut decisions = 0usize;
            loop {
                let input = RebalanceInput {
                    site_available: site,
                    hub_rights: hub,
                    hub_demand_recent: hub_demand,
                    site_demand_recent: site_demand,
                };
                match rebalance(&input, &p) {
                    Rebalance::Hold => break,
                    Rebalance::GrantToHub { units } => {
                        prop_assert!(units > 0 && units <= site && u128::from(units) <= cap, "{units} {input:?}");
                        site -= units;
                        hub += units;
                    }
                    Rebalance::AskHubBack { units } => {
                        prop_assert!(units > 0 && units <= hub && u128::from(units) <= cap, "{units} {input:?}");
                        hub -= units;
                        site += units;
                    }
                }
                decisions += 1;
                prop_assert_eq!(site + hub, pool);
                prop_assert!(decisions <= bound, "{decisions} decisions, bound {bound}: {site} / {hub}");
                if move_share_max_bp == 0 && decisions > 64 {
                    break;
                }
            }
        }
    }

    /// One step of the simulation.
    #[derive(Debug, Clone)]
    enum Op {
        Add(bool, u64),
        Consume(bool, u64),
        Transfer(bool, u64),
        Lease(u64, u64),
        Ack,
        Reclaim,
        Loss(u64),
        /// Deliver the sender's state to the other side (`true`: site → hub).
        Sync(bool),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<bool>(), 0u64..20).prop_map(|(s, n)| Op::Add(s, n)),
            4 => (any::<bool>(), 0u64..15).prop_map(|(s, n)| Op::Consume(s, n)),
            4 => (any::<bool>(), 0u64..15).prop_map(|(s, n)| Op::Transfer(s, n)),
            2 => (0u64..500, 0u64..10).prop_map(|(d, k)| Op::Lease(d, k)),
            2 => Just(Op::Ack),
            1 => Just(Op::Reclaim),
            1 => (0u64..10).prop_map(Op::Loss),
            5 => any::<bool>().prop_map(Op::Sync),
            2 => (0u64..200).prop_map(Op::Tick),
        ]
    }

    fn party(site: bool) -> Party {
        if site { S } else { H }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random interleavings of every operation at both replicas, with messages delivered late, out of
        /// order, duplicated or never (each sync ships a snapshot taken at some earlier step): on every replica
        /// and in every merge, consumed ≤ created and no replica holds negative rights; after exchanging
        /// states both replicas agree. The hub's clock lags by up to eight times the reclaim margin.
        #[test]
        fn never_promised_twice_and_converges(
            ops in proptest::collection::vec(op(), 0..120),
            skew_ms in 0u64..400,
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 120),
        ) {
            let margin_ms = 50;
            let mut site = C::new(sku());
            let mut hub = C::new(sku());
            // Snapshots each side has sent; a sync delivers an arbitrary earlier one.
            let mut sent_by_site = vec![site.clone()];
            let mut sent_by_hub = vec![hub.clone()];
            let mut now_ms = 0u64;
            for (k, op) in ops.iter().enumerate() {
                // The hub's clock lags the site's, often by more than the margin: safety must not depend on it.
                let hub_now = now_ms.saturating_sub(skew_ms);
                match *op {
                    Op::Add(s, n) => { let _ = if s { site.add(S, n) } else { hub.add(H, n) }; }
                    Op::Consume(s, n) => { let _ = if s { site.consume(S, n, now_ms) } else { hub.consume(H, n, hub_now) }; }
                    Op::Transfer(s, n) => {
                        let _ = if s { site.transfer(S, H, n, now_ms) } else { hub.transfer(H, S, n, hub_now) };
                    }
                    Op::Lease(d, k) => {
                        let until = now_ms + d;
                        let k = k.max(site.w.unacked_max[1]);
                        let _ = site.grant_lease(S, H, until.max(site.lease_until_ms(H)), k);
                    }
                    Op::Ack => site.acknowledge(S),
                    Op::Reclaim => { let _ = site.reclaim(S, H, now_ms, margin_ms); }
                    Op::Loss(n) => { let _ = site.record_loss(n); }
                    Op::Sync(to_hub) => {
                        let pick = picks[k % picks.len()];
                        if to_hub {
                            let snap = &sent_by_site[pick.index(sent_by_site.len())];
                            hub.merge(snap).unwrap();
                        } else {
                            let snap = &sent_by_hub[pick.index(sent_by_hub.len())];
                            site.merge(snap).unwrap();
                            site.acknowledge(S);
                        }
                    }
                    Op::Tick(d) => now_ms += d,
                }
                sent_by_site.push(site.clone());
                sent_by_hub.push(hub.clone());
                assert_safe(&site);
                assert_safe(&hub);
                let mut joined = site.clone();
                joined.merge(&hub).unwrap();
                assert_safe(&joined);
            }
            site.merge(&hub).unwrap();
            hub.merge(&site).unwrap();
            prop_assert_eq!(&site, &hub);
            assert_safe(&site);
        }

        /// Merge is commutative, associative and idempotent on states reached by real operations.
        #[test]
        fn merge_is_a_join(a in proptest::collection::vec(op(), 0..40), b in proptest::collection::vec(op(), 0..40)) {
            let run = |ops: &[Op]| {
                let mut c = C::new(sku());
                let _ = c.grant_lease(S, H, 10_000, 5);
                for op in ops {
                    let _ = match *op {
                        Op::Add(s, n) => c.add(party(s), n),
                        Op::Consume(s, n) => c.consume(party(s), n, 0),
                        Op::Transfer(s, n) => c.transfer(party(s), party(!s), n, 0),
                        _ => Ok(()),
                    };
                }
                c
            };
            let (x, y) = (run(&a), run(&b));
            let mut xy = x.clone();
            xy.merge(&y).unwrap();
            let mut yx = y.clone();
            yx.merge(&x).unwrap();
            prop_assert_eq!(&xy, &yx);
            let mut xyy = xy.clone();
            xyy.merge(&y).unwrap();
            prop_assert_eq!(&xyy, &xy);
        }
    }
}
