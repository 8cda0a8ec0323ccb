//! Payment providers: the [`PaymentProvider`] trait and the providers the hub ships with.
//!
//! Every call is blocking (the hub calls providers from the payment outbox's thread and from
//! `spawn_blocking`) and carries an idempotency key: a provider answers a key it has seen with the answer
//! it gave the first time (`replayed: true`), never acting twice. The trait is object-safe; the hub holds
//! `Arc<dyn PaymentProvider>` by name (in [`super::Money`]).
//!
//! - [`ManualProvider`] (`manual`): terms and cash on delivery. Nothing leaves the hub: an authorization is a
//!   record, a capture means "invoiced and due", and staff or service record the money itself.
//! - [`TestProvider`] (`kind = "test"`): deterministic, in process, with faults chosen by the card token
//!   (see its docs) and delays chosen by configuration; with `state_file` its state survives the hub's death
//!   (written and fsynced before it answers), so a test can kill the hub between a call and its commit and
//!   see the restarted hub capture once.
//! - [`super::stripe::StripeProvider`] (`kind = "stripe"`): a Stripe-compatible HTTP API (PaymentIntents with
//!   manual capture), tested against localstripe.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oms_service::lock;
use serde::{Deserialize, Serialize};

/// Why a provider call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused (card declined, authorization expired, amount too large …), with its reason.
    #[error("declined: {0}")]
    Declined(String),
    /// No answer within the time budget: the call may or may not have taken effect.
    #[error("the provider did not answer in time")]
    Timeout,
    /// The provider failed (HTTP 5xx or a transport error) and says it did nothing.
    #[error("the provider failed: {0}")]
    Unavailable(String),
    /// Too many calls in flight ([`super::PaymentsConfig::in_flight_max`]); nothing was sent.
    #[error("too many payment calls in flight")]
    Busy,
}

/// An answer to an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The provider's reference of the authorization (a payment intent).
    pub reference: String,
    /// Minor units the operation was for.
    pub amount_minor: u64,
    /// The provider had seen this idempotency key and answered as the first time.
    pub replayed: bool,
}

/// What the provider knows of an authorization ([`PaymentProvider::retrieve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// Authorized, minor units.
    pub authorized_minor: u64,
    /// Captured so far.
    pub captured_minor: u64,
    /// Refunded so far.
    pub refunded_minor: u64,
    /// Voided (cancelled) or expired: nothing more can be captured.
    pub closed: bool,
}

/// A payment provider. Every mutating call takes an idempotency key and is safe to repeat with it.
pub trait PaymentProvider: Send + Sync {
    /// Authorizes `amount_minor` of `currency` on the payment method `token`.
    fn authorize(&self, key: &str, token: &str, amount_minor: u64, currency: &str) -> Result<Answer, ProviderError>;
    /// Captures `amount_minor` of authorization `reference`.
    fn capture(&self, reference: &str, amount_minor: u64, key: &str) -> Result<Answer, ProviderError>;
    /// Voids what is not captured of authorization `reference`.
    fn void(&self, reference: &str, key: &str) -> Result<Answer, ProviderError>;
    /// Refunds `amount_minor` of what was captured on `reference`.
    fn refund(&self, reference: &str, amount_minor: u64, key: &str) -> Result<Answer, ProviderError>;
    /// What the provider holds for `reference` now (how an indeterminate call is settled).
    fn retrieve(&self, reference: &str) -> Result<Settled, ProviderError>;
    /// Whether an authorization takes one capture only (the rest is released by it, as a Stripe
    /// PaymentIntent's): the outbox then closes it after its first capture and re-authorizes for the next.
    fn captures_once(&self) -> bool {
        false
    }
}

/// The `manual` provider: terms and cash on delivery. It records, it moves no money.
#[derive(Debug, Default)]
pub struct ManualProvider;

