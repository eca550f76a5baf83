//! The pusher's log, `STATE_DIR/log`: one line per pushed or failed path and per
//! outage, each starting with a UTC timestamp and a word saying what it is
//! (`pushed`, `failed`, `outage`, `excluded`, `dropped`, `pusher`), read back by
//! `narpush status`. Lines are appended with one `write` each (O_APPEND); when the
//! file passes [`MAX_BYTES`] it is renamed to `log.1` (replacing the previous one)
//! before the next line, so the two together stay near 2 MiB. Only paths, sizes,
//! durations and error messages go in, and those never carry secrets (errors name
//! operations and keys, not credentials). Best effort: a log that cannot be written
//! never stops a push.

use crate::s3::sigv4::UtcTime;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Rotate past this size.
pub const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct PushLog {
    path: PathBuf,
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Seconds since the epoch.
    pub time: i64,
    pub kind: String,
    pub rest: String,
}

/// `2026-12-03T08:10:28Z`.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let u = UtcTime::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

/// The inverse of [`timestamp`] (seconds since the epoch).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Format one line (without the newline); line breaks in `text` become spaces.
pub fn format_line(t: SystemTime, kind: &str, text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("{} {kind} {text}", timestamp(t))
}

/// Parse one line written by [`format_line`].
pub fn parse_line(line: &str) -> Option<Entry> {
    let (ts, rest) = line.split_once(' ')?;
    let time = parse_timestamp(ts)?;
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Entry {
        time,
        kind: kind.to_string(),
        rest: rest.to_string(),
    })
}

impl PushLog {
    pub fn new(state_dir: &Path) -> PushLog {
        PushLog {
            path: state_dir.join("log"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self) -> PathBuf {
        self.path.with_file_name("log.1")
    }

    /// Append one line now.
    pub fn write(&self, kind: &str, text: &str) {
        self.write_at(SystemTime::now(), kind, text);
    }

    /// Append one line with the time `t`, rotating first when the file is too big.
    pub fn write_at(&self, t: SystemTime, kind: &str, text: &str) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > MAX_BYTES) {
            let _ = std::fs::rename(&self.path, self.rotated());
        }
        let line = format_line(t, kind, text) + "\n";
        if let Ok(mut f) = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// The last `n` parsed lines (from `log.1` too when `log` has fewer), oldest first.
    pub fn tail(&self, n: usize) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for p in [self.path.clone(), self.rotated()] {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let mut these: Vec<Entry> = text.lines().filter_map(parse_line).collect();
            these.append(&mut out);
            out = these;
            if out.len() >= n {
                break;
            }
        }
        let skip = out.len().saturating_sub(n);
        out.split_off(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_286_628);
        let s = timestamp(t);
        assert_eq!(s, "2026-12-03T08:30:28Z");
        assert_eq!(parse_timestamp(&s), Some(1_796_286_628));
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn lines_parse_and_line_breaks_are_flattened() {
        let t = UNIX_EPOCH + Duration::from_secs(60);
        let l = format_line(t, "failed", "/nix/store/x: boom\nsecond line");
        assert_eq!(
            l,
            "1970-01-01T00:01:00Z failed /nix/store/x: boom second line"
        );
        assert_eq!(
            parse_line(&l),
            Some(Entry {
                time: 60,
                kind: "failed".into(),
                rest: "/nix/store/x: boom second line".into()
            })
        );
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn rotates_past_the_limit_and_tail_reads_both_files() {
        let dir = std::env::temp_dir().join(format!("narpush-pushlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = PushLog::new(&dir);
        let filler = "x".repeat(1000);
        let mut i = 0;
        while !dir.join("log.1").exists() {
            log.write("pushed", &format!("{i} {filler}"));
            i += 1;
            assert!(i < 3000, "never rotated");
        }
        let big = std::fs::metadata(dir.join("log.1")).unwrap().len();
        assert!(big > MAX_BYTES && big < MAX_BYTES + 2048, "{big}");
        assert!(std::fs::metadata(dir.join("log")).unwrap().len() < 2048);
        let last = log.tail(3);
        assert_eq!(last.len(), 3);
        assert!(last[2].rest.starts_with(&format!("{} ", i - 1)));
        assert!(last[0].rest.starts_with(&format!("{} ", i - 3)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
