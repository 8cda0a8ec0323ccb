//! Shipping schedules: when a site's carriers collect, and the ship date the hub may promise from them.
//!
//! A site publishes a [`ShippingSchedule`] (node config `[shipping]`, synced in its stock document under
//! [`crate::schema::keys::SHIPPING`]): per carrier service the weekdays it collects and the cut-off time in
//! the site's IANA time zone, the days the site is closed, and how long work takes before a parcel is ready
//! (a fixed handling time plus a time per shipment already open). [`ShippingSchedule::compile`] checks it and
//! gives a [`Schedule`]; [`promised_ship_by`] answers "by when will a shipment taken now leave", the first
//! cut-off the site can still make, and [`site_promise`] adds, per service, that service's own cut-off and an
//! estimated delivery date.
//!
//! Pure like the rest of this crate: the time is an argument, and the time zone database is compiled into
//! the binary (`jiff` with its bundled database), so no file is read. Local times that do not exist (a
//! cut-off in a daylight-saving gap) or exist twice take jiff's "compatible" reading, as RFC 5545 does: the
//! later instant for a gap, the earlier for a fold.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Most carrier services one site schedules.
pub const SERVICES_MAX: usize = 16;
/// Most closure days one schedule lists.
pub const CLOSURES_MAX: usize = 400;
/// Longest handling time, minutes (a week).
pub const HANDLING_MINUTES_MAX: u32 = 7 * 24 * 60;
/// Longest time per open shipment, minutes.
pub const MINUTES_PER_SHIPMENT_MAX: u32 = 24 * 60;
/// Longest transit time of a service, business days.
pub const TRANSIT_DAYS_MAX: u8 = 60;
/// Days ahead a promise is looked for; a schedule with no collection within them promises nothing.
pub const HORIZON_DAYS: u32 = 400;
/// Longest carrier or service name, bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Most promises one schedule keeps cached ([`Schedule::promise`]), one per amount of work ahead; a full
/// cache is emptied.
pub const PROMISE_CACHE_MAX: usize = 256;

/// A day of the week, as the config spells it (`mon` … `sun`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] =
        [Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri, Weekday::Sat, Weekday::Sun];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

fn bit_of(d: jiff::civil::Weekday) -> u8 {
    // Monday = 0 … Sunday = 6, as `Weekday`'s discriminants.
    1 << d.to_monday_zero_offset()
}

fn default_transit_days() -> u8 {
    2
}

/// When one carrier service collects at the site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSchedule {
    /// The carrier, such as `dhl` (lowercase letters, digits, `-`, `_`).
    pub carrier: String,
    /// Its service, such as `parcel` or `express` (same alphabet).
    pub service: String,
    /// The weekdays the carrier collects.
    pub pickup_days: Vec<Weekday>,
    /// The cut-off on a pickup day, `HH:MM` in the site's time zone: a parcel ready by then leaves that day.
    pub cutoff: String,
    /// Business days (Monday to Friday) from collection to delivery, for the estimated delivery date.
    #[serde(default = "default_transit_days")]
    pub transit_days: u8,
}

/// A site's shipping schedule: the `[shipping]` section of the node's config, published to the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShippingSchedule {
    /// The site's IANA time zone, such as `Europe/Berlin`; cut-offs and closures are local to it.
    pub time_zone: String,
    /// Minutes from taking an order until its parcel is ready, with nothing else open.
    #[serde(default)]
    pub handling_minutes: u32,
    /// Minutes each shipment already open at the site adds before a new one is ready.
    #[serde(default)]
    pub minutes_per_shipment: u32,
    /// Days the site ships nothing (holidays, closures), `YYYY-MM-DD`.
    #[serde(default)]
    pub closures: Vec<String>,
    /// Per carrier service: pickup days and cut-off.
    #[serde(default)]
    pub schedules: Vec<ServiceSchedule>,
}

