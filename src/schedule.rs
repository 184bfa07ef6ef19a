//! Cron schedules as a Kubernetes CronJob reads them, and the longest gap between two runs.
//!
//! Pure. The grammar is the standard five fields (minute, hour, day of month, month, day of
//! week) that Kubernetes' CronJob controller accepts (robfig/cron's standard parser):
//! `*` and `?`, numbers, names (`JAN`–`DEC`, `SUN`–`SAT`, any case), ranges `a-b`, steps
//! `*/n`, `a-b/n` and `a/n` (from `a` to the end), comma lists, and the macros `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`.
//!
//! Day of month and day of week follow cron's OR rule: when both are restricted (neither
//! is a plain `*` or `?`), a day matches if either matches; otherwise both must.
//!
//! [`Schedule::longest_gap`] is "one CronJob period" for the overlay's timing checks: the
//! longest time from one firing to the next, over a whole 400-year Gregorian cycle (after
//! which every calendar repeats), so `0 0 29 2 *` reports the eight years from 2096 to 2104.
//! It is computed in the schedule's own wall-clock time: a daylight-saving change in the
//! CronJob's `timeZone` can add an hour.

use time::Date;

use crate::duration::Duration;

/// Why a schedule cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not five fields and not a known macro.
    #[error(
        "write five fields (minute hour day-of-month month day-of-week), such as \"17 3 * * *\", or @daily"
    )]
    Shape,
    /// A macro kiln does not know (such as `@every`, which Kubernetes does not document).
    #[error(
        "{0:?} is not a schedule macro Kubernetes documents: use @yearly, @monthly, @weekly, @daily or @hourly"
    )]
    Macro(String),
    /// One field is wrong.
    #[error("the {field} field {value:?}: {reason}")]
    Field {
        /// `minute`, `hour`, `day-of-month`, `month` or `day-of-week`.
        field: &'static str,
        /// The field as written (capped).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The schedule is well formed but no date matches it (such as `0 0 30 2 *`).
    #[error("it never fires: no date matches its day-of-month, month and day-of-week")]
    Never,
}

/// Every Gregorian calendar repeats after 400 years, which are 146,097 days (a whole number
/// of weeks), so one cycle holds every gap there is.
const CYCLE_DAYS: i64 = 146_097;

/// One field: the allowed range and the names it accepts.
struct Bounds {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Bounds = Bounds {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
/// Month names, index + 1 is the month number.
const MONTH: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// Day names, index is the day number (Sunday is 0).
const DAY_OF_WEEK: Bounds = Bounds {
    name: "day-of-week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// The set of values one field matches, and whether it was written as a plain `*` or `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    fn has(self, value: u32) -> bool {
        self.bits & (1u64 << value) != 0
    }
}

/// A parsed five-field schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: Field,
    hour: Field,
    day_of_month: Field,
    month: Field,
    day_of_week: Field,
}

fn capped(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn value(text: &str, bounds: &Bounds) -> Result<u32, String> {
    if let Some(index) = bounds
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        // Months are numbered from 1, days of the week from 0.
        return Ok(index as u32 + bounds.min);
    }
    let number: u32 = text.parse().map_err(|_| {
        if bounds.names.is_empty() {
            format!("{text:?} is not a number")
        } else {
            format!(
                "{text:?} is not a number or a name ({}–{})",
                bounds.names[0].to_uppercase(),
                bounds.names[bounds.names.len() - 1].to_uppercase()
            )
        }
    })?;
    if number < bounds.min || number > bounds.max {
        let hint = if bounds.name == DAY_OF_WEEK.name && number == 7 {
            "; write 0 or SUN for Sunday"
        } else {
            ""
        };
        return Err(format!("{number} is outside {}–{}{hint}", bounds.min, bounds.max));
    }
    Ok(number)
}

