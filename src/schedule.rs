//! When a schedule fires: a cron expression of five fields (minute, hour, day of month,
//! month, day of week; `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` too), parsed by
//! croner and evaluated in an IANA time zone, or `@every <duration>` counted from an anchor.
//! Around daylight saving changes a fixed-time run in the skipped hour happens at the first
//! instant after it, and one in the repeated hour happens once; runs every n minutes or
//! hours follow the real clock. Pure.

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// The shortest `@every` interval.
pub const MIN_EVERY: SignedDuration = SignedDuration::from_secs(60);

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cadence: Cadence,
    tz: TimeZone,
}

#[derive(Debug, Clone)]
enum Cadence {
    Cron(Box<Cron>),
    /// Every interval after the anchor.
    Every {
        interval: SignedDuration,
        anchor: Timestamp,
    },
}

impl Schedule {
    /// Parses `expression` in the time zone `time_zone` (an IANA name; default UTC);
    /// `@every` runs are counted from `anchor`. The error says what is wrong.
    pub fn parse(
        expression: &str,
        time_zone: Option<&str>,
        anchor: Timestamp,
    ) -> Result<Self, String> {
        let tz = match time_zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name)
                .map_err(|_| format!("timeZone {name:?} is not an IANA time zone name"))?,
        };
        let expression = expression.trim();
        let cadence = if let Some(text) = expression.strip_prefix("@every") {
            let interval = SignedDuration::from_str(text.trim()).map_err(|e| {
                format!(
                    "@every {:?}: not a duration such as 90m or 1h30m ({e})",
                    text.trim()
                )
            })?;
            if interval < MIN_EVERY {
                return Err(format!(
                    "@every {}: the shortest interval is one minute",
                    text.trim()
                ));
            }
            Cadence::Every { interval, anchor }
        } else {
            let parser = CronParser::builder()
                .seconds(Seconds::Disallowed)
                .year(Year::Disallowed)
                .build();
            let cron = parser.parse(expression).map_err(|e| {
                format!(
                    "schedule {expression:?}: {e} (five fields: minute hour day-of-month month \
                     day-of-week, or @hourly, @daily, @weekly, @monthly, @yearly, @every <duration>)"
                )
            })?;
            Cadence::Cron(Box::new(cron))
        };
        Ok(Self { cadence, tz })
    }

    /// The time zone it is counted in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The first run strictly after `after`, if there is one.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.cadence {
            Cadence::Every { interval, anchor } => {
                if after < *anchor {
                    return Some(*anchor);
                }
                let step = interval.as_nanos();
                let elapsed = after.duration_since(*anchor).as_nanos();
                let n = elapsed / step + 1;
                let offset = SignedDuration::from_nanos_i128(n.checked_mul(step)?);
                anchor.checked_add(offset).ok()
            }
            Cadence::Cron(cron) => {
                let from = after.to_zoned(self.tz.clone());
                cron.find_next_occurrence(&from, false)
                    .ok()
                    .map(|z| z.timestamp())
            }
        }
    }

    /// The runs in `(after, until]`, oldest first, at most `most` of them, and whether there
    /// were more.
    pub fn runs_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        most: usize,
    ) -> (Vec<Timestamp>, bool) {
        let mut runs = Vec::new();
        let mut cursor = after;
        while let Some(next) = self.next_after(cursor) {
            if next > until {
                return (runs, false);
            }
            if runs.len() == most {
                return (runs, true);
            }
            runs.push(next);
            cursor = next;
        }
        (runs, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn next(expression: &str, tz: Option<&str>, after: &str) -> String {
        let schedule = Schedule::parse(expression, tz, at("2026-01-01T00:00:00Z")).unwrap();
        schedule.next_after(at(after)).unwrap().to_string()
    }

    #[test]
    fn cron_runs_in_its_time_zone() {
        let cases = [
            // (expression, zone, after, next run in UTC)
            (
                "0 2 * * *",
                None,
                "2026-03-10T02:00:00Z",
                "2026-03-11T02:00:00Z",
            ),
            (
                "0 2 * * *",
                Some("Europe/Berlin"),
                "2026-03-10T02:00:00Z",
                "2026-03-11T01:00:00Z",
            ),
            (
                "@hourly",
                None,
                "2026-03-10T02:59:59Z",
                "2026-03-10T03:00:00Z",
            ),
            (
                "@daily",
                Some("Asia/Tokyo"),
                "2026-03-10T16:00:00Z",
                "2026-03-11T15:00:00Z",
            ),
            (
                "@weekly",
                None,
                "2026-03-10T00:00:00Z",
                "2026-03-15T00:00:00Z",
            ),
            // Months of different lengths: the 31st skips April; the 1st follows February.
            (
                "0 0 31 * *",
                None,
                "2026-03-31T00:00:00Z",
                "2026-05-31T00:00:00Z",
            ),
            (
                "@monthly",
                None,
                "2026-02-15T00:00:00Z",
                "2026-03-01T00:00:00Z",
            ),
            (
                "0 12 29 2 *",
                None,
                "2026-01-01T00:00:00Z",
                "2028-02-29T12:00:00Z",
            ),
            (
                "30 4 * * MON-FRI",
                None,
                "2026-11-27T05:00:00Z",
                "2026-11-30T04:30:00Z",
            ),
        ];
        for (expression, tz, after, expected) in cases {
            assert_eq!(next(expression, tz, after), expected, "{expression} {tz:?}");
        }
    }

    #[test]
    fn daylight_saving_changes() {
        let ny = Some("America/New_York");
        // 2026-03-08: 02:00-03:00 does not exist. A 02:30 run happens at 03:00 EDT
        // (07:00 UTC), once.
        assert_eq!(
            next("30 2 * * *", ny, "2026-03-08T00:00:00Z"),
            "2026-03-08T07:00:00Z"
        );
        assert_eq!(
            next("30 2 * * *", ny, "2026-03-08T07:00:00Z"),
            "2026-03-09T06:30:00Z"
        );
        // 2026-11-01: 01:00-02:00 happens twice. A 01:30 run happens once, at the first.
        assert_eq!(
            next("30 1 * * *", ny, "2026-11-01T00:00:00Z"),
            "2026-11-01T05:30:00Z"
        );
        assert_eq!(
            next("30 1 * * *", ny, "2026-11-01T05:30:00Z"),
            "2026-11-02T06:30:00Z"
        );
        // Every 30 minutes follows the real clock through the repeated hour: four runs
        // between 01:00 EDT and 02:00 EST.
        let schedule = Schedule::parse("*/30 * * * *", ny, at("2026-01-01T00:00:00Z")).unwrap();
        let (runs, more) =
            schedule.runs_between(at("2026-11-01T05:00:00Z"), at("2026-11-01T07:00:00Z"), 10);
        assert_eq!(runs.len(), 4, "{runs:?}");
        assert!(!more);
    }

    #[test]
    fn every_counts_from_its_anchor() {
        let anchor = at("2026-05-01T14:05:00Z");
        let every = Schedule::parse("@every 1h30m", None, anchor).unwrap();
        assert_eq!(every.next_after(at("2026-05-01T00:00:00Z")), Some(anchor));
        assert_eq!(every.next_after(anchor), Some(at("2026-05-01T15:35:00Z")));
        assert_eq!(
            every.next_after(at("2026-05-02T00:00:00Z")),
            Some(at("2026-05-02T00:35:00Z"))
        );
        let (runs, more) = every.runs_between(anchor, at("2026-05-01T20:05:00Z"), 3);
        assert_eq!(runs.len(), 3);
        assert!(more, "a fourth run is due: {runs:?}");
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let anchor = Timestamp::UNIX_EPOCH;
        for (expression, tz, says) in [
            ("0 2 * *", None, "five fields"),
            ("0 0 2 * * *", None, "five fields"),
            ("61 * * * *", None, "five fields"),
            ("@every 30s", None, "one minute"),
            ("@every often", None, "not a duration"),
            ("@daily", Some("Mars/Olympus"), "IANA"),
        ] {
            let error = Schedule::parse(expression, tz, anchor).unwrap_err();
            assert!(error.contains(says), "{expression}: {error}");
        }
    }
}