/// A schedule that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shipping.{field}: {reason}")]
pub struct ScheduleError {
    /// The offending field, as the config names it.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ScheduleError {
    ScheduleError { field: field.into(), reason: reason.into() }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_BYTES_MAX
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// One service of a [`Schedule`].
#[derive(Debug, Clone)]
struct Service {
    carrier: String,
    service: String,
    /// Bit `1 << d` for each pickup weekday `d` (Monday = 0).
    days: u8,
    cutoff: Time,
    transit_days: u8,
}

/// A checked [`ShippingSchedule`], ready to compute promises.
#[derive(Debug, Clone)]
pub struct Schedule {
    tz: TimeZone,
    handling_minutes: u32,
    minutes_per_shipment: u32,
    closures: BTreeSet<Date>,
    services: Vec<Service>,
    /// What it was compiled from (a site that publishes the same schedule again keeps this one, and its cache).
    source: ShippingSchedule,
    cache: PromiseCache,
}

/// [`Schedule::promise`]'s cache: minutes of work before a shipment is ready → the last promise computed
/// with them and the ready instants it holds for. A clone starts empty.
#[derive(Debug, Default)]
struct PromiseCache(Mutex<HashMap<u64, CachedPromise>>);

impl Clone for PromiseCache {
    fn clone(&self) -> Self {
        PromiseCache::default()
    }
}

/// A promise and the ready instants it is the answer for: from `from` to `until` (inclusive; no end if
/// none) with the same local date `date`.
#[derive(Debug, Clone)]
struct CachedPromise {
    from: Timestamp,
    until: Option<Timestamp>,
    date: Date,
    promise: Option<SitePromise>,
}

impl ShippingSchedule {
    /// Checks every field and compiles the schedule: a known IANA zone, one to [`SERVICES_MAX`] services with
    /// distinct names, at least one pickup day each, `HH:MM` cut-offs, dates as `YYYY-MM-DD`, and every
    /// number within its limit.
    pub fn compile(&self) -> Result<Schedule, ScheduleError> {
        let tz = TimeZone::get(&self.time_zone)
            .map_err(|e| invalid("time_zone", format!("{:?} is not an IANA time zone: {e}", self.time_zone)))?;
        if self.handling_minutes > HANDLING_MINUTES_MAX {
            return Err(invalid("handling_minutes", format!("must be at most {HANDLING_MINUTES_MAX}")));
        }
        if self.minutes_per_shipment > MINUTES_PER_SHIPMENT_MAX {
            return Err(invalid("minutes_per_shipment", format!("must be at most {MINUTES_PER_SHIPMENT_MAX}")));
        }
        if self.closures.len() > CLOSURES_MAX {
            return Err(invalid("closures", format!("at most {CLOSURES_MAX} days")));
        }
        let mut closures = BTreeSet::new();
        for (i, c) in self.closures.iter().enumerate() {
            let d: Date =
                c.parse().map_err(|e| invalid(format!("closures[{i}]"), format!("{c:?} is not YYYY-MM-DD: {e}")))?;
            closures.insert(d);
        }
        if self.schedules.is_empty() || self.schedules.len() > SERVICES_MAX {
            return Err(invalid("schedules", format!("1 to {SERVICES_MAX} carrier services")));
        }
        let mut services: Vec<Service> = Vec::with_capacity(self.schedules.len());
        for (i, s) in self.schedules.iter().enumerate() {
            let field = |f: &str| format!("schedules[{i}].{f}");
            if !valid_name(&s.carrier) {
                return Err(invalid(field("carrier"), format!("1 to {NAME_BYTES_MAX} of a-z 0-9 - _")));
            }
            if !valid_name(&s.service) {
                return Err(invalid(field("service"), format!("1 to {NAME_BYTES_MAX} of a-z 0-9 - _")));
            }
            if services.iter().any(|o| o.carrier == s.carrier && o.service == s.service) {
                return Err(invalid(field("service"), format!("{}/{} is listed twice", s.carrier, s.service)));
            }
            let days = s.pickup_days.iter().fold(0u8, |m, d| m | d.bit());
            if days == 0 {
                return Err(invalid(field("pickup_days"), "at least one day"));
            }
            let cutoff = parse_hhmm(&s.cutoff).ok_or_else(|| invalid(field("cutoff"), "HH:MM, 00:00 to 23:59"))?;
            if s.transit_days > TRANSIT_DAYS_MAX {
                return Err(invalid(field("transit_days"), format!("at most {TRANSIT_DAYS_MAX}")));
            }
            services.push(Service {
                carrier: s.carrier.clone(),
                service: s.service.clone(),
                days,
                cutoff,
                transit_days: s.transit_days,
            });
        }
        Ok(Schedule {
            tz,
            handling_minutes: self.handling_minutes,
            minutes_per_shipment: self.minutes_per_shipment,
            closures,
            services,
            source: self.clone(),
            cache: PromiseCache::default(),
        })
    }
}

/// `HH:MM` exactly (two digits each); jiff's own parser would also take seconds and fractions.
fn parse_hhmm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

/// Work already open at the site when the promise is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenWork {
    /// Shipments taken and not yet collected.
    pub shipments: u64,
}

