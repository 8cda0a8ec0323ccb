//! The checks every request to the node's and the hub's HTTP APIs passes before a handler sees it, so that a
//! web page open in an operator's browser cannot read or drive either server:
//!
//! - **Host** ([`AllowedHosts`], [`check_host_and_origin`]): a request whose `Host` (or absolute-form
//!   authority) is not on the allow-list is `421 misdirected_request`, `/healthz` included. A DNS-rebinding
//!   page reaches the server under the attacker's own name, which is not on the list.
//! - **Origin** (same middleware): a state-changing request (POST, PUT, PATCH, DELETE) carrying an `Origin`
//!   whose host is not on the allow-list is `403 forbidden_origin`. Requests without `Origin` (curl, scripts,
//!   servers) pass; the port of an origin is not compared.
//! - **Content type** ([`require_media_type`]): every POST, PUT and PATCH names the media type its route
//!   takes, also with an empty body, or it is `415 unsupported_media_type` and no handler runs. Without a
//!   CORS preflight (which these servers never grant) a cross-site form or `fetch` can only send
//!   `text/plain`, `application/x-www-form-urlencoded`, `multipart/form-data` or no content type at all.
//! - [`method_label`]: a request method as a metric label from a fixed set.
//!
//! [`crate::serve::serve`] installs the host and origin check on the whole router; each server puts
//! [`require_media_type`] on its routes, since only it knows which take CSV.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::problem::{Problem, is_json, media_type};

/// Most names on a host allow-list.
pub const ALLOWED_HOSTS_MAX: usize = 64;
/// Longest host name, bytes (RFC 1035).
pub const HOST_BYTES_MAX: usize = 253;
/// The loopback names every default allow-list holds.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];
/// Most characters of a refused host or origin quoted back in a problem.
const QUOTED_CHARS_MAX: usize = 100;

/// A host name refused in a configured allow-list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http.allowed_hosts: {host:?} {why}")]
pub struct HostError {
    /// The entry as configured.
    pub host: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The host names (any port) a server answers to: DNS names in lower case without a trailing dot, IPv4
/// addresses, and IPv6 addresses in brackets (`[::1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// The allow-list: `configured` if given (it replaces the default entirely), otherwise the loopback
    /// names ([`LOOPBACK_HOSTS`]) and `listen`, the IP the server listens on, unless that is unspecified
    /// (`0.0.0.0`, `::`: list the names clients use instead).
    pub fn new(configured: Option<&[String]>, listen: IpAddr) -> Result<Self, HostError> {
        let mut names = Vec::new();
        match configured {
            Some(list) => {
                if list.is_empty() {
                    return Err(HostError { host: String::new(), why: "the list must name at least one host" });
                }
                if list.len() > ALLOWED_HOSTS_MAX {
                    return Err(HostError { host: String::new(), why: "the list has more than 64 hosts" });
                }
                for host in list {
                    names.push(normalize_host(host).map_err(|why| HostError { host: host.clone(), why })?);
                }
            }
            None => {
                names.extend(LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()));
                if !listen.is_unspecified() {
                    names.push(ip_host(listen));
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(AllowedHosts { names })
    }

    /// The names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `host` (a name without a port, as [`normalize_host`] returns it) is allowed.
    pub fn contains(&self, host: &str) -> bool {
        self.names.iter().any(|n| n == host)
    }

    /// Whether an authority (`host[:port]`, as in a `Host` header) names an allowed host.
    pub fn allows_authority(&self, authority: &str) -> bool {
        host_of_authority(authority).is_some_and(|h| self.contains(&h))
    }

    /// Whether an `Origin` header value (`scheme://host[:port]`) names an allowed host; `null` never does.
    pub fn allows_origin(&self, origin: &str) -> bool {
        origin_host(origin).is_some_and(|h| self.contains(&h))
    }
}

/// An IP as a host name: IPv6 in brackets.
fn ip_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A host name (no port) in the form [`AllowedHosts`] compares: lower case, no trailing dot, IP addresses in
/// their canonical form (IPv6 in brackets, with or without them on input).
pub fn normalize_host(host: &str) -> Result<String, &'static str> {
    if host.is_empty() || host.len() > HOST_BYTES_MAX + 2 {
        return Err("must be 1 to 253 bytes");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("has an unclosed bracket")?;
        return inner.parse::<Ipv6Addr>().map(|ip| format!("[{ip}]")).map_err(|_| "is not an IPv6 address");
    }
    if let Ok(ip) = host.parse::<Ipv6Addr>() {
        return Ok(format!("[{ip}]"));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty()
        || name.len() > HOST_BYTES_MAX
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("is not a host name (letters, digits, - . _; no port, no scheme, no wildcard)");
    }
    Ok(name.to_ascii_lowercase())
}

/// The host of an authority `host[:port]` (`[v6]:port` for IPv6), normalized; `None` if it is not one (user
/// info, a bad port, an unbracketed IPv6 address).
pub fn host_of_authority(authority: &str) -> Option<String> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, ""),
            _ => (host, rest.strip_prefix(':')?),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, port),
            None => (authority, ""),
        }
    };
    if !port.is_empty() && (!port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()) {
        return None;
    }
    normalize_host(host).ok()
}

