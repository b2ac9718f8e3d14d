//! Human durations as ops write them: `40s`, `90m`, `2h`, `2d`, `1h30m`.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Parses a duration such as `40s`, `5m`, `2h`, `2d` or `1h30m`. A bare number is refused,
/// because `4` could mean hours or minutes and guessing wrong sends a reminder at the wrong time.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration: write it as `40s`, `5m`, `2h` or `2d`".into());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{trimmed}` has no unit: write `{trimmed}m` for minutes or `{trimmed}h` for hours"
        ));
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("`{trimmed}` is not a duration ({e}): write it as `40s`, `5m`, `2h` or `2d`")
    })
}

/// Formats a duration the way [`parse_duration`] reads it (`2h`, `1h30m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{}", secs / size, unit));
            secs %= size;
        }
    }
    out
}

/// serde adapter: `#[serde(deserialize_with = "crate::duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_ops_write() {
        for (text, secs) in [
            ("40s", 40),
            ("5m", 300),
            ("90m", 5400),
            ("2h", 7200),
            ("2d", 172_800),
            ("1h30m", 5400),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
            assert_eq!(
                parse_duration(&format_duration(Duration::from_secs(secs))),
                Ok(Duration::from_secs(secs))
            );
        }
        assert!(parse_duration("4").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