/// One service's promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServicePromise {
    /// The carrier.
    pub carrier: String,
    /// The service.
    pub service: String,
    /// The cut-off the shipment will make with this service, ms since the Unix epoch.
    pub ship_by_ms: u64,
    /// The delivery date this service estimates, `YYYY-MM-DD` (the collection date plus its transit days,
    /// counting Monday to Friday).
    pub estimated_delivery: String,
}

/// What a site promises for a shipment taken now: the first cut-off of any of its services, and each
/// service's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SitePromise {
    /// The earliest cut-off the shipment can make, ms since the Unix epoch ([`promised_ship_by`]).
    pub ship_by_ms: u64,
    /// That cut-off's local date at the site, in days since 1970-01-01: routing compares plans by it, so two
    /// sites that both make today's truck tie, and distance decides.
    pub ship_day: u32,
    /// Per service, in the schedule's order; services with no collection within [`HORIZON_DAYS`] are left out.
    pub services: Vec<ServicePromise>,
}

impl Schedule {
    /// When a shipment taken at `now` is ready: the handling time plus the time each open shipment takes.
    pub fn ready_at(&self, now: Timestamp, open: OpenWork) -> Option<Timestamp> {
        // At most HORIZON_DAYS in minutes, far below i64::MAX.
        let minutes = i64::try_from(self.work_minutes(open)).ok()?;
        now.checked_add(SignedDuration::from_mins(minutes)).ok()
    }

    /// Minutes of work before a shipment taken with `open` work ahead is ready (at most [`HORIZON_DAYS`]).
    fn work_minutes(&self, open: OpenWork) -> u64 {
        let horizon = u64::from(HORIZON_DAYS) * 24 * 60;
        open.shipments
            .saturating_mul(u64::from(self.minutes_per_shipment))
            .saturating_add(u64::from(self.handling_minutes))
            .min(horizon)
    }

    /// What the schedule was compiled from.
    pub fn source(&self) -> &ShippingSchedule {
        &self.source
    }

