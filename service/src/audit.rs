//! The audit trail: who (key name, role) did what (method, route, target), when, and how it ended, appended
//! to the table [`AUDIT`] **in the same write transaction as the change itself**, so a change without its
//! row (or a row without its change) cannot exist. Rows are never updated or deleted.
//!
//! A request reaches the trail only once it was admitted ([`crate::auth::authorize`] puts its [`Actor`] on
//! the request) and handed to the store: a `401`, `403` or `429` leaves no row (the metrics count those).
//! An admitted command the store refused (an illegal transition, a stock shortfall) leaves a row with its
//! error code as the outcome, since the attempt itself is worth knowing about.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::storage::StorageError;

/// seq → postcard-encoded [`AuditEvent`] (compact: the row is written with every audited change, so its
/// bytes are on every such commit's fsync). Append-only: the next seq is the last plus one. Positional
/// encoding: add fields only at the end.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Largest page of `GET /v1/audit/events`.
pub const AUDIT_PAGE_MAX: usize = 1_000;
/// Longest target recorded, bytes (ids are far shorter; a longer one is cut).
const TARGET_BYTES_MAX: usize = 256;

/// Who is making an admitted request, and to which route: what the audit row records besides the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The key's name.
    pub key: String,
    /// Its role.
    pub role: Role,
    /// The method, as a bounded label.
    pub method: &'static str,
    /// The matched route, such as `/v1/orders/{id}/cancel`.
    pub route: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Actor {
    type Rejection = crate::problem::Problem;

    /// The caller [`crate::auth::authorize`] admitted; a write served without it (a bug) is refused rather
    /// than left out of the trail.
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Actor>().cloned().ok_or_else(crate::auth::unauthenticated)
    }
}

/// One row of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Position in the trail, from 1.
    pub seq: u64,
    /// When it was committed, ms since the Unix epoch.
    pub at_ms: u64,
    /// The key's name.
    pub key: String,
    /// Its role.
    pub role: Role,
    /// HTTP method.
    pub method: String,
    /// Matched route.
    pub route: String,
    /// What it acted on: an order id, a SKU, a wave; none for a CSV import.
    pub target: Option<String>,
    /// `ok`, or the stable code of the error the change was refused with.
    pub outcome: String,
}

/// A page of the trail as `GET /v1/audit/events` answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Rows by sequence.
    pub events: Vec<AuditEvent>,
    /// `after` of the next page; null when this page was the last.
    pub next_after: Option<u64>,
}

/// Appends a row for `actor` to `table` (open in the change's write transaction) and returns its seq.
pub fn append(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    actor: &Actor,
    target: Option<&str>,
    at_ms: u64,
    outcome: &str,
) -> Result<u64, StorageError> {
    let seq = match table.last().map_err(redb::Error::from)? {
        Some((k, _)) => k.value().saturating_add(1),
        None => 1,
    };
    let target = target.map(|t| {
        let mut end = t.len().min(TARGET_BYTES_MAX);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t[..end].to_owned()
    });
    let event = AuditEvent {
        seq,
        at_ms,
        key: actor.key.clone(),
        role: actor.role,
        method: actor.method.to_owned(),
        route: actor.route.clone(),
        target,
        outcome: outcome.to_owned(),
    };
    let bytes = postcard::to_allocvec(&event).map_err(|e| StorageError::encode("an audit event", e))?;
    table.insert(seq, bytes.as_slice()).map_err(redb::Error::from)?;
    Ok(seq)
}

/// Rows after `after` (exclusive), at most `limit` (capped at [`AUDIT_PAGE_MAX`]), and the seq to continue
/// after if more may follow.
pub fn page(db: &redb::Database, after: u64, limit: usize) -> Result<(Vec<AuditEvent>, Option<u64>), StorageError> {
    let limit = limit.clamp(1, AUDIT_PAGE_MAX);
    let r = db.begin_read().map_err(redb::Error::from)?;
    let t = match r.open_table(AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
        Err(e) => return Err(redb::Error::from(e).into()),
    };
    let mut out = Vec::with_capacity(limit.min(64));
    for row in t.range(after.saturating_add(1)..).map_err(redb::Error::from)? {
        let (_, v) = row.map_err(redb::Error::from)?;
        let e: AuditEvent =
            postcard::from_bytes(v.value()).map_err(|e| StorageError::encode("reading an audit event", e))?;
        out.push(e);
        if out.len() == limit {
            break;
        }
    }
    let next = if out.len() == limit { out.last().map(|e| e.seq) } else { None };
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_append_in_order_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("a.redb")).unwrap();
        assert_eq!(page(&db, 0, 10).unwrap(), (vec![], None), "no table yet: an empty trail");
        let actor = Actor { key: "ops".into(), role: Role::Admin, method: "POST", route: "/v1/x/{id}".into() };
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(AUDIT).unwrap();
            for i in 0..5 {
                let seq = append(&mut t, &actor, Some(&format!("t{i}")), 100 + i, "ok").unwrap();
                assert_eq!(seq, i + 1);
            }
            append(&mut t, &actor, Some(&"é".repeat(200)), 1, "conflict").unwrap();
        }
        w.commit().unwrap();
        let (rows, next) = page(&db, 0, 2).unwrap();
        assert_eq!(rows.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(next, Some(2));
        let (rows, next) = page(&db, 2, 10).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(next, None);
        assert_eq!(rows[0].target.as_deref(), Some("t2"));
        assert!(rows[3].target.as_ref().unwrap().len() <= TARGET_BYTES_MAX, "cut on a char boundary");
        assert_eq!(rows[3].outcome, "conflict");
    }
}
