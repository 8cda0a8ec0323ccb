//! Invoices and credit notes as CSV (listings) and printable HTML (one document).

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{CreditNote, DocLine, Invoice};

/// A document to render.
#[derive(Debug, Clone, Copy)]
pub enum Doc<'a> {
    /// An invoice.
    Invoice(&'a Invoice),
    /// A credit note.
    CreditNote(&'a CreditNote),
}

impl Doc<'_> {
    #[allow(clippy::type_complexity)]
    fn parts(&self) -> (&str, &str, &str, &str, u64, String, &[DocLine], (i64, i64, i64), &str) {
        match self {
            Doc::Invoice(i) => (
                "Invoice",
                &i.number,
                &i.order,
                "",
                i.issued_at_ms,
                i.currency.to_string(),
                &i.lines,
                (i.net_minor, i.tax_minor, i.total_minor),
                &i.fulfillment,
            ),
            Doc::CreditNote(c) => (
                "Credit note",
                &c.number,
                &c.order,
                &c.invoice,
                c.issued_at_ms,
                c.currency.to_string(),
                &c.lines,
                (c.net_minor, c.tax_minor, c.total_minor),
                &c.reason,
            ),
        }
    }
}

/// One row per document line: `number,order,reference,issued_at_ms,currency,sku,qty,unit_price_minor,net_minor,
/// tax_bp,tax_minor,gross_minor` (reference: the invoice a credit note credits, empty for an invoice).
pub fn csv(docs: &[Doc<'_>]) -> Response {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut rows = vec![
        [
            "number",
            "order",
            "reference",
            "issued_at_ms",
            "currency",
            "sku",
            "qty",
            "unit_price_minor",
            "net_minor",
            "tax_bp",
            "tax_minor",
            "gross_minor",
        ]
        .map(str::to_owned),
    ];
    for d in docs {
        let (_, number, order, reference, at, currency, lines, _, _) = d.parts();
        for l in lines {
            rows.push([
                number.to_owned(),
                order.to_owned(),
                reference.to_owned(),
                at.to_string(),
                currency.clone(),
                l.sku.clone(),
                l.qty.to_string(),
                l.unit_price_minor.to_string(),
                l.net_minor.to_string(),
                l.tax_bp.to_string(),
                l.tax_minor.to_string(),
                l.gross_minor.to_string(),
            ]);
        }
    }
    let mut failed = false;
    for r in &rows {
        failed |= w.write_record(r).is_err();
    }
    let body = w.into_inner().unwrap_or_default();
    if failed {
        tracing::warn!("a CSV row could not be written");
    }
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

/// Escapes text for HTML. By hand: five characters, and the hub has no HTML templating to pull a crate in for.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Minor units as a decimal amount with two places (the document's currency is named beside it).
fn amount(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

/// A printable HTML page of one document.
pub fn html(doc: &Doc<'_>) -> Response {
    let (title, number, order, reference, at, currency, lines, (net, tax, gross), note) = doc.parts();
    let mut rows = String::new();
    for l in lines {
        rows.push_str(&format!(
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}.{:02}&nbsp;%</td><td class=n>{}</td><td class=n>{}</td></tr>\n",
            esc(&l.sku),
            l.qty,
            amount(l.unit_price_minor),
            amount(l.net_minor),
            l.tax_bp / 100,
            l.tax_bp % 100,
            amount(l.tax_minor),
            amount(l.gross_minor)
        ));
    }
    let reference =
        if reference.is_empty() { String::new() } else { format!("<p>Credits invoice {}</p>", esc(reference)) };
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=utf-8><title>{title} {number}</title>\
         <style>body{{font-family:sans-serif}}td.n{{text-align:right}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #999;padding:4px}}</style></head><body>\n\
         <h1>{title} {number}</h1><p>Order {order} · issued at {at} ms · {currency}</p>{reference}<p>{note}</p>\n\
         <table><tr><th>SKU</th><th>Qty</th><th>Unit price</th><th>Net</th><th>Tax rate</th><th>Tax</th><th>Gross</th></tr>\n\
         {rows}<tr><th colspan=3>Total</th><th class=n>{}</th><th></th><th class=n>{}</th><th class=n>{}</th></tr></table>\n\
         </body></html>\n",
        amount(net),
        amount(tax),
        amount(gross),
        title = title,
        number = esc(number),
        order = esc(order),
        note = esc(note),
        currency = esc(&currency),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}
