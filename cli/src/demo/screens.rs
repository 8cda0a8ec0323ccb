//! The demo at a site's screens as a person: signing in with the staff PIN (a session cookie), and receiving
//! an ASN line through the receiving screen's form (`/ui/inbound/{po}?asn=`, then its post), pressed twice
//! as a hurried person would. The receipt's ledger entries are then read back through the API and compared
//! with what was posted: one receipt, its units once.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// Ledger pages read to find a receipt's entries (500 entries a page).
const LEDGER_PAGES_MAX: usize = 200;

/// A browser: follows no redirect, gives up after 15 s.
pub(super) fn browser() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .context("a browser client")
}

/// Signs in at the site `addr` as `name` with `secret` through the sign-in form: the session cookie
/// (`name=value`) if it redirected to `next` with one.
pub(super) async fn sign_in(
    browser: &reqwest::Client,
    addr: SocketAddr,
    name: &str,
    secret: &str,
    next: &str,
) -> Option<String> {
    let r = browser
        .post(format!("http://{addr}/ui/sign-in"))
        .form(&[("name", name), ("password", secret), ("next", next)])
        .send()
        .await
        .ok()?;
    if !located(&r, next) {
        return None;
    }
    r.headers().get("set-cookie").and_then(|v| v.to_str().ok()).and_then(|c| c.split(';').next()).map(str::to_owned)
}

/// Whether `r` is a `303` to a path starting with `to`.
pub(super) fn located(r: &reqwest::Response, to: &str) -> bool {
    r.status() == 303 && r.headers().get("location").and_then(|v| v.to_str().ok()).is_some_and(|l| l.starts_with(to))
}

/// The value of the first form field `name` in `html` (written `name="…" value="…"` by the screens).
fn field(html: &str, name: &str) -> Option<String> {
    let key = format!(r#"name="{name}" value=""#);
    let at = html.find(&key)? + key.len();
    html[at..].split('"').next().map(str::to_owned)
}

/// What one receipt through the screen did.
pub(super) struct ScreenReceipt {
    /// Units the form posted (0 if the form could not be posted).
    pub posted: u64,
    /// Units the ledger shows under the receipt's id.
    pub booked: u64,
}

/// Receives `qty` of `sku` against `asn` of purchase order `po` through the receiving screen at `addr`,
/// signed in as `picker` with `pin`; posts the form twice (the second press must book nothing) and reads
/// the ledger back through `staff` (a staff API client).
pub(super) async fn receive_asn_line(
    addr: SocketAddr,
    pin: &str,
    staff: &reqwest::Client,
    (po, asn, sku, qty): (&str, &str, &str, u64),
) -> anyhow::Result<ScreenReceipt> {
    let none = ScreenReceipt { posted: 0, booked: 0 };
    let screen = format!("/ui/inbound/{po}?asn={asn}");
    let browser = browser()?;
    let Some(cookie) = sign_in(&browser, addr, "picker", pin, &screen).await else { return Ok(none) };
    let page = browser.get(format!("http://{addr}{screen}")).header("cookie", &cookie).send().await?;
    if page.status() != 200 {
        return Ok(none);
    }
    let html = page.text().await?;
    let (Some(csrf), Some(receipt)) = (field(&html, "csrf"), field(&html, "receipt")) else { return Ok(none) };
    let qty_text = qty.to_string();
    let form = [("csrf", csrf.as_str()), ("receipt", &receipt), ("asn", asn), ("sku", sku), ("qty", &qty_text)];
    let mut posted = 0;
    for _ in 0..2 {
        let r = browser
            .post(format!("http://{addr}/ui/inbound/{po}/receive"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await?;
        if located(&r, &format!("/ui/inbound/{po}")) && posted == 0 {
            posted = qty;
        }
    }
    // The ledger under the receipt's id: its entries' units.
    let needle = format!("receipt {receipt}");
    let mut booked = 0u64;
    let mut after = 0u64;
    for _ in 0..LEDGER_PAGES_MAX {
        let url = format!("http://{addr}/v1/stock/{sku}/ledger?limit=500&after={after}");
        let v: Value = staff.get(url).send().await?.json().await?;
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            let r = &e["movement"]["receipt"];
            if r["note"].as_str().is_some_and(|n| n.contains(&needle)) {
                booked += r["qty"].as_u64().unwrap_or(0);
            }
        }
        match v["next_after"].as_u64() {
            Some(n) if entries.len() == 500 => after = n,
            _ => break,
        }
    }
    Ok(ScreenReceipt { posted, booked })
}
