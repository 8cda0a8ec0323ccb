//! The Stripe-compatible HTTP provider (`kind = "stripe"`): PaymentIntents with manual capture.
//!
//! | trait call | HTTP |
//! | --- | --- |
//! | `authorize` | `POST /v1/payment_intents` (`capture_method=manual`, `confirm=true`, the token as `payment_method`) |
//! | `capture` | `POST /v1/payment_intents/{id}/capture` with `amount_to_capture` |
//! | `void` | `POST /v1/payment_intents/{id}/cancel` |
//! | `refund` | `POST /v1/refunds` (`payment_intent`, `amount`) |
//! | `retrieve` | `GET /v1/payment_intents/{id}` and `GET /v1/refunds?payment_intent={id}` |
//!
//! Every `POST` carries the trait's key as `Idempotency-Key` (and as `metadata[oms_key]`), so Stripe answers
//! a repeated call with its first answer for 24 hours. The token is a PaymentMethod id (`pm_…`), or
//! `cus_…:pm_…` for a PaymentMethod saved on a Customer: with Stripe itself only a saved one can be charged
//! again, which a re-authorization does.
//!
//! **One capture per PaymentIntent.** Stripe captures a PaymentIntent once; a partial capture releases the
//! rest. The hub captures per shipment, so the provider says so ([`PaymentProvider::captures_once`]): the
//! outbox closes an authorization after its first capture, and the next shipment's capture finds no open
//! authorization and re-authorizes what is left of the order (a new PaymentIntent for the rest, on the
//! order's token), as it does for an expired one; a decline there leaves the order
//! `payment_action_required`. So an order shipped in one piece costs one PaymentIntent, an order shipped in n
//! pieces n of them (each captured once, all on the same card). Multicapture (`final_capture=false`) would
//! save the re-authorizations but is not offered on every account, and localstripe does not have it.
//!
//! **Answers the outbox can rely on.**
//! - `402` (a card error) is a decline with the provider's `decline_code` or `code`.
//! - A `5xx`, a timeout after the request left, an answer larger than [`RESPONSE_BYTES_MAX`] or one that does
//!   not decode is [`ProviderError::Timeout`]: Stripe documents a `500` as indeterminate (it may have taken
//!   effect, and replays with the same key answer the same `500`), so the outbox settles it with `retrieve`.
//! - A connection that never opened, `409` (the same key in flight) and `429` (rate limited) are
//!   [`ProviderError::Unavailable`]: nothing was done, the outbox calls again with the same key. So are
//!   `401`/`403`: a wrong secret key is the operator's to fix, not the card's.
//! - A capture first retrieves its PaymentIntent (and again after a refusal): one no longer capturable that
//!   was captured for exactly the amount asked is the same capture again (captures are one per
//!   PaymentIntent) and answers `replayed`; otherwise it is `authorization_closed`, and the outbox
//!   re-authorizes.
//!   A void of a PaymentIntent already cancelled or captured answers `replayed` (nothing is left to release).
//!   A refund first looks for a refund of the PaymentIntent carrying its key (and refuses more than what is
//!   captured and not refunded, `refund_exceeds_capture`, which localstripe would allow). These three make capture, void
//!   and refund safe to repeat even against a server that ignores `Idempotency-Key` (localstripe does), which
//!   is what a hub killed between a call and its commit does after its restart. An authorization has no
//!   such check (no PaymentIntent id is known before the answer): it relies on `Idempotency-Key`.
//!
//! The secret key is read once at start from `secret_key_file` or the environment variable `secret_key_env`
//! (never from the configuration file itself). Calls are blocking (`reqwest::blocking`): the hub makes them
//! from the outbox's `spawn_blocking` pass and from the intake's `spawn_blocking`, never on an async worker;
//! the client is built on a thread of its own, so building it from async code is safe too.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::provider::{Answer, PaymentProvider, ProviderError, Settled};

