//! `GET /v1/reports` (JSON, or CSV with `format=csv`) and the planner's `/ui/reports` screen: the same
//! report, drawn as charts (orders per day; fill and on-time rates; time to ship p50 / p90) with tables per
//! site and per channel and a CSV link.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, PreEscaped, html};
use oms_service::Problem;
use oms_service::auth::session::UiSession;
use oms_service::web::{Chrome, error_box, page, query_escape};
use std::collections::HashMap;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{FiguresView, Period, Report, ReportError, day_of};
use crate::server::Hub;

/// The query of a report.
#[derive(Debug, Default, Clone, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// First day, `YYYY-MM-DD` (UTC; default 13 days before `to`).
    from: Option<String>,
    /// Last day, inclusive (default today).
    to: Option<String>,
    /// Only this site's fulfillment figures.
    site: Option<String>,
    /// Only this channel's orders.
    channel: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

impl ReportQuery {
    /// The query from its parameters; an unknown one is an `invalid_query` (a typo must not widen a report).
    fn parse(q: HashMap<String, String>) -> Result<ReportQuery, Problem> {
        let mut out = ReportQuery::default();
        for (k, v) in q {
            let slot = match k.as_str() {
                "from" => &mut out.from,
                "to" => &mut out.to,
                "site" => &mut out.site,
                "channel" => &mut out.channel,
                "format" => &mut out.format,
                _ => {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        format!("unknown parameter {k:?}: from, to, site, channel and format are known"),
                    ));
                }
            };
            *slot = Some(v);
        }
        Ok(out)
    }

    fn period(&self) -> Result<Period, ReportError> {
        Period::parse(
            self.from.as_deref().filter(|s| !s.is_empty()),
            self.to.as_deref().filter(|s| !s.is_empty()),
            self.site.clone(),
            self.channel.clone(),
            day_of(oms_service::now_ms()),
        )
    }

    /// The query string without `format`, for links.
    fn query(&self) -> String {
        [("from", &self.from), ("to", &self.to), ("site", &self.site), ("channel", &self.channel)]
            .iter()
            .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| format!("{k}={}", query_escape(v))))
            .collect::<Vec<_>>()
            .join("&")
    }
}

impl From<ReportError> for Problem {
    fn from(e: ReportError) -> Problem {
        match e {
            ReportError::Invalid(d) => Problem::new(StatusCode::BAD_REQUEST, "invalid_query", d),
            ReportError::TooLarge => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "report_too_large", e.to_string()),
            ReportError::Storage(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string()),
        }
    }
}

/// The routes: `GET /v1/reports` (in the OpenAPI document) and the screens (left out of it).
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(reports))
        .route("/ui/reports", get(reports_screen))
        .route("/ui/reports.csv", get(reports_csv))
        .with_state(hub)
}

/// Reads the report off the async workers (a read transaction and at most [`super::ROWS_MAX`] rows).
async fn read(hub: &Arc<Hub>, p: Period) -> Result<Report, Problem> {
    let hub = hub.clone();
    match tokio::task::spawn_blocking(move || super::report(hub.intake.db(), &p)).await {
        Ok(r) => r.map_err(Problem::from),
        Err(e) => Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "report_failed", e.to_string())),
    }
}

fn csv_response(r: &Report) -> Response {
    match super::csv(r) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"report-{}-{}.csv\"", r.from, r.to)),
            ],
            body,
        )
            .into_response(),
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string()).into_response(),
    }
}

