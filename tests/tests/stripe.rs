//! The Stripe-compatible payment provider (`kind = "stripe"`, `oms_hub::money::stripe`) against localstripe
//! on loopback: authorize, a partial capture (which releases the rest: one capture per PaymentIntent), the
//! next shipment's re-authorization and capture, refunds, a void, a decline, replays with the same key
//! answering once, and `retrieve` telling what happened (how the outbox settles an indeterminate call).
//!
//! Needs `OMS_LOCALSTRIPE_URL` (`bash .ci/localstripe cargo test -p oms-tests --test stripe`); skipped
//! without it, failing instead when `OMS_REQUIRE_LOCALSTRIPE` is set (CI).

use oms_hub::money::provider::{PaymentProvider, ProviderError, Settled};
use oms_hub::money::stripe::{StripeConfig, StripeProvider};

fn provider(url: &str, dir: &std::path::Path) -> StripeProvider {
    let key = dir.join("stripe.key");
    std::fs::write(&key, "sk_test_oms\n").unwrap();
    let cfg =
        StripeConfig { base_url: url.into(), secret_key_file: Some(key), timeout_ms: 10_000, ..Default::default() };
    StripeProvider::new(&cfg, 10_000).unwrap()
}

/// Keys unique per run: localstripe keeps its objects while it runs.
fn key(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), oms_service::now_ms())
}

#[test]
fn payment_intents_authorize_capture_once_reauthorize_refund_and_void_against_localstripe() {
    let Some(url) = oms_tests::localstripe("the stripe provider test") else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = provider(&url, dir.path());
    let settled = |r: &str| p.retrieve(r).unwrap();
    assert!(p.captures_once(), "the outbox must re-authorize after a capture");

    // Authorize the order's total: a PaymentIntent waiting for its capture.
    let a = p.authorize(&key("auth"), "pm_card_visa", 1_000, "EUR").unwrap();
    assert!(a.reference.starts_with("pi_") && a.amount_minor == 1_000, "{a:?}");
    assert_eq!(
        settled(&a.reference),
        Settled { authorized_minor: 1_000, captured_minor: 0, refunded_minor: 0, closed: false }
    );

    // Shipment 1: a partial capture. Stripe releases the rest: the PaymentIntent is closed.
    let cap1 = key("cap-1");
    let c = p.capture(&a.reference, 300, &cap1).unwrap();
    assert!(!c.replayed && c.amount_minor == 300);
    assert_eq!(
        settled(&a.reference),
        Settled { authorized_minor: 1_000, captured_minor: 300, refunded_minor: 0, closed: true },
        "retrieve tells a capture whose answer was lost"
    );
    // The same capture again (a hub restarted between the call and its commit): answered, not captured twice.
    let again = p.capture(&a.reference, 300, &cap1).unwrap();
    assert!(again.replayed, "{again:?}");
    assert_eq!(settled(&a.reference).captured_minor, 300, "captured once");
    // Shipment 2 on the same PaymentIntent: closed, so the outbox re-authorizes the rest and captures that.
    assert_eq!(
        p.capture(&a.reference, 700, &key("cap-2")).unwrap_err(),
        ProviderError::Declined("authorization_closed".into())
    );
    let re = p.authorize(&key("reauth"), "pm_card_visa", 700, "EUR").unwrap();
    assert_ne!(re.reference, a.reference);
    p.capture(&re.reference, 700, &key("cap-2b")).unwrap();
    assert_eq!(settled(&re.reference).captured_minor, 700);

    // A refund of part of shipment 1, replayed with its key: refunded once; more than captured is declined.
    let r1 = key("ref-1");
    let r = p.refund(&a.reference, 200, &r1).unwrap();
    assert!(!r.replayed && r.amount_minor == 200);
    assert!(p.refund(&a.reference, 200, &r1).unwrap().replayed, "the same refund again");
    let s = settled(&a.reference);
    assert_eq!((s.captured_minor, s.refunded_minor), (300, 200), "{s:?}");
    assert_eq!(
        p.refund(&a.reference, 101, &key("ref-2")).unwrap_err(),
        ProviderError::Declined("refund_exceeds_capture".into())
    );
    assert_eq!(settled(&a.reference).refunded_minor, 200, "a refused refund moved nothing");

    // A cancel before shipment voids; the void replayed answers; nothing can be captured after it.
    let v = p.authorize(&key("auth-v"), "pm_card_visa", 500, "EUR").unwrap();
    let vk = key("void");
    assert!(!p.void(&v.reference, &vk).unwrap().replayed);
    assert!(p.void(&v.reference, &vk).unwrap().replayed);
    assert_eq!(
        settled(&v.reference),
        Settled { authorized_minor: 500, captured_minor: 0, refunded_minor: 0, closed: true }
    );
    assert_eq!(
        p.capture(&v.reference, 100, &key("cap-v")).unwrap_err(),
        ProviderError::Declined("authorization_closed".into())
    );
    // Voiding a captured PaymentIntent releases nothing more and is not an error (the order's cancel after
    // a partial shipment).
    assert!(p.void(&re.reference, &key("void-2")).unwrap().replayed);

    // A card that declines when charged (localstripe: 4000000000000341): the provider's reason; an unknown
    // payment method or PaymentIntent is a decline too.
    assert_eq!(
        p.authorize(&key("auth-d"), "pm_card_chargeCustomerFail", 500, "EUR").unwrap_err(),
        ProviderError::Declined("card_declined".into())
    );
    assert_eq!(
        p.authorize(&key("auth-u"), "pm_doesnotexist", 500, "EUR").unwrap_err(),
        ProviderError::Declined("no_such_payment_method".into())
    );
    assert_eq!(p.retrieve("pi_doesnotexist").unwrap_err(), ProviderError::Declined("no_such_authorization".into()));
}