/// One comma-separated item: `*`, `?`, `a`, `a-b`, each optionally `/step`.
fn item(text: &str, bounds: &Bounds) -> Result<Field, String> {
    let (range, step) = match text.split_once('/') {
        None => (text, None),
        Some((range, step)) => {
            let step: u32 = step
                .parse()
                .map_err(|_| format!("the step {step:?} is not a whole number"))?;
            if step == 0 {
                return Err("a step must be at least 1".into());
            }
            (range, Some(step))
        }
    };
    let star = range == "*" || range == "?";
    let (start, end) = if star {
        (bounds.min, bounds.max)
    } else {
        match range.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (value(low, bounds)?, value(high, bounds)?);
                if low > high {
                    return Err(format!("the range {range} runs backwards"));
                }
                (low, high)
            }
            // `a/n` means from a to the end, stepping by n.
            None if step.is_some() => (value(range, bounds)?, bounds.max),
            None => {
                let single = value(range, bounds)?;
                (single, single)
            }
        }
    };
    let step = step.unwrap_or(1);
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        bits |= 1u64 << v;
        v += step;
    }
    Ok(Field {
        bits,
        // `*/2` restricts the field, so it no longer counts as "any" for the OR rule.
        star: star && step == 1,
    })
}

fn field(text: &str, bounds: &Bounds) -> Result<Field, ScheduleError> {
    let mut out = Field { bits: 0, star: false };
    for part in text.split(',') {
        let parsed = item(part, bounds).map_err(|reason| ScheduleError::Field {
            field: bounds.name,
            value: capped(text),
            reason,
        })?;
        out.bits |= parsed.bits;
        out.star |= parsed.star;
    }
    Ok(out)
}

impl Schedule {
    /// Parse a schedule; see the module docs for the grammar.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => return Err(ScheduleError::Macro(capped(other))),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields[..] else {
            return Err(ScheduleError::Shape);
        };
        let schedule = Self {
            minute: field(minute, &MINUTE)?,
            hour: field(hour, &HOUR)?,
            day_of_month: field(day_of_month, &DAY_OF_MONTH)?,
            month: field(month, &MONTH)?,
            day_of_week: field(day_of_week, &DAY_OF_WEEK)?,
        };
        if schedule.minutes_of_day().is_empty() || !schedule.fires_within_cycle() {
            return Err(ScheduleError::Never);
        }
        Ok(schedule)
    }

    /// True when some date of the 400-year cycle matches (stops at the first one).
    fn fires_within_cycle(&self) -> bool {
        cycle_days().any(|(_, month, day, weekday)| self.matches(month, day, weekday))
    }

    /// True when the schedule fires on `date` (at some minute).
    pub fn fires_on(&self, date: Date) -> bool {
        self.matches(
            u32::from(u8::from(date.month())),
            u32::from(date.day()),
            u32::from(date.weekday().number_days_from_sunday()),
        )
    }

    /// The day rule: month, then day of month and day of week (Sunday 0) with cron's OR.
    fn matches(&self, month: u32, day: u32, weekday: u32) -> bool {
        if !self.month.has(month) {
            return false;
        }
        let dom = self.day_of_month.has(day);
        let dow = self.day_of_week.has(weekday);
        if self.day_of_month.star || self.day_of_week.star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The minutes of a firing day, as minutes after midnight, ascending.
    fn minutes_of_day(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for hour in 0..24 {
            if !self.hour.has(hour) {
                continue;
            }
            for minute in 0..60 {
                if self.minute.has(minute) {
                    out.push(i64::from(hour * 60 + minute));
                }
            }
        }
        out
    }

    /// The longest time between two consecutive firings (one CronJob period, at worst).
    /// [`ScheduleError::Never`] when no date ever matches.
    pub fn longest_gap(&self) -> Result<Duration, ScheduleError> {
        let minutes = self.minutes_of_day();
        let (Some(&first), Some(&last)) = (minutes.first(), minutes.last()) else {
            return Err(ScheduleError::Never);
        };
        let mut longest = minutes
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or(0);
        let mut first_day: Option<i64> = None;
        let mut previous_day: Option<i64> = None;
        for (day, month, day_of_month, weekday) in cycle_days() {
            if self.matches(month, day_of_month, weekday) {
                if let Some(previous) = previous_day {
                    longest = longest.max((day - previous) * 1440 + first - last);
                }
                first_day.get_or_insert(day);
                previous_day = Some(day);
            }
        }
        let (Some(first_day), Some(last_day)) = (first_day, previous_day) else {
            return Err(ScheduleError::Never);
        };
        // Around the end of the cycle: from the last firing day to the first one of the next.
        longest = longest.max((first_day + CYCLE_DAYS - last_day) * 1440 + first - last);
        Ok(Duration::from_secs(longest * 60))
    }
}

