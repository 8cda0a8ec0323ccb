//! Receiving against purchase orders: what the hub says the site is to receive ([`SetInbound`], from the
//! hub's `inbound/<site>` document) and the site's receipts ([`ReceiveInbound`]), each a `receipt` ledger
//! movement per line, tied to its PO line by the movement's note, in the command's transaction with the
//! receipt row and the per-line count the over-receipt check reads. The receipt goes on the change feed, from
//! which the sync follower writes it into the site's stock document for the hub. Works without the hub: the
//! expected receipts are local once synced.

use oms_protocol::domain::{Movement, QTY_MAX, Sku, ValidationError};
use oms_protocol::schema::InboundPo;
use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::writer::{Apply, Tx};
use super::{Command, FeedEntry, Limits, StoreError};

/// Purchase orders the site keeps from the hub; beyond it the hub's further orders wait (logged).
pub const INBOUND_POS_MAX: u64 = 20_000;
/// Lines in one receipt.
pub const RECEIPT_LINES_MAX: usize = 500;
/// Largest over-receipt tolerance, percent.
pub const TOLERANCE_PCT_MAX: u32 = 1_000;

/// A purchase order as the site keeps it: the hub's view and what the site received per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRecord {
    /// What the hub published.
    pub hub: InboundPo,
    /// (PO line, units received here), from the site's own receipts.
    pub received: Vec<(u32, u64)>,
}

impl InboundRecord {
    /// Units received here against `line`.
    pub fn received_here(&self, line: u32) -> u64 {
        self.received.iter().find(|(l, _)| *l == line).map_or(0, |(_, q)| *q)
    }
}

/// One line of a receipt as booked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReceiptLine {
    /// The PO line, `None` for an unplanned receipt (a SKU the order does not have).
    pub line: Option<u32>,
    /// The SKU.
    pub sku: Sku,
    /// Units.
    pub qty: u32,
    /// The ledger entry.
    pub ledger_seq: u64,
}

/// A receipt against a purchase order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoReceipt {
    /// Its id (the caller's idempotency key).
    pub id: String,
    /// The purchase order.
    pub po: String,
    /// The ASN, if received under one.
    pub asn: Option<String>,
    /// Lines.
    pub lines: Vec<ReceiptLine>,
    /// Forced past the over-receipt tolerance, with this reason.
    pub forced_reason: Option<String>,
    /// When, ms.
    pub at_ms: u64,
}

/// Store the purchase orders the hub published for this site (replacing the hub's part, keeping what the
/// site received). Replies with how many were stored.
#[derive(Debug, Clone)]
pub struct SetInbound(pub Vec<InboundPo>);

impl Command for SetInbound {
    type Reply = usize;
}

impl Apply for SetInbound {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<usize, StoreError> {
        let mut n = 0;
        for po in self.0 {
            let old: Option<InboundRecord> =
                tx.inbound.get(po.po.as_str())?.map(|v| dec("inbound", v.value())).transpose()?;
            if old.is_none() && tx.inbound.len()? >= INBOUND_POS_MAX {
                tracing::warn!(po = %po.po, "inbound: the site keeps {INBOUND_POS_MAX} purchase orders; this one waits");
                continue;
            }
            let rec = InboundRecord { received: old.map(|o| o.received).unwrap_or_default(), hub: po };
            tx.inbound.insert(rec.hub.po.as_str(), enc(&rec)?.as_slice())?;
            n += 1;
        }
        Ok(n)
    }
}

/// One line a caller receives: a SKU, optionally its PO line, and units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveLine {
    /// The PO line, if the caller names it.
    pub line: Option<u32>,
    /// The SKU (checked against the line when both are given).
    pub sku: Sku,
    /// Units.
    pub qty: u32,
}

/// Where the units come from: an ASN, or a purchase order received without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveAgainst {
    /// An ASN id.
    Asn(String),
    /// A purchase order id.
    Po(String),
}

/// Receive units against a purchase order. Idempotent by `id`: the same id with the same request answers
/// the first receipt and changes nothing; with another request it is `idempotency_key_reused`.
#[derive(Debug, Clone)]
pub struct ReceiveInbound {
    /// The receipt id (the caller's idempotency key).
    pub id: String,
    /// ASN or PO.
    pub against: ReceiveAgainst,
    /// Lines.
    pub lines: Vec<ReceiveLine>,
    /// Past the tolerance only with this reason.
    pub force_reason: Option<String>,
    /// `[receiving] over_receipt_tolerance_pct`.
    pub tolerance_pct: u32,
}

/// What [`ReceiveInbound`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The receipt.
    pub receipt: PoReceipt,
    /// True when the id was received before and nothing changed.
    pub replayed: bool,
}

impl Command for ReceiveInbound {
    type Reply = Received;

    fn audit_target(reply: &Received) -> Option<String> {
        Some(reply.receipt.id.clone())
    }
}

fn invalid(code: &'static str, field: String, msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(ValidationError::new(code, field, msg))
}

