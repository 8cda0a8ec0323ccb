//! What the node's and the hub's OpenAPI 3.1 documents share (each server derives its own from its handlers'
//! `#[utoipa::path]` annotations through `utoipa_axum::router::OpenApiRouter`, so a route cannot be served
//! without being documented, nor documented on another method or path than it is served on):
//!
//! - [`finish`]: the title, the auth schemes, and for every operation what the server's [`Policy`] says
//!   (open, or which roles; a bearer API key) and the `application/problem+json` answers every operation can
//!   give (4XX and 5XX, the [`Problem`] schema), so no handler repeats them;
//! - [`route`]: `GET /openapi.json`, the document itself (open: it names no secret and an integrator reads it
//!   before holding a key);
//! - [`is_screen`]: the HTML screens (`/`, `/ui…`, `/t/{token}`), which the documents leave out: they are
//!   pages and forms for people signed in with a session cookie, not an integration surface;
//! - [`registered_paths`]: the paths a built router serves, for the completeness tests.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Extension;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Problem;
use crate::auth::session::SESSION_COOKIE;
use crate::auth::{Access, Policy};

/// Name of the bearer API key scheme in the documents.
pub const API_KEY_SCHEME: &str = "api_key";
/// Name of the screens' session cookie scheme in the documents.
pub const SESSION_SCHEME: &str = "session";
/// The media type of every refusal.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The example order of the documents' `POST /v1/orders` (node and hub take the same body).
pub fn order_example() -> serde_json::Value {
    serde_json::json!({
        "external_ref": "web-100234",
        "channel": "web",
        "lines": [{"sku": "TSHIRT-RED-M", "qty": 2, "unit_price_minor": 1999, "currency": "EUR"}],
        "ship_to": {"name": "Ada Lovelace", "line1": "1 Analytical Way", "city": "Berlin", "postcode": "10115",
            "country": "DE", "lat": 52.53, "lon": 13.38},
        "contact": {"email": "ada@example.com"}
    })
}

/// Whether `path` is one of the HTML screens, which the documents leave out (see the module's doc).
pub fn is_screen(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/") || path == "/t" || path.starts_with("/t/")
}

/// The document as served: built once at start, shared by every request.
#[derive(Clone)]
struct Document(Arc<[u8]>);

/// This OpenAPI 3.1 document (JSON).
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
async fn openapi_json(Extension(doc): Extension<Document>) -> Response {
    let mut resp = doc.0.to_vec().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `GET /openapi.json` for an [`OpenApiRouter`]; serve it with [`serve`] once the document is [`finish`]ed.
pub fn route<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// Gives [`route`] the finished document to answer with.
pub fn serve<S: Clone + Send + Sync + 'static>(router: axum::Router<S>, doc: &OpenApi) -> axum::Router<S> {
    // A document that cannot be serialized is served empty rather than failing the start; the tests read it.
    let json = serde_json::to_vec(doc).unwrap_or_default();
    router.layer(Extension(Document(json.into())))
}

/// Completes `doc` as split off a server's router: title and description, the auth schemes, and on every
/// operation who may call it (from `policy`) and the problem answers.
pub fn finish(mut doc: OpenApi, title: &str, description: &str, policy: Policy) -> OpenApi {
    doc.info.title = title.to_owned();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.description = Some(description.to_owned());
    doc.info.license = Some(utoipa::openapi::License::new("Apache-2.0"));
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        API_KEY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API key from `oms keys create`: `Authorization: Bearer <token>`."))
                .build(),
        ),
    );
    components.add_security_scheme(
        SESSION_SCHEME,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            SESSION_COOKIE,
            "The HTML screens' (`/ui`) session after signing in; the screens are not listed in this document.",
        ))),
    );
    components.schemas.insert("Problem".to_owned(), <Problem as utoipa::PartialSchema>::schema());
    let problem = ResponseBuilder::new()
        .description("Refused: an RFC 9457 problem with a stable `code`; nothing was changed.")
        .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
        .build();
    components.responses.insert("Problem".to_owned(), RefOr::T(problem));
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ] {
            if let Some(op) = op {
                complete_operation(op, policy(&method, Some(path)));
            }
        }
    }
    doc
}