/// Every day of the 400-year cycle from 1 January 2000 (a Saturday): (index, month,
/// day of month, day of week with Sunday 0). Plain arithmetic, as this runs 146,097 times.
fn cycle_days() -> impl Iterator<Item = (i64, u32, u32, u32)> {
    let leap = |year: i64| (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    (2000..2400i64)
        .flat_map(move |year| {
            (1..=12u32).flat_map(move |month| {
                let days = match month {
                    2 if leap(year) => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                (1..=days).map(move |day| (month, day))
            })
        })
        .enumerate()
        .map(|(index, (month, day))| {
            let index = index as i64;
            (index, month, day, ((6 + index) % 7) as u32)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(text: &str) -> Duration {
        Schedule::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .longest_gap()
            .unwrap()
    }

    const MINUTE_SECS: i64 = 60;
    const HOUR_SECS: i64 = 3600;
    const DAY_SECS: i64 = 86_400;

    #[test]
    fn common_schedules() {
        assert_eq!(gap("17 3 * * *"), Duration::from_days(1));
        assert_eq!(gap("@daily"), Duration::from_days(1));
        assert_eq!(gap("@midnight"), Duration::from_days(1));
        assert_eq!(gap("@hourly"), Duration::from_secs(HOUR_SECS));
        assert_eq!(gap("@weekly"), Duration::from_days(7));
        assert_eq!(gap("* * * * *"), Duration::from_secs(MINUTE_SECS));
        assert_eq!(gap("*/15 * * * *"), Duration::from_secs(15 * MINUTE_SECS));
        // Every 6 hours from 01:00: 01, 07, 13, 19.
        assert_eq!(gap("0 1/6 * * *"), Duration::from_secs(6 * HOUR_SECS));
        // 0, 7, …, 56 past: the wrap from :56 to :00 is only 4 minutes.
        assert_eq!(gap("*/7 * * * *"), Duration::from_secs(7 * MINUTE_SECS));
        // :05 and :50: 45 minutes one way, 15 the other.
        assert_eq!(gap("5,50 * * * *"), Duration::from_secs(45 * MINUTE_SECS));
    }

    #[test]
    fn ranges_lists_and_names() {
        // Weekdays at 09:30: Friday to Monday is 3 days.
        assert_eq!(gap("30 9 * * MON-FRI"), Duration::from_days(3));
        assert_eq!(gap("30 9 * * mon-fri"), Duration::from_days(3));
        assert_eq!(gap("30 9 * * 1-5"), Duration::from_days(3));
        // Twice a day, unevenly: 02:00 and 20:00 leave a 18-hour gap.
        assert_eq!(gap("0 2,20 * * *"), Duration::from_secs(18 * HOUR_SECS));
        // Monthly on the 1st: the longest month has 31 days.
        assert_eq!(gap("0 0 1 * *"), Duration::from_days(31));
        // The 31st exists in 7 months: from 31 Aug to 31 Oct is 61 days.
        assert_eq!(gap("0 0 31 * *"), Duration::from_days(61));
        // January and July only.
        assert_eq!(gap("0 0 1 JAN,jul *"), Duration::from_days(184));
        assert_eq!(gap("@yearly"), Duration::from_days(366));
        // Leap day: 2096 to 2104, as 2100 is not a leap year.
        assert_eq!(gap("0 0 29 2 *"), Duration::from_days(8 * 365 + 1));
        // `?` reads as `*`.
        assert_eq!(gap("0 0 ? * ?"), Duration::from_days(1));
    }

    #[test]
    fn day_of_month_and_day_of_week_or_rule() {
        // Both restricted: the 1st OR any Monday, so never more than 7 days apart.
        let either = gap("0 0 1 * MON");
        assert!(either <= Duration::from_days(7), "{either}");
        // Day of week `*`: only the 1st (AND with "any day").
        assert_eq!(gap("0 0 1 * *"), Duration::from_days(31));
        // Day of month `*`: only Mondays.
        assert_eq!(gap("0 0 * * 1"), Duration::from_days(7));
        // A stepped star restricts the field, so the OR rule applies: every other day of
        // the month OR every Sunday.
        let schedule = Schedule::parse("0 0 */2 * 0").unwrap();
        let sunday_the_2nd = Date::from_calendar_date(2026, time::Month::August, 2).unwrap();
        let monday_the_3rd = sunday_the_2nd.next_day().unwrap();
        let tuesday_the_4th = monday_the_3rd.next_day().unwrap();
        assert!(schedule.fires_on(sunday_the_2nd));
        assert!(schedule.fires_on(monday_the_3rd), "day 3 matches */2 from 1");
        assert!(!schedule.fires_on(tuesday_the_4th));
        // Friday the 13th style: the 13th OR a Friday.
        let s = Schedule::parse("0 0 13 * 5").unwrap();
        let friday = Date::from_calendar_date(2026, time::Month::January, 2).unwrap();
        let the_13th = Date::from_calendar_date(2026, time::Month::January, 13).unwrap();
        let neither = Date::from_calendar_date(2026, time::Month::January, 14).unwrap();
        assert!(s.fires_on(friday) && s.fires_on(the_13th) && !s.fires_on(neither));
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let err = |text: &str| Schedule::parse(text).unwrap_err().to_string();
        assert_eq!(err("61 * * * *"), "the minute field \"61\": 61 is outside 0–59");
        assert_eq!(
            err("0 0 * * 7"),
            "the day-of-week field \"7\": 7 is outside 0–6; write 0 or SUN for Sunday"
        );
        assert!(err("0 0 * FOO *").contains("\"FOO\" is not a number or a name (JAN–DEC)"));
        assert!(err("0 0 * * 5-1").contains("the range 5-1 runs backwards"));
        assert!(err("*/0 * * * *").contains("a step must be at least 1"));
        assert!(err("0 0 * *").starts_with("write five fields"));
        assert!(err("@every 1h").contains("@every"));
        assert_eq!(Schedule::parse("0 0 30 2 *").unwrap_err(), ScheduleError::Never);
        assert_eq!(
            Schedule::parse("0 0 31 4,6,9,11 *").unwrap_err(),
            ScheduleError::Never
        );
        // A long value is capped in the message.
        let long = format!("0 0 {} * *", "1,".repeat(100));
        assert!(err(&long).len() < 200, "{}", err(&long));
    }

    #[test]
    fn the_cycle_walks_the_real_calendar() {
        let mut date = Date::from_calendar_date(2000, time::Month::January, 1).unwrap();
        let mut count = 0;
        for (index, month, day, weekday) in cycle_days() {
            assert_eq!(index, count);
            assert_eq!(
                (month, day, weekday),
                (
                    u32::from(u8::from(date.month())),
                    u32::from(date.day()),
                    u32::from(date.weekday().number_days_from_sunday())
                ),
                "{date}"
            );
            date = date.next_day().unwrap();
            count += 1;
        }
        assert_eq!(count, CYCLE_DAYS);
        assert_eq!(
            date,
            Date::from_calendar_date(2400, time::Month::January, 1).unwrap()
        );
    }

    #[test]
    fn gaps_are_whole_minutes_and_at_most_the_cycle() {
        for text in ["5 4 * * SUN", "0 22 * * 1-5", "23 0-20/2 * * *", "0 0 1 1 *"] {
            let secs = gap(text).as_secs();
            assert_eq!(secs % MINUTE_SECS, 0, "{text}");
            assert!(secs > 0 && secs <= 400 * 366 * DAY_SECS, "{text}");
        }
        // Weekdays at 22:00: Friday 22:00 to Monday 22:00.
        assert_eq!(gap("0 22 * * 1-5"), Duration::from_days(3));
    }
}
