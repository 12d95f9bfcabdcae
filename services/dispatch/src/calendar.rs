//! Working-hour calendars and the deadlines of dispatch's clocks (docs/calendar.md).
//!
//! A limit under one day counts wall-clock time. A limit of a day or more counts working time
//! when a calendar is configured: one day of limit is one working day's hours, so `N` days fall
//! due at the same time of day `N` working days (工作日) later. Without a calendar everything
//! counts wall-clock time. The lifecycle asks a [`Deadlines`]: [`WallClock`] or [`CalendarTime`].
//!
//! ```
//! use chrono::{DateTime, Duration, Utc};
//! use whistle_dispatch::calendar::{Calendar, CalendarFile, CalendarTime, Deadlines};
//!
//! let file: CalendarFile = serde_json::from_str(
//!     r#"{ "utc_offset": "+08:00",
//!          "working_hours": ["09:00-12:00", "13:30-18:00"],
//!          "working_weekdays": ["Mon", "Tue", "Wed", "Thu", "Fri"] }"#,
//! )?;
//! let deadlines = CalendarTime::new(Calendar::new(&file)?);
//! // accepted Friday 2025-11-07 15:00 in Beijing with 1 day to resolve: due Monday 15:00
//! let friday: DateTime<Utc> = "2025-11-07T07:00:00Z".parse()?;
//! let monday: DateTime<Utc> = "2025-11-10T07:00:00Z".parse()?;
//! assert_eq!(deadlines.due_at(friday, Duration::days(1)), monday);
//! // a 2-hour limit ignores the calendar
//! assert_eq!(deadlines.due_at(friday, Duration::hours(2)), friday + Duration::hours(2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, Utc, Weekday};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const NANOS_PER_SECOND: i128 = 1_000_000_000;
const NANOS_PER_DAY: i128 = 86_400 * NANOS_PER_SECOND;
const SECONDS_PER_DAY: u32 = 86_400;
/// The longest public holiday a file may name; longer is taken for a typo.
const LONGEST_HOLIDAY_DAYS: i64 = 31;
/// `NaiveDate::num_days_from_ce` of 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i128 = 719_163;

/// How the lifecycle's clocks fall due, stop (缓办) and resume.
pub trait Deadlines {
    /// When a clock of `limit` started at `start` falls due; never before `start`.
    fn due_at(&self, start: DateTime<Utc>, limit: Duration) -> DateTime<Utc>;

    /// What is left at `now` of a clock of `limit` due at `due`, to keep while it is stopped;
    /// nothing when it is already due.
    fn remaining(&self, limit: Duration, now: DateTime<Utc>, due: DateTime<Utc>) -> Remaining;

    /// The new due instant of a stopped clock restarted at `now` with what it had left.
    fn resume(&self, now: DateTime<Utc>, remaining: Remaining) -> DateTime<Utc>;
}

/// What a stopped clock has left, in the time it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remaining {
    /// Wall-clock time: a limit under one day, or no calendar.
    WallClock(Duration),
    /// Working time of the calendar: a limit of a day or more.
    WorkingTime(Duration),
}

impl Remaining {
    /// The time left, whichever way it counts.
    pub fn duration(self) -> Duration {
        match self {
            Remaining::WallClock(duration) | Remaining::WorkingTime(duration) => duration,
        }
    }
}

/// Deadlines without a calendar: every limit counts wall-clock time.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl Deadlines for WallClock {
    fn due_at(&self, start: DateTime<Utc>, limit: Duration) -> DateTime<Utc> {
        add_wall_clock(start, limit)
    }

    fn remaining(&self, _limit: Duration, now: DateTime<Utc>, due: DateTime<Utc>) -> Remaining {
        Remaining::WallClock(wall_clock_left(now, due))
    }

    /// Working time kept under a calendar that has since been removed resumes as wall-clock time.
    fn resume(&self, now: DateTime<Utc>, remaining: Remaining) -> DateTime<Utc> {
        add_wall_clock(now, remaining.duration())
    }
}

/// Deadlines under a calendar: limits of a day or more count its working time.
#[derive(Debug, Clone)]
pub struct CalendarTime {
    calendar: Calendar,
}

impl CalendarTime {
    pub fn new(calendar: Calendar) -> Self {
        Self { calendar }
    }

    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }
}

impl Deadlines for CalendarTime {
    fn due_at(&self, start: DateTime<Utc>, limit: Duration) -> DateTime<Utc> {
        if !counts_working_time(limit) {
            return add_wall_clock(start, limit);
        }
        self.calendar
            .add_working_time(start, self.calendar.working_time_of(limit))
    }

    fn remaining(&self, limit: Duration, now: DateTime<Utc>, due: DateTime<Utc>) -> Remaining {
        if !counts_working_time(limit) {
            return Remaining::WallClock(wall_clock_left(now, due));
        }
        Remaining::WorkingTime(self.calendar.working_time_between(now, due))
    }

    fn resume(&self, now: DateTime<Utc>, remaining: Remaining) -> DateTime<Utc> {
        match remaining {
            Remaining::WallClock(left) => add_wall_clock(now, left),
            Remaining::WorkingTime(left) => self.calendar.add_working_time(now, left),
        }
    }
}

/// Whether a limit counts working time under a calendar: a day or more (DOMAIN.md).
pub fn counts_working_time(limit: Duration) -> bool {
    nanos_of(limit) >= NANOS_PER_DAY
}

/// Where dispatch's working-hour calendar comes from (`[calendar]` in its configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// A calendar JSON file (see deploy/demo/calendar-2026.json); none counts wall-clock time.
    pub file: Option<PathBuf>,
}

