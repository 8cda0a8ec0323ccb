//! RFC 9457 problem details: every error the HTTP API returns is `application/problem+json` with a stable
//! machine `code`, and a JSON body extractor that turns every kind of bad body into such a problem.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use oms_protocol::domain::ValidationError;

/// A problem details document (RFC 9457), served as `application/problem+json`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "https://oms.dev/problems/insufficient-stock", "title": "Conflict", "status": 409,
    "detail": "2 requested, 1 available", "code": "insufficient_stock", "sku": "TSHIRT-RED-M"}))]
pub struct Problem {
    /// A URI naming the problem type; `about:blank`-style tag URIs built from the code.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened in this case and what to do about it.
    pub detail: String,
    /// Stable machine-readable code; each operation's description lists the codes it answers.
    #[schema(value_type = String)]
    pub code: &'static str,
    /// Extra members (the offending field, the shortfalls, ...).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem with `status`, `code` and a person-readable `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("https://oms.dev/problems/{}", code.replace('_', "-")),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            extra: serde_json::Map::new(),
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        if let Ok(v) = serde_json::to_value(value) {
            self.extra.insert(key.to_owned(), v);
        }
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<ValidationError> for Problem {
    fn from(e: ValidationError) -> Self {
        let field = e.field.clone();
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.to_string()).with("field", field)
    }
}

/// A JSON request body. Unlike `axum::Json` every rejection (wrong content type, too large, not JSON, wrong
/// shape) becomes a problem with its own code.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if !is_json(&media_type(req.headers())) {
            let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("send the body as application/json (got content type {ct:?})"),
            ));
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A request's query string. Unlike `axum::extract::Query` a query that does not parse (`limit=-1`) is a
/// problem (`400 invalid_query`) like every other refusal, not axum's plain-text answer.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| QueryParams(q))
            .map_err(|e| {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("bad query string: {}", e.body_text()))
            })
    }
}

/// The essence of a request's media type (`type/subtype`, lower case, without parameters); empty when the
/// request names none or its `Content-Type` is not text.
pub fn media_type(headers: &HeaderMap) -> String {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Whether a media type essence (from [`media_type`]) is JSON: `application/json` or a `+json` suffix type.
pub fn is_json(essence: &str) -> bool {
    essence == "application/json" || (essence.ends_with("+json") && essence.contains('/'))
}

/// A raw request body within the route's size limit; an oversized or unreadable body becomes a problem.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("{e}; send a smaller body"))
            } else {
                Problem::new(StatusCode::BAD_REQUEST, "unreadable_body", e.to_string())
            }
        })
    }
}

/// Parses a JSON body, telling syntax errors (`malformed_json`) from shape errors. A value refused by one of
/// the domain's validating types keeps that type's code (`unknown_currency`, `invalid_sku`, ...); a number out
/// of range for a quantity is `invalid_quantity`; anything else is `invalid_body`. The problem names the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let res: Result<T, _> = serde_path_to_error::deserialize(de);
    let value = res.map_err(|e| {
        use serde_json::error::Category;
        let field = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                Problem::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {inner}"))
            }
            Category::Data => {
                let msg = inner.to_string();
                let code = tagged_code(&msg).unwrap_or_else(|| {
                    let last = field.rsplit('.').next().unwrap_or("");
                    if ["qty", "delta", "counted", "picked", "parcels"].contains(&last) {
                        "invalid_quantity"
                    } else {
                        "invalid_body"
                    }
                });
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, format!("{field}: {msg}")).with("field", field)
            }
        }
    })?;
    Ok(value)
}

/// Finds a `[snake_code]` tag that [`ValidationError`]'s message carries.
fn tagged_code(msg: &str) -> Option<&'static str> {
    const CODES: &[&str] = &[
        "unknown_currency",
        "invalid_sku",
        "invalid_node_id",
        "invalid_order_id",
        "invalid_channel",
        "invalid_geo",
        "invalid_quantity",
    ];
    CODES.iter().copied().find(|c| msg.contains(&format!("[{c}]")))
}
