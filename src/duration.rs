//! One duration syntax for every flag that takes a time (`mesh up --duration`, `mesh pub
//! --timeout`, `mesh chaos run --duration`): humantime's (`8s`, `1500ms`, `2m`,
//! `1h 30m`), or a bare number of seconds (`8`, `0.5`), which these flags took before.

use std::time::Duration;

/// Parses a positive duration; the error says what is wrong and what to write.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{s:?} is not a duration: it must be positive")),
        Err(_) => humantime::parse_duration(t).map_err(|e| {
            format!("{s:?} is not a duration ({e}); write e.g. 8s, 1500ms, 2m, 1h30m or 8")
        })?,
    };
    match d.is_zero() {
        true => Err(format!("{s:?} is not a duration: it must be positive")),
        false => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn humantime_or_bare_seconds() {
        assert_eq!(parse("8s"), Ok(Duration::from_secs(8)));
        assert_eq!(parse("8"), Ok(Duration::from_secs(8)));
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["x", "0s", "0", "-1", "5 parsecs", "", "NaN"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
