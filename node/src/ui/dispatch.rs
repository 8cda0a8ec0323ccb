//! The dispatch screen (`/ui/dispatch`): the site's consignments by state, how many wait for a label and
//! since when (while the carrier cannot be reached they pile up here and packing goes on), each one's
//! packing slip and label, and closing the day's manifest per carrier. Closing runs the same store command
//! as `POST /v1/manifests` (`cmd::CloseManifest`): only labelled consignments are taken.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use oms_service::Problem;
use oms_service::audit::Actor;
use oms_service::auth::session::UiSession;
use oms_service::web::{Form, error_box, query_escape, see_other};

use super::{ago, refused, screen, status_of};
use crate::api::{AppState, exec, text};
use crate::store::{Consignment, ConsignmentState, cmd};

/// Consignments listed per state on the dispatch screen (and read to find the carriers to close).
pub(super) const DISPATCH_ROWS: usize = 50;

/// The states listed, in the order of the floor's work, with their words.
const LISTED: [(ConsignmentState, &str); 4] = [
    (ConsignmentState::AwaitingLabel, "Waiting for a label"),
    (ConsignmentState::LabelFailed, "Label refused by the carrier"),
    (ConsignmentState::Labelled, "Labelled, for today's manifest"),
    (ConsignmentState::Manifested, "On a manifest, waiting for collection"),
];

fn state_words(s: ConsignmentState) -> &'static str {
    match s {
        ConsignmentState::AwaitingLabel => "Waiting for a label",
        ConsignmentState::Labelled => "Labelled",
        ConsignmentState::Manifested => "On a manifest",
        ConsignmentState::Collected => "Collected",
        ConsignmentState::LabelFailed => "Label refused",
        ConsignmentState::VoidPending => "Label being voided",
        ConsignmentState::Voided => "Label voided",
    }
}

/// Consignments waiting for a label: (how many, since when the oldest waits, ms).
pub(super) fn awaiting(st: &AppState) -> Result<(u64, Option<u64>), Problem> {
    let w = st.store.awaiting_label(DISPATCH_ROWS)?;
    Ok((w.count, w.oldest_since_ms))
}

#[derive(Deserialize, Default)]
pub(super) struct DoneQuery {
    done: Option<String>,
}

pub(super) async fn screen_get(
    State(st): State<AppState>,
    s: UiSession,
    Query(q): Query<DoneQuery>,
) -> Result<Response, Problem> {
    Ok(dispatch_page(&st, &s, q.done.as_deref(), None)?.into_response())
}

fn consignment_rows(list: &[Consignment], now: u64, label: &str) -> Markup {
    html! {
        div.table-wrap tabindex="0" role="region" aria-label=(label) { table {
            thead { tr { th { "Consignment" } th { "Order" } th { "Carrier" } th.num { "Parcels" } th { "Since" } th { "Papers" } } }
            tbody { @for c in list { tr {
                td { (c.id) }
                td { a href={ "/ui/orders/" (c.order) } { (c.order) } }
                td { (c.carrier) " " (c.service) }
                td.num { (c.parcels.len()) }
                td { (ago(c.labelled_ms.unwrap_or(c.created_ms), now)) " ago"
                    @if c.state == ConsignmentState::AwaitingLabel && c.label_attempts > 0 {
                        br; span.hint { (c.label_attempts) " attempts" @if let Some(e) = &c.last_error { ": " (e) } }
                    }
                    @if c.state == ConsignmentState::LabelFailed { @if let Some(e) = &c.last_error { br; span.hint { (e) } } }
                }
                td {
                    a href={ "/ui/dispatch/" (query_escape(&c.id)) "/slip" } { "Packing slip" span.visually-hidden { " for " (c.id) } }
                    @if c.tracking.is_some() {
                        " · " a href={ "/ui/dispatch/" (query_escape(&c.id)) "/label" } { "Label" span.visually-hidden { " for " (c.id) } }
                    }
                }
            } } }
        } }
    }
}

