//! Just enough of S3's wire formats: the XML of its answers (the text of the first
//! `<Tag>…</Tag>` and the bodies of repeated blocks, with the five predefined
//! entities) and the two timestamp forms it sends (ISO 8601 in listings, the HTTP
//! date of `Last-Modified`), as Unix seconds.

pub(crate) fn blocks<'a>(s: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

pub(crate) fn text(s: &str, tag: &str) -> Option<String> {
    blocks(s, tag).first().map(|t| unescape(t))
}

pub(crate) fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix_time(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    let ok = (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..=60).contains(&s);
    ok.then(|| days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// `2026-12-03T07:57:44.000Z` (ListObjectsV2's LastModified) to Unix seconds.
pub fn parse_iso8601(t: &str) -> Option<i64> {
    let t = t.trim();
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    if t.len() < 19 || &t[4..5] != "-" || &t[7..8] != "-" || &t[13..14] != ":" {
        return None;
    }
    unix_time(
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    )
}

/// `Thu, 03 Dec 2026 07:57:44 GMT` (an HTTP date, as in Last-Modified) to Unix seconds.
pub fn parse_http_date(t: &str) -> Option<i64> {
    let mut w = t.split_whitespace().skip(1);
    let d = w.next()?.parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = w.next()?;
    let mo = months.iter().position(|m| m.eq_ignore_ascii_case(mon))? as i64 + 1;
    let y = w.next()?.parse().ok()?;
    let mut hms = w.next()?.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    unix_time(y, mo, d, h, mi, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_iso8601("2026-12-03T07:57:44.000Z"),
            Some(1_796_284_664)
        );
        assert_eq!(parse_iso8601("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(
            parse_http_date("Thu, 03 Dec 2026 07:57:44 GMT"),
            Some(1_796_284_664)
        );
        assert_eq!(parse_iso8601("yesterday"), None);
        assert_eq!(parse_http_date("Thu, 03 Foo 2026 07:57:44 GMT"), None);
    }

    #[test]
    fn xml_bits() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>a &amp; b &lt;c&gt;</Message>\
                    <KeyMarker>x</KeyMarker><Key>k</Key></Error>";
        assert_eq!(text(body, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(text(body, "Message").as_deref(), Some("a & b <c>"));
        assert_eq!(text(body, "Key").as_deref(), Some("k"));
        let list = "<Contents><Key>a</Key><Size>1</Size></Contents><Contents><Key>b</Key><Size>2</Size></Contents>";
        assert_eq!(blocks(list, "Contents").len(), 2);
        assert_eq!(escape("\"e&t\""), "&quot;e&amp;t&quot;");
    }
}
