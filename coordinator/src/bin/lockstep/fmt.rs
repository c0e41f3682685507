//! Text primitives for what `lockstep` prints: ages, durations, UTC times,
//! short digests and aligned tables.
//!
//! Must never: read the clock (callers pass `now`) or do IO, so every
//! function here is a unit-testable pure function.

/// Now, in Unix milliseconds (the one place the clock is read for display).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A duration as people read it: `850ms`, `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// How long ago `then` was: `3m12s ago`; `-` when unset (0).
pub fn age(then_unix_ms: i64, now_unix_ms: i64) -> String {
    if then_unix_ms <= 0 {
        return "-".to_owned();
    }
    let ms = now_unix_ms.saturating_sub(then_unix_ms);
    if ms < 1000 {
        // Sub-second ages (and clock skew) read better as "now".
        return "just now".to_owned();
    }
    format!("{} ago", duration_ms(ms))
}

/// What is left of a lease: `8s`; `-` when the lock has no lease (0),
/// `expired` when negative.
pub fn ttl_left(ms: i64) -> String {
    match ms {
        0 => "-".to_owned(),
        ..0 => "expired".to_owned(),
        _ => duration_ms(ms),
    }
}

/// `2025-01-02 03:04:05Z`; `-` when unset (0).
pub fn utc(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".to_owned();
    }
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        tod / 3600,
        (tod % 3600) / 60,
        tod % 60
    )
}

/// `03:04:05Z`: event lines are read within one deployment.
pub fn utc_time(unix_ms: i64) -> String {
    let full = utc(unix_ms);
    full.split_once(' ')
        .map_or(full.clone(), |(_, t)| t.to_owned())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The first 12 hex digits of a `sha256:` digest: enough to tell releases
/// apart in a table; commands that take a digest want the full one.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// `1.4.2/ab12cd34ef56`, or `-` for no release.
pub fn release_short(version: &str, digest: &str) -> String {
    match (version.is_empty(), digest.is_empty()) {
        (true, true) => "-".to_owned(),
        (false, true) => version.to_owned(),
        (true, false) => short_digest(digest),
        (false, false) => format!("{version}/{}", short_digest(digest)),
    }
}

/// `-` for an empty cell, so columns stay readable.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// Columns aligned with two spaces between them, no trailing blanks; the
/// last column is free text and may be long.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(cur) => *cur = (*cur).max(w),
                None => widths.push(w),
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_ms(-5), "0ms");
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(42_000), "42s");
        assert_eq!(duration_ms(192_000), "3m12s");
        assert_eq!(duration_ms(2 * 3_600_000 + 5 * 60_000 + 7_000), "2h05m");
        assert_eq!(duration_ms(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn ages_and_ttls() {
        assert_eq!(age(0, 10_000), "-");
        assert_eq!(age(10_000, 10_500), "just now");
        assert_eq!(age(10_000, 9_000), "just now");
        assert_eq!(age(10_000, 75_000), "1m05s ago");
        assert_eq!(ttl_left(0), "-");
        assert_eq!(ttl_left(-1), "expired");
        assert_eq!(ttl_left(8_400), "8s");
    }

    #[test]
    fn utc_is_civil_time() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1), "1970-01-01 00:00:00Z");
        // 2024-02-29 12:34:56 UTC (a leap day).
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34:56Z");
        assert_eq!(utc(1_735_689_599_000), "2024-12-31 23:59:59Z");
        assert_eq!(utc_time(1_709_210_096_000), "12:34:56Z");
    }

    #[test]
    fn digests_shorten() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_digest(&d), "abababababab");
        assert_eq!(release_short("1.4.2", &d), "1.4.2/abababababab");
        assert_eq!(release_short("", ""), "-");
        assert_eq!(release_short("1.0", ""), "1.0");
    }

    #[test]
    fn tables_align_without_trailing_blanks() {
        let t = table(
            &["A", "LONGER", "C"],
            &[
                vec!["x".to_owned(), "y".to_owned(), "z z".to_owned()],
                vec!["wide-cell".to_owned(), String::new(), String::new()],
            ],
        );
        assert_eq!(
            t,
            "A          LONGER  C\nx          y       z z\nwide-cell\n"
        );
    }
}
