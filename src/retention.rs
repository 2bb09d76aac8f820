//! Retention by count, with restic's meaning: `keepLast` keeps the newest n; `keepHourly`,
//! `keepDaily`, `keepWeekly` (ISO weeks), `keepMonthly` and `keepYearly` keep, for the n
//! newest periods that have one, the newest item of the period, periods counted in a given
//! time zone. An item kept by any rule is kept, with every rule that keeps it; the newest
//! item is always kept. Pure: the same decision for the cluster's Snapshots and the CLI's
//! archives.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many items to keep, by rule. Rules left out keep nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// The newest n.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// The newest of each of the n newest hours that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// The newest of each of the n newest days that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// The newest of each of the n newest ISO weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// The newest of each of the n newest months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// The newest of each of the n newest years that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
}

/// Why an item is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    /// The newest item, kept whatever the policy.
    Newest,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
            Rule::Newest => "newest",
        })
    }
}

impl Policy {
    /// Does the policy keep nothing by any rule (so that applying it would remove all but
    /// the newest)?
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n)| n.unwrap_or(0) == 0)
    }

    fn rules(&self) -> [(Rule, Option<u32>); 6] {
        [
            (Rule::Last, self.keep_last),
            (Rule::Hourly, self.keep_hourly),
            (Rule::Daily, self.keep_daily),
            (Rule::Weekly, self.keep_weekly),
            (Rule::Monthly, self.keep_monthly),
            (Rule::Yearly, self.keep_yearly),
        ]
    }
}

/// The period of `at` for a rule, in `tz` (`None` for `keepLast`: every item is its own).
fn period(rule: Rule, at: Timestamp, tz: &TimeZone) -> Option<(i16, i8, i8, i8)> {
    let local = at.to_zoned(tz.clone());
    let date = local.date();
    Some(match rule {
        Rule::Hourly => (date.year(), date.month(), date.day(), local.hour()),
        Rule::Daily => (date.year(), date.month(), date.day(), 0),
        Rule::Weekly => {
            let week = date.iso_week_date();
            (week.year(), week.week(), 0, 0)
        }
        Rule::Monthly => (date.year(), date.month(), 0, 0),
        Rule::Yearly => (date.year(), 0, 0, 0),
        Rule::Last | Rule::Newest => return None,
    })
}

/// For each item (by its time, in the order given), the rules that keep it: empty means it
/// is to be removed. Periods are counted in `tz`. Items of equal time count in the order
/// given.
pub fn decide(policy: &Policy, times: &[Timestamp], tz: &TimeZone) -> Vec<Vec<Rule>> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(times[i]));
    let mut kept: Vec<Vec<Rule>> = vec![Vec::new(); times.len()];
    for (rule, count) in policy.rules() {
        let mut left = count.unwrap_or(0);
        let mut last = None;
        for &i in &order {
            if left == 0 {
                break;
            }
            let current = period(rule, times[i], tz);
            // The newest item of a period it has not seen yet (each item, for keepLast).
            if current.is_none() || current != last {
                kept[i].push(rule);
                left -= 1;
            }
            last = current;
        }
    }
    if let Some(&newest) = order.first()
        && kept[newest].is_empty()
    {
        kept[newest].push(Rule::Newest);
    }
    kept
}

/// An item to retain: the time it says it was taken (an archive's name, a schedule run's
/// annotation: anyone who can write the item can write this), and the time it was stored
/// (the storage's modification time, the API server's creation time), which it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub claimed: Timestamp,
    pub stored: Timestamp,
}

impl Stored {
    /// The time it counts at: the one claimed, unless that is later than its storing
    /// (nothing is stored before it is taken: a name from the future says nothing).
    pub fn at(&self) -> Timestamp {
        self.claimed.min(self.stored)
    }
}

