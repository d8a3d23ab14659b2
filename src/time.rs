//! Timestamps as users write them, parsed one way everywhere: entity rows, online
//! writes, materialization windows, command-line arguments.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// Parses RFC 3339 (`2024-01-31T00:00:00Z`, `2024-01-31T01:00:00+01:00`), a date-time
/// with a space and an optional offset as pandas prints it (`2024-01-31 00:00:00+00:00`),
/// a date-time without offset taken as UTC (`2024-01-31T00:00:00`, `2024-01-31 00:00`,
/// optional fraction), or a bare date (`2024-01-31`, midnight UTC).
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "`{s}` is not a timestamp: expected RFC 3339 (2024-01-01T00:00:00Z), a UTC date-time (2024-01-01T00:00:00) or a date (2024-01-01)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_usual_form() {
        let midnight = parse_timestamp("2024-01-31T00:00:00Z").unwrap();
        for s in [
            "2024-01-31",
            "2024-01-31 00:00:00",
            "2024-01-31T00:00:00",
            "2024-01-31T00:00",
            "2024-01-31 00:00:00+00:00",
            "2024-01-31T01:00:00+01:00",
            "2024-01-31 00:00:00.000000",
            " 2024-01-31 ",
        ] {
            assert_eq!(parse_timestamp(s), Ok(midnight), "{s}");
        }
        for bad in ["31/01/2024", "", "January", "2024-02-30"] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }
}
