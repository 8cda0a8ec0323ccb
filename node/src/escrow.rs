//! The site's half of escrowed stock: how every ledger movement changes the bounded counter of rights
//! ([`oms_protocol::escrow`]) that the site shares with the hub, and the site's lease and rebalancing duties.
//!
//! The counter tracks *available* units (on hand − reserved). Each movement's change of available becomes
//! a change of rights, chosen by whose promise the movement serves ([`Rights`]):
//!
//! | movement                                   | available | rights                                          |
//! |--------------------------------------------|-----------|-------------------------------------------------|
//! | receipt, count/adjustment up, restock      | +n        | site: `add(site, n)`                            |
//! | local order reserves                       | −n        | site: `consume(site, n)` (checked first)        |
//! | count/adjustment down (loss)               | −n        | site: `consume(site, n)` (checked first)        |
//! | release/putaway of a local order           | +n        | site: `add(site, n)`                            |
//! | hub assignment accepted (reserve)          | −n        | hub: none — the hub consumed when it assigned   |
//! | hub order cancelled, rejected, short-picked| +n        | hub: `add(site, n)` + `transfer(site → hub, n)` |
//!
//! So, with `P` the units the hub has assigned that this site has not reserved yet, `available − P` equals
//! the counter's `total` in every state, and since no merge can make `total` negative (the counter's
//! safety property), an assignment the hub made within its rights always finds its units here. The site's
//! own channel sells only `local(site)`; [`check_site_invariant`] asserts after every movement that
//! `local(site) ≤ available`.
//!
//! Lease and budget (see the protocol module): while the hub is reachable the site keeps the hub's lease
//! at least half a lease ahead, acknowledges the hub's spending it has seen, and grants rights by the
//! rebalancing policy; when the hub has been away past the lease and a margin, the site reclaims what it
//! sees the hub holding less the unacknowledged budget.

use oms_protocol::domain::{Balance, Sku};
use oms_protocol::escrow::{EscrowCounter, Party, Rebalance, RebalanceInput, RebalancePolicy, rebalance};
use serde::{Deserialize, Serialize};

/// Whose promise a movement serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    /// The site's own channel (local orders, receipts, counts).
    Site,
    /// A hub assignment: its reservation was paid for by the hub's consumption, and units it gives back
    /// return to the hub.
    Hub,
}

/// The site's escrow settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscrowPolicy {
    /// How long a lease granted to the hub runs, ms.
    pub lease_ms: u64,
    /// Wait after the lease's end before reclaiming, ms (covers clock skew between site and hub).
    pub margin_ms: u64,
    /// Units per SKU the hub may spend without the site's acknowledgement (also what stays with the hub
    /// after a reclaim until it is heard from again).
    pub unacked_max: u64,
    /// Who gets how many rights.
    pub rebalance: RebalancePolicy,
}

impl Default for EscrowPolicy {
    fn default() -> Self {
        Self { lease_ms: 60_000, margin_ms: 10_000, unacked_max: 50, rebalance: RebalancePolicy::default() }
    }
}

/// The escrow bookkeeping went wrong: a caller skipped a check, or stored state is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("escrow for {sku}: {detail}")]
pub struct EscrowFault {
    /// The SKU.
    pub sku: Sku,
    /// What went wrong.
    pub detail: String,
}

fn fault(sku: &Sku, detail: impl ToString) -> EscrowFault {
    EscrowFault { sku: sku.clone(), detail: detail.to_string() }
}

/// A counter for a SKU seen for the first time: the site holds the rights to everything available.
pub fn fresh(sku: &Sku, balance: &Balance) -> Result<EscrowCounter, EscrowFault> {
    let mut c = EscrowCounter::new(sku.clone());
    c.add(Party::Site, balance.available()).map_err(|e| fault(sku, e))?;
    Ok(c)
}