fn dispatch_page(st: &AppState, s: &UiSession, done: Option<&str>, error: Option<&str>) -> Result<Markup, Problem> {
    let now = oms_service::now_ms();
    let counts = st.store.consignment_counts()?.by_state;
    let n = |want: ConsignmentState| counts.iter().find(|(s, _)| *s == want).map_or(0, |(_, n)| *n);
    let (waiting, oldest) = awaiting(st)?;
    let mut lists = Vec::with_capacity(LISTED.len());
    for (state, words) in LISTED {
        lists.push((state, words, st.store.consignments(Some(state), None, DISPATCH_ROWS)?));
    }
    let labelled = st.store.consignments(Some(ConsignmentState::Labelled), None, st.store.page_max())?;
    let mut carriers: Vec<(String, usize)> = Vec::new();
    for c in &labelled {
        match carriers.iter_mut().find(|(name, _)| *name == c.carrier) {
            Some((_, k)) => *k += 1,
            None => carriers.push((c.carrier.clone(), 1)),
        }
    }
    carriers.sort();
    let failing =
        lists.first().is_some_and(|(_, _, l)| l.iter().any(|c| c.label_attempts > 0 && c.last_error.is_some()));
    Ok(screen(
        st,
        "Dispatch",
        s,
        html! {
            h1 { "Dispatch" }
            @if let Some(d) = done { p.done role="status" { (d) } }
            @if let Some(e) = error { (error_box(e)) }
            @if waiting > 0 {
                p.banner.offline role="status" {
                    strong { (waiting) " consignments wait for a label" }
                    @if let Some(t) = oldest { ", the oldest for " (ago(t, now)) } ". "
                    @if failing { "The carrier is not answering; labels are bought as soon as it does. Keep packing." }
                    @else { "Labels are being bought." }
                }
            } @else {
                p.banner.online role="status" { "No consignment waits for a label." }
            }
            div.tiles { @for state in ConsignmentState::ALL {
                div.tile { span.n { (n(state)) } span.l { (state_words(state)) } }
            } }
            h2 { "Close the day's manifest" }
            @if carriers.is_empty() {
                p.hint { "No labelled consignment waits for a manifest." }
            } @else {
                div.actions { @for (carrier, k) in &carriers {
                    form.card method="post" action="/ui/dispatch/manifests" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        input type="hidden" name="carrier" value=(carrier);
                        p { strong { (carrier) } ": " (k) " labelled" @if labelled.len() >= st.store.page_max() { " or more" } }
                        button type="submit" { "Close the manifest for " (carrier) }
                    }
                } }
            }
            @for (_, words, list) in &lists {
                h2 { (words) }
                @if list.is_empty() { p.hint { "None." } } @else { (consignment_rows(list, now, words)) }
            }
        },
    ))
}

pub(super) async fn close(State(st): State<AppState>, actor: Actor, f: Form) -> Result<Response, Problem> {
    let carrier = match f.require("carrier", "The carrier") {
        Ok(c) => c.to_owned(),
        Err(p) => return Ok(refused(status_of(&p), dispatch_page(&st, &f.session, None, Some(&p.detail))?)),
    };
    if let Err(p) = text("carrier", &carrier, true) {
        return Ok(refused(status_of(&p), dispatch_page(&st, &f.session, None, Some(&p.detail))?));
    }
    match exec(&st, &actor, Some(carrier.clone()), cmd::CloseManifest { carrier: Some(carrier) }).await {
        Ok(closed) => {
            let each: Vec<String> = closed
                .manifests
                .iter()
                .map(|m| format!("{} for {} with {} consignments", m.id, m.carrier, m.consignments.len()))
                .collect();
            let mut done = format!("Closed manifest {}.", each.join(", "));
            if closed.left {
                done.push_str(" More labelled consignments wait: close again.");
            }
            Ok(see_other(&format!("/ui/dispatch?done={}", query_escape(&done))))
        }
        Err(p) => Ok(refused(status_of(&p), dispatch_page(&st, &f.session, None, Some(&p.detail))?)),
    }
}

/// The packing slip, for a screen: the same page as `GET /v1/consignments/{id}/slip`.
pub(super) async fn slip(st: State<AppState>, id: Path<String>) -> Result<Response, Problem> {
    crate::dispatch::slip(st, id).await
}

/// The label, for a screen: the same document as `GET /v1/consignments/{id}/label`.
pub(super) async fn label(st: State<AppState>, id: Path<String>) -> Result<Response, Problem> {
    crate::api::get_label(st, id).await
}