impl CalendarConfig {
    /// The deadlines this configuration asks for, reading and checking the calendar file if any.
    pub fn deadlines(&self) -> Result<Arc<dyn Deadlines + Send + Sync>, CalendarError> {
        match &self.file {
            None => Ok(Arc::new(WallClock)),
            Some(path) => Ok(Arc::new(CalendarTime::new(Calendar::load(path)?))),
        }
    }
}

/// A calendar file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("cannot read calendar file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("calendar file {} is not a calendar: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("calendar file {}: {error}", path.display())]
    Invalid {
        path: PathBuf,
        error: InvalidCalendar,
    },
}

/// A calendar entry that cannot be right, named as in the file (`working_hours[1] "11:00-14:00"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: {reason}")]
pub struct InvalidCalendar {
    pub entry: String,
    pub reason: String,
}

impl InvalidCalendar {
    fn new(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
}

/// A calendar as written in a JSON file (deploy/demo/calendar-2026.json, docs/calendar.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarFile {
    /// What the file is for; free text.
    #[serde(rename = "_about", default, skip_serializing_if = "String::is_empty")]
    pub about: String,
    /// Where the dates come from and how sure they are; free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Local time as a fixed offset from UTC, `+08:00` in China.
    pub utc_offset: String,
    /// Local working hours of every working day, `"09:00-12:00"`; `24:00` ends a day.
    pub working_hours: Vec<String>,
    /// Weekdays that are working days unless a holiday, `"Mon"` or `"Monday"`.
    pub working_weekdays: Vec<String>,
    #[serde(default)]
    pub public_holidays: Vec<PublicHoliday>,
}

/// Days off in a row (放假), with the weekend days worked in exchange (调休上班).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicHoliday {
    pub name: String,
    /// First day off, `YYYY-MM-DD`.
    pub from: String,
    /// Last day off, inclusive.
    pub to: String,
    /// Days that are not working weekdays but are worked, `YYYY-MM-DD`.
    #[serde(default)]
    pub make_up_work_days: Vec<String>,
}

/// A checked working-hour calendar in one fixed UTC offset: every working day has the same hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    offset: FixedOffset,
    /// Sorted, disjoint and not touching, in nanoseconds from local midnight.
    hours: Vec<(i128, i128)>,
    /// Indexed from Monday.
    weekdays: [bool; 7],
    /// Holidays and make-up work days by local day number (days since 1970-01-01).
    special_days: BTreeMap<i128, SpecialDay>,
    day_nanos: i128,
    week_nanos: i128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecialDay {
    /// Off, by the index of its public holiday.
    Holiday(usize),
    /// Worked, by the index of the public holiday it makes up for.
    MakeUpWorkDay(usize),
}