/// The host of an `Origin` header value (`scheme://host[:port]`), normalized; `None` for `null` or anything
/// that is not a serialized origin.
pub fn origin_host(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok =
        !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || authority.contains(['/', '?', '#']) {
        return None;
    }
    host_of_authority(authority)
}

/// Whether `m` changes state: POST, PUT, PATCH, DELETE.
pub fn is_state_changing(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// Quotes a refused header value back, bounded.
fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(QUOTED_CHARS_MAX).collect();
    format!("{cut:?}")
}

/// The host check and the origin check of one request.
pub fn host_and_origin(
    allowed: &AllowedHosts,
    method: &Method,
    authority: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), Problem> {
    let misdirected = |what: String| {
        Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            format!("this server does not answer to {what}; the names it answers to are set by http.allowed_hosts"),
        )
    };
    let mut named = false;
    if let Some(a) = authority {
        named = true;
        if !allowed.allows_authority(a) {
            return Err(misdirected(format!("host {}", quoted(a))));
        }
    }
    for h in headers.get_all(header::HOST) {
        named = true;
        let h = h.to_str().unwrap_or("");
        if !allowed.allows_authority(h) {
            return Err(misdirected(format!("host {}", quoted(h))));
        }
    }
    if !named {
        return Err(misdirected("a request without a Host header".to_owned()));
    }
    if is_state_changing(method) {
        for o in headers.get_all(header::ORIGIN) {
            let o = o.to_str().unwrap_or("");
            if !allowed.allows_origin(o) {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    format!(
                        "a page from origin {} may not change anything here; send the request without an Origin \
                         header or from a host in http.allowed_hosts",
                        quoted(o)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Middleware: [`host_and_origin`] over the request, the problem instead of the handler's answer on refusal.
pub async fn check_host_and_origin(State(allowed): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let authority = req.uri().authority().map(|a| a.as_str());
    if let Err(p) = host_and_origin(&allowed, req.method(), authority, req.headers()) {
        return p.into_response();
    }
    next.run(req).await
}

/// The media type a route's request bodies have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/json` (or a `+json` type); body-less writes send it with an empty body or `{}`.
    Json,
    /// `text/csv`.
    Csv,
}

impl MediaType {
    /// The type as a client names it.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Json => "application/json",
            MediaType::Csv => "text/csv",
        }
    }

    /// Whether a media type essence (as [`crate::problem::media_type`] reads it) is this type.
    pub fn accepts(self, essence: &str) -> bool {
        match self {
            MediaType::Json => is_json(essence),
            MediaType::Csv => essence == "text/csv",
        }
    }
}

/// Whether requests with method `m` must name their media type: POST, PUT, PATCH.
pub fn takes_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

/// The content-type check of one request to a route that takes `media`.
pub fn content_type(media: MediaType, method: &Method, headers: &HeaderMap) -> Result<(), Problem> {
    if !takes_body(method) {
        return Ok(());
    }
    let essence = media_type(headers);
    if media.accepts(&essence) {
        return Ok(());
    }
    let got = if essence.is_empty() { "none".to_owned() } else { quoted(&essence) };
    Err(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("send Content-Type: {} (also with an empty body); got {got}", media.as_str()),
    )
    .with("accept", media.as_str()))
}

