//! Durations as narpush reads and prints them: one syntax for every duration a flag,
//! the environment or the config file gives (`90s`, `15min`, `1h30m`, `2w`), and two
//! spellings for people: to the second for waits and queue ages, to the hour for the
//! ages `gc` works with.

use std::time::Duration;

/// `90`, `90s`, `15m`, `15min`, `2h`, `1d`, `2w`, `500ms`, or several run together
/// (`1h30m`): every duration narpush reads (flags, environment, config file).
pub fn parse(s: &str) -> std::result::Result<Duration, String> {
    let bad = || {
        format!(
            "'{s}' is not a duration; write e.g. 90s, 15min, 2h or 1d (a bare number is seconds)"
        )
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let ms = match unit {
            "ms" => 1,
            "s" | "sec" | "secs" => 1000,
            "m" | "min" | "mins" => 60_000,
            "h" | "hr" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "w" | "week" | "weeks" => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        total += Duration::from_millis(n.checked_mul(ms).ok_or_else(bad)?);
    }
    Ok(total)
}

/// `2h 5m`, `3m 10s`, `42s`, `0.3s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{:.1}s", d.as_secs_f64()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `90000` seconds as `1d 1h`: for messages.
pub fn human_age(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15min"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "m", "5 parsecs", "-3s", "1.5h"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("not a duration"), "{e}");
        }
        assert_eq!(human(Duration::from_secs(3725)), "1h 2m");
        assert_eq!(human(Duration::from_secs(190)), "3m 10s");
        assert_eq!(human(Duration::from_secs(42)), "42s");
    }

    #[test]
    fn ages_to_the_hour() {
        assert_eq!(human_age(3600), "1h");
        assert_eq!(human_age(90_000), "1d 1h");
        assert_eq!(human_age(5400), "1h 30m");
        assert_eq!(human_age(14 * 86_400), "14d");
    }
}
