//! Catalog and opening-stock import from CSV, shared by `oms node import` and `POST /v1/import/*`.
//!
//! Catalog files have the header `sku,name,bin`; stock files `sku,on_hand` (a count: it sets the on-hand
//! figure through a cycle-count movement, so the ledger still explains every unit). Good rows are written in
//! chunks of [`CHUNK_ROWS`], each chunk one durable transaction; bad rows are reported with their line number
//! and reason and change nothing.

use std::io::Read;

use oms_protocol::domain::{Sku, TEXT_BYTES_MAX};
use serde::Serialize;

use crate::store::{Audit, CatalogItem, Imported, Store, StoreError, cmd};

/// Rows written per transaction.
pub const CHUNK_ROWS: usize = 2_000;
/// Rejected rows listed in a report; beyond this only the count grows.
pub const REJECTS_LISTED_MAX: usize = 1_000;
/// Rows in one import.
pub const ROWS_MAX: usize = 5_000_000;

/// A rejected row.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reject {
    /// Line number in the file, from 1 (the header is line 1).
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
}

/// The outcome of an import.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// Rows written.
    pub accepted: u64,
    /// Rows refused.
    pub rejected: u64,
    /// The first [`REJECTS_LISTED_MAX`] refused rows.
    pub rejects: Vec<Reject>,
}

impl Report {
    fn reject(&mut self, line: u64, reason: String) {
        self.rejected += 1;
        if self.rejects.len() < REJECTS_LISTED_MAX {
            self.rejects.push(Reject { line, reason });
        }
    }
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sku,name,bin`
    Catalog,
    /// `sku,on_hand`
    Stock,
}

enum Row {
    Item(CatalogItem),
    Count(Sku, u64),
}

fn parse_row(kind: Kind, rec: &csv::StringRecord) -> Result<Row, String> {
    let field = |i: usize, name: &str| rec.get(i).map(str::trim).ok_or_else(|| format!("missing column {name}"));
    let sku = Sku::parse(field(0, "sku")?).map_err(|e| e.to_string())?;
    match kind {
        Kind::Catalog => {
            let name = field(1, "name")?;
            let bin = field(2, "bin")?;
            if name.is_empty() || name.len() > TEXT_BYTES_MAX || bin.len() > TEXT_BYTES_MAX {
                return Err(format!("name must be 1 to {TEXT_BYTES_MAX} bytes and bin at most {TEXT_BYTES_MAX}"));
            }
            Ok(Row::Item(CatalogItem { sku, name: name.to_owned(), bin: bin.to_owned() }))
        }
        Kind::Stock => {
            let raw = field(1, "on_hand")?;
            let n: u64 = raw.parse().map_err(|_| format!("on_hand must be a whole number ≥ 0, got {raw:?}"))?;
            if n > 1_000_000_000 {
                return Err(format!("on_hand {n} is implausibly large"));
            }
            Ok(Row::Count(sku, n))
        }
    }
}

/// Imports `input` into `store`, calling `progress(bytes_read)` after each chunk. With `audit` (an API
/// upload), each chunk's write appends its row to the audit trail in the same transaction.
pub async fn import<R: Read>(
    store: &Store,
    kind: Kind,
    input: R,
    audit: Option<Audit>,
    mut progress: impl FnMut(u64),
) -> Result<Report, StoreError> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(input);
    let mut report = Report::default();
    let mut catalog = Vec::new();
    let mut counts = Vec::new();
    let mut lines = Vec::new();
    let mut rec = csv::StringRecord::new();
    // The `as u64` casts below cannot truncate: usize has at most 64 bits (ROWS_MAX, a chunk's length).
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                report.reject(line, format!("unreadable CSV: {e}"));
                if report.accepted + report.rejected >= ROWS_MAX as u64
                    || !matches!(e.kind(), csv::ErrorKind::Utf8 { .. })
                {
                    break;
                }
                continue;
            }
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if report.accepted + report.rejected + lines.len() as u64 >= ROWS_MAX as u64 {
            report.reject(line, format!("file has more than {ROWS_MAX} rows; split it"));
            break;
        }
        match parse_row(kind, &rec) {
            Ok(Row::Item(i)) => catalog.push(i),
            Ok(Row::Count(s, n)) => counts.push((s, n)),
            Err(reason) => {
                report.reject(line, reason);
                continue;
            }
        }
        lines.push(line);
        if lines.len() >= CHUNK_ROWS {
            flush(store, &audit, &mut catalog, &mut counts, &mut lines, &mut report).await?;
            progress(rdr.position().byte());
        }
    }
    flush(store, &audit, &mut catalog, &mut counts, &mut lines, &mut report).await?;
    progress(rdr.position().byte());
    Ok(report)
}

async fn flush(
    store: &Store,
    audit: &Option<Audit>,
    catalog: &mut Vec<CatalogItem>,
    counts: &mut Vec<(Sku, u64)>,
    lines: &mut Vec<u64>,
    report: &mut Report,
) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let cat = std::mem::take(catalog);
    let cnt = std::mem::take(counts);
    let chunk_lines = std::mem::take(lines);
    match store.execute_with(cmd::Import { catalog: cat.clone(), counts: cnt.clone() }, audit.clone()).await {
        Ok(Imported { catalog, counts }) => {
            // cannot truncate: usize has at most 64 bits, and a chunk holds at most CHUNK_ROWS rows.
            report.accepted += (catalog + counts) as u64;
            Ok(())
        }
        // A chunk refused as a whole (unknown SKU, below reserved): retry row by row so only bad rows fail.
        Err(StoreError::UnknownSku(_) | StoreError::BelowReserved { .. }) => {
            for (i, line) in chunk_lines.into_iter().enumerate() {
                let cmd = if !cat.is_empty() {
                    cmd::Import { catalog: vec![cat[i].clone()], counts: vec![] }
                } else {
                    cmd::Import { catalog: vec![], counts: vec![cnt[i].clone()] }
                };
                match store.execute_with(cmd, audit.clone()).await {
                    Ok(_) => report.accepted += 1,
                    Err(e @ (StoreError::UnknownSku(_) | StoreError::BelowReserved { .. })) => {
                        report.reject(line, e.to_string())
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}