impl PaymentProvider for ManualProvider {
    fn authorize(&self, key: &str, _: &str, amount_minor: u64, _: &str) -> Result<Answer, ProviderError> {
        Ok(Answer { reference: format!("manual:{key}"), amount_minor, replayed: false })
    }
    fn capture(&self, reference: &str, amount_minor: u64, _: &str) -> Result<Answer, ProviderError> {
        Ok(Answer { reference: reference.to_owned(), amount_minor, replayed: false })
    }
    fn void(&self, reference: &str, _: &str) -> Result<Answer, ProviderError> {
        Ok(Answer { reference: reference.to_owned(), amount_minor: 0, replayed: false })
    }
    fn refund(&self, reference: &str, amount_minor: u64, _: &str) -> Result<Answer, ProviderError> {
        Ok(Answer { reference: reference.to_owned(), amount_minor, replayed: false })
    }
    fn retrieve(&self, _: &str) -> Result<Settled, ProviderError> {
        // Never indeterminate: every manual call answers at once.
        Err(ProviderError::Unavailable("the manual provider keeps no state".into()))
    }
}

/// Settings of a [`TestProvider`] (`[payments.providers.<name>]` with `kind = "test"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestProviderConfig {
    /// Where its state is kept (JSON, replaced durably before each answer); none: in memory only.
    pub state_file: Option<PathBuf>,
    /// Every answer comes this long after the operation took effect, ms.
    pub delay_ms: u64,
    /// Captures answer this long after they took effect, ms (on top of `delay_ms`): a kill can land between
    /// a capture and the hub's commit of it.
    pub capture_delay_ms: u64,
    /// Authorizations expire at the provider this long after they were made, ms (0: never).
    pub authorization_validity_ms: u64,
}

/// One authorization at the test provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TestAuth {
    token: String,
    amount_minor: u64,
    captured_minor: u64,
    refunded_minor: u64,
    voided: bool,
    at_ms: u64,
    /// Captures attempted (for the token's first-capture faults).
    capture_calls: u32,
    /// Voids attempted (for the token's first-void fault).
    #[serde(default)]
    void_calls: u32,
}

/// Everything the test provider remembers.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TestState {
    next: u64,
    auths: BTreeMap<String, TestAuth>,
    /// Idempotency key → the answer given (or the refusal's reason).
    answers: BTreeMap<String, Result<Answer, String>>,
    /// Successful operations by kind (`authorize`, `capture`, `void`, `refund`), for tests and the demo.
    counts: BTreeMap<String, u64>,
}

/// A deterministic fault-injecting provider for tests and the demo.
///
/// Faults follow from the card token, so each order picks its own:
/// - a token starting `tok_decline` is declined (the reason is the rest of the token after `tok_decline_`,
///   or `card_declined`);
/// - `tok_reauth_decline…` authorizes the first time and declines every later authorization (a
///   re-authorization after expiry);
/// - containing `capture_timeout`: the first capture takes effect and then times out (the answer is lost);
/// - containing `capture_500`: the first capture fails with a 500 and does nothing;
/// - containing `capture_dup`: the first capture takes effect and then fails with a 500 (the retry gets the
///   duplicate answer, `replayed`);
/// - containing `void_timeout`: the first void takes effect and then times out (the answer is lost);
/// - anything else succeeds.
///
/// Delays come from [`TestProviderConfig`]; an answer later than the call's time budget is a timeout (the
/// operation having taken effect).
pub struct TestProvider {
    cfg: TestProviderConfig,
    timeout_ms: u64,
    state: Mutex<TestState>,
    clock: fn() -> u64,
}