/// Largest answer read from the provider, bytes; a larger one is indeterminate.
pub const RESPONSE_BYTES_MAX: u64 = 256 * 1024;
/// Refunds of one PaymentIntent looked at to find one by its key (or to add them up).
pub const REFUNDS_LISTED_MAX: usize = 100;
/// The API version asked for (`amount_received`, `latest_charge`).
pub const STRIPE_VERSION: &str = "2024-06-20";
/// Longest secret key, bytes.
const SECRET_BYTES_MAX: usize = 512;

/// Settings of a Stripe-compatible provider (`[payments.providers.<name>]` with `kind = "stripe"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeConfig {
    /// Where the API is (`https://api.stripe.com`; a localstripe on loopback in tests).
    pub base_url: String,
    /// A file holding the secret key (`sk_…`), e.g. mounted from a secret store.
    pub secret_key_file: Option<PathBuf>,
    /// Or the name of an environment variable holding it.
    pub secret_key_env: Option<String>,
    /// Time budget of one HTTP call, ms (0: `[payments] call_timeout_ms`).
    pub timeout_ms: u64,
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            base_url: "https://api.stripe.com".into(),
            secret_key_file: None,
            secret_key_env: None,
            timeout_ms: 0,
        }
    }
}

impl StripeConfig {
    /// Why the settings are unusable, if they are (the key itself is read by [`StripeProvider::new`]).
    pub fn check(&self) -> Result<(), String> {
        let u = url::Url::parse(&self.base_url).map_err(|e| format!("base_url {:?}: {e}", self.base_url))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() || u.query().is_some() {
            return Err(format!("base_url must be an http(s) URL without a query, not {:?}", self.base_url));
        }
        if self.secret_key_file.is_some() == self.secret_key_env.is_some() {
            return Err("exactly one of secret_key_file and secret_key_env is needed".into());
        }
        if self.timeout_ms > 300_000 {
            return Err(format!("timeout_ms must be 0 ..= 300000, not {}", self.timeout_ms));
        }
        Ok(())
    }

    fn secret(&self) -> Result<String, String> {
        let raw = match (&self.secret_key_file, &self.secret_key_env) {
            (Some(f), _) => std::fs::read_to_string(f).map_err(|e| format!("secret_key_file {}: {e}", f.display()))?,
            (None, Some(v)) => std::env::var(v).map_err(|_| format!("secret_key_env: ${v} is not set"))?,
            (None, None) => return Err("no secret key configured".into()),
        };
        let key = raw.trim().to_owned();
        if key.is_empty() || key.len() > SECRET_BYTES_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("the secret key must be 1 to {SECRET_BYTES_MAX} visible ASCII characters"));
        }
        Ok(key)
    }
}

/// A Stripe-compatible provider over HTTP (see the module docs).
pub struct StripeProvider {
    base: String,
    secret: String,
    client: reqwest::blocking::Client,
}

impl std::fmt::Debug for StripeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeProvider").field("base", &self.base).finish_non_exhaustive()
    }
}

/// What one HTTP exchange gave.
enum Reply {
    /// 2xx with its JSON.
    Ok(Value),
    /// 4xx other than the ones mapped on their own: status and the `error` object.
    Refused(u16, Value),
}