/// [`decide`] for items whose claimed time cannot be trusted: each counts at
/// [`Stored::at`], and the last one stored is always kept ([`Rule::Newest`]), whatever
/// times the others claim.
pub fn decide_stored(policy: &Policy, items: &[Stored], tz: &TimeZone) -> Vec<Vec<Rule>> {
    let times: Vec<Timestamp> = items.iter().map(Stored::at).collect();
    let mut kept = decide(policy, &times, tz);
    // Of two stored at once, the one that claims the later time.
    let last =
        (0..items.len()).max_by_key(|&i| (items[i].stored, items[i].at(), std::cmp::Reverse(i)));
    if let Some(last) = last
        && kept[last].is_empty()
    {
        kept[last].push(Rule::Newest);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_time_never_outranks_the_last_stored() {
        let t = |s: &str| -> Timestamp { s.parse().unwrap() };
        let policy = Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let items = [
            // Taken and stored on the 1st and the 2nd.
            Stored {
                claimed: t("2026-03-01T02:00:00Z"),
                stored: t("2026-03-01T02:00:05Z"),
            },
            Stored {
                claimed: t("2026-03-02T02:00:00Z"),
                stored: t("2026-03-02T02:00:05Z"),
            },
            // Stored on the 1st, claiming 2099: it counts as the 1st.
            Stored {
                claimed: t("2099-01-01T00:00:00Z"),
                stored: t("2026-03-01T12:00:00Z"),
            },
        ];
        let kept = decide_stored(&policy, &items, &TimeZone::UTC);
        assert_eq!(kept, [vec![], vec![Rule::Last], vec![]]);
        // Stored last, claiming a time long before: kept all the same.
        let mut late = items;
        late[0].stored = t("2026-03-05T00:00:00Z");
        let kept = decide_stored(&policy, &late, &TimeZone::UTC);
        assert_eq!(kept, [vec![Rule::Newest], vec![Rule::Last], vec![]]);
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn kept(policy: &Policy, times: &[&str], tz: &str) -> Vec<String> {
        let times: Vec<Timestamp> = times.iter().map(|t| at(t)).collect();
        let tz = TimeZone::get(tz).unwrap();
        decide(policy, &times, &tz)
            .into_iter()
            .map(|rules| {
                let names: Vec<String> = rules.iter().map(Rule::to_string).collect();
                names.join(",")
            })
            .collect()
    }

    #[test]
    fn each_rule_keeps_the_newest_of_its_n_newest_periods() {
        // Two a day, newest first after sorting; given out of order.
        let times = [
            "2026-03-01T08:00:00Z",
            "2026-03-03T20:00:00Z",
            "2026-03-02T08:00:00Z",
            "2026-03-03T08:00:00Z",
            "2026-03-02T20:00:00Z",
            "2026-03-01T20:00:00Z",
        ];
        let cases: [(Policy, [&str; 6]); 4] = [
            (
                Policy {
                    keep_last: Some(2),
                    ..Policy::default()
                },
                ["", "last", "", "last", "", ""],
            ),
            (
                Policy {
                    keep_daily: Some(2),
                    ..Policy::default()
                },
                ["", "daily", "", "", "daily", ""],
            ),
            (
                Policy {
                    keep_last: Some(1),
                    keep_daily: Some(3),
                    ..Policy::default()
                },
                ["", "last,daily", "", "", "daily", "daily"],
            ),
            // Nothing by any rule: the newest still stays.
            (Policy::default(), ["", "newest", "", "", "", ""]),
        ];
        for (policy, expected) in cases {
            assert_eq!(kept(&policy, &times, "UTC"), expected, "{policy:?}");
        }
    }

    #[test]
    fn periods_are_counted_in_the_time_zone() {
        // 23:30 UTC on the 1st is already the 2nd in Berlin: one day there, two in UTC.
        let times = ["2026-06-01T23:30:00Z", "2026-06-02T08:00:00Z"];
        let daily = Policy {
            keep_daily: Some(5),
            ..Policy::default()
        };
        assert_eq!(kept(&daily, &times, "UTC"), ["daily", "daily"]);
        assert_eq!(kept(&daily, &times, "Europe/Berlin"), ["", "daily"]);
    }

    #[test]
    fn weeks_are_iso_weeks_and_months_differ_in_length() {
        // Sunday 2026-01-04 ends ISO week 1; Monday the 5th starts week 2. 2025-12-29 is in
        // ISO week 1 of 2026.
        let times = [
            "2025-12-29T12:00:00Z",
            "2026-01-04T12:00:00Z",
            "2026-01-05T12:00:00Z",
        ];
        let weekly = Policy {
            keep_weekly: Some(5),
            ..Policy::default()
        };
        assert_eq!(kept(&weekly, &times, "UTC"), ["", "weekly", "weekly"]);
        // The last days of February (28 days in 2026), March and April.
        let times = [
            "2026-02-28T12:00:00Z",
            "2026-03-01T00:30:00Z",
            "2026-03-31T12:00:00Z",
            "2026-04-30T12:00:00Z",
        ];
        let monthly = Policy {
            keep_monthly: Some(2),
            ..Policy::default()
        };
        assert_eq!(
            kept(&monthly, &times, "UTC"),
            ["", "", "monthly", "monthly"]
        );
        let yearly = Policy {
            keep_yearly: Some(3),
            ..Policy::default()
        };
        assert_eq!(kept(&yearly, &times, "UTC"), ["", "", "", "yearly"]);
    }

    #[test]
    fn the_repeated_hour_of_a_dst_change_is_one_hour_of_the_wall_clock() {
        // New York, 2026-11-01: 01:00-02:00 happens twice (05:00-06:00 and 06:00-07:00 UTC).
        let times = [
            "2026-11-01T05:10:00Z",
            "2026-11-01T06:10:00Z",
            "2026-11-01T07:10:00Z",
        ];
        let hourly = Policy {
            keep_hourly: Some(10),
            ..Policy::default()
        };
        assert_eq!(
            kept(&hourly, &times, "America/New_York"),
            ["", "hourly", "hourly"]
        );
        assert_eq!(kept(&hourly, &times, "UTC"), ["hourly", "hourly", "hourly"]);
    }

    #[test]
    fn no_items_no_decisions() {
        assert!(decide(&Policy::default(), &[], &TimeZone::UTC).is_empty());
        assert!(Policy::default().is_empty());
        assert!(
            Policy {
                keep_last: Some(0),
                ..Policy::default()
            }
            .is_empty()
        );
    }
}
