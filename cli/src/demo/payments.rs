//! The demo's manual payments: the first shipped cash-on-delivery order of the hub with money owed gets what
//! the courier collected recorded by service (`POST /v1/orders/{id}/payments`, with an `Idempotency-Key`),
//! the same request again (a replay answering the first record), and one minor unit more than is left (refused
//! `409 overpayment`). The figures: payments recorded, the amount, and `payment_record_mismatches` (no COD
//! order could be paid, a replay that recorded twice, an overpayment let through, or the order's payment view
//! not showing exactly what was recorded): it must be 0.

use std::net::SocketAddr;

use serde_json::{Value, json};

/// Orders read while looking for a COD order to pay.
const LOOK_MAX: usize = 2_000;

/// What the pass found.
#[derive(Debug, Default)]
pub(super) struct RecordedFigures {
    recorded: u64,
    recorded_minor: u64,
    replays: u64,
    overpayments_refused: u64,
    mismatches: u64,
}

impl RecordedFigures {
    pub(super) fn json(&self) -> Value {
        json!({
            "payments_recorded_by_demo": self.recorded,
            "payments_recorded_minor": self.recorded_minor,
            "payment_record_replays": self.replays,
            "overpayments_refused": self.overpayments_refused,
            "payment_record_mismatches": self.mismatches,
        })
    }

    pub(super) fn ok(&self) -> bool {
        self.mismatches == 0
    }

    pub(super) fn line(&self) -> String {
        format!(
            "manual payments: {} COD payment recorded ({} minor units), {} replay answered once, {} overpayment refused; payment record mismatches {} (must be 0)",
            self.recorded, self.recorded_minor, self.replays, self.overpayments_refused, self.mismatches
        )
    }
}

async fn record(http: &reqwest::Client, hub: SocketAddr, id: &str, key: &str, amount: u64) -> (u16, bool, Value) {
    let body = json!({"amount_minor": amount, "method": "cash", "reference": format!("courier-{id}"),
        "reason": "collected on delivery (demo)"});
    let url = format!("https://{hub}/v1/orders/{id}/payments");
    match http.post(url).header("idempotency-key", key).json(&body).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (s, replayed, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, false, Value::Null),
    }
}

/// Records the COD payment of the first shipped COD order among `acked` that owes money.
pub(super) async fn pass(http: &reqwest::Client, hub: SocketAddr, acked: &[String]) -> RecordedFigures {
    let mut f = RecordedFigures::default();
    let mut found = None;
    for id in acked.iter().take(LOOK_MAX) {
        let Ok(r) = http.get(format!("https://{hub}/v1/orders/{id}")).send().await else { continue };
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let owed = v["payment"]["outstanding_minor"].as_u64().unwrap_or(0);
        if v["payment"]["method"] == "cod" && owed > 0 {
            found = Some((id.clone(), owed));
            break;
        }
    }
    let Some((id, owed)) = found else {
        f.mismatches += 1;
        return f;
    };
    let key = format!("demo-cod-{id}");
    let (s, replayed, first) = record(http, hub, &id, &key, owed).await;
    if s != 201 || replayed {
        f.mismatches += 1;
        return f;
    }
    f.recorded = 1;
    f.recorded_minor = owed;
    let (s, replayed, again) = record(http, hub, &id, &key, owed).await;
    if s == 201 && replayed && again == first {
        f.replays += 1;
    } else {
        f.mismatches += 1;
    }
    let (s, _, v) = record(http, hub, &id, &format!("{key}-more"), 1).await;
    if s == 409 && v["code"] == "overpayment" {
        f.overpayments_refused += 1;
    } else {
        f.mismatches += 1;
    }
    let view: Value = match http.get(format!("https://{hub}/v1/orders/{id}")).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let p = &view["payment"];
    let shown = p["recorded"].as_array().map_or(0, Vec::len);
    if p["paid_minor"].as_u64() != Some(owed) || p["outstanding_minor"].as_u64() != Some(0) || shown != 1 {
        f.mismatches += 1;
    }
    f
}
