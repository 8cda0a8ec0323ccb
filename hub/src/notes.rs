//! Customer service's notes on an order: `POST /v1/orders/{id}/notes` `{"text"}` (service), and the form on the
//! order's screen. A note is internal: it shows in the order's timeline for service and planners (`status`
//! `note`, with its author), never to a channel or on the customer's tracking page.
//!
//! Each note and its audit row are one transaction of `intake.redb` (table `order_notes`, keyed by order and
//! a number from 1), so an acknowledged note is durable and a refused one leaves only its audit row. An order
//! holds at most [`NOTES_PER_ORDER_MAX`] notes of at most [`NOTE_BYTES_MAX`] bytes.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::ValidationError;
use oms_service::audit::{self, AUDIT, Actor};
use oms_service::auth::Principal;
use oms_service::storage::StorageError;
use oms_service::{Problem, RawBody, now_ms};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::orders::{Caller, blocking};
use crate::server::Hub;

/// (order id, number from 1) → [`Note`] (JSON).
const NOTES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("order_notes");
/// Most notes on one order.
pub const NOTES_PER_ORDER_MAX: u32 = 200;
/// Longest note, bytes (a few sentences of what the customer said and what was done).
pub const NOTE_BYTES_MAX: usize = 2_000;

/// A note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Note {
    /// Its number within the order, from 1.
    pub n: u32,
    /// When it was written, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who wrote it (`user:<name>` or the API key's name).
    pub by: String,
    /// What it says.
    pub text: String,
}

/// Why a note was not added.
#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    /// No such hub order.
    #[error("order {0} does not exist")]
    NotFound(String),
    /// The order holds [`NOTES_PER_ORDER_MAX`] notes.
    #[error("order {0} already holds {NOTES_PER_ORDER_MAX} notes")]
    TooMany(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl NoteError {
    fn code(&self) -> &'static str {
        match self {
            NoteError::NotFound(_) => "order_not_found",
            NoteError::TooMany(_) => "too_many_notes",
            NoteError::Storage(_) => "storage",
        }
    }
}

impl From<redb::Error> for NoteError {
    fn from(e: redb::Error) -> Self {
        NoteError::Storage(e.into())
    }
}

impl From<NoteError> for Problem {
    fn from(e: NoteError) -> Problem {
        let status = match e {
            NoteError::NotFound(_) => StatusCode::NOT_FOUND,
            NoteError::TooMany(_) => StatusCode::CONFLICT,
            NoteError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(status, e.code(), e.to_string())
    }
}

/// The text of a note: trimmed, not empty, at most [`NOTE_BYTES_MAX`] bytes, no control characters but line
/// breaks.
pub fn check_text(text: &str) -> Result<String, ValidationError> {
    let t = text.trim();
    if t.is_empty() || t.len() > NOTE_BYTES_MAX || t.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
        return Err(ValidationError::new(
            "invalid_text",
            "text",
            format!("a note is 1 to {NOTE_BYTES_MAX} bytes of text without control characters"),
        ));
    }
    Ok(t.to_owned())
}

/// Creates the table, so readers find it.
pub(crate) fn init(db: &redb::Database) -> Result<(), StorageError> {
    let w = db.begin_write().map_err(redb::Error::from)?;
    w.open_table(NOTES).map_err(redb::Error::from)?;
    w.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// Adds `text` (already checked) to order `order` (which `exists` says is there) as `actor`, with its audit
/// row, in one transaction of `db`.
pub fn add(db: &redb::Database, order: &str, exists: bool, text: String, actor: &Actor) -> Result<Note, NoteError> {
    let now = now_ms();
    let w = db.begin_write().map_err(redb::Error::from)?;
    let refused = |w: redb::WriteTransaction, e: NoteError| -> Result<Note, NoteError> {
        let mut audit_t = w.open_table(AUDIT).map_err(redb::Error::from)?;
        audit::append(&mut audit_t, actor, Some(order), now, e.code())?;
        drop(audit_t);
        w.commit().map_err(redb::Error::from)?;
        Err(e)
    };
    if !exists {
        return refused(w, NoteError::NotFound(order.to_owned()));
    }
    let note = {
        let mut t = w.open_table(NOTES).map_err(redb::Error::from)?;
        let n = match t.range((order, 0)..=(order, u32::MAX)).map_err(redb::Error::from)?.next_back() {
            Some(row) => row.map_err(redb::Error::from)?.0.value().1,
            None => 0,
        };
        if n >= NOTES_PER_ORDER_MAX {
            None
        } else {
            let note = Note { n: n + 1, at_ms: now, by: actor.key.clone(), text };
            let bytes = serde_json::to_vec(&note).map_err(|e| StorageError::encode("a note", e))?;
            t.insert((order, note.n), bytes.as_slice()).map_err(redb::Error::from)?;
            Some(note)
        }
    };
    let Some(note) = note else { return refused(w, NoteError::TooMany(order.to_owned())) };
    let mut audit_t = w.open_table(AUDIT).map_err(redb::Error::from)?;
    audit::append(&mut audit_t, actor, Some(order), now, "ok")?;
    drop(audit_t);
    w.commit().map_err(redb::Error::from)?;
    Ok(note)
}

/// The notes on `order`, oldest first.
pub fn of(db: &redb::Database, order: &str) -> Result<Vec<Note>, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = crate::events::read_table(&r, NOTES)? else { return Ok(vec![]) };
    let mut out = Vec::new();
    for row in t.range((order, 0)..=(order, u32::MAX)).map_err(redb::Error::from)? {
        let (_, v) = row.map_err(redb::Error::from)?;
        match serde_json::from_slice(v.value()) {
            Ok(n) => out.push(n),
            Err(e) => tracing::warn!(order, error = %e, "a note cannot be read; left out"),
        }
    }
    Ok(out)
}

