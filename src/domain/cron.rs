//! Cron expressions: [`CronSpec`] parses the six-field form (with seconds) read in an
//! IANA time zone and computes fire times. Used by schedule validation, the store's
//! doctor and the scheduler.

use chrono::TimeZone;

/// A parsed cron expression (with seconds) read in an IANA time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    schedule: cron::Schedule,
    tz: chrono_tz::Tz,
}

impl CronSpec {
    /// Parses `sec min hour day-of-month month day-of-week [year]` (or `@hourly`, ...)
    /// in time zone `tz`.
    ///
    /// # Errors
    /// A one-line explanation.
    pub fn parse(expr: &str, tz: &str) -> Result<CronSpec, String> {
        let tz: chrono_tz::Tz = tz
            .parse()
            .map_err(|_| format!("{tz:?} is not an IANA time zone (e.g. UTC, Europe/Paris)"))?;
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(6..=7).contains(&fields) {
            return Err(format!(
                "a cron expression here has 6 or 7 fields (sec min hour day-of-month month \
                 day-of-week [year]), got {fields}; prefix a 5-field expression with '0 '"
            ));
        }
        let schedule: cron::Schedule = expr
            .parse()
            .map_err(|e| format!("not a cron expression: {e}"))?;
        Ok(CronSpec { schedule, tz })
    }

    fn at(&self, ms: i64) -> Option<chrono::DateTime<chrono_tz::Tz>> {
        Some(
            chrono::Utc
                .timestamp_millis_opt(ms)
                .single()?
                .with_timezone(&self.tz),
        )
    }

    /// The first tick strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        self.schedule
            .after(&self.at(ms)?)
            .next()
            .map(|t| t.timestamp_millis())
    }

    /// The latest tick at or before `ms`.
    pub fn latest_until(&self, ms: i64) -> Option<i64> {
        // The iterator works in whole seconds: step back from the next second.
        let next_second = ms.div_euclid(1000) * 1000 + 1000;
        self.schedule
            .after(&self.at(next_second)?)
            .next_back()
            .map(|t| t.timestamp_millis())
            .filter(|t| *t <= ms)
    }

    /// How many ticks lie strictly between `after` and `before` (at most `cap`).
    pub fn count_between(&self, after: i64, before: i64, cap: usize) -> i64 {
        let Some(start) = self.at(after) else {
            return 0;
        };
        self.schedule
            .after(&start)
            .map(|t| t.timestamp_millis())
            .take_while(|t| *t < before)
            .take(cap)
            .count() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        crate::domain::parse_rfc3339_ms(s).expect("time")
    }

    #[test]
    fn cron_expressions_need_seconds_and_a_real_time_zone() {
        assert!(CronSpec::parse("* * * * * *", "UTC").is_ok());
        assert!(CronSpec::parse("0 30 2 * * * 2030", "Europe/Paris").is_ok());
        assert!(CronSpec::parse("@hourly", "UTC").is_ok());
        let five = CronSpec::parse("*/5 * * * *", "UTC").unwrap_err();
        assert!(five.contains("6 or 7 fields"), "{five}");
        assert!(CronSpec::parse("61 * * * * *", "UTC").is_err());
        assert!(CronSpec::parse("* * * * * *", "Mars/Olympus").is_err());
        assert!(CronSpec::parse("", "UTC").is_err());
    }

    #[test]
    fn next_fire_is_computed_in_the_schedules_time_zone() {
        // 02:30 every day in Paris: 01:30 UTC in winter (CET), 00:30 UTC in summer.
        let paris = CronSpec::parse("0 30 2 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            paris.next_after(ms("2026-01-10T12:00:00Z")),
            Some(ms("2026-01-11T01:30:00Z"))
        );
        assert_eq!(
            paris.next_after(ms("2026-07-10T12:00:00Z")),
            Some(ms("2026-07-11T00:30:00Z"))
        );
        // The same expression in New York (UTC-5 in winter).
        let ny = CronSpec::parse("0 30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            ny.next_after(ms("2026-01-10T12:00:00Z")),
            Some(ms("2026-01-11T07:30:00Z"))
        );
        // 2026-03-29 02:30 does not exist in Paris (clocks jump 02:00 → 03:00): skipped.
        assert_eq!(
            paris.next_after(ms("2026-03-28T12:00:00Z")),
            Some(ms("2026-03-30T00:30:00Z"))
        );
    }

    #[test]
    fn ticks_are_strictly_after_and_at_or_before() {
        let s = CronSpec::parse("*/10 * * * * *", "UTC").unwrap();
        let t = ms("2026-01-01T00:00:10Z");
        assert_eq!(s.next_after(t), Some(t + 10_000));
        assert_eq!(s.next_after(t - 1), Some(t));
        assert_eq!(s.latest_until(t), Some(t));
        assert_eq!(s.latest_until(t + 999), Some(t));
        assert_eq!(s.latest_until(t - 1), Some(t - 10_000));
        assert_eq!(s.count_between(t, t + 40_000, 100), 3);
        assert_eq!(s.count_between(t, t + 40_000, 2), 2);
        assert_eq!(s.count_between(t, t + 10_000, 100), 0);
        // An expression limited to a past year never fires again.
        let past = CronSpec::parse("0 0 0 1 1 * 2020", "UTC").unwrap();
        assert_eq!(past.next_after(t), None);
    }

    #[test]
    fn odd_expressions_are_refused_or_computed_without_panicking() {
        let t = ms("2026-01-01T00:00:00Z");
        for expr in [
            "*/0 * * * * *",
            "0-0/0 * * * * *",
            "59-0 * * * * *",
            "99999999999999999999 * * * * *",
            "0 0 0 31 2 *",
            "0 0 0 30 2 * 2026-2030",
            "* * * * * * 1970",
            "* * * * * * 9999",
            "@reboot",
            "@",
            "L W # ? * *",
            "0 0 0 ? * MON#5",
            "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20 * * * * *",
            "\u{0} * * * * *",
        ] {
            if let Ok(s) = CronSpec::parse(expr, "Pacific/Chatham") {
                let _ = s.next_after(t);
                let _ = s.latest_until(t);
                let _ = s.count_between(t - 86_400_000, t, 10);
            }
        }
    }

    #[test]
    fn expressions_of_the_schema_pattern_parse_and_fire() {
        // Corners of the `cron` schema pattern (schemathesis draws from it; every draw must pass).
        let t = ms("2026-01-01T00:00:00Z");
        for expr in [
            "* * * * * *",
            "0 0 0 28 2 1",
            "*/59 */59 */23 */28 */12 7",
            "00 05 23 1,2 12 1,2,3,4,5,6,7",
            "59 59 0 9 1 7",
            "0 0 0 13 10 6",
        ] {
            let s = CronSpec::parse(expr, "UTC").unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert!(s.next_after(t).is_some(), "{expr} fires");
        }
    }
}