impl TestProvider {
    /// A test provider with `cfg`, answering within `timeout_ms` or timing out. Loads `state_file` if any.
    pub fn new(cfg: TestProviderConfig, timeout_ms: u64) -> Result<TestProvider, String> {
        let state = match &cfg.state_file {
            Some(p) if p.exists() => {
                let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))?
            }
            _ => TestState::default(),
        };
        Ok(TestProvider { cfg, timeout_ms, state: Mutex::new(state), clock: oms_service::now_ms })
    }

    /// Successful operations of `kind` so far (`authorize`, `capture`, `void`, `refund`).
    pub fn count(&self, kind: &str) -> u64 {
        lock(&self.state).counts.get(kind).copied().unwrap_or(0)
    }

    /// Reads the counts of a state file another process wrote (tests after a kill).
    pub fn counts_in(path: &std::path::Path) -> BTreeMap<String, u64> {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<TestState>(&b).ok())
            .map(|s| s.counts)
            .unwrap_or_default()
    }

    fn persist(&self, st: &TestState) -> Result<(), ProviderError> {
        let Some(path) = &self.cfg.state_file else { return Ok(()) };
        let bytes = serde_json::to_vec(st).map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| ProviderError::Unavailable(format!("state file: {e}")))
    }

    /// Runs `op` once per idempotency key: a key seen before gets its first answer, marked replayed.
    /// `op` returns the answer and whether it is to be lost (a 500 or a timeout after taking effect).
    fn once(
        &self,
        kind: &str,
        key: &str,
        extra_delay_ms: u64,
        op: impl FnOnce(&mut TestState, u64) -> Result<(Answer, Option<ProviderError>), ProviderError>,
    ) -> Result<Answer, ProviderError> {
        let (answer, lost) = {
            let mut st = lock(&self.state);
            if let Some(prev) = st.answers.get(key) {
                return match prev.clone() {
                    Ok(a) => Ok(Answer { replayed: true, ..a }),
                    Err(reason) => Err(ProviderError::Declined(reason)),
                };
            }
            let now = (self.clock)();
            match op(&mut st, now) {
                Ok((a, lost)) => {
                    st.answers.insert(key.to_owned(), Ok(a.clone()));
                    *st.counts.entry(kind.to_owned()).or_default() += 1;
                    self.persist(&st)?;
                    (a, lost)
                }
                Err(ProviderError::Declined(reason)) => {
                    st.answers.insert(key.to_owned(), Err(reason.clone()));
                    self.persist(&st)?;
                    return Err(ProviderError::Declined(reason));
                }
                Err(e) => return Err(e),
            }
        };
        let delay = self.cfg.delay_ms.saturating_add(extra_delay_ms);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay.min(self.timeout_ms)));
            if delay >= self.timeout_ms {
                return Err(ProviderError::Timeout);
            }
        }
        match lost {
            Some(e) => Err(e),
            None => Ok(answer),
        }
    }

    fn open_auth<'a>(
        &self,
        st: &'a mut TestState,
        reference: &str,
        now: u64,
    ) -> Result<&'a mut TestAuth, ProviderError> {
        let validity = self.cfg.authorization_validity_ms;
        let a = st.auths.get_mut(reference).ok_or_else(|| ProviderError::Declined("no_such_authorization".into()))?;
        if a.voided {
            return Err(ProviderError::Declined("authorization_voided".into()));
        }
        if validity > 0 && now.saturating_sub(a.at_ms) > validity {
            return Err(ProviderError::Declined("authorization_expired".into()));
        }
        Ok(a)
    }
}

impl PaymentProvider for TestProvider {
    fn authorize(&self, key: &str, token: &str, amount_minor: u64, _: &str) -> Result<Answer, ProviderError> {
        self.once("authorize", key, 0, |st, now| {
            if let Some(rest) = token.strip_prefix("tok_decline") {
                let reason = rest.strip_prefix('_').filter(|r| !r.is_empty()).unwrap_or("card_declined");
                return Err(ProviderError::Declined(reason.to_owned()));
            }
            if token.starts_with("tok_reauth_decline") && st.auths.values().any(|a| a.token == token) {
                return Err(ProviderError::Declined("card_declined".into()));
            }
            st.next += 1;
            let reference = format!("tpa_{}", st.next);
            let auth = TestAuth { token: token.to_owned(), amount_minor, at_ms: now, ..TestAuth::default() };
            st.auths.insert(reference.clone(), auth);
            Ok((Answer { reference, amount_minor, replayed: false }, None))
        })
    }