impl Tx<'_> {
    fn inbound_po(&self, against: &ReceiveAgainst) -> Result<InboundRecord, StoreError> {
        let found = match against {
            ReceiveAgainst::Po(po) => self.inbound.get(po.as_str())?.map(|v| dec("inbound", v.value())).transpose()?,
            ReceiveAgainst::Asn(asn) => {
                let mut found = None;
                // Bounded by INBOUND_POS_MAX rows.
                for item in self.inbound.iter()? {
                    let rec: InboundRecord = dec("inbound", item?.1.value())?;
                    if rec.hub.asns.iter().any(|a| &a.id == asn) {
                        found = Some(rec);
                        break;
                    }
                }
                found
            }
        };
        found.ok_or_else(|| match against {
            ReceiveAgainst::Po(po) => StoreError::InboundNotFound { kind: "purchase_order", id: po.clone() },
            ReceiveAgainst::Asn(asn) => StoreError::InboundNotFound { kind: "asn", id: asn.clone() },
        })
    }
}

impl Apply for ReceiveInbound {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Received, StoreError> {
        let asn = match &self.against {
            ReceiveAgainst::Asn(a) => Some(a.clone()),
            ReceiveAgainst::Po(_) => None,
        };
        if let Some(v) = tx.po_receipts.get(self.id.as_str())? {
            let r: PoReceipt = dec("po_receipts", v.value())?;
            let same_target =
                r.asn == asn && (asn.is_some() || matches!(&self.against, ReceiveAgainst::Po(p) if p == &r.po));
            let same_lines = r.lines.len() == self.lines.len()
                && r.lines
                    .iter()
                    .zip(&self.lines)
                    .all(|(a, b)| a.sku == b.sku && a.qty == b.qty && (b.line.is_none() || a.line == b.line));
            if same_target && same_lines && r.forced_reason == self.force_reason {
                return Ok(Received { receipt: r, replayed: true });
            }
            return Err(StoreError::IdempotencyKeyReused(self.id));
        }
        if self.lines.is_empty() || self.lines.len() > RECEIPT_LINES_MAX {
            return Err(invalid("invalid_lines", "lines".into(), format!("1 ..= {RECEIPT_LINES_MAX} lines")));
        }
        let mut rec = tx.inbound_po(&self.against)?;
        if !rec.hub.receivable {
            return Err(StoreError::NotReceivable { po: rec.hub.po.clone(), state: rec.hub.state.clone() });
        }
        // Read and check everything first: the PO line of each receipt line, the catalog, the tolerance.
        let mut planned: Vec<Option<u32>> = Vec::with_capacity(self.lines.len());
        let mut adds: Vec<(u32, u64)> = Vec::new();
        for (i, l) in self.lines.iter().enumerate() {
            if l.qty == 0 || l.qty > QTY_MAX {
                return Err(invalid("invalid_quantity", format!("lines[{i}].qty"), format!("must be 1 ..= {QTY_MAX}")));
            }
            if !tx.in_catalog(&l.sku)? {
                return Err(StoreError::UnknownSku(l.sku.clone()));
            }
            let line = match l.line {
                Some(n) => match rec.hub.lines.iter().find(|pl| pl.line == n) {
                    Some(pl) if pl.sku == l.sku => Some(n),
                    Some(pl) => {
                        return Err(invalid(
                            "line_mismatch",
                            format!("lines[{i}].sku"),
                            format!("line {n} is {}, not {}", pl.sku, l.sku),
                        ));
                    }
                    None => return Err(invalid("unknown_line", format!("lines[{i}].line"), format!("no line {n}"))),
                },
                // A SKU the order does not have is an unplanned receipt.
                None => rec.hub.lines.iter().find(|pl| pl.sku == l.sku).map(|pl| pl.line),
            };
            if let Some(n) = line {
                match adds.iter_mut().find(|(a, _)| *a == n) {
                    Some((_, q)) => *q = q.saturating_add(u64::from(l.qty)),
                    None => adds.push((n, u64::from(l.qty))),
                }
            }
            planned.push(line);
        }
        for &(n, qty) in &adds {
            let Some(pl) = rec.hub.lines.iter().find(|pl| pl.line == n) else { continue };
            let expected = pl.ordered.saturating_sub(pl.short_closed);
            let allowed = expected.saturating_mul(100 + u64::from(self.tolerance_pct)) / 100;
            let after = rec.received_here(n).saturating_add(qty);
            if after > allowed && self.force_reason.is_none() {
                return Err(StoreError::OverReceipt {
                    po: rec.hub.po.clone(),
                    line: n,
                    expected,
                    received: rec.received_here(n),
                    requested: qty,
                    tolerance_pct: self.tolerance_pct,
                });
            }
        }
        // Then write: one ledger receipt per line, the per-line counts, the receipt, the feed entry.
        let mut lines = Vec::with_capacity(self.lines.len());
        for (l, line) in self.lines.into_iter().zip(planned) {
            let note = match (line, &asn) {
                (Some(n), Some(a)) => format!("PO {} line {n}, ASN {a}, receipt {}", rec.hub.po, self.id),
                (Some(n), None) => format!("PO {} line {n}, receipt {}", rec.hub.po, self.id),
                (None, _) => format!("unplanned, PO {}, receipt {}", rec.hub.po, self.id),
            };
            let entry = tx.post(&l.sku, Movement::Receipt { qty: l.qty, note: Some(note) })?;
            lines.push(ReceiptLine { line, sku: l.sku, qty: l.qty, ledger_seq: entry.seq });
        }
        for (n, qty) in adds {
            match rec.received.iter_mut().find(|(l, _)| *l == n) {
                Some((_, q)) => *q = q.saturating_add(qty),
                None => rec.received.push((n, qty)),
            }
        }
        tx.inbound.insert(rec.hub.po.as_str(), enc(&rec)?.as_slice())?;
        let receipt =
            PoReceipt { id: self.id, po: rec.hub.po, asn, lines, forced_reason: self.force_reason, at_ms: tx.now_ms };
        tx.po_receipts.insert(receipt.id.as_str(), enc(&receipt)?.as_slice())?;
        tx.feed_push(FeedEntry::Receipt(receipt.id.clone()))?;
        Ok(Received { receipt, replayed: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cmd;
    use crate::test_support::store_with_catalog;
    use oms_protocol::schema::{InboundAsn, InboundLine};

    fn po() -> InboundPo {
        let line = |line, sku: &str, ordered| InboundLine {
            line,
            sku: Sku::parse(sku).unwrap(),
            ordered,
            received: 0,
            short_closed: 0,
        };
        InboundPo {
            po: "PO-1".into(),
            state: "sent".into(),
            receivable: true,
            expected_day: 20_000,
            lines: vec![line(1, "A", 10), line(2, "B", 20)],
            asns: vec![InboundAsn { id: "ASN-1".into(), lines: vec![(1, 10)], expected_day: 20_000 }],
        }
    }

    fn receive(id: &str, lines: &[(Option<u32>, &str, u32)], force: Option<&str>) -> cmd::ReceiveInbound {
        cmd::ReceiveInbound {
            id: id.into(),
            against: ReceiveAgainst::Asn("ASN-1".into()),
            lines: lines
                .iter()
                .map(|&(line, sku, qty)| ReceiveLine { line, sku: Sku::parse(sku).unwrap(), qty })
                .collect(),
            force_reason: force.map(str::to_owned),
            tolerance_pct: 10,
        }
    }

    /// A receipt books once per id; one beyond the tolerance books nothing at all (not even its other lines)
    /// unless forced; a unit of a SKU the order lacks is unplanned; the hub's republication keeps the counts.
    #[tokio::test]
    async fn receipts_book_once_within_tolerance_or_forced() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_catalog(dir.path(), &["A", "B", "X"]).await;
        assert_eq!(store.execute(cmd::SetInbound(vec![po()])).await.unwrap(), 1);
        let on_hand = |sku: &str| store.balance(&Sku::parse(sku).unwrap()).unwrap().unwrap().on_hand;

        let r = store.execute(receive("r1", &[(None, "A", 6), (None, "X", 2)], None)).await.unwrap();
        assert!(!r.replayed);
        assert_eq!(r.receipt.lines.iter().map(|l| l.line).collect::<Vec<_>>(), vec![Some(1), None]);
        let again = store.execute(receive("r1", &[(None, "A", 6), (None, "X", 2)], None)).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.receipt, r.receipt);
        assert!(matches!(
            store.execute(receive("r1", &[(None, "A", 5)], None)).await,
            Err(StoreError::IdempotencyKeyReused(_))
        ));
        assert_eq!((on_hand("A"), on_hand("X")), (6, 2));

        // 6 + 6 = 12 > 11 (10 % over 10): refused, and line 2's units with it.
        let over = receive("r2", &[(Some(2), "B", 3), (Some(1), "A", 6)], None);
        assert!(matches!(store.execute(over).await, Err(StoreError::OverReceipt { line: 1, expected: 10, .. })));
        assert_eq!((on_hand("A"), on_hand("B")), (6, 0));
        let forced = receive("r3", &[(Some(2), "B", 3), (Some(1), "A", 6)], Some("extra on the pallet"));
        store.execute(forced).await.unwrap();
        assert_eq!((on_hand("A"), on_hand("B")), (12, 3));

        store.execute(cmd::SetInbound(vec![po()])).await.unwrap();
        let rec = store.inbound_po("PO-1").unwrap().unwrap();
        assert_eq!((rec.received_here(1), rec.received_here(2)), (12, 3));
        assert!(matches!(
            store.execute(receive("r4", &[(Some(1), "B", 1)], None)).await,
            Err(StoreError::Invalid(v)) if v.code == "line_mismatch"
        ));
        let mut closed = po();
        closed.receivable = false;
        store.execute(cmd::SetInbound(vec![closed])).await.unwrap();
        assert!(matches!(
            store.execute(receive("r5", &[(None, "A", 1)], None)).await,
            Err(StoreError::NotReceivable { .. })
        ));
        assert_eq!(store.po_receipt("r3").unwrap().unwrap().forced_reason.as_deref(), Some("extra on the pallet"));
    }
}