async fn check_media_type(State(media): State<MediaType>, req: Request, next: Next) -> Response {
    if let Err(p) = content_type(media, req.method(), req.headers()) {
        return p.into_response();
    }
    next.run(req).await
}

/// Requires every POST, PUT and PATCH to the routes of `router` (those it has now; call it after adding
/// them) to name `media` as its content type: `415 unsupported_media_type` otherwise, before the handler runs.
pub fn require_media_type<S>(router: Router<S>, media: MediaType) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(middleware::from_fn_with_state(media, check_media_type))
}

/// A request method as a metric label: the standard methods by name, anything else `other`, so invented
/// methods cannot grow a label set without bound.
pub fn method_label(m: &Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn defaults(listen: &str) -> AllowedHosts {
        AllowedHosts::new(None, listen.parse().unwrap()).unwrap()
    }

    #[test]
    fn default_list_is_loopback_and_the_listen_ip() {
        assert_eq!(defaults("127.0.0.1").names(), ["127.0.0.1", "[::1]", "localhost"]);
        assert_eq!(defaults("10.1.2.3").names(), ["10.1.2.3", "127.0.0.1", "[::1]", "localhost"]);
        assert_eq!(defaults("fe80::1").names(), ["127.0.0.1", "[::1]", "[fe80::1]", "localhost"]);
        assert_eq!(defaults("0.0.0.0").names().len(), 3, "an unspecified address names no host");
        assert_eq!(defaults("::").names().len(), 3);
    }

    #[test]
    fn configured_list_replaces_the_default_and_is_checked() {
        let list = ["WH-North.example.".to_owned(), "::1".to_owned(), "10.0.0.5".to_owned()];
        let a = AllowedHosts::new(Some(&list), "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(a.names(), ["10.0.0.5", "[::1]", "wh-north.example"]);
        assert!(!a.allows_authority("localhost:8081"), "replaced, not added to");
        for bad in ["", "a:80", "http://x", "*.example", "[::1", "[x]", "a b"] {
            let e = AllowedHosts::new(Some(&[bad.to_owned()]), "127.0.0.1".parse().unwrap()).unwrap_err();
            assert_eq!(e.host, bad);
        }
        assert!(AllowedHosts::new(Some(&[]), "127.0.0.1".parse().unwrap()).is_err());
        let many: Vec<String> = (0..=ALLOWED_HOSTS_MAX).map(|i| format!("h{i}")).collect();
        assert!(AllowedHosts::new(Some(&many), "127.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn authorities_match_by_host_whatever_the_port() {
        let a = defaults("127.0.0.1");
        for ok in
            ["localhost", "LOCALHOST:8081", "localhost.:1", "127.0.0.1:80", "[::1]:8081", "[0:0::1]", "localhost:"]
        {
            assert!(a.allows_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8081",
            "localhost.evil.example",
            "::1",
            "127.0.0.1:99999",
            "user@localhost",
            "127.1",
            "localhost:80:80",
            "[::1]x",
            "",
            "127.0.0.2",
        ] {
            assert!(!a.allows_authority(bad), "{bad}");
        }
    }

    #[test]
    fn origins_match_by_host() {
        let a = defaults("127.0.0.1");
        assert!(a.allows_origin("http://localhost:3000"));
        assert!(a.allows_origin("https://127.0.0.1"));
        assert!(a.allows_origin("http://[::1]:8081"));
        for bad in
            ["null", "http://evil.example", "localhost", "http://localhost/x", "://localhost", "http://a@localhost"]
        {
            assert!(!a.allows_origin(bad), "{bad}");
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn host_and_origin_refusals_carry_their_codes() {
        let a = defaults("127.0.0.1");
        let ok = headers(&[(header::HOST, "localhost:8081")]);
        assert!(host_and_origin(&a, &Method::GET, None, &ok).is_ok());
        let e = host_and_origin(&a, &Method::GET, None, &headers(&[(header::HOST, "evil.example")])).unwrap_err();
        assert_eq!((e.status, e.code), (421, "misdirected_request"));
        assert_eq!(host_and_origin(&a, &Method::GET, None, &HeaderMap::new()).unwrap_err().status, 421);
        let e = host_and_origin(&a, &Method::GET, Some("evil.example"), &ok).unwrap_err();
        assert_eq!(e.status, 421, "an absolute-form authority is checked too");
        let two = headers(&[(header::HOST, "localhost"), (header::HOST, "evil.example")]);
        assert_eq!(host_and_origin(&a, &Method::GET, None, &two).unwrap_err().status, 421);

        let cross = headers(&[(header::HOST, "localhost"), (header::ORIGIN, "http://evil.example")]);
        assert!(host_and_origin(&a, &Method::GET, None, &cross).is_ok(), "reads are not origin-checked");
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let e = host_and_origin(&a, &m, None, &cross).unwrap_err();
            assert_eq!((e.status, e.code), (403, "forbidden_origin"), "{m}");
        }
        let same = headers(&[(header::HOST, "localhost"), (header::ORIGIN, "http://localhost:5173")]);
        assert!(host_and_origin(&a, &Method::POST, None, &same).is_ok());
        let null = headers(&[(header::HOST, "localhost"), (header::ORIGIN, "null")]);
        assert_eq!(host_and_origin(&a, &Method::POST, None, &null).unwrap_err().status, 403);
    }

    #[test]
    fn writes_must_name_their_media_type() {
        let json = |ct: &str| headers(&[(header::CONTENT_TYPE, ct)]);
        assert!(content_type(MediaType::Json, &Method::POST, &json("application/json")).is_ok());
        assert!(content_type(MediaType::Json, &Method::PUT, &json("Application/JSON; charset=utf-8")).is_ok());
        assert!(content_type(MediaType::Json, &Method::POST, &json("application/merge-patch+json")).is_ok());
        assert!(content_type(MediaType::Json, &Method::GET, &HeaderMap::new()).is_ok(), "reads take no body");
        assert!(content_type(MediaType::Json, &Method::DELETE, &HeaderMap::new()).is_ok());
        for bad in
            ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/csv", "+json"]
        {
            let e = content_type(MediaType::Json, &Method::POST, &json(bad)).unwrap_err();
            assert_eq!((e.status, e.code), (415, "unsupported_media_type"), "{bad}");
        }
        let e = content_type(MediaType::Json, &Method::PATCH, &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, 415, "no content type at all");
        assert!(content_type(MediaType::Csv, &Method::POST, &json("text/csv; header=present")).is_ok());
        assert_eq!(content_type(MediaType::Csv, &Method::POST, &json("application/json")).unwrap_err().status, 415);
        assert_eq!(content_type(MediaType::Csv, &Method::POST, &json("text/plain")).unwrap_err().status, 415);
    }

    #[test]
    fn invented_methods_fold_into_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let labels: std::collections::BTreeSet<&str> =
            (0..50).map(|i| method_label(&Method::from_bytes(format!("X{i}").as_bytes()).unwrap())).collect();
        assert_eq!(labels.into_iter().collect::<Vec<_>>(), ["other"]);
    }
}
