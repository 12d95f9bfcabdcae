//! Evaluation periods (month, quarter, year) and their bounds in the evaluation time zone.

use chrono::NaiveDate;

pub(crate) const MILLIS_PER_HOUR: i64 = 3_600_000;

/// The offset of the evaluation time zone from UTC, in whole hours (China: +8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset {
    hours: i32,
}

impl UtcOffset {
    pub fn from_hours(hours: i32) -> Result<Self, String> {
        if !(-12..=14).contains(&hours) {
            return Err(format!("must be between -12 and 14 hours, got {hours}"));
        }
        Ok(Self { hours })
    }

    pub fn hours(&self) -> i32 {
        self.hours
    }
}

/// A scoring period: a month (`2026-11`), a quarter (`2026-Q4`) or a year (`2026`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Month { year: i32, month: u32 },
    Quarter { year: i32, quarter: u32 },
    Year { year: i32 },
}

/// The instants a period covers: `start_ms` included, `end_ms` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodBounds {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl PeriodBounds {
    pub fn contains(&self, at_ms: i64) -> bool {
        self.start_ms <= at_ms && at_ms < self.end_ms
    }
}

const PERIOD_FORMS: &str =
    "must be a month like \"2026-11\", a quarter like \"2026-Q4\" or a year like \"2026\"";

impl Period {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err(format!("required; {PERIOD_FORMS}"));
        }
        let malformed = || format!("{PERIOD_FORMS}, got {value:?}");
        let (year_text, rest) = match value.split_once('-') {
            Some((year, rest)) => (year, Some(rest)),
            None => (value, None),
        };
        let year = parse_year(year_text).ok_or_else(malformed)?;
        let Some(rest) = rest else {
            return Ok(Self::Year { year });
        };
        if let Some(quarter_text) = rest.strip_prefix('Q') {
            let quarter = parse_digits(quarter_text, 1).ok_or_else(malformed)?;
            if !(1..=4).contains(&quarter) {
                return Err(format!("quarter must be Q1 to Q4, got {value:?}"));
            }
            return Ok(Self::Quarter { year, quarter });
        }
        let month = parse_digits(rest, 2).ok_or_else(malformed)?;
        if !(1..=12).contains(&month) {
            return Err(format!("month must be 01 to 12, got {value:?}"));
        }
        Ok(Self::Month { year, month })
    }

    /// The canonical text of the period, the form `parse` accepts.
    pub fn label(&self) -> String {
        match self {
            Self::Month { year, month } => format!("{year:04}-{month:02}"),
            Self::Quarter { year, quarter } => format!("{year:04}-Q{quarter}"),
            Self::Year { year } => format!("{year:04}"),
        }
    }

    /// The first month of the period and the first month after it, as (year, month).
    fn month_range(&self) -> ((i32, u32), (i32, u32)) {
        let (start, months) = match *self {
            Self::Month { year, month } => ((year, month), 1),
            Self::Quarter { year, quarter } => ((year, (quarter - 1) * 3 + 1), 3),
            Self::Year { year } => ((year, 1), 12),
        };
        let index = start.0 * 12 + (start.1 as i32 - 1) + months;
        let end = (index.div_euclid(12), index.rem_euclid(12) as u32 + 1);
        (start, end)
    }

    /// Where the period starts and ends in UTC, for local midnights at `offset`.
    pub fn bounds(&self, offset: UtcOffset) -> PeriodBounds {
        let (start, end) = self.month_range();
        PeriodBounds {
            start_ms: local_month_start_ms(start, offset),
            end_ms: local_month_start_ms(end, offset),
        }
    }
}

/// The latest month that ended at or before `at_ms` (local midnights at `offset`).
pub fn latest_month_ended_before(at_ms: i64, offset: UtcOffset) -> Option<Period> {
    let local =
        chrono::DateTime::from_timestamp_millis(at_ms + i64::from(offset.hours) * MILLIS_PER_HOUR)?
            .naive_utc();
    use chrono::Datelike;
    // the month that contains `at_ms` has not ended; the one before it has
    let index = local.year() * 12 + local.month0() as i32 - 1;
    let year = index.div_euclid(12);
    (1970..=9999).contains(&year).then_some(Period::Month {
        year,
        month: index.rem_euclid(12) as u32 + 1,
    })
}

fn parse_year(text: &str) -> Option<i32> {
    let year = parse_digits(text, 4)?;
    (1970..=9999).contains(&year).then_some(year as i32)
}

fn parse_digits(text: &str, length: usize) -> Option<u32> {
    if text.len() != length || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn local_month_start_ms((year, month): (i32, u32), offset: UtcOffset) -> i64 {
    // Years are 1970..=10000 and months 1..=12 here, so the date always exists.
    let utc_midnight_ms = NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|midnight| midnight.and_utc().timestamp_millis())
        .unwrap_or_default();
    utc_midnight_ms - i64::from(offset.hours) * MILLIS_PER_HOUR
}