/// Applies one movement's change of available units (`before` → `after`) to the rights.
pub fn on_movement(
    c: &mut EscrowCounter,
    before: &Balance,
    after: &Balance,
    rights: Rights,
    now_ms: u64,
) -> Result<(), EscrowFault> {
    let sku = c.sku().clone();
    let (b, a) = (before.available(), after.available());
    if a > b {
        let n = a - b;
        c.add(Party::Site, n).map_err(|e| fault(&sku, e))?;
        if rights == Rights::Hub {
            c.transfer(Party::Site, Party::Hub, n, now_ms).map_err(|e| fault(&sku, e))?;
        }
    } else if b > a && rights == Rights::Site {
        c.consume(Party::Site, b - a, now_ms).map_err(|e| fault(&sku, e))?;
    }
    check_site_invariant(c, after)
}

/// The site never holds rights to more than it has available.
pub fn check_site_invariant(c: &EscrowCounter, balance: &Balance) -> Result<(), EscrowFault> {
    let site = c.local(Party::Site);
    if site > balance.available() {
        return Err(fault(
            c.sku(),
            format!("the site holds rights to {site} units but only {} are available", balance.available()),
        ));
    }
    Ok(())
}

/// What [`maintain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// The lease was extended.
    pub lease_renewed: bool,
    /// Units granted to the hub.
    pub granted: u64,
    /// Units reclaimed from an expired lease.
    pub reclaimed: u64,
    /// The hub's spending was acknowledged further.
    pub acknowledged: bool,
}

impl Maintenance {
    /// Whether the counter changed.
    pub fn changed(&self) -> bool {
        self.lease_renewed || self.granted > 0 || self.reclaimed > 0 || self.acknowledged
    }
}

/// The site's periodic duties for one SKU. `hub_reachable`: the hub was heard from recently.
pub fn maintain(
    c: &mut EscrowCounter,
    policy: &EscrowPolicy,
    hub_reachable: bool,
    now_ms: u64,
) -> Result<Maintenance, EscrowFault> {
    let sku = c.sku().clone();
    let mut m = Maintenance::default();
    if hub_reachable {
        let acked_before = c.clone();
        c.acknowledge(Party::Site);
        m.acknowledged = &acked_before != c;
        let until = c.lease_until_ms(Party::Hub);
        if until < now_ms.saturating_add(policy.lease_ms / 2) {
            let budget = policy.unacked_max.max(c.unacked_max(Party::Hub));
            c.grant_lease(Party::Site, Party::Hub, now_ms.saturating_add(policy.lease_ms), budget)
                .map_err(|e| fault(&sku, e))?;
            m.lease_renewed = true;
        }
        let input = RebalanceInput {
            site_available: c.local(Party::Site),
            hub_rights: c.local(Party::Hub),
            hub_demand_recent: c.consumed(Party::Hub),
            site_demand_recent: c.consumed(Party::Site),
        };
        if let Rebalance::GrantToHub { units } = rebalance(&input, &policy.rebalance) {
            c.transfer(Party::Site, Party::Hub, units, now_ms).map_err(|e| fault(&sku, e))?;
            m.granted = units;
        }
    } else {
        let until = c.lease_until_ms(Party::Hub);
        let held = c.local(Party::Hub);
        if until > 0
            && now_ms >= until.saturating_add(policy.margin_ms)
            && held > c.unacked_max(Party::Hub)
            && let Ok(q) = c.reclaim(Party::Site, Party::Hub, now_ms, policy.margin_ms)
        {
            m.reclaimed = q;
        }
    }
    Ok(m)
}

/// Escrow figures of one SKU as the site's API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EscrowFigures {
    /// Units the site's own channel may still promise.
    pub site_rights: u64,
    /// Units the hub may still promise here, as far as the site has seen.
    pub hub_rights: u64,
    /// Units the hub has assigned here in all.
    pub hub_consumed: u64,
    /// The hub's lease ends (ms since the Unix epoch); 0 if never granted.
    pub hub_lease_until_ms: u64,
}