fn complete_operation(op: &mut Operation, access: Access) {
    let who = match access {
        Access::Open => {
            op.security = Some(vec![SecurityRequirement::default()]);
            "Open: no key needed (rate limited per client address).".to_owned()
        }
        Access::Roles(roles) => {
            op.security = Some(vec![SecurityRequirement::new(API_KEY_SCHEME, Vec::<String>::new())]);
            let mut names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            names.push("admin");
            format!("Roles: {}.", names.join(", "))
        }
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{who}"),
        _ => who,
    });
    let mut responses = ResponsesBuilder::new().build();
    std::mem::swap(&mut responses, &mut op.responses);
    for wildcard in ["4XX", "5XX"] {
        responses
            .responses
            .entry(wildcard.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Problem")));
    }
    op.responses = responses;
}

/// The paths `router` serves, as its `Debug` shows them (axum offers no other listing): for the completeness
/// tests, which compare them with the document's. Empty if axum's `Debug` output changes shape, which those
/// tests catch.
pub fn registered_paths<S>(router: &axum::Router<S>) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let mut out = BTreeSet::new();
    // `RouteId(3): "/v1/orders"` within `Node { paths: {…} }`.
    let mut rest = debug.as_str();
    while let Some(at) = rest.find("RouteId(") {
        rest = &rest[at + "RouteId(".len()..];
        let Some(open) = rest.find(": \"") else { break };
        let tail = &rest[open + 3..];
        let Some(close) = tail.find('"') else { break };
        // axum's own catch-all of a router with a fallback is not a route.
        if !tail[..close].contains("__private__axum") {
            out.insert(tail[..close].to_owned());
        }
        rest = &tail[close..];
    }
    out
}

/// The operations whose answer describes itself: `GET /openapi.json` answers with the document, whose
/// schema is OpenAPI's own, not one of this document's.
const SELF_DESCRIBED: &[&str] = &["/openapi.json"];

/// The 2xx answers of `doc` (a served document, as JSON) whose schema says nothing of their shape: a bare
/// `{"type": "object"}` (what `body = Object` makes) with no properties, no `$ref`, no composition and no
/// `additionalProperties`. Each as `METHOD PATH STATUS MEDIA-TYPE`; empty when every answer is typed (the
/// completeness tests require it). Give such a response a `#[derive(Serialize, utoipa::ToSchema)]` struct
/// that the handler answers with.
pub fn untyped_responses(doc: &serde_json::Value) -> Vec<String> {
    let bare = |schema: &serde_json::Value| {
        let Some(m) = schema.as_object() else { return false };
        m.get("type").and_then(serde_json::Value::as_str) == Some("object")
            && !["properties", "$ref", "allOf", "oneOf", "anyOf", "additionalProperties"]
                .iter()
                .any(|k| m.contains_key(*k))
    };
    let mut out = Vec::new();
    let Some(paths) = doc.get("paths").and_then(serde_json::Value::as_object) else { return out };
    for (path, item) in paths.iter().filter(|(p, _)| !SELF_DESCRIBED.contains(&p.as_str())) {
        let Some(item) = item.as_object() else { continue };
        for (method, op) in item {
            let Some(responses) = op.get("responses").and_then(serde_json::Value::as_object) else { continue };
            for (status, resp) in responses.iter().filter(|(s, _)| s.starts_with('2')) {
                let Some(content) = resp.get("content").and_then(serde_json::Value::as_object) else { continue };
                for (media, c) in content {
                    if c.get("schema").is_some_and(bare) {
                        out.push(format!("{} {path} {status} {media}", method.to_uppercase()));
                    }
                }
            }
        }
    }
    out
}

/// The completeness check of a server's document: every path `router` serves but the screens is in `doc`,
/// and every path of `doc` is served. The error names each route that lacks documentation (or is documented
/// but not served) and what to do.
pub fn check_complete<S>(router: &axum::Router<S>, doc: &OpenApi) -> Result<(), String> {
    let served = registered_paths(router);
    if served.is_empty() {
        return Err(
            "no routes read from the router's Debug output: axum changed its shape; fix registered_paths".into()
        );
    }
    let served: BTreeSet<&str> = served.iter().map(String::as_str).filter(|p| !is_screen(p)).collect();
    let documented: BTreeSet<&str> = doc.paths.paths.keys().map(String::as_str).collect();
    let mut errors = Vec::new();
    for p in served.difference(&documented) {
        errors.push(format!(
            "route {p} is served but not in the OpenAPI document: annotate its handler with #[utoipa::path] and \
             register it with .routes(routes!(handler)) instead of .route()"
        ));
    }
    for p in documented.difference(&served) {
        errors.push(format!("route {p} is in the OpenAPI document but the router does not serve it"));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors.join("\n")) }
}