#[utoipa::path(get, path = "/v1/reports", tag = "reports", params(ReportQuery),
    responses((status = 200, description = "The period's figures: total, per day, per site, per channel; the same as csv",
        content((Report = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_query`: a malformed date, `from` after `to`, more than 366 days"),
        (status = 422, description = "`report_too_large`: more rows than a report reads")))]
async fn reports(State(hub): State<Arc<Hub>>, Query(q): Query<HashMap<String, String>>) -> Result<Response, Problem> {
    let q = ReportQuery::parse(q)?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("format must be json or csv, got {other:?}"),
            ));
        }
    };
    let r = read(&hub, q.period()?).await?;
    Ok(if csv { csv_response(&r) } else { Json(r).into_response() })
}

async fn reports_csv(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    Ok(csv_response(&read(&hub, ReportQuery::parse(q)?.period()?).await?))
}

async fn reports_screen(
    State(hub): State<Arc<Hub>>,
    session: UiSession,
    chrome: Extension<Arc<Chrome>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let q = match ReportQuery::parse(q) {
        Ok(q) => q,
        Err(p) => return p.into_response(),
    };
    let report = match q.period() {
        Ok(p) => read(&hub, p).await.map_err(|p| p.detail),
        Err(e) => Err(e.to_string()),
    };
    report_page(&chrome, &session, &q, report.as_ref()).into_response()
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{:.1} %", x * 100.0))
}

fn hours(v: Option<u64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(s) if s < 3_600 => format!("{} min", s / 60),
        Some(s) if s < 172_800 => format!("{:.1} h", s as f64 / 3_600.0),
        Some(s) => format!("{:.1} days", s as f64 / 86_400.0),
    }
}

fn report_page(chrome: &Chrome, session: &UiSession, q: &ReportQuery, r: Result<&Report, &String>) -> Markup {
    let v = |s: &Option<String>| s.clone().unwrap_or_default();
    page(
        chrome,
        "Reports",
        Some(session),
        html! {
            h1 { "Reports" }
            form.card.actions method="get" action="/ui/reports" {
                div { label for="from" { "From" } input id="from" name="from" type="date" value=(v(&q.from)); }
                div { label for="to" { "To" } input id="to" name="to" type="date" value=(v(&q.to)); }
                div { label for="site" { "Site" span.hint { "blank: the network" } } input id="site" name="site" value=(v(&q.site)); }
                div { label for="channel" { "Channel" span.hint { "blank: all" } } input id="channel" name="channel" value=(v(&q.channel)); }
                button type="submit" { "Show" }
            }
            @match r {
                Err(e) => { (error_box(e)) }
                Ok(r) => { (report_body(q, r)) }
            }
        },
    )
}

fn report_body(q: &ReportQuery, r: &Report) -> Markup {
    let t = &r.total;
    let labels: Vec<&str> = r.days.iter().map(|d| d.day.as_str()).collect();
    let series = |f: &dyn Fn(&FiguresView) -> Option<f64>| r.days.iter().map(|d| f(&d.figures)).collect::<Vec<_>>();
    let orders = series(&|f| Some(f.orders as f64));
    let fill = series(&|f| f.fill_rate.map(|x| x * 100.0));
    let on_time = series(&|f| f.on_time_rate.map(|x| x * 100.0));
    let p50 = series(&|f| f.ship_time_p50_s.map(|s| s as f64 / 3_600.0));
    let p90 = series(&|f| f.ship_time_p90_s.map(|s| s as f64 / 3_600.0));
    html! {
        p { "From " strong { (r.from) } " to " strong { (r.to) } " (UTC days)"
            @if let Some(s) = &r.site { ", site " strong { (s) } " (its shipments; orders are the network's)" }
            @if let Some(c) = &r.channel { ", channel " strong { (c) } }
            ". " a href={ "/ui/reports.csv?" (q.query()) } { "Download as CSV" }
            @if let Some(since) = &r.since { span.hint { "Figures exist from " (since) "." } } }
        div.tiles {
            div.tile { span.n { (t.orders) } span.l { "orders" } }
            div.tile { span.n { (pct(t.fill_rate)) } span.l { "fill rate at intake" } }
            div.tile { span.n { (pct(t.on_time_rate)) } span.l { "shipped on time" } }
            div.tile { span.n { (hours(t.ship_time_p50_s)) } span.l { "order to ship, median" } }
            div.tile { span.n { (hours(t.ship_time_p90_s)) } span.l { "order to ship, 90 %" } }
            div.tile { span.n { (t.units_backordered_at_intake) } span.l { "units backordered" } }
            div.tile { span.n { (pct(t.cancellation_rate)) } span.l { "cancelled" } }
            div.tile { span.n { (pct(t.returns_rate)) } span.l { "returned" } }
        }
        h2 { "Orders per day" }
        figure.card { (PreEscaped(bars_svg(&labels, &orders, "Orders per day"))) }
        h2 { "Fill rate and shipped on time" }
        figure.card {
            (PreEscaped(lines_svg(&labels, &[("fill rate", &fill), ("on time", &on_time)], Some(100.0), "%", "Fill rate and on-time rate per day, percent")))
            figcaption.hint { "Fill rate (dark): units placed at intake of units ordered. On time (blue): shipments by the site's promised ship-by." }
        }
        h2 { "Time from order to ship" }
        figure.card {
            (PreEscaped(lines_svg(&labels, &[("median", &p50), ("90 %", &p90)], None, "h", "Hours from order to ship per day: median and 90th percentile")))
            figcaption.hint { "Hours, by the day the site shipped: median (dark) and 90th percentile (blue)." }
        }
        h2 { "Per site" }
        div.table-wrap { table {
            thead { tr { th { "Site" } th.num { "Units routed" } th.num { "Shipped" } th.num { "On time" }
                th.num { "Median to ship" } th.num { "90 % to ship" } th.num { "Delivered" } th.num { "Returns" } } }
            tbody {
                @for s in &r.sites { tr {
                    td { (s.name) } td.num { (s.figures.units_routed) } td.num { (s.figures.shipped) }
                    td.num { (pct(s.figures.on_time_rate)) } td.num { (hours(s.figures.ship_time_p50_s)) }
                    td.num { (hours(s.figures.ship_time_p90_s)) } td.num { (s.figures.delivered) } td.num { (s.figures.returns) }
                } }
                @if r.sites.is_empty() { tr { td colspan="8" { "Nothing shipped or routed in this period." } } }
            }
        } }
        h2 { "Per channel" }
        div.table-wrap { table {
            thead { tr { th { "Channel" } th.num { "Orders" } th.num { "Units" } th.num { "Fill rate" }
                th.num { "Backordered units" } th.num { "Cancelled" } th.num { "Shipped" } } }
            tbody {
                @for c in &r.channels { tr {
                    td { (c.name) } td.num { (c.figures.orders) } td.num { (c.figures.units_ordered) }
                    td.num { (pct(c.figures.fill_rate)) } td.num { (c.figures.units_backordered_at_intake) }
                    td.num { (c.figures.cancellations) } td.num { (c.figures.shipped) }
                } }
                @if r.channels.is_empty() { tr { td colspan="7" { "No orders in this period." } } }
            }
        } }
    }
}

/// Chart geometry shared by the two charts: width, height, left margin, bottom margin, top margin.
const GEOMETRY: (f64, f64, f64, f64, f64) = (720.0, 220.0, 44.0, 24.0, 8.0);
const COLOURS: [&str; 2] = ["#1f2933", "#1d4ed8"];

/// The frame of a chart: the y axis with its top value and the first and last day under the x axis.
/// Charts are drawn by hand, as the forecast's is (`crate::ui`): a few rectangles and polylines with labelled
/// axes, where a charting crate would bring a font stack.
fn frame(labels: &[&str], top_value: f64, unit: &str, title: &str, body: &str) -> String {
    let (w, h, left, bottom, top) = GEOMETRY;
    let first = labels.first().copied().unwrap_or("");
    let last = labels.last().copied().unwrap_or("");
    format!(
        r##"<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg" style="max-width:{w}px;font:12px system-ui,sans-serif">
<line x1="{left}" y1="{top}" x2="{left}" y2="{yb}" stroke="#52606d"/>
<line x1="{left}" y1="{yb}" x2="{w}" y2="{yb}" stroke="#52606d"/>
<text x="{lx}" y="{ty}" text-anchor="end" fill="#3e4c59">{top_value:.0}{unit}</text>
<text x="{lx}" y="{yb}" text-anchor="end" fill="#3e4c59">0</text>
<text x="{left}" y="{h}" fill="#3e4c59">{first}</text>
<text x="{w}" y="{h}" text-anchor="end" fill="#3e4c59">{last}</text>
{body}</svg>"##,
        yb = h - bottom,
        lx = left - 4.0,
        ty = top + 10.0,
    )
}

/// Bars, one per day.
pub(crate) fn bars_svg(labels: &[&str], values: &[Option<f64>], title: &str) -> String {
    let (w, h, left, bottom, top) = GEOMETRY;
    let max = values.iter().flatten().fold(0.0_f64, |a, b| a.max(*b)).max(1.0);
    let n = values.len().max(1) as f64;
    let slot = (w - left) / n;
    let mut body = String::new();
    for (i, (v, label)) in values.iter().zip(labels).enumerate() {
        let v = v.unwrap_or(0.0);
        let bh = (h - bottom - top) * v / max;
        body.push_str(&format!(
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{label}: {v}</title></rect>"##,
            left + slot * i as f64 + slot * 0.15,
            h - bottom - bh,
            slot * 0.7,
            COLOURS[1],
        ));
    }
    frame(labels, max, "", title, &body)
}

/// Polylines, one per series, over the days; a day without a value breaks the line. `ceiling` fixes the top of
/// the y axis (100 for percentages); otherwise the largest value.
pub(crate) fn lines_svg(
    labels: &[&str],
    series: &[(&str, &Vec<Option<f64>>)],
    ceiling: Option<f64>,
    unit: &str,
    title: &str,
) -> String {
    let (w, h, left, bottom, top) = GEOMETRY;
    let max = ceiling
        .unwrap_or_else(|| series.iter().flat_map(|(_, v)| v.iter().flatten()).fold(0.0_f64, |a, b| a.max(*b)))
        .max(1.0);
    let n = labels.len().max(2) as f64;
    let x = |i: usize| left + (w - left) * (i as f64 + 0.5) / n;
    let y = |v: f64| h - bottom - (h - bottom - top) * (v.min(max) / max);
    let mut body = String::new();
    for (k, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, body: &mut String| {
            match run.len() {
                0 => {}
                1 => {
                    // A lone day is a dot, so it is not lost between gaps.
                    let p = &run[0];
                    let (cx, cy) = p.split_once(',').unwrap_or(("0", "0"));
                    body.push_str(&format!(r##"<circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>"##));
                }
                _ => body.push_str(&format!(
                    r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"><title>{name}</title></polyline>"##,
                    run.join(" ")
                )),
            }
            run.clear();
        };
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => run.push(format!("{:.1},{:.1}", x(i), y(*v))),
                None => flush(&mut run, &mut body),
            }
        }
        flush(&mut run, &mut body);
    }
    frame(labels, max, unit, title, &body)
}