/// The figures of `c`.
pub fn figures(c: &EscrowCounter) -> EscrowFigures {
    EscrowFigures {
        site_rights: c.local(Party::Site),
        hub_rights: c.local(Party::Hub),
        hub_consumed: c.consumed(Party::Hub),
        hub_lease_until_ms: c.lease_until_ms(Party::Hub),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_protocol::domain::{Movement, OrderId};

    fn sku() -> Sku {
        Sku::parse("A").unwrap()
    }

    #[test]
    fn movements_move_rights_and_the_site_never_holds_more_than_available() {
        let mut b = Balance { on_hand: 10, reserved: 0, staged: 0 };
        let mut c = fresh(&sku(), &b).unwrap();
        assert_eq!(c.local(Party::Site), 10);
        let policy = EscrowPolicy::default();
        let m = maintain(&mut c, &policy, true, 1_000).unwrap();
        assert!(m.lease_renewed && m.granted > 0, "{m:?}");
        let hub = c.local(Party::Hub);
        assert_eq!(c.local(Party::Site) + hub, 10);

        // A local order reserves from the site's share.
        let order = OrderId::parse("wh-1").unwrap();
        let a = b.apply(&Movement::Reserve { qty: 2, order: order.clone() }).unwrap();
        on_movement(&mut c, &b, &a, Rights::Site, 1_001).unwrap();
        b = a;
        assert_eq!(c.local(Party::Site) + hub, 8);

        // A hub assignment: the hub consumed first; accepting it does not touch the site's share.
        let mut hub_view = c.clone();
        hub_view.consume(Party::Hub, 3, 1_002).unwrap();
        c.merge(&hub_view).unwrap();
        let site_before = c.local(Party::Site);
        let a = b.apply(&Movement::Reserve { qty: 3, order: order.clone() }).unwrap();
        on_movement(&mut c, &b, &a, Rights::Hub, 1_003).unwrap();
        b = a;
        assert_eq!(c.local(Party::Site), site_before);

        // The hub order is cancelled: the units go back to the hub.
        let hub_before = c.local(Party::Hub);
        let a = b.apply(&Movement::Release { qty: 3, order }).unwrap();
        on_movement(&mut c, &b, &a, Rights::Hub, 1_004).unwrap();
        assert_eq!(c.local(Party::Hub), hub_before + 3);
        assert_eq!(c.local(Party::Site), site_before);
        check_site_invariant(&c, &a).unwrap();
    }

    #[test]
    fn a_site_consumption_beyond_its_rights_is_a_fault_not_a_negative() {
        let b = Balance { on_hand: 4, reserved: 0, staged: 0 };
        let mut c = fresh(&sku(), &b).unwrap();
        c.transfer(Party::Site, Party::Hub, 3, 0).unwrap();
        let a = b.apply(&Movement::Adjustment { delta: -2, reason: "damaged".into() }).unwrap();
        assert!(on_movement(&mut c, &b, &a, Rights::Site, 0).is_err());
    }

    #[test]
    fn reclaim_after_lease_keeps_the_budget_at_the_hub() {
        let b = Balance { on_hand: 100, reserved: 0, staged: 0 };
        let mut c = fresh(&sku(), &b).unwrap();
        let policy = EscrowPolicy { unacked_max: 5, ..EscrowPolicy::default() };
        maintain(&mut c, &policy, true, 0).unwrap();
        let hub = c.local(Party::Hub);
        assert!(hub > 5);
        // Not yet: lease still running.
        assert_eq!(maintain(&mut c, &policy, false, 1_000).unwrap().reclaimed, 0);
        let late = policy.lease_ms + policy.margin_ms + 1;
        let m = maintain(&mut c, &policy, false, late).unwrap();
        assert_eq!(m.reclaimed, hub - 5);
        assert_eq!(c.local(Party::Hub), 5);
        check_site_invariant(&c, &b).unwrap();
    }
}
