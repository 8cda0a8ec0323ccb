//! The demo's end of day at each site: the labelled consignments are closed into manifests
//! (`POST /v1/manifests`, one per carrier), a packing slip is rendered for one of them, and the carrier
//! collects every manifest (`POST /v1/manifests/{id}/collected`: consignments `collected`, packed orders
//! shipped). Checks that a close took exactly the consignments that were labelled (a mismatch counter
//! that must stay 0).

use std::net::SocketAddr;

use serde_json::{Value, json};

/// What the end of day did at every site.
#[derive(Debug, Default)]
pub(super) struct DispatchFigures {
    /// Manifests closed.
    pub(super) manifests: u64,
    /// Consignments on them.
    pub(super) manifested: u64,
    /// Manifests collected.
    pub(super) collected: u64,
    /// Orders the collections shipped (packed orders not shipped by hand before).
    pub(super) shipped_by_collection: u64,
    /// Packing slips rendered that name their consignment.
    pub(super) slips: u64,
    /// Sites whose close took other than the consignments labelled just before: must be 0.
    pub(super) manifest_mismatches: u64,
}

impl DispatchFigures {
    pub(super) fn json(&self) -> Value {
        json!({
            "manifests": self.manifests,
            "manifested": self.manifested,
            "manifests_collected": self.collected,
            "shipped_by_collection": self.shipped_by_collection,
            "packing_slips": self.slips,
            "manifest_mismatches": self.manifest_mismatches,
        })
    }

    pub(super) fn line(&self) -> String {
        format!(
            "end of day: {} manifests of {} consignments closed and collected ({} orders shipped by the collection), {} packing slips; manifest mismatches {} (must be 0)",
            self.manifests, self.manifested, self.shipped_by_collection, self.slips, self.manifest_mismatches
        )
    }
}

async fn labelled(http: &reqwest::Client, addr: SocketAddr) -> Option<u64> {
    let r = http.get(format!("http://{addr}/v1/consignments?limit=1")).send().await.ok()?;
    r.json::<Value>().await.ok()?["counts"]["labelled"].as_u64()
}

/// Closes, renders a slip and collects at every site in `addrs`.
pub(super) async fn end_of_day(http: &reqwest::Client, addrs: &[SocketAddr]) -> DispatchFigures {
    let mut f = DispatchFigures::default();
    for &addr in addrs {
        let before = labelled(http, addr).await.unwrap_or(0);
        let r = http.post(format!("http://{addr}/v1/manifests")).json(&json!({})).send().await;
        let Ok(r) = r else {
            f.manifest_mismatches += 1;
            continue;
        };
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let manifests = v["manifests"].as_array().cloned().unwrap_or_default();
        let taken: u64 = manifests.iter().map(|m| m["consignments"].as_array().map_or(0, |c| c.len() as u64)).sum();
        // Nothing labelled answers 409 nothing_to_manifest; anything else must take exactly what was labelled
        // (the demo's traffic has stopped, so nothing is labelled in between).
        let left = v["left"].as_bool().unwrap_or(false);
        if (status == 409 && before != 0) || (status == 201 && taken != before && !left) || !matches!(status, 201 | 409)
        {
            f.manifest_mismatches += 1;
        }
        f.manifests += manifests.len() as u64;
        f.manifested += taken;
        if let Some(first) = manifests.first().and_then(|m| m["consignments"][0].as_str())
            && let Ok(r) = http.get(format!("http://{addr}/v1/consignments/{first}/slip")).send().await
            && r.status().is_success()
            && r.text().await.is_ok_and(|t| t.contains(first))
        {
            f.slips += 1;
        }
        for m in &manifests {
            let Some(id) = m["id"].as_str() else { continue };
            let r = http
                .post(format!("http://{addr}/v1/manifests/{id}/collected"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .send()
                .await;
            if let Ok(r) = r
                && r.status().is_success()
                && let Ok(v) = r.json::<Value>().await
            {
                f.collected += 1;
                f.shipped_by_collection += v["shipped"].as_array().map_or(0, |s| s.len() as u64);
            }
        }
    }
    f
}