    fn capture(&self, reference: &str, amount_minor: u64, key: &str) -> Result<Answer, ProviderError> {
        self.once("capture", key, self.cfg.capture_delay_ms, |st, now| {
            let a = self.open_auth(st, reference, now)?;
            a.capture_calls += 1;
            let first = a.capture_calls == 1;
            if first && a.token.contains("capture_500") {
                return Err(ProviderError::Unavailable("HTTP 500 (injected)".into()));
            }
            if a.captured_minor.saturating_add(amount_minor) > a.amount_minor {
                return Err(ProviderError::Declined("amount_too_large".into()));
            }
            a.captured_minor += amount_minor;
            let lost = if first && a.token.contains("capture_timeout") {
                Some(ProviderError::Timeout)
            } else if first && a.token.contains("capture_dup") {
                Some(ProviderError::Unavailable("HTTP 500 after the capture (injected)".into()))
            } else {
                None
            };
            Ok((Answer { reference: reference.to_owned(), amount_minor, replayed: false }, lost))
        })
    }

    fn void(&self, reference: &str, key: &str) -> Result<Answer, ProviderError> {
        self.once("void", key, 0, |st, _| {
            let a =
                st.auths.get_mut(reference).ok_or_else(|| ProviderError::Declined("no_such_authorization".into()))?;
            a.voided = true;
            a.void_calls += 1;
            let rest = a.amount_minor.saturating_sub(a.captured_minor);
            let lost = (a.void_calls == 1 && a.token.contains("void_timeout")).then_some(ProviderError::Timeout);
            Ok((Answer { reference: reference.to_owned(), amount_minor: rest, replayed: false }, lost))
        })
    }

    fn refund(&self, reference: &str, amount_minor: u64, key: &str) -> Result<Answer, ProviderError> {
        self.once("refund", key, 0, |st, _| {
            let a =
                st.auths.get_mut(reference).ok_or_else(|| ProviderError::Declined("no_such_authorization".into()))?;
            if a.refunded_minor.saturating_add(amount_minor) > a.captured_minor {
                return Err(ProviderError::Declined("refund_exceeds_capture".into()));
            }
            a.refunded_minor += amount_minor;
            Ok((Answer { reference: reference.to_owned(), amount_minor, replayed: false }, None))
        })
    }

    fn retrieve(&self, reference: &str) -> Result<Settled, ProviderError> {
        let st = lock(&self.state);
        let a = st.auths.get(reference).ok_or_else(|| ProviderError::Declined("no_such_authorization".into()))?;
        let expired = self.cfg.authorization_validity_ms > 0
            && (self.clock)().saturating_sub(a.at_ms) > self.cfg.authorization_validity_ms;
        Ok(Settled {
            authorized_minor: a.amount_minor,
            captured_minor: a.captured_minor,
            refunded_minor: a.refunded_minor,
            closed: a.voided || expired,
        })
    }
}

/// A provider behind a bound on calls in flight ([`super::PaymentsConfig::in_flight_max`]).
pub struct Bounded {
    inner: Arc<dyn PaymentProvider>,
    in_flight: AtomicUsize,
    max: usize,
}

struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bounded {
    /// `inner` with at most `max` calls at once.
    pub fn new(inner: Arc<dyn PaymentProvider>, max: usize) -> Bounded {
        Bounded { inner, in_flight: AtomicUsize::new(0), max: max.max(1) }
    }

    fn slot(&self) -> Result<Slot<'_>, ProviderError> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ProviderError::Busy);
        }
        Ok(Slot(&self.in_flight))
    }
}

