//! Percent-encoding of CloudEvents attribute values in NATS headers, as the NATS
//! binding (binary mode, §3.1.3.2) requires: a header carries printable US-ASCII only,
//! so an attribute's string is written with space, `"`, `%` and every character outside
//! `!`..=`~` as `%XY` per UTF-8 byte (upper-case hex), and read back by first undoing an
//! RFC 7230 quoted string, then one round of percent-decoding. Decoding accepts needless
//! escapes and lower-case hex, and refuses a bare `%` and escapes that are not UTF-8
//! (an overlong `%C0%A0` too), so `py.100%25` means `py.100%` and nothing else.

use std::borrow::Cow;

/// Whether `c` must be written as `%XY` in a header value.
fn needs_escape(c: char) -> bool {
    !('!'..='~').contains(&c) || c == '"' || c == '%'
}

/// The header form of an attribute value; borrowed when nothing needs escaping (ids,
/// times, sources, most subjects), so the hot paths do not allocate for it.
pub fn encode(value: &str) -> Cow<'_, str> {
    if !value.chars().any(needs_escape) {
        return Cow::Borrowed(value);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len() + 8);
    let mut buf = [0u8; 4];
    for c in value.chars() {
        if needs_escape(c) {
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Why a header value does not decode; the caller names the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    #[error("has a % at byte {at} not followed by two hex digits: write a literal % as %25")]
    BareEscape { at: usize },
    /// The escapes decode to bytes that are not UTF-8 (overlong forms included).
    #[error("percent-decodes to bytes that are not UTF-8")]
    NotUtf8,
    /// A quoted string with no closing quote, or a backslash at its very end.
    #[error("has an unterminated quoted string")]
    Unterminated,
}

/// The attribute value of a header: an RFC 7230 quoted string is unquoted first (older
/// binding versions allowed them), then one round of percent-decoding.
pub fn decode(value: &str) -> Result<Cow<'_, str>, DecodeError> {
    let unquoted = unquote(value)?;
    if !unquoted.contains('%') {
        return Ok(unquoted);
    }
    let bytes = unquoted.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(DecodeError::BareEscape { at: i }),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| DecodeError::NotUtf8)
}

/// `value` without the quotes and backslash escapes of a quoted string, where it is one.
fn unquote(value: &str) -> Result<Cow<'_, str>, DecodeError> {
    let trimmed = value.trim_matches(|c| c == ' ' || c == '\t');
    let Some(inner) = trimmed.strip_prefix('"') else {
        return Ok(Cow::Borrowed(value));
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or(DecodeError::Unterminated)?),
            '"' if chars.as_str().is_empty() => return Ok(Cow::Owned(out)),
            c => out.push(c),
        }
    }
    Err(DecodeError::Unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_binding_example_and_the_issue_case() {
        assert_eq!(
            encode("Euro \u{20AC} \u{1F600}"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(encode("py.100%"), "py.100%25");
        assert_eq!(decode("py.100%25").unwrap(), "py.100%");
        assert_eq!(encode("say \"hi\""), "say%20%22hi%22");
        assert!(matches!(encode("mesh://e1/a1"), Cow::Borrowed(_)));
    }

    #[test]
    fn decoding_is_lenient_where_the_binding_says_and_strict_elsewhere() {
        // Needless escapes and lower-case hex: accepted.
        assert_eq!(decode("%61b%2f").unwrap(), "ab/");
        // The Python SDK escapes every reserved character.
        assert_eq!(decode("mesh%3A%2F%2Fe1%2Fpy").unwrap(), "mesh://e1/py");
        // Quoted strings of older senders.
        assert_eq!(decode("\"a b \\\" c\"").unwrap(), "a b \" c");
        assert_eq!(
            decode("py.100%").unwrap_err(),
            DecodeError::BareEscape { at: 6 }
        );
        assert_eq!(
            decode("%zz").unwrap_err(),
            DecodeError::BareEscape { at: 0 }
        );
        // An overlong encoding of a space is not UTF-8.
        assert_eq!(decode("%C0%A0").unwrap_err(), DecodeError::NotUtf8);
        assert_eq!(decode("\"open").unwrap_err(), DecodeError::Unterminated);
    }

    proptest! {
        #[test]
        fn round_trip_and_printable_ascii(s in "\\PC*") {
            let e = encode(&s);
            prop_assert!(e.chars().all(|c| ('!'..='~').contains(&c) && c != '"'));
            let back = decode(&e).unwrap().into_owned();
            prop_assert_eq!(back, s.clone());
        }
    }
}