impl StripeProvider {
    /// A provider with `cfg` (checked), its calls bounded by `cfg.timeout_ms` or else `default_timeout_ms`.
    pub fn new(cfg: &StripeConfig, default_timeout_ms: u64) -> Result<StripeProvider, String> {
        cfg.check()?;
        let secret = cfg.secret()?;
        let timeout =
            Duration::from_millis(if cfg.timeout_ms > 0 { cfg.timeout_ms } else { default_timeout_ms }.max(1));
        let builder = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("oms-hub/", env!("CARGO_PKG_VERSION")));
        // reqwest's blocking client runs a runtime of its own; built on a plain thread it never meets the
        // caller's (the hub builds its providers from async code).
        let client = std::thread::spawn(move || builder.build())
            .join()
            .map_err(|_| "the HTTP client could not be built".to_owned())?
            .map_err(|e| format!("the HTTP client could not be built: {e}"))?;
        Ok(StripeProvider { base: cfg.base_url.trim_end_matches('/').to_owned(), secret, client })
    }

    /// One call: `POST` with a form (and the idempotency key) or `GET` with a query.
    fn call(&self, post: Option<(&[(String, String)], &str)>, path: &str) -> Result<Reply, ProviderError> {
        let url = format!("{}{path}", self.base);
        let req = match post {
            Some((form, key)) => self.client.post(&url).form(form).header("Idempotency-Key", key),
            None => self.client.get(&url),
        }
        .bearer_auth(&self.secret)
        .header("Stripe-Version", STRIPE_VERSION);
        let resp = req.send().map_err(|e| {
            if e.is_connect() {
                // The connection never opened: nothing was sent.
                ProviderError::Unavailable(format!("cannot connect: {e}"))
            } else {
                ProviderError::Timeout
            }
        })?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        // A body cut off or too large: the call may have taken effect, so it is indeterminate.
        resp.take(RESPONSE_BYTES_MAX + 1).read_to_end(&mut body).map_err(|_| ProviderError::Timeout)?;
        if body.len() as u64 > RESPONSE_BYTES_MAX {
            tracing::warn!(path, bytes = body.len(), "payment provider answer too large; indeterminate");
            return Err(ProviderError::Timeout);
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let error = || json.as_ref().and_then(|j| j.get("error")).cloned().unwrap_or(Value::Null);
        match status {
            200..=299 => json.map(Reply::Ok).ok_or(ProviderError::Timeout),
            402 => Err(ProviderError::Declined(reason(&error(), "card_declined"))),
            401 | 403 | 409 | 429 => {
                Err(ProviderError::Unavailable(format!("HTTP {status}: {}", reason(&error(), "refused"))))
            }
            404 => Err(ProviderError::Declined("no_such_authorization".into())),
            400..=499 => Ok(Reply::Refused(status, error())),
            _ => {
                tracing::warn!(path, status, "payment provider failed; indeterminate until retrieved");
                Err(ProviderError::Timeout)
            }
        }
    }

    fn post(&self, path: &str, form: &[(String, String)], key: &str) -> Result<Reply, ProviderError> {
        self.call(Some((form, key)), path)
    }

    /// The PaymentIntent `id`.
    fn intent(&self, id: &str) -> Result<Value, ProviderError> {
        check_id(id)?;
        match self.call(None, &format!("/v1/payment_intents/{id}"))? {
            Reply::Ok(v) => Ok(v),
            Reply::Refused(s, e) => Err(ProviderError::Declined(format!("HTTP {s}: {}", reason(&e, "refused")))),
        }
    }

    /// What PaymentIntent `id` holds, and its refunds (listed once it was captured).
    fn settled(&self, id: &str) -> Result<(Settled, Vec<Value>), ProviderError> {
        let pi = self.intent(id)?;
        let status = str_of(&pi, "status");
        let amount = u64_of(&pi, "amount").unwrap_or(0);
        let refunds = if status == "succeeded" { self.refunds(id)? } else { Vec::new() };
        let refunded_minor = refunds.iter().filter(|r| ours(r).is_some()).filter_map(|r| u64_of(r, "amount")).sum();
        let captured_minor = match status {
            "succeeded" => u64_of(&pi, "amount_received").unwrap_or_else(|| {
                // Servers without `amount_received` (localstripe) record the released remainder of a
                // partial capture as a refund the hub did not ask for.
                let released: u64 =
                    refunds.iter().filter(|r| ours(r).is_none()).filter_map(|r| u64_of(r, "amount")).sum();
                amount.saturating_sub(released)
            }),
            _ => 0,
        };
        let settled = Settled {
            authorized_minor: amount,
            captured_minor,
            refunded_minor,
            closed: matches!(status, "succeeded" | "canceled"),
        };
        Ok((settled, refunds))
    }

    /// The refunds of PaymentIntent `id` (at most [`REFUNDS_LISTED_MAX`]).
    fn refunds(&self, id: &str) -> Result<Vec<Value>, ProviderError> {
        let path = format!("/v1/refunds?payment_intent={id}&limit={REFUNDS_LISTED_MAX}");
        match self.call(None, &path)? {
            Reply::Ok(v) => Ok(v.get("data").and_then(Value::as_array).cloned().unwrap_or_default()),
            Reply::Refused(s, e) => Err(ProviderError::Declined(format!("HTTP {s}: {}", reason(&e, "refused")))),
        }
    }
}

fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The provider's reason in an `error` object: `decline_code`, else `code`, else `message`.
fn reason(error: &Value, fallback: &str) -> String {
    ["decline_code", "code", "message"]
        .iter()
        .find_map(|k| error.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()))
        .unwrap_or(fallback)
        .chars()
        .take(200)
        .collect()
}

/// A PaymentIntent id goes into a path: letters, digits and `_` only.
fn check_id(id: &str) -> Result<(), ProviderError> {
    if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ProviderError::Declined("no_such_authorization".into()));
    }
    Ok(())
}

fn u64_of(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// Whether a refund carries the hub's key (refunds the hub asked for; a partial capture's released
/// remainder shows as a refund without it at some Stripe-compatible servers).
fn ours(refund: &Value) -> Option<&str> {
    refund.get("metadata").and_then(|m| m.get("oms_key")).and_then(Value::as_str)
}

impl PaymentProvider for StripeProvider {
    fn authorize(&self, key: &str, token: &str, amount_minor: u64, currency: &str) -> Result<Answer, ProviderError> {
        let (customer, method) = match token.split_once(':') {
            Some((c, m)) => (Some(c), m),
            None => (None, token),
        };
        let amount = amount_minor.to_string();
        let currency = currency.to_ascii_lowercase();
        let mut f = form(&[
            ("amount", &amount),
            ("currency", &currency),
            ("capture_method", "manual"),
            ("confirm", "true"),
            ("payment_method", method),
            ("payment_method_types[]", "card"),
            ("metadata[oms_key]", key),
        ]);
        if let Some(c) = customer {
            f.push(("customer".into(), c.to_owned()));
        }
        let pi = match self.post("/v1/payment_intents", &f, key) {
            Err(ProviderError::Declined(r)) if r == "no_such_authorization" => {
                return Err(ProviderError::Declined("no_such_payment_method".into()));
            }
            r => r?,
        };
        let pi = match pi {
            Reply::Ok(v) => v,
            Reply::Refused(_, e) => return Err(ProviderError::Declined(reason(&e, "invalid_request"))),
        };
        let id = str_of(&pi, "id");
        match str_of(&pi, "status") {
            "requires_capture" if !id.is_empty() => Ok(Answer {
                reference: id.to_owned(),
                amount_minor: u64_of(&pi, "amount").unwrap_or(amount_minor),
                replayed: false,
            }),
            // 3-D Secure or another customer action: not possible at the hub; release it and decline.
            "requires_action" | "requires_payment_method" => {
                if check_id(id).is_ok() {
                    let _ = self.post(&format!("/v1/payment_intents/{id}/cancel"), &[], &format!("{key}-cancel"));
                }
                Err(ProviderError::Declined("authentication_required".into()))
            }
            other => Err(ProviderError::Declined(format!("unexpected_status_{other}"))),
        }
    }

    fn capture(&self, reference: &str, amount_minor: u64, key: &str) -> Result<Answer, ProviderError> {
        // Captured or cancelled already: the same capture again (one per PaymentIntent, so the same amount
        // is this one), or a closed authorization. Asked first, so a server that would capture a cancelled
        // PaymentIntent (localstripe does) never gets the chance.
        let closed = |s: Settled| {
            if s.captured_minor == amount_minor {
                Ok(Answer { reference: reference.to_owned(), amount_minor, replayed: true })
            } else {
                Err(ProviderError::Declined("authorization_closed".into()))
            }
        };
        let before = self.retrieve(reference)?;
        if before.closed {
            return closed(before);
        }
        let amount = amount_minor.to_string();
        let f = form(&[("amount_to_capture", &amount)]);
        match self.post(&format!("/v1/payment_intents/{reference}/capture"), &f, key)? {
            Reply::Ok(_) => Ok(Answer { reference: reference.to_owned(), amount_minor, replayed: false }),
            Reply::Refused(_, e) => match self.retrieve(reference)? {
                s if s.closed => closed(s),
                _ => Err(ProviderError::Declined(reason(&e, "capture_refused"))),
            },
        }
    }

    fn void(&self, reference: &str, key: &str) -> Result<Answer, ProviderError> {
        check_id(reference)?;
        match self.post(&format!("/v1/payment_intents/{reference}/cancel"), &[], key)? {
            Reply::Ok(pi) => Ok(Answer {
                reference: reference.to_owned(),
                amount_minor: u64_of(&pi, "amount").unwrap_or(0),
                replayed: false,
            }),
            Reply::Refused(_, e) => {
                let pi = self.intent(reference)?;
                match str_of(&pi, "status") {
                    // Cancelled already, or captured (the rest was released then): nothing left to void.
                    "canceled" | "succeeded" => {
                        Ok(Answer { reference: reference.to_owned(), amount_minor: 0, replayed: true })
                    }
                    _ => Err(ProviderError::Declined(reason(&e, "void_refused"))),
                }
            }
        }
    }

    fn refund(&self, reference: &str, amount_minor: u64, key: &str) -> Result<Answer, ProviderError> {
        let (s, refunds) = self.settled(reference)?;
        if let Some(r) = refunds.iter().find(|r| ours(r) == Some(key)) {
            let amount_minor = u64_of(r, "amount").unwrap_or(amount_minor);
            return Ok(Answer { reference: reference.to_owned(), amount_minor, replayed: true });
        }
        // Never more than captured, whatever the server would allow.
        if s.refunded_minor.saturating_add(amount_minor) > s.captured_minor {
            return Err(ProviderError::Declined("refund_exceeds_capture".into()));
        }
        let amount = amount_minor.to_string();
        let f = form(&[("payment_intent", reference), ("amount", &amount), ("metadata[oms_key]", key)]);
        match self.post("/v1/refunds", &f, key)? {
            Reply::Ok(_) => Ok(Answer { reference: reference.to_owned(), amount_minor, replayed: false }),
            Reply::Refused(_, e) => Err(ProviderError::Declined(reason(&e, "refund_refused"))),
        }
    }

    fn retrieve(&self, reference: &str) -> Result<Settled, ProviderError> {
        Ok(self.settled(reference)?.0)
    }

    fn captures_once(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A one-thread HTTP server on loopback answering each request with the next canned (status, body, delay)
    /// and recording the requests' head lines; stops after `answers` requests.
    fn fake(answers: Vec<(u16, String, u64)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (status, body, delay) in answers {
                let Ok((s, _)) = l.accept() else { return };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut head = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut b = vec![0; len];
                std::io::Read::read_exact(&mut r, &mut b).unwrap();
                head.push_str(&String::from_utf8_lossy(&b));
                log.lock().unwrap().push(head);
                std::thread::sleep(Duration::from_millis(delay));
                let mut s = s;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn provider(base: &str, timeout_ms: u64) -> StripeProvider {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "sk_test_123\n").unwrap();
        let cfg = StripeConfig { base_url: base.into(), secret_key_file: Some(f), timeout_ms, ..Default::default() };
        StripeProvider::new(&cfg, 10_000).unwrap()
    }

    #[test]
    fn posts_carry_the_key_and_answers_map_to_the_outbox_errors() {
        let pi = r#"{"id":"pi_1","status":"requires_capture","amount":500}"#.to_owned();
        let decline = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#;
        // Each capture first retrieves its PaymentIntent (still capturable), then posts.
        let (base, seen) = fake(vec![
            (200, pi.clone(), 0),
            (402, decline.into(), 0),
            (200, pi.clone(), 0),
            (500, "{}".into(), 0),
            (200, pi.clone(), 0),
            (429, "{}".into(), 0),
            (200, pi.clone(), 0),
            (200, "x".repeat(RESPONSE_BYTES_MAX as usize + 10), 0),
            (200, pi, 0),
            (200, "{}".into(), 400),
        ]);
        let p = provider(&base, 200);
        let a = p.authorize("auth-k1", "pm_card_visa", 500, "EUR").unwrap();
        assert_eq!((a.reference.as_str(), a.amount_minor), ("pi_1", 500));
        assert_eq!(
            p.authorize("auth-k2", "pm_x", 500, "EUR").unwrap_err(),
            ProviderError::Declined("insufficient_funds".into())
        );
        assert_eq!(p.capture("pi_1", 100, "cap-1-a0").unwrap_err(), ProviderError::Timeout, "a 500 is indeterminate");
        assert!(matches!(p.capture("pi_1", 100, "cap-1-a0"), Err(ProviderError::Unavailable(_))), "429 did nothing");
        assert_eq!(p.capture("pi_1", 100, "cap-1-a0").unwrap_err(), ProviderError::Timeout, "too large");
        assert_eq!(p.capture("pi_1", 100, "cap-1-a0").unwrap_err(), ProviderError::Timeout, "slower than the budget");
        let all = seen.lock().unwrap();
        assert_eq!(all.len(), 10);
        assert!(all[2].starts_with("GET /v1/payment_intents/pi_1 "), "{}", all[2]);
        let seen: Vec<&String> = all.iter().filter(|r| r.starts_with("POST ")).collect();
        assert_eq!(seen.len(), 6);
        for (req, key) in seen.iter().zip(["auth-k1", "auth-k2", "cap-1-a0", "cap-1-a0", "cap-1-a0", "cap-1-a0"]) {
            let lower = req.to_ascii_lowercase();
            assert!(lower.contains(&format!("idempotency-key: {key}")), "{req}");
            assert!(lower.contains("authorization: bearer sk_test_123"), "{req}");
        }
        assert!(seen[0].contains("capture_method=manual") && seen[0].contains("confirm=true"), "{}", seen[0]);
        assert!(seen[0].contains("payment_method=pm_card_visa") && seen[0].contains("currency=eur"), "{}", seen[0]);
        assert!(
            seen[2].starts_with("POST /v1/payment_intents/pi_1/capture") && seen[2].contains("amount_to_capture=100")
        );
    }

    #[test]
    fn nothing_listening_is_unavailable_and_bad_settings_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let p = provider(&base, 500);
        assert!(matches!(p.authorize("k", "pm_card_visa", 1, "EUR"), Err(ProviderError::Unavailable(_))));
        assert!(p.capture("pi_../x", 1, "k").is_err(), "ids go into paths only when plain");

        let bad = |c: StripeConfig| StripeProvider::new(&c, 1_000).unwrap_err();
        assert!(bad(StripeConfig::default()).contains("exactly one"));
        let env = StripeConfig { secret_key_env: Some("OMS_TEST_NO_SUCH_VARIABLE_XYZ".into()), ..Default::default() };
        assert!(bad(env.clone()).contains("not set"));
        assert!(bad(StripeConfig { base_url: "ftp://x".into(), ..env }).contains("base_url"));
    }
}