/// Adds the order's notes to its view's timeline, for a principal who may see them (not a channel).
pub(crate) fn with_notes(hub: &Hub, view: &mut crate::orders::HubOrderView, id: &str, principal: &Principal) {
    if principal.confined_to().is_some() {
        return;
    }
    let notes = match of(hub.intake.db(), id) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(order = id, error = %e, "cannot read the order's notes");
            return;
        }
    };
    view.timeline.extend(notes.into_iter().map(|n| crate::orders::TimelineItem {
        note: Some(n.text),
        by: Some(n.by),
        ..crate::orders::TimelineItem::new(n.at_ms, "note")
    }));
    crate::orders::sort_timeline(&mut view.timeline);
}

/// The body of `POST /v1/orders/{id}/notes`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    /// What to note (1 to 2,000 bytes).
    text: String,
}

/// Adds a note to hub order `id` for `actor`: the note, or why not.
pub(crate) async fn note(hub: &Arc<Hub>, actor: Actor, id: &str, text: &str) -> Result<Note, Problem> {
    let text = check_text(text).map_err(Problem::from)?;
    let h = hub.clone();
    let id = id.to_owned();
    blocking(move || {
        let exists = crate::orders::is_customer_order(&id) && h.intake.order(&id).map_err(Problem::from)?.is_some();
        add(h.intake.db(), &id, exists, text, &actor).map_err(Problem::from)
    })
    .await
}

#[utoipa::path(post, path = "/v1/orders/{id}/notes", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body(content = NoteBody, description = "`{\"text\"}`"),
    responses((status = 201, description = "The note, committed with its audit row", body = Note),
        (status = 400, description = "`invalid_json`: not JSON"),
        (status = 422, description = "`invalid_body`, `invalid_text`"),
        (status = 404, description = "`order_not_found`"),
        (status = 409, description = "`too_many_notes`")))]
async fn add_note(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let b: NoteBody = oms_service::parse_json(&body)?;
    let n = note(&hub, actor, &id, &b.text).await?;
    Ok((StatusCode::CREATED, Json(n)).into_response())
}

/// The route (its role is in `api::policy`).
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(add_note)).with_state(hub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_service::auth::Role;
    use redb::ReadableTableMetadata;

    #[test]
    fn an_order_holds_a_bounded_number_of_notes_and_a_refusal_writes_only_its_audit_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("intake.redb")).unwrap();
        init(&db).unwrap();
        let actor =
            Actor { key: "svc".into(), role: Role::Service, method: "POST", route: "/v1/orders/{id}/notes".into() };
        for i in 1..=NOTES_PER_ORDER_MAX {
            assert_eq!(add(&db, "hub-1", true, format!("note {i}"), &actor).unwrap().n, i);
        }
        assert!(matches!(add(&db, "hub-1", true, "one too many".into(), &actor), Err(NoteError::TooMany(_))));
        assert!(matches!(add(&db, "hub-2", false, "nowhere".into(), &actor), Err(NoteError::NotFound(_))));
        let notes = of(&db, "hub-1").unwrap();
        assert_eq!(notes.len(), NOTES_PER_ORDER_MAX as usize);
        assert_eq!((notes[0].text.as_str(), notes[199].n), ("note 1", 200));
        assert!(of(&db, "hub-2").unwrap().is_empty() && of(&db, "hub-10").unwrap().is_empty());
        let r = db.begin_read().unwrap();
        let audit = r.open_table(AUDIT).unwrap();
        assert_eq!(audit.len().unwrap(), u64::from(NOTES_PER_ORDER_MAX) + 2, "every call leaves one row");
    }

    #[test]
    fn note_text_is_checked() {
        assert_eq!(check_text("  called back\n").unwrap(), "called back");
        assert!(check_text("line one\nline two").is_ok());
        for bad in ["", "   ", "bell\u{7}", &"x".repeat(NOTE_BYTES_MAX + 1)] {
            assert!(check_text(bad).is_err(), "{bad:?}");
        }
    }
}
