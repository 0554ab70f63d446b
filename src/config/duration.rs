//! Durations written as strings with a unit: `"250ms"`, `"30s"`, `"5m"`, `"1h"`.

use std::time::Duration;

/// Parses a duration such as `"250ms"`, `"30s"`, `"5m"` or `"1h"`.
///
/// A unit is required: a bare number is ambiguous and has caused outages elsewhere.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("\"{text}\" has no unit; write it like \"250ms\", \"30s\" or \"5m\"")
    })?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "\"{text}\" does not start with a number; write it like \"30s\""
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is too large"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{unit}\"; use ms, s, m or h"
            ));
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(parse("30 s").unwrap_err().contains("unknown unit"));
        assert!(parse("3d").unwrap_err().contains("unknown unit"));
        assert!(
            parse("s")
                .unwrap_err()
                .contains("does not start with a number")
        );
        assert!(parse("").is_err());
        assert!(
            parse("99999999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }
}
