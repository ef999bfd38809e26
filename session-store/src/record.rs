//! How a session is stored: one Redis string per session, format 3.
//!
//! ```text
//! h3:0001764571234567:0001764571299000:-\n4:user7:"alice"5:since10:1764571234
//! └┬┘└─── created ───┘ └──── seen ────┘ │   └─ name ─┘└─ JSON ─┘
//!  │                                    └ `-` live, `r` retired (a login replaced it)
//!  └ magic and version
//! ```
//!
//! A fixed 39-byte header, then one entry per session value: the name and its JSON, each
//! prefixed by its length in bytes, so any name and any value round-trip. The header's fields
//! have fixed offsets, so the touch that extends a session rewrites only `seen` (`SETRANGE`)
//! and retiring one only the flag; the data is never rewritten for either.
//!
//! Why a string and not a hash with a field per value (format 2): a read is the request that
//! happens most, and `GET` of one bulk string is what the stock store pays, while `HGETALL`
//! returned two bulk strings per field for the client to decode and map: format 2 cost 17 %
//! more worker instructions per `GET /me` (`bench/instructions_per_request.sh`) and Redis
//! more CPU. Merges still apply per value: the write script splits the entries, changes the
//! ones a request changed and joins them again, in Redis, in one step (see
//! [`crate::scripts`]).
//!
//! Anything else under a session key (a format-2 hash, format 1, a future format, garbage) is a
//! clean miss, never an error.

/// Length of the header, `\n` included.
pub(crate) const HEADER_LEN: usize = 39;
/// Digits of each timestamp (unix ms, zero-padded).
const STAMP_DIGITS: usize = 16;
const MAGIC: &str = "h3:";

/// A timestamp as the header holds it.
pub(crate) fn stamp(ms: i64) -> String {
    format!("{ms:0STAMP_DIGITS$}")
}

/// A stored session, borrowed from the bytes Redis returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stored<'a> {
    /// When the session began (unix ms).
    pub(crate) created: i64,
    /// When it was last extended (unix ms).
    pub(crate) seen: i64,
    /// Replaced by a login, living out its grace period.
    pub(crate) retired: bool,
    /// Each value's name and JSON, in stored order.
    pub(crate) values: Vec<(&'a str, &'a str)>,
}

/// Parses a record; `None` if it is not format 3 or is damaged.
pub(crate) fn parse(text: &str) -> Option<Stored<'_>> {
    let header = text.get(..HEADER_LEN)?;
    let rest = header.strip_prefix(MAGIC)?;
    let (created, rest) = rest.split_at_checked(STAMP_DIGITS)?;
    let rest = rest.strip_prefix(':')?;
    let (seen, rest) = rest.split_at_checked(STAMP_DIGITS)?;
    let retired = match rest {
        ":-\n" => false,
        ":r\n" => true,
        _ => return None,
    };
    let mut entries = &text[HEADER_LEN..];
    let mut values = Vec::new();
    while !entries.is_empty() {
        let (name, rest) = prefixed(entries)?;
        let (json, rest) = prefixed(rest)?;
        values.push((name, json));
        entries = rest;
    }
    Some(Stored { created: digits(created)?, seen: digits(seen)?, retired, values })
}

/// `<len>:<len bytes>` at the start of `text`, and what follows.
fn prefixed(text: &str) -> Option<(&str, &str)> {
    let (len, rest) = text.split_once(':')?;
    let len = usize::try_from(digits(len)?).ok()?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// A non-negative decimal of at most 18 digits (so it cannot overflow), no sign, no spaces
/// (`str::parse` would take `+1`).
fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 18 {
        return None;
    }
    text.bytes().try_fold(0, |n, b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(created: i64, seen: i64, flag: char, entries: &str) -> String {
        format!("h3:{}:{}:{flag}\n{entries}", stamp(created), stamp(seen))
    }

    #[test]
    fn the_header_has_fixed_offsets() {
        let text = record(1, 2, '-', "");
        assert_eq!(text.len(), HEADER_LEN);
        // The scripts write `seen` at byte 20 and the flag at byte 37.
        assert_eq!(&text[20..36], stamp(2));
        assert_eq!(&text[37..38], "-");
    }

    #[test]
    fn values_round_trip_whatever_they_hold() {
        let text = record(1_764_571_234_567, 1_764_571_299_000, 'r', "4:user7:\"alice\"3:a:b5:\"1:2\"0:2:{}");
        let stored = parse(&text).expect("valid");
        assert_eq!(stored.created, 1_764_571_234_567);
        assert_eq!(stored.seen, 1_764_571_299_000);
        assert!(stored.retired);
        assert_eq!(stored.values, vec![("user", "\"alice\""), ("a:b", "\"1:2\""), ("", "{}")]);
    }

    #[test]
    fn lengths_count_bytes() {
        let text = record(1, 1, '-', "2:é7:\"ünï\"");
        assert_eq!(parse(&text).expect("valid").values, vec![("é", "\"ünï\"")]);
    }

    #[test]
    fn anything_else_is_not_a_record() {
        let good = record(1, 1, '-', "1:a1:1");
        assert!(parse(&good).is_some());
        for bad in [
            String::new(),
            "h1{\"data\":{}}".to_owned(),
            good.replacen("h3:", "h4:", 1),
            record(1, 1, 'x', ""),
            good[..HEADER_LEN - 1].to_owned(),
            good.replacen("0000000000000001:", "+000000000000001:", 1),
            record(1, 1, '-', "1:a1"),
            record(1, 1, '-', "1:a9:1"),
            record(1, 1, '-', "x:a1:1"),
            record(1, 1, '-', "1:a"),
            record(1, 1, '-', "2:é1:1").replacen("2:", "1:", 1),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
        }
    }
}