impl Calendar {
    /// Reads and checks a calendar JSON file.
    pub fn load(path: &Path) -> Result<Self, CalendarError> {
        let text = std::fs::read_to_string(path).map_err(|error| CalendarError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let file: CalendarFile =
            serde_json::from_str(&text).map_err(|error| CalendarError::Parse {
                path: path.to_path_buf(),
                error,
            })?;
        Self::new(&file).map_err(|error| CalendarError::Invalid {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Checks a calendar, naming the first entry that cannot be right.
    pub fn new(file: &CalendarFile) -> Result<Self, InvalidCalendar> {
        let offset = parse_offset(&file.utc_offset)
            .ok_or_else(|| InvalidCalendar::new("utc_offset", "must look like +08:00"))?;
        let hours = check_hours(&file.working_hours)?;
        let weekdays = check_weekdays(&file.working_weekdays)?;
        let special_days = check_holidays(&file.public_holidays, &weekdays)?;
        let day_nanos: i128 = hours.iter().map(|(start, end)| end - start).sum();
        let working_weekdays = weekdays.iter().filter(|&&working| working).count();
        let week_nanos = day_nanos * i128::try_from(working_weekdays).unwrap_or(7);
        Ok(Self {
            offset,
            hours,
            weekdays,
            special_days,
            day_nanos,
            week_nanos,
        })
    }

    /// Local time's offset from UTC.
    pub fn utc_offset(&self) -> FixedOffset {
        self.offset
    }

    /// The working time of one working day: what one day of a limit counts.
    pub fn working_day(&self) -> Duration {
        duration_of(self.day_nanos)
    }

    /// Whether a local date is worked: a working weekday that is no holiday, or a make-up day.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        self.is_working(i128::from(date.num_days_from_ce()) - UNIX_EPOCH_DAYS_FROM_CE)
    }

    /// The last date any holiday or make-up day names: later years count as plain weeks until
    /// their State Council notice is added, which is worth a warning at start.
    pub fn holidays_known_until(&self) -> Option<NaiveDate> {
        let (&day, _) = self.special_days.last_key_value()?;
        let days_from_ce = i32::try_from(day + UNIX_EPOCH_DAYS_FROM_CE).ok()?;
        NaiveDate::from_num_days_from_ce_opt(days_from_ce)
    }

    /// The working time a limit of a day or more stands for: its days (fractions included)
    /// times [`Calendar::working_day`]. Negative limits count as none.
    pub fn working_time_of(&self, limit: Duration) -> Duration {
        let nanos = nanos_of(limit).max(0);
        // whole days and the rest apart, so that the largest durations cannot overflow
        let whole_days = nanos / NANOS_PER_DAY * self.day_nanos;
        duration_of(whole_days + nanos % NANOS_PER_DAY * self.day_nanos / NANOS_PER_DAY)
    }

    /// The earliest instant at or after `start` with `working_time` of work between them: a start
    /// outside working hours counts from the next working moment, and an end that falls on the
    /// close of a working interval stays there. No working time gives `start` itself.
    pub fn add_working_time(&self, start: DateTime<Utc>, working_time: Duration) -> DateTime<Utc> {
        let mut left = nanos_of(working_time);
        if left <= 0 {
            return start;
        }
        let start = self.local_nanos(start);
        let mut day = start.div_euclid(NANOS_PER_DAY);
        let mut from_in_day = start.rem_euclid(NANOS_PER_DAY);
        loop {
            if from_in_day == 0 {
                // weeks without special days repeat the weekly pattern: skip them whole, keeping
                // some work to place day by day so that an exact end stays on its interval's close
                let weeks = self.plain_weeks_from(day).min((left - 1) / self.week_nanos);
                day += 7 * weeks;
                left -= weeks * self.week_nanos;
            }
            if self.is_working(day) {
                for &(interval_start, interval_end) in &self.hours {
                    let from = interval_start.max(from_in_day);
                    if from >= interval_end {
                        continue;
                    }
                    let available = interval_end - from;
                    if left <= available {
                        return self.instant_of(day * NANOS_PER_DAY + from + left);
                    }
                    left -= available;
                }
            }
            day += 1;
            from_in_day = 0;
        }
    }

    /// The working time between two instants; none when `to` is not after `from`.
    pub fn working_time_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        let (from, to) = (self.local_nanos(from), self.local_nanos(to));
        let mut total = 0;
        let mut day = from.div_euclid(NANOS_PER_DAY);
        while day * NANOS_PER_DAY < to {
            let day_start = day * NANOS_PER_DAY;
            if day_start >= from {
                let weeks = self
                    .plain_weeks_from(day)
                    .min((to - day_start) / (7 * NANOS_PER_DAY));
                if weeks > 0 {
                    total += weeks * self.week_nanos;
                    day += 7 * weeks;
                    continue;
                }
            }
            if self.is_working(day) {
                for &(interval_start, interval_end) in &self.hours {
                    let overlap_start = (day_start + interval_start).max(from);
                    let overlap_end = (day_start + interval_end).min(to);
                    total += (overlap_end - overlap_start).max(0);
                }
            }
            day += 1;
        }
        duration_of(total)
    }

    fn is_working(&self, day: i128) -> bool {
        match self.special_days.get(&day) {
            Some(SpecialDay::Holiday(_)) => false,
            Some(SpecialDay::MakeUpWorkDay(_)) => true,
            // 1970-01-01 was a Thursday
            None => self.weekdays[usize::try_from((day + 3).rem_euclid(7)).unwrap_or(0)],
        }
    }

    /// How many whole weeks from `day` on hold no holiday or make-up day.
    fn plain_weeks_from(&self, day: i128) -> i128 {
        match self.special_days.range(day..).next() {
            Some((&special, _)) => (special - day) / 7,
            None => i128::MAX / (8 * NANOS_PER_DAY),
        }
    }

    /// Nanoseconds of local time since 1970-01-01T00:00 local.
    fn local_nanos(&self, instant: DateTime<Utc>) -> i128 {
        i128::from(instant.timestamp()) * NANOS_PER_SECOND
            + i128::from(instant.timestamp_subsec_nanos())
            + i128::from(self.offset.local_minus_utc()) * NANOS_PER_SECOND
    }

    /// The instant of a local time, saturating at the ends of time.
    fn instant_of(&self, local_nanos: i128) -> DateTime<Utc> {
        let utc = local_nanos - i128::from(self.offset.local_minus_utc()) * NANOS_PER_SECOND;
        let seconds = i64::try_from(utc.div_euclid(NANOS_PER_SECOND)).ok();
        let nanos = u32::try_from(utc.rem_euclid(NANOS_PER_SECOND)).ok();
        match seconds.zip(nanos) {
            Some((seconds, nanos)) => DateTime::from_timestamp(seconds, nanos),
            None => None,
        }
        .unwrap_or(if utc < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
    }
}

fn add_wall_clock(start: DateTime<Utc>, limit: Duration) -> DateTime<Utc> {
    if limit <= Duration::zero() {
        return start;
    }
    start
        .checked_add_signed(limit)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn wall_clock_left(now: DateTime<Utc>, due: DateTime<Utc>) -> Duration {
    if due <= now {
        return Duration::zero();
    }
    due.signed_duration_since(now)
}

fn nanos_of(duration: Duration) -> i128 {
    i128::from(duration.num_seconds()) * NANOS_PER_SECOND + i128::from(duration.subsec_nanos())
}

/// A duration of nanoseconds, saturating at the largest durations.
fn duration_of(nanos: i128) -> Duration {
    let seconds = i64::try_from(nanos.div_euclid(NANOS_PER_SECOND)).ok();
    let subsec = u32::try_from(nanos.rem_euclid(NANOS_PER_SECOND)).ok();
    match seconds.zip(subsec) {
        Some((seconds, subsec)) => Duration::new(seconds, subsec),
        None => None,
    }
    .unwrap_or(if nanos < 0 {
        Duration::MIN
    } else {
        Duration::MAX
    })
}

/// `+08:00`, `-05:30`, `+00:00`.
fn parse_offset(text: &str) -> Option<FixedOffset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let seconds = parse_clock(rest).filter(|&seconds| seconds < SECONDS_PER_DAY)?;
    FixedOffset::east_opt(sign * i32::try_from(seconds).ok()?)
}

/// `HH:MM` from `00:00` to `24:00`, in seconds from midnight.
fn parse_clock(text: &str) -> Option<u32> {
    let bytes = text.as_bytes();
    if bytes.len() != 5 || bytes[2] != b':' {
        return None;
    }
    let hours: u32 = text.get(0..2)?.parse().ok()?;
    let minutes: u32 = text.get(3..5)?.parse().ok()?;
    let digits = [0, 1, 3, 4]
        .iter()
        .all(|&index| bytes[index].is_ascii_digit());
    let seconds = hours * 3600 + minutes * 60;
    (digits && minutes < 60 && seconds <= SECONDS_PER_DAY).then_some(seconds)
}

fn check_hours(entries: &[String]) -> Result<Vec<(i128, i128)>, InvalidCalendar> {
    if entries.is_empty() {
        return Err(InvalidCalendar::new(
            "working_hours",
            "names no interval: a calendar needs working hours",
        ));
    }
    let entry_name = |index: usize| format!("working_hours[{index}] {:?}", entries[index]);
    let mut intervals = Vec::with_capacity(entries.len());
    for (index, text) in entries.iter().enumerate() {
        let parsed = text
            .split_once('-')
            .and_then(|(start, end)| Some((parse_clock(start.trim())?, parse_clock(end.trim())?)));
        let Some((start, end)) = parsed else {
            return Err(InvalidCalendar::new(
                entry_name(index),
                "must look like 09:00-12:00 (24:00 ends a day)",
            ));
        };
        if end <= start {
            return Err(InvalidCalendar::new(
                entry_name(index),
                "ends before it starts: an interval must not cross midnight",
            ));
        }
        intervals.push((start, end, index));
    }
    intervals.sort_unstable();
    for pair in intervals.windows(2) {
        let [(_, earlier_end, earlier), (later_start, _, later)] = pair else {
            continue;
        };
        if later_start < earlier_end {
            return Err(InvalidCalendar::new(
                entry_name(*later),
                format!("overlaps {}", entry_name(*earlier)),
            ));
        }
        if later_start == earlier_end {
            return Err(InvalidCalendar::new(
                entry_name(*later),
                format!(
                    "touches {}: write them as one interval",
                    entry_name(*earlier)
                ),
            ));
        }
    }
    Ok(intervals
        .into_iter()
        .map(|(start, end, _)| {
            (
                i128::from(start) * NANOS_PER_SECOND,
                i128::from(end) * NANOS_PER_SECOND,
            )
        })
        .collect())
}

fn check_weekdays(entries: &[String]) -> Result<[bool; 7], InvalidCalendar> {
    if entries.is_empty() {
        return Err(InvalidCalendar::new(
            "working_weekdays",
            "names no weekday: a calendar needs working days",
        ));
    }
    let mut weekdays = [false; 7];
    for (index, text) in entries.iter().enumerate() {
        let entry = || format!("working_weekdays[{index}] {text:?}");
        let weekday: Weekday = text
            .parse()
            .map_err(|_| InvalidCalendar::new(entry(), "must be a weekday such as Mon"))?;
        let slot = &mut weekdays[weekday.num_days_from_monday() as usize];
        if *slot {
            return Err(InvalidCalendar::new(entry(), "names a weekday twice"));
        }
        *slot = true;
    }
    Ok(weekdays)
}

fn check_holidays(
    holidays: &[PublicHoliday],
    weekdays: &[bool; 7],
) -> Result<BTreeMap<i128, SpecialDay>, InvalidCalendar> {
    let holiday_name =
        |index: usize| format!("public_holidays[{index}] ({})", holidays[index].name);
    let parse_date = |entry: String, text: &str| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| InvalidCalendar::new(entry, format!("{text:?} must be a date YYYY-MM-DD")))
    };
    let day_number =
        |date: NaiveDate| i128::from(date.num_days_from_ce()) - UNIX_EPOCH_DAYS_FROM_CE;
    let mut special_days = BTreeMap::new();
    for (index, holiday) in holidays.iter().enumerate() {
        if holiday.name.trim().is_empty() {
            return Err(InvalidCalendar::new(
                format!("public_holidays[{index}].name"),
                "required",
            ));
        }
        let from = parse_date(format!("{}.from", holiday_name(index)), &holiday.from)?;
        let to = parse_date(format!("{}.to", holiday_name(index)), &holiday.to)?;
        if to < from {
            return Err(InvalidCalendar::new(
                format!("{}.to", holiday_name(index)),
                format!("{} is before from {}", holiday.to, holiday.from),
            ));
        }
        if (to - from).num_days() >= LONGEST_HOLIDAY_DAYS {
            return Err(InvalidCalendar::new(
                holiday_name(index),
                format!("lasts more than {LONGEST_HOLIDAY_DAYS} days"),
            ));
        }
        for date in from.iter_days().take_while(|&date| date <= to) {
            if let Some(SpecialDay::Holiday(other)) =
                special_days.insert(day_number(date), SpecialDay::Holiday(index))
            {
                return Err(InvalidCalendar::new(
                    holiday_name(index),
                    format!("overlaps {} on {date}", holiday_name(other)),
                ));
            }
        }
    }
    // after every holiday, so that a make-up day inside a later holiday is caught too
    for (index, holiday) in holidays.iter().enumerate() {
        for (position, text) in holiday.make_up_work_days.iter().enumerate() {
            let entry = format!("{}.make_up_work_days[{position}]", holiday_name(index));
            let date = parse_date(entry.clone(), text)?;
            match special_days.get(&day_number(date)) {
                Some(SpecialDay::Holiday(other)) => {
                    return Err(InvalidCalendar::new(
                        entry,
                        format!(
                            "{date} is a day off of {}: a date cannot be both",
                            holiday_name(*other)
                        ),
                    ));
                }
                Some(SpecialDay::MakeUpWorkDay(other)) => {
                    return Err(InvalidCalendar::new(
                        entry,
                        format!(
                            "{date} is already a make-up day of {}",
                            holiday_name(*other)
                        ),
                    ));
                }
                None => {}
            }
            if weekdays[date.weekday().num_days_from_monday() as usize] {
                return Err(InvalidCalendar::new(
                    entry,
                    format!("{date} is a {}, already a working weekday", date.weekday()),
                ));
            }
            special_days.insert(day_number(date), SpecialDay::MakeUpWorkDay(index));
        }
    }
    Ok(special_days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Beijing office hours, Mon–Fri, with a made-up holiday week 2025-11-17..21 (Mon–Fri) made
    /// up on Saturday 2025-11-22, and a one-day holiday Wednesday 2025-12-03 made up on Sunday
    /// 2025-11-30. Not the official calendar: the tests must not depend on disputed dates.
    fn test_file() -> CalendarFile {
        CalendarFile {
            utc_offset: "+08:00".into(),
            working_hours: vec!["09:00-12:00".into(), "13:30-18:00".into()],
            working_weekdays: ["Mon", "Tue", "Wed", "Thu", "Fri"]
                .map(String::from)
                .to_vec(),
            public_holidays: vec![
                PublicHoliday {
                    name: "test week".into(),
                    from: "2025-11-17".into(),
                    to: "2025-11-21".into(),
                    make_up_work_days: vec!["2025-11-22".into()],
                },
                PublicHoliday {
                    name: "test day".into(),
                    from: "2025-12-03".into(),
                    to: "2025-12-03".into(),
                    make_up_work_days: vec!["2025-11-30".into()],
                },
            ],
            ..CalendarFile::default()
        }
    }

    fn calendar() -> Calendar {
        Calendar::new(&test_file()).expect("test calendar")
    }

    fn deadlines() -> CalendarTime {
        CalendarTime::new(calendar())
    }

    fn shipped_2026() -> Calendar {
        let file: CalendarFile =
            serde_json::from_str(include_str!("../../../deploy/demo/calendar-2026.json"))
                .expect("json");
        Calendar::new(&file).expect("valid")
    }

    /// The hand-made calendar or the shipped one: the laws hold whatever the dates.
    fn any_calendar() -> impl Strategy<Value = Calendar> {
        prop_oneof![Just(calendar()), Just(shipped_2026())]
    }

    /// A Beijing local time, `2025-11-07 15:00`.
    fn beijing(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_str(&format!("{text} +08:00"), "%Y-%m-%d %H:%M %z")
            .expect("local time")
            .with_timezone(&Utc)
    }

    fn invalid(file: &CalendarFile) -> InvalidCalendar {
        Calendar::new(file).expect_err("invalid calendar")
    }

    #[test]
    fn friday_afternoon_plus_one_working_day_is_monday_afternoon() {
        let due = deadlines().due_at(beijing("2025-11-07 15:00"), Duration::days(1));
        assert_eq!(due, beijing("2025-11-10 15:00"));
    }

    #[test]
    fn seven_days_general_is_seven_working_days() {
        let due = deadlines().due_at(beijing("2025-11-03 10:00"), Duration::days(7));
        assert_eq!(due, beijing("2025-11-12 10:00"));
        assert_eq!(calendar().working_day(), Duration::minutes(7 * 60 + 30));
        assert_eq!(
            calendar().working_time_of(Duration::days(7)),
            Duration::minutes(7 * (7 * 60 + 30))
        );
    }

    #[test]
    fn a_holiday_week_is_skipped_and_its_make_up_saturday_worked() {
        let deadlines = deadlines();
        let friday = beijing("2025-11-14 15:00");
        assert_eq!(
            deadlines.due_at(friday, Duration::days(1)),
            beijing("2025-11-22 15:00")
        );
        assert_eq!(
            deadlines.due_at(friday, Duration::days(2)),
            beijing("2025-11-24 15:00")
        );
        // a one-day holiday on a Wednesday, made up on the Sunday before it
        assert_eq!(
            deadlines.due_at(beijing("2025-11-28 15:00"), Duration::days(1)),
            beijing("2025-11-30 15:00")
        );
        assert_eq!(
            deadlines.due_at(beijing("2025-12-02 15:00"), Duration::days(1)),
            beijing("2025-12-04 15:00")
        );
        let calendar = calendar();
        let date = |text: &str| NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("date");
        assert!(!calendar.is_working_day(date("2025-11-17")));
        assert!(calendar.is_working_day(date("2025-11-22")));
        assert!(!calendar.is_working_day(date("2025-11-23")));
        assert!(calendar.is_working_day(date("2025-11-24")));
        assert_eq!(calendar.holidays_known_until(), Some(date("2025-12-03")));
    }

    #[test]
    fn a_start_at_night_counts_from_the_next_working_morning() {
        let deadlines = deadlines();
        // Monday 20:00: the whole of Tuesday
        assert_eq!(
            deadlines.due_at(beijing("2025-11-10 20:00"), Duration::days(1)),
            beijing("2025-11-11 18:00")
        );
        // Saturday 03:00: the whole of Monday
        assert_eq!(
            deadlines.due_at(beijing("2025-11-08 03:00"), Duration::days(1)),
            beijing("2025-11-10 18:00")
        );
        // Monday 04:00 in Beijing is Sunday 20:00 UTC
        let sunday_utc: DateTime<Utc> = "2025-11-09T20:00:00Z".parse().expect("instant");
        assert_eq!(
            deadlines.due_at(sunday_utc, Duration::days(1)),
            beijing("2025-11-10 18:00")
        );
    }

    #[test]
    fn boundaries_are_deterministic() {
        let deadlines = deadlines();
        // a start at the opening of the day: due at its close, not at the next opening
        assert_eq!(
            deadlines.due_at(beijing("2025-11-10 09:00"), Duration::days(1)),
            beijing("2025-11-10 18:00")
        );
        // at lunch the count starts at 13:30, and 12:00 the next day is the same working moment
        assert_eq!(
            deadlines.due_at(beijing("2025-11-10 12:30"), Duration::days(1)),
            beijing("2025-11-11 12:00")
        );
        // a fraction of a day is the same fraction of a working day: 1.5 days = 11 h 15 min
        assert_eq!(
            deadlines.due_at(beijing("2025-11-10 10:00"), Duration::hours(36)),
            beijing("2025-11-11 15:15")
        );
        // no working time stays put, even at night
        let night = beijing("2025-11-10 23:00");
        assert_eq!(calendar().add_working_time(night, Duration::zero()), night);
    }

    #[test]
    fn limits_under_a_day_ignore_the_calendar() {
        let deadlines = deadlines();
        let friday_evening = beijing("2025-11-07 17:00");
        assert_eq!(
            deadlines.due_at(friday_evening, Duration::hours(2)),
            beijing("2025-11-07 19:00")
        );
        assert_eq!(
            deadlines.due_at(beijing("2025-11-08 10:00"), Duration::hours(23)),
            beijing("2025-11-09 09:00")
        );
        assert_eq!(
            deadlines.due_at(beijing("2025-11-17 10:00"), Duration::minutes(15)),
            beijing("2025-11-17 10:15")
        );
        assert!(!counts_working_time(
            Duration::days(1) - Duration::nanoseconds(1)
        ));
        assert!(counts_working_time(Duration::days(1)));
    }

    #[test]
    fn wall_clock_counts_every_limit_in_calendar_time() {
        let friday = beijing("2025-11-07 15:00");
        assert_eq!(
            WallClock.due_at(friday, Duration::days(1)),
            beijing("2025-11-08 15:00")
        );
        assert_eq!(WallClock.due_at(friday, -Duration::hours(1)), friday);
        let remaining = WallClock.remaining(
            Duration::days(1),
            beijing("2025-11-08 09:00"),
            beijing("2025-11-08 15:00"),
        );
        assert_eq!(remaining, Remaining::WallClock(Duration::hours(6)));
        assert_eq!(
            WallClock.resume(beijing("2025-11-10 09:00"), remaining),
            beijing("2025-11-10 15:00")
        );
    }

    #[test]
    fn working_time_between_counts_only_working_hours() {
        let calendar = calendar();
        assert_eq!(
            calendar.working_time_between(beijing("2025-11-07 15:00"), beijing("2025-11-10 10:00")),
            Duration::hours(4)
        );
        assert_eq!(
            calendar.working_time_between(beijing("2025-11-10 11:00"), beijing("2025-11-10 14:00")),
            Duration::minutes(90)
        );
        // the holiday week counts only its make-up Saturday
        assert_eq!(
            calendar.working_time_between(beijing("2025-11-15 00:00"), beijing("2025-11-24 00:00")),
            calendar.working_day()
        );
        assert_eq!(
            calendar.working_time_between(beijing("2025-11-10 14:00"), beijing("2025-11-10 11:00")),
            Duration::zero()
        );
    }

    #[test]
    fn a_deferred_clock_resumes_with_its_remaining_working_time() {
        let deadlines = deadlines();
        let limit = Duration::days(7);
        let due = deadlines.due_at(beijing("2025-11-03 10:00"), limit);
        assert_eq!(due, beijing("2025-11-12 10:00"));
        // deferred Wednesday 2025-11-05 10:00 with 5 working days left
        let remaining = deadlines.remaining(limit, beijing("2025-11-05 10:00"), due);
        assert_eq!(
            remaining,
            Remaining::WorkingTime(Duration::minutes(5 * (7 * 60 + 30)))
        );
        // resumed Thursday 2025-11-13 10:00: Fri 14, the make-up Saturday 22, Mon 24, Tue 25, Wed 26
        assert_eq!(
            deadlines.resume(beijing("2025-11-13 10:00"), remaining),
            beijing("2025-11-26 10:00")
        );
        // a clock under a day keeps wall-clock time
        let short = deadlines.remaining(
            Duration::hours(2),
            beijing("2025-11-07 17:00"),
            beijing("2025-11-07 19:00"),
        );
        assert_eq!(short, Remaining::WallClock(Duration::hours(2)));
        // an overdue clock has nothing left
        assert_eq!(
            deadlines.remaining(limit, beijing("2025-11-13 10:00"), due),
            Remaining::WorkingTime(Duration::zero())
        );
    }

    #[test]
    fn huge_limits_saturate_instead_of_panicking() {
        let deadlines = deadlines();
        let start = beijing("2025-11-07 15:00");
        assert_eq!(
            deadlines.due_at(start, Duration::MAX),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            WallClock.due_at(start, Duration::MAX),
            DateTime::<Utc>::MAX_UTC
        );
        let years = calendar().working_time_between(start, start + Duration::days(3650));
        assert!(years > Duration::hours(18_000) && years < Duration::hours(20_000));
    }

    #[test]
    fn a_calendar_without_holidays_and_with_round_the_clock_hours_is_wall_clock_on_workdays() {
        let file = CalendarFile {
            utc_offset: "-05:30".into(),
            working_hours: vec!["00:00-24:00".into()],
            working_weekdays: ["Mon", "Tuesday", "wed", "Thu", "Fri", "Sat", "Sun"]
                .map(String::from)
                .to_vec(),
            ..CalendarFile::default()
        };
        let calendar = Calendar::new(&file).expect("calendar");
        let start = beijing("2025-11-07 15:00");
        assert_eq!(
            CalendarTime::new(calendar).due_at(start, Duration::days(3)),
            start + Duration::days(3)
        );
    }

    #[test]
    fn invalid_entries_are_named() {
        let with_hours = |hours: &[&str]| CalendarFile {
            working_hours: hours.iter().map(|&hour| hour.to_string()).collect(),
            ..test_file()
        };
        let error = invalid(&with_hours(&["09:00-12:00", "11:00-14:00"]));
        assert_eq!(error.entry, r#"working_hours[1] "11:00-14:00""#);
        assert!(
            error
                .reason
                .contains(r#"overlaps working_hours[0] "09:00-12:00""#)
        );
        let error = invalid(&with_hours(&["13:00-18:00", "09:00-13:00"]));
        assert_eq!(error.entry, r#"working_hours[0] "13:00-18:00""#);
        assert!(error.reason.starts_with("touches"));
        let error = invalid(&with_hours(&["18:00-09:00"]));
        assert!(error.reason.starts_with("ends before it starts"));
        for bad in [
            "9:00-12:00",
            "09:00-24:01",
            "09:60-10:00",
            "09:00",
            "ab:cd-ef:gh",
        ] {
            let error = invalid(&with_hours(&[bad]));
            assert_eq!(error.entry, format!("working_hours[0] {bad:?}"), "{bad}");
        }
        assert_eq!(invalid(&with_hours(&[])).entry, "working_hours");

        let with_weekdays = |weekdays: &[&str]| CalendarFile {
            working_weekdays: weekdays.iter().map(|&day| day.to_string()).collect(),
            ..test_file()
        };
        assert_eq!(
            invalid(&with_weekdays(&["Mon", "Funday"])).entry,
            r#"working_weekdays[1] "Funday""#
        );
        assert_eq!(
            invalid(&with_weekdays(&["Mon", "Monday"])).reason,
            "names a weekday twice"
        );
        assert_eq!(invalid(&with_weekdays(&[])).entry, "working_weekdays");

        for offset in ["08:00", "+8", "+24:00", "+08:0x", ""] {
            let file = CalendarFile {
                utc_offset: offset.into(),
                ..test_file()
            };
            assert_eq!(invalid(&file).entry, "utc_offset", "{offset:?}");
        }
    }

    #[test]
    fn invalid_holidays_are_named() {
        let with_holidays = |holidays: Vec<PublicHoliday>| CalendarFile {
            public_holidays: holidays,
            ..test_file()
        };
        let holiday = |name: &str, from: &str, to: &str, make_up: &[&str]| PublicHoliday {
            name: name.into(),
            from: from.into(),
            to: to.into(),
            make_up_work_days: make_up.iter().map(|&day| day.to_string()).collect(),
        };
        // a date both a holiday and a make-up day, across two holidays
        let error = invalid(&with_holidays(vec![
            holiday("a", "2025-11-17", "2025-11-17", &["2025-11-22"]),
            holiday("b", "2025-11-22", "2025-11-23", &[]),
        ]));
        assert_eq!(error.entry, "public_holidays[0] (a).make_up_work_days[0]");
        assert!(error.reason.contains("day off of public_holidays[1] (b)"));
        // a make-up day that is a working weekday anyway
        let error = invalid(&with_holidays(vec![holiday(
            "a",
            "2025-11-17",
            "2025-11-17",
            &["2025-11-19"],
        )]));
        assert!(
            error.reason.contains("already a working weekday"),
            "{error}"
        );
        // the same make-up day twice
        let error = invalid(&with_holidays(vec![holiday(
            "a",
            "2025-11-17",
            "2025-11-17",
            &["2025-11-22", "2025-11-22"],
        )]));
        assert_eq!(error.entry, "public_holidays[0] (a).make_up_work_days[1]");
        // overlapping holidays
        let error = invalid(&with_holidays(vec![
            holiday("a", "2025-11-17", "2025-11-19", &[]),
            holiday("b", "2025-11-19", "2025-11-20", &[]),
        ]));
        assert_eq!(error.entry, "public_holidays[1] (b)");
        assert!(
            error
                .reason
                .contains("overlaps public_holidays[0] (a) on 2025-11-19")
        );
        // ending before it starts, too long, not a date, no name
        let error = invalid(&with_holidays(vec![holiday(
            "a",
            "2025-11-19",
            "2025-11-17",
            &[],
        )]));
        assert_eq!(error.entry, "public_holidays[0] (a).to");
        let error = invalid(&with_holidays(vec![holiday(
            "a",
            "2025-10-01",
            "2025-12-07",
            &[],
        )]));
        assert!(error.reason.starts_with("lasts more than 31 days"));
        let error = invalid(&with_holidays(vec![holiday(
            "a",
            "2025-11-31",
            "2025-12-01",
            &[],
        )]));
        assert_eq!(error.entry, "public_holidays[0] (a).from");
        let error = invalid(&with_holidays(vec![holiday(
            " ",
            "2025-11-17",
            "2025-11-17",
            &[],
        )]));
        assert_eq!(error.entry, "public_holidays[0].name");
    }

    #[test]
    fn a_file_is_read_checked_and_its_errors_name_the_file() {
        let error = Calendar::load(Path::new("no/such/calendar.json")).expect_err("missing");
        assert!(
            error
                .to_string()
                .starts_with("cannot read calendar file no/such/calendar.json"),
            "{error}"
        );
        let unknown: Result<CalendarFile, _> = serde_json::from_str(
            r#"{ "utc_offset": "+08:00", "working_hours": [], "working_weekdays": [], "holidays": [] }"#,
        );
        assert!(unknown.is_err(), "unknown fields are refused");
        assert!(CalendarConfig::default().deadlines().is_ok());
    }

    /// Only that it loads: its dates are the State Council's, checked by hand (docs/calendar.md).
    #[test]
    fn the_shipped_2026_calendar_is_valid() {
        let calendar = shipped_2026();
        assert_eq!(
            calendar.utc_offset(),
            FixedOffset::east_opt(8 * 3600).expect("offset")
        );
        assert_eq!(calendar.working_day(), Duration::minutes(7 * 60 + 30));
        assert_eq!(
            calendar.holidays_known_until().map(|date| date.year()),
            Some(2026)
        );
    }

    /// Instants of 2025 to 2027, to the second.
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        (1_735_689_600i64..1_830_297_600)
            .prop_map(|seconds| DateTime::from_timestamp(seconds, 0).expect("in range"))
    }

    /// Limits below a day, minute resolution.
    fn short_limit() -> impl Strategy<Value = Duration> {
        (0i64..24 * 60).prop_map(Duration::minutes)
    }

    /// Limits from one day to 400 days, minute resolution.
    fn long_limit() -> impl Strategy<Value = Duration> {
        (24 * 60i64..400 * 24 * 60).prop_map(Duration::minutes)
    }

    fn limit() -> impl Strategy<Value = Duration> {
        prop_oneof![short_limit(), long_limit()]
    }

    /// Two limits counted the same way.
    fn limit_pair() -> impl Strategy<Value = (Duration, Duration)> {
        prop_oneof![(short_limit(), short_limit()), (long_limit(), long_limit())]
    }

    fn working_time() -> impl Strategy<Value = Duration> {
        (0i64..3_000 * 60 * 60).prop_map(Duration::seconds)
    }

    /// A moment strictly inside working hours on a day of 2025–2027 that may not be worked.
    fn inside_working_hours() -> impl Strategy<Value = DateTime<Utc>> {
        let morning = (9 * 3600i64 + 1)..(12 * 3600);
        let afternoon = (13 * 3600i64 + 1800 + 1)..(18 * 3600);
        (0i64..1095, prop_oneof![morning, afternoon]).prop_map(|(day, second)| {
            beijing("2025-01-01 00:00") + Duration::days(day) + Duration::seconds(second)
        })
    }

    proptest! {
        #[test]
        fn due_is_never_before_start(start in instant(), limit in limit()) {
            prop_assert!(deadlines().due_at(start, limit) >= start);
            prop_assert!(WallClock.due_at(start, limit) >= start);
        }

        #[test]
        fn due_is_monotone_in_start(first in instant(), second in instant(), limit in limit()) {
            let (early, late) = if first <= second { (first, second) } else { (second, first) };
            let deadlines = deadlines();
            prop_assert!(deadlines.due_at(early, limit) <= deadlines.due_at(late, limit));
        }

        /// Within each way of counting; across one day it is not (docs/calendar.md).
        #[test]
        fn due_is_monotone_in_limit(start in instant(), (first, second) in limit_pair()) {
            let (short, long) = if first <= second { (first, second) } else { (second, first) };
            let deadlines = deadlines();
            prop_assert!(deadlines.due_at(start, short) <= deadlines.due_at(start, long));
        }

        #[test]
        /// And the due instant is the earliest one with that much working time behind it.
        fn working_time_until_due_is_the_limit(
            calendar in any_calendar(),
            start in instant(),
            limit in long_limit(),
        ) {
            let due = CalendarTime::new(calendar.clone()).due_at(start, limit);
            let working_time = calendar.working_time_of(limit);
            prop_assert_eq!(calendar.working_time_between(start, due), working_time);
            let just_before = due - Duration::nanoseconds(1);
            prop_assert!(calendar.working_time_between(start, just_before) < working_time);
        }

        #[test]
        fn adding_in_two_steps_is_adding_once(
            calendar in any_calendar(),
            start in instant(),
            first in working_time(),
            second in working_time(),
        ) {
            prop_assert_eq!(
                calendar.add_working_time(calendar.add_working_time(start, first), second),
                calendar.add_working_time(start, first + second)
            );
        }

        #[test]
        fn working_time_between_is_additive(
            calendar in any_calendar(),
            first in instant(),
            second in instant(),
            third in instant(),
        ) {
            let mut instants = [first, second, third];
            instants.sort();
            let [a, b, c] = instants;
            prop_assert_eq!(
                calendar.working_time_between(a, b) + calendar.working_time_between(b, c),
                calendar.working_time_between(a, c)
            );
        }

        /// Skipping whole weeks agrees with walking every day.
        #[test]
        fn working_time_between_agrees_with_a_day_by_day_count(
            calendar in any_calendar(),
            from in instant(),
            days in 0i64..800,
        ) {
            let to = from + Duration::days(days);
            let mut total = Duration::zero();
            let mut day_start = from;
            while day_start < to {
                let day_end = (day_start + Duration::days(1)).min(to);
                total += calendar.working_time_between(day_start, day_end);
                day_start = day_end;
            }
            prop_assert_eq!(calendar.working_time_between(from, to), total);
        }

        /// Stopping and restarting at once changes nothing; stopping for a while never brings
        /// the due instant forward.
        #[test]
        fn a_deferral_keeps_the_remaining_time(
            start in instant(),
            limit in limit(),
            stop_at_permille in 0i32..=1000,
            stopped_for in 0i64..60 * 24 * 60,
        ) {
            let deadlines = deadlines();
            let due = deadlines.due_at(start, limit);
            let stop = start + (due - start) * stop_at_permille / 1000;
            let remaining = deadlines.remaining(limit, stop, due);
            prop_assert_eq!(deadlines.resume(stop, remaining), due);
            prop_assert!(deadlines.resume(stop + Duration::minutes(stopped_for), remaining) >= due);
        }

        /// N days from inside working hours: the same time of day on the N-th working day after.
        #[test]
        fn whole_days_fall_on_the_same_time_of_day(start in inside_working_hours(), days in 1i64..60) {
            let calendar = calendar();
            let local = start.with_timezone(&calendar.utc_offset());
            prop_assume!(calendar.is_working_day(local.date_naive()));
            let due = deadlines().due_at(start, Duration::days(days)).with_timezone(&calendar.utc_offset());
            prop_assert_eq!(due.time(), local.time());
            let working_days_after = local
                .date_naive()
                .iter_days()
                .skip(1)
                .take_while(|&date| date <= due.date_naive())
                .filter(|&date| calendar.is_working_day(date))
                .count();
            prop_assert_eq!(working_days_after, usize::try_from(days).expect("days"));
            prop_assert!(calendar.is_working_day(due.date_naive()));
        }
    }
}