    /// [`site_promise`], cached: always the same answer, computed once for every shipment that is ready on
    /// the same local day no later than the first cut-off the last computation found (the answer depends on
    /// the ready instant only through that day and which cut-offs come at or after it). Keyed by the minutes
    /// of work ahead, at most [`PROMISE_CACHE_MAX`] entries; a changed schedule is a new `Schedule` with an
    /// empty cache.
    pub fn promise(&self, now_ms: u64, open: OpenWork) -> Option<SitePromise> {
        let now = Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
        let ready = self.ready_at(now, open)?;
        let key = self.work_minutes(open);
        let date = self.tz.to_datetime(ready).date();
        let mut cache = self.cache.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.get(&key)
            && c.from <= ready
            && c.until.is_none_or(|u| ready <= u)
            && c.date == date
        {
            return c.promise.clone();
        }
        let (promise, until) = promise_from(self, ready);
        if cache.len() >= PROMISE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, CachedPromise { from: ready, until, date, promise: promise.clone() });
        promise
    }

    /// The site's time zone.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// Whether the site ships on `date` at all (not a closure).
    pub fn is_open(&self, date: Date) -> bool {
        !self.closures.contains(&date)
    }

    /// The cut-off instant of `service` on `date`, if the carrier collects that day and the site is open.
    fn cutoff_on(&self, service: &Service, date: Date) -> Option<Timestamp> {
        if service.days & bit_of(date.weekday()) == 0 || !self.is_open(date) {
            return None;
        }
        self.tz.to_ambiguous_timestamp(date.to_datetime(service.cutoff)).compatible().ok()
    }

    /// The first cut-off of `service` at or after `ready`, with its local date.
    fn first_cutoff(&self, service: &Service, ready: Timestamp) -> Option<(Timestamp, Date)> {
        let mut date = self.tz.to_datetime(ready).date();
        for _ in 0..HORIZON_DAYS {
            if let Some(t) = self.cutoff_on(service, date)
                && t >= ready
            {
                return Some((t, date));
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// Every cut-off instant of every service on `date` (for tests and explanations).
    pub fn cutoffs_on(&self, date: Date) -> Vec<Timestamp> {
        self.services.iter().filter_map(|s| self.cutoff_on(s, date)).collect()
    }
}

/// The promised ship date of a shipment taken at `now` with `open` work ahead of it: the first cut-off, of any
/// service, on a pickup day the site is open, at or after the moment the shipment is ready
/// ([`Schedule::ready_at`]). `None` when no service collects within [`HORIZON_DAYS`].
pub fn promised_ship_by(schedule: &Schedule, now: Timestamp, open: OpenWork) -> Option<Timestamp> {
    let ready = schedule.ready_at(now, open)?;
    schedule.services.iter().filter_map(|s| schedule.first_cutoff(s, ready)).map(|(t, _)| t).min()
}

/// [`promised_ship_by`] with each service's own cut-off and estimated delivery, for a shipment taken at
/// `now_ms` (ms since the Unix epoch).
pub fn site_promise(schedule: &Schedule, now_ms: u64, open: OpenWork) -> Option<SitePromise> {
    let now = Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
    promise_from(schedule, schedule.ready_at(now, open)?).0
}

/// The promise for a shipment ready at `ready`, and the latest ready instant it holds for as long as the
/// local date stays the same: the earliest cut-off found (none when no service collects within the horizon).
/// The answer depends on `ready` only through its local date and the cut-offs at or after it, so every
/// instant from `ready` up to that cut-off on the same local date gets the same answer.
fn promise_from(schedule: &Schedule, ready: Timestamp) -> (Option<SitePromise>, Option<Timestamp>) {
    let found: Vec<(&Service, Timestamp, Date)> =
        schedule.services.iter().filter_map(|s| schedule.first_cutoff(s, ready).map(|(t, d)| (s, t, d))).collect();
    let until = found.iter().map(|(_, t, _)| *t).min();
    (promise_of(&found), until)
}

/// The promise from each service's first cut-off (in the schedule's order).
fn promise_of(found: &[(&Service, Timestamp, Date)]) -> Option<SitePromise> {
    let mut best: Option<(Timestamp, Date)> = None;
    let mut services = Vec::with_capacity(found.len());
    for (s, t, date) in found {
        if best.is_none_or(|(b, _)| *t < b) {
            best = Some((*t, *date));
        }
        services.push(ServicePromise {
            carrier: s.carrier.clone(),
            service: s.service.clone(),
            ship_by_ms: u64::try_from(t.as_millisecond()).ok()?,
            estimated_delivery: add_business_days(*date, s.transit_days)?.to_string(),
        });
    }
    let (t, date) = best?;
    let ship_day = date.duration_since(Date::constant(1970, 1, 1)).as_secs() / 86_400;
    Some(SitePromise {
        ship_by_ms: u64::try_from(t.as_millisecond()).ok()?,
        ship_day: u32::try_from(ship_day).ok()?,
        services,
    })
}

/// `date` plus `n` business days (Monday to Friday).
fn add_business_days(mut date: Date, n: u8) -> Option<Date> {
    let mut left = n;
    while left > 0 {
        date = date.tomorrow().ok()?;
        if !matches!(date.weekday(), jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday) {
            left -= 1;
        }
    }
    Some(date)
}

/// `ms` since the Unix epoch as RFC 3339 in UTC (`2026-12-07T15:00:00Z`), for views.
pub fn rfc3339(ms: u64) -> Option<String> {
    Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok().map(|t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule(tz: &str, services: &[(&[Weekday], &str)], closures: &[&str], handling: u32) -> ShippingSchedule {
        ShippingSchedule {
            time_zone: tz.into(),
            handling_minutes: handling,
            minutes_per_shipment: 0,
            closures: closures.iter().map(|c| (*c).to_owned()).collect(),
            schedules: services
                .iter()
                .enumerate()
                .map(|(i, (days, cutoff))| ServiceSchedule {
                    carrier: "dhl".into(),
                    service: format!("s{i}"),
                    pickup_days: days.to_vec(),
                    cutoff: (*cutoff).into(),
                    transit_days: 2,
                })
                .collect(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const WEEKDAYS: &[Weekday] = &[Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri];

    #[test]
    fn before_cutoff_ships_today_after_it_tomorrow() {
        let s = schedule("Europe/Berlin", &[(WEEKDAYS, "16:00")], &[], 30).compile().unwrap();
        // Tuesday 2026-12-01, 12:00 in Berlin (UTC+1): ready 12:30, before the 16:00 cut-off.
        let p = promised_ship_by(&s, at("2026-12-01T11:00:00Z"), OpenWork::default()).unwrap();
        assert_eq!(p, at("2026-12-01T15:00:00Z"));
        // 15:45 local: ready 16:15, the cut-off is missed; Wednesday's.
        let p = promised_ship_by(&s, at("2026-12-01T14:45:00Z"), OpenWork::default()).unwrap();
        assert_eq!(p, at("2026-12-02T15:00:00Z"));
    }

    #[test]
    fn weekend_and_holiday_are_skipped() {
        let s = schedule("Europe/Berlin", &[(WEEKDAYS, "16:00")], &["2026-12-07"], 0).compile().unwrap();
        // Friday 2026-12-04 after the cut-off → not Saturday, Sunday or the closed Monday: Tuesday.
        let p = promised_ship_by(&s, at("2026-12-04T17:00:00Z"), OpenWork::default()).unwrap();
        assert_eq!(p, at("2026-12-08T15:00:00Z"));
        let promise =
            site_promise(&s, u64::try_from(at("2026-12-04T17:00:00Z").as_millisecond()).unwrap(), OpenWork::default())
                .unwrap();
        // Tuesday + 2 business days.
        assert_eq!(promise.services[0].estimated_delivery, "2026-12-10");
        assert_eq!(rfc3339(promise.ship_by_ms).unwrap(), "2026-12-08T15:00:00Z");
    }

    #[test]
    fn open_work_pushes_the_promise() {
        let mut cfg = schedule("UTC", &[(WEEKDAYS, "16:00")], &[], 0);
        cfg.minutes_per_shipment = 10;
        let s = cfg.compile().unwrap();
        let now = at("2026-12-01T12:00:00Z");
        assert_eq!(promised_ship_by(&s, now, OpenWork { shipments: 24 }).unwrap(), at("2026-12-01T16:00:00Z"));
        assert_eq!(promised_ship_by(&s, now, OpenWork { shipments: 25 }).unwrap(), at("2026-12-02T16:00:00Z"));
    }

    #[test]
    fn earliest_service_wins_and_each_keeps_its_own() {
        let s = schedule("UTC", &[(WEEKDAYS, "12:00"), (&[Weekday::Sat], "10:00")], &[], 0).compile().unwrap();
        // Friday 13:00: the weekday service next collects Monday, the Saturday one tomorrow.
        let now = at("2026-12-04T13:00:00Z");
        let p = site_promise(&s, u64::try_from(now.as_millisecond()).unwrap(), OpenWork::default()).unwrap();
        assert_eq!(rfc3339(p.ship_by_ms).unwrap(), "2026-12-05T10:00:00Z");
        assert_eq!(rfc3339(p.services[0].ship_by_ms).unwrap(), "2026-12-07T12:00:00Z");
        assert_eq!(p.services.len(), 2);
    }

    #[test]
    fn cutoff_in_a_dst_gap_is_read_forward() {
        // 2026-03-29 02:30 does not exist in Berlin (clocks go 02:00 → 03:00): the cut-off is 03:30 CEST.
        let s = schedule("Europe/Berlin", &[(&[Weekday::Sun], "02:30")], &[], 0).compile().unwrap();
        let p = promised_ship_by(&s, at("2026-03-28T12:00:00Z"), OpenWork::default()).unwrap();
        assert_eq!(p, at("2026-03-29T01:30:00Z"));
    }

    #[test]
    fn bad_schedules_are_refused_with_the_field() {
        let ok = schedule("Europe/Berlin", &[(WEEKDAYS, "16:00")], &[], 0);
        let cases: Vec<(ShippingSchedule, &str)> = vec![
            (ShippingSchedule { time_zone: "Mars/Olympus".into(), ..ok.clone() }, "time_zone"),
            (ShippingSchedule { handling_minutes: HANDLING_MINUTES_MAX + 1, ..ok.clone() }, "handling_minutes"),
            (ShippingSchedule { closures: vec!["2026-13-01".into()], ..ok.clone() }, "closures[0]"),
            (ShippingSchedule { schedules: vec![], ..ok.clone() }, "schedules"),
            (schedule("UTC", &[(&[], "16:00")], &[], 0), "schedules[0].pickup_days"),
            (schedule("UTC", &[(WEEKDAYS, "24:00")], &[], 0), "schedules[0].cutoff"),
            (schedule("UTC", &[(WEEKDAYS, "4pm")], &[], 0), "schedules[0].cutoff"),
            (schedule("UTC", &[(WEEKDAYS, "16:00:00")], &[], 0), "schedules[0].cutoff"),
        ];
        for (cfg, field) in cases {
            assert_eq!(cfg.compile().unwrap_err().field, field);
        }
        let mut twice = schedule("UTC", &[(WEEKDAYS, "16:00"), (WEEKDAYS, "17:00")], &[], 0);
        twice.schedules[1].service = "s0".into();
        assert_eq!(twice.compile().unwrap_err().field, "schedules[1].service");
        let mut bad_name = ok.clone();
        bad_name.schedules[0].carrier = "DHL Express".into();
        assert_eq!(bad_name.compile().unwrap_err().field, "schedules[0].carrier");
    }

    const ZONES: [&str; 6] =
        ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC", "Pacific/Chatham"];

    fn arb_case() -> impl Strategy<Value = (ShippingSchedule, Timestamp, OpenWork)> {
        let service = (1u8..128, 0i8..24, 0i8..60).prop_map(|(days, h, m)| {
            (Weekday::ALL.iter().filter(|d| days & d.bit() != 0).copied().collect::<Vec<_>>(), format!("{h:02}:{m:02}"))
        });
        (
            0..ZONES.len(),
            proptest::collection::vec(service, 1..4),
            proptest::collection::vec(0i64..40, 0..12),
            0u32..4000,
            0u32..30,
            0u64..300,
            // 2025-01-01 … 2031-01-01, to the minute.
            1_735_689_600i64..1_925_078_400,
        )
            .prop_map(|(zone, services, closure_days, handling, per, open, now_s)| {
                let now = Timestamp::from_second(now_s).unwrap();
                let today = TimeZone::get(ZONES[zone]).unwrap().to_datetime(now).date();
                let closures = closure_days
                    .iter()
                    .map(|d| today.checked_add(jiff::Span::new().days(*d)).unwrap().to_string())
                    .collect();
                let cfg = ShippingSchedule {
                    time_zone: ZONES[zone].into(),
                    handling_minutes: handling,
                    minutes_per_shipment: per,
                    closures,
                    schedules: services
                        .into_iter()
                        .enumerate()
                        .map(|(i, (pickup_days, cutoff))| ServiceSchedule {
                            carrier: "c".into(),
                            service: format!("s{i}"),
                            pickup_days,
                            cutoff,
                            transit_days: 1,
                        })
                        .collect(),
                };
                (cfg, now, OpenWork { shipments: open })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The promise is a real cut-off (a service's, on a pickup day the site is open), never before the
        /// shipment is ready, and no cut-off the site could make lies between: checked against every cut-off
        /// of every day from the day before `ready` to the promise's day, across weekends, closures, missed
        /// cut-offs and daylight-saving changes.
        #[test]
        fn promise_is_the_next_cutoff_the_site_can_make((cfg, now, open) in arb_case()) {
            let s = cfg.compile().unwrap();
            let ready = s.ready_at(now, open).unwrap();
            let promise = promised_ship_by(&s, now, open);
            // At least one pickup weekday and at most 12 closures: something within the horizon.
            let p = promise.unwrap();
            prop_assert!(p >= ready, "promise {p} before ready {ready}");
            let tz = s.time_zone().clone();
            let p_date = tz.to_datetime(p).date();
            prop_assert!(s.is_open(p_date));
            prop_assert!(s.cutoffs_on(p_date).contains(&p), "{p} is no cut-off on {p_date}");
            let mut d = tz.to_datetime(ready).date().yesterday().unwrap();
            while d <= p_date {
                for t in s.cutoffs_on(d) {
                    prop_assert!(!(t >= ready && t < p), "cut-off {t} on {d} was makeable before {p}");
                }
                d = d.tomorrow().unwrap();
            }
            // The site promise agrees, and each service's own promise is no earlier.
            let now_ms = u64::try_from(now.as_millisecond()).unwrap();
            let sp = site_promise(&s, now_ms, open).unwrap();
            prop_assert_eq!(sp.ship_by_ms, u64::try_from(p.as_millisecond()).unwrap());
            prop_assert!(sp.services.iter().all(|x| x.ship_by_ms >= sp.ship_by_ms));
            prop_assert!(sp.services.iter().any(|x| x.ship_by_ms == sp.ship_by_ms));
        }

        /// Later, or with more work open, the promise never moves earlier.
        #[test]
        fn promise_is_monotone((cfg, now, open) in arb_case(), later_min in 0i64..5000, more in 0u64..50) {
            let s = cfg.compile().unwrap();
            let p = promised_ship_by(&s, now, open).unwrap();
            let later = now.checked_add(SignedDuration::from_mins(later_min)).unwrap();
            prop_assert!(promised_ship_by(&s, later, open).unwrap() >= p);
            let busier = OpenWork { shipments: open.shipments + more };
            prop_assert!(promised_ship_by(&s, now, busier).unwrap() >= p);
        }

        /// The cached promise is the uncached one, for a clock that moves forward by milliseconds to days,
        /// sometimes backwards, across cut-offs, midnights and daylight-saving changes, with the work ahead
        /// changing between calls; and a small cache that empties itself stays right.
        #[test]
        fn the_cached_promise_is_the_uncached_one(
            (cfg, now, open) in arb_case(),
            steps in proptest::collection::vec(
                (prop_oneof![0i64..2_000, 0i64..3_600_000, 0i64..172_800_000, -7_200_000i64..0], 0u64..4), 1..40),
        ) {
            let s = cfg.compile().unwrap();
            let mut at = now.as_millisecond();
            for (step, work) in steps {
                at = (at + step).max(0);
                let now_ms = u64::try_from(at).unwrap();
                let open = OpenWork { shipments: open.shipments + work };
                let cached = s.promise(now_ms, open);
                prop_assert_eq!(&cached, &site_promise(&s, now_ms, open), "at {} with {:?}", now_ms, open);
                // Asked again at once: the cache answers, and the same.
                prop_assert_eq!(&s.promise(now_ms, open), &cached);
            }
            prop_assert!(s.cache.0.lock().unwrap().len() <= PROMISE_CACHE_MAX);
        }
    }

    /// The horizon counts from the ready instant's local date, so a cached "nothing within the horizon" must
    /// not answer for the next day, whose horizon reaches one day further.
    #[test]
    fn the_cache_does_not_carry_an_answer_over_local_midnight() {
        // Mondays only, every Monday closed from 2026-11-30 for 57 weeks: from Sunday 2026-11-29 the horizon
        // ends the day before the first open Monday (2028-01-03); from Monday it reaches it.
        let mondays: Vec<String> = (0..57)
            .map(|w| Date::constant(2026, 11, 30).checked_add(jiff::Span::new().weeks(w)).unwrap().to_string())
            .collect();
        let mondays: Vec<&str> = mondays.iter().map(String::as_str).collect();
        let s = schedule("Europe/Berlin", &[(&[Weekday::Mon], "16:00")], &mondays, 0).compile().unwrap();
        let ms = |t: &str| u64::try_from(at(t).as_millisecond()).unwrap();
        let (sunday, monday) = (ms("2026-11-29T22:00:00Z"), ms("2026-11-29T23:30:00Z")); // 23:00, 00:30 local
        assert_eq!(site_promise(&s, sunday, OpenWork::default()), None);
        let p = site_promise(&s, monday, OpenWork::default()).unwrap();
        assert_eq!(p.ship_by_ms, ms("2028-01-03T15:00:00Z"));
        assert_eq!(s.promise(sunday, OpenWork::default()), None);
        assert_eq!(s.promise(monday, OpenWork::default()), Some(p));
    }

    #[test]
    fn the_promise_cache_is_bounded_and_a_clone_starts_empty() {
        let s = schedule("Europe/Berlin", &[(WEEKDAYS, "16:00")], &[], 30);
        let s = ShippingSchedule { minutes_per_shipment: 1, ..s }.compile().unwrap();
        let now_ms = u64::try_from(at("2026-12-01T11:00:00Z").as_millisecond()).unwrap();
        for open in 0..(PROMISE_CACHE_MAX as u64 + 10) {
            let o = OpenWork { shipments: open };
            assert_eq!(s.promise(now_ms, o), site_promise(&s, now_ms, o));
        }
        assert!(s.cache.0.lock().unwrap().len() <= PROMISE_CACHE_MAX);
        // A minute later, before the cut-off: served from the entry computed first (its `from` stays).
        let o = OpenWork { shipments: 1 };
        let first = s.promise(now_ms, o);
        let from = s.cache.0.lock().unwrap()[&s.work_minutes(o)].from;
        assert_eq!(s.promise(now_ms + 60_000, o), first);
        assert_eq!(s.cache.0.lock().unwrap()[&s.work_minutes(o)].from, from, "a hit");
        // After the cut-off: computed again, and tomorrow's.
        let late = now_ms + 6 * 3_600_000;
        assert_eq!(s.promise(late, o), site_promise(&s, late, o));
        assert_ne!(s.promise(late, o), first);
        assert!(s.clone().cache.0.lock().unwrap().is_empty());
        assert_eq!(s.source().time_zone, "Europe/Berlin");
    }
}