impl PaymentProvider for Bounded {
    fn authorize(&self, key: &str, token: &str, amount_minor: u64, currency: &str) -> Result<Answer, ProviderError> {
        let _s = self.slot()?;
        self.inner.authorize(key, token, amount_minor, currency)
    }
    fn capture(&self, reference: &str, amount_minor: u64, key: &str) -> Result<Answer, ProviderError> {
        let _s = self.slot()?;
        self.inner.capture(reference, amount_minor, key)
    }
    fn void(&self, reference: &str, key: &str) -> Result<Answer, ProviderError> {
        let _s = self.slot()?;
        self.inner.void(reference, key)
    }
    fn refund(&self, reference: &str, amount_minor: u64, key: &str) -> Result<Answer, ProviderError> {
        let _s = self.slot()?;
        self.inner.refund(reference, amount_minor, key)
    }
    fn retrieve(&self, reference: &str) -> Result<Settled, ProviderError> {
        let _s = self.slot()?;
        self.inner.retrieve(reference)
    }
    fn captures_once(&self) -> bool {
        self.inner.captures_once()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> TestProvider {
        TestProvider::new(TestProviderConfig::default(), 1_000).unwrap()
    }

    #[test]
    fn keys_are_answered_once_and_faults_follow_the_token() {
        let p = provider();
        let a = p.authorize("k1", "tok_ok", 500, "EUR").unwrap();
        let again = p.authorize("k1", "tok_ok", 500, "EUR").unwrap();
        assert_eq!((again.reference.as_str(), again.replayed), (a.reference.as_str(), true));
        assert_eq!(p.count("authorize"), 1);
        assert_eq!(
            p.authorize("k2", "tok_decline_insufficient_funds", 5, "EUR").unwrap_err(),
            ProviderError::Declined("insufficient_funds".into())
        );
        assert_eq!(p.capture(&a.reference, 600, "c0").unwrap_err(), ProviderError::Declined("amount_too_large".into()));
        p.capture(&a.reference, 200, "c1").unwrap();
        assert!(p.capture(&a.reference, 200, "c1").unwrap().replayed);
        assert_eq!(p.retrieve(&a.reference).unwrap().captured_minor, 200);
        p.refund(&a.reference, 200, "r1").unwrap();
        assert!(p.refund(&a.reference, 1, "r2").is_err());

        let t = p.authorize("k3", "tok_capture_timeout", 100, "EUR").unwrap();
        assert_eq!(p.capture(&t.reference, 100, "c3").unwrap_err(), ProviderError::Timeout);
        assert_eq!(p.retrieve(&t.reference).unwrap().captured_minor, 100, "took effect");
        let f = p.authorize("k4", "tok_capture_500", 100, "EUR").unwrap();
        assert!(matches!(p.capture(&f.reference, 100, "c4"), Err(ProviderError::Unavailable(_))));
        assert_eq!(p.retrieve(&f.reference).unwrap().captured_minor, 0, "did nothing");
        let d = p.authorize("k5", "tok_capture_dup", 100, "EUR").unwrap();
        assert!(matches!(p.capture(&d.reference, 100, "c5"), Err(ProviderError::Unavailable(_))));
        assert!(p.capture(&d.reference, 100, "c5").unwrap().replayed);
        assert_eq!(p.retrieve(&d.reference).unwrap().captured_minor, 100);
        p.authorize("k6", "tok_reauth_decline", 100, "EUR").unwrap();
        assert!(p.authorize("k7", "tok_reauth_decline", 100, "EUR").is_err());
    }

    #[test]
    fn the_state_file_survives_and_delays_past_the_budget_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TestProviderConfig {
            state_file: Some(dir.path().join("p.json")),
            capture_delay_ms: 50,
            ..TestProviderConfig::default()
        };
        let p = TestProvider::new(cfg.clone(), 20).unwrap();
        let a = p.authorize("k", "tok_ok", 100, "EUR").unwrap();
        assert_eq!(p.capture(&a.reference, 100, "c").unwrap_err(), ProviderError::Timeout);
        drop(p);
        let p = TestProvider::new(cfg, 1_000).unwrap();
        assert!(p.capture(&a.reference, 100, "c").unwrap().replayed);
        assert_eq!(p.count("capture"), 1);
        assert_eq!(TestProvider::counts_in(&dir.path().join("p.json"))["capture"], 1);
    }

    #[test]
    fn bounded_refuses_past_its_calls_in_flight() {
        let b = Bounded::new(Arc::new(provider()), 1);
        let _held = b.slot().unwrap();
        assert_eq!(b.authorize("k", "tok", 1, "EUR").unwrap_err(), ProviderError::Busy);
    }
}
