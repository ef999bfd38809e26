//! How a session is stored: one Redis string per session, format 4.
//!
//! ```text
//! h4:0001764571234567:0001764571299000:-:0001764572434567123456\n4:user7:"alice"5:since10:1764571234
//! └┬┘└─── created ───┘ └──── seen ────┘ │ └──── app's expiry ────┘ └─ name ─┘└─ JSON ─┘
//!  │                                    └ `-` live, `r` retired (a login replaced it)
//!  └ magic and version
//! ```
//!
//! A fixed 62-byte header, then one entry per session value: the name and its JSON, each
//! prefixed by its length in bytes, so any name and any value round-trip. The header's fields
//! have fixed offsets, so the touch that extends a session rewrites only `seen` (`SETRANGE`),
//! retiring one only the flag, and a save that only moves the app's expiry only that field and
//! the TTL; the data is never rewritten for any of them.
//!
//! The app's expiry is `Record::expiry_date` as tower-sessions handed it to the last save, kept
//! to the nanosecond (tower-sessions' own precision): unix milliseconds in 16 digits (what the
//! scripts read, as they do the other stamps) and the nanoseconds within that millisecond in 6.
//!
//! Why a string and not a hash with a field per value (format 2): a read is the request that
//! happens most, and `GET` of one bulk string is what the stock store pays, while `HGETALL`
//! returned two bulk strings per field for the client to decode and map: format 2 cost 17 %
//! more worker instructions per `GET /me` (`bench/instructions_per_request.sh`) and Redis
//! more CPU. Merges still apply per value: the write script splits the entries, changes the
//! ones a request changed and joins them again, in Redis, in one step (see
//! [`crate::scripts`]).
//!
//! Format 3 (the same without the expiry field, 39 bytes, written by herd before it kept the
//! app's expiry) is still read, so an upgrade logs nobody out; the next write turns it into
//! format 4. Anything else under a session key (a format-2 hash, format 1, a future format,
//! garbage) is a clean miss, never an error.

use time::OffsetDateTime;

/// Length of the header, `\n` included.
pub(crate) const HEADER_LEN: usize = 62;
/// Length of a format-3 header.
const V3_HEADER_LEN: usize = 39;
/// Digits of each timestamp (unix ms, zero-padded).
const STAMP_DIGITS: usize = 16;
/// Digits of the nanoseconds within the expiry's millisecond.
const SUB_MS_DIGITS: usize = 6;
const MAGIC: &str = "h4:";
const V3_MAGIC: &str = "h3:";

/// A timestamp as the header holds it.
pub(crate) fn stamp(ms: i64) -> String {
    format!("{ms:0STAMP_DIGITS$}")
}

/// The app's expiry as the header holds it (22 digits). A date before 1970 is stored as 1970:
/// long past either way.
pub(crate) fn expiry_field(date: OffsetDateTime) -> String {
    let nanos = date.unix_timestamp_nanos().max(0);
    let (ms, sub_ms) = (nanos / 1_000_000, nanos % 1_000_000);
    format!("{ms:0STAMP_DIGITS$}{sub_ms:0SUB_MS_DIGITS$}")
}

fn parse_expiry(field: &str) -> Option<OffsetDateTime> {
    let (ms, sub_ms) = field.split_at_checked(STAMP_DIGITS)?;
    let nanos = i128::from(digits(ms)?) * 1_000_000 + i128::from(digits(sub_ms)?);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
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
    /// The app's expiry date as last saved; `None` in a format-3 record.
    pub(crate) expiry: Option<OffsetDateTime>,
    /// Each value's name and JSON, in stored order.
    pub(crate) values: Vec<(&'a str, &'a str)>,
}

/// Parses a record; `None` if it is not format 4 or 3, or is damaged.
pub(crate) fn parse(text: &str) -> Option<Stored<'_>> {
    let (header_len, has_expiry) = if text.starts_with(MAGIC) {
        (HEADER_LEN, true)
    } else if text.starts_with(V3_MAGIC) {
        (V3_HEADER_LEN, false)
    } else {
        return None;
    };
    let header = text.get(MAGIC.len()..header_len)?;
    let (created, rest) = header.split_at_checked(STAMP_DIGITS)?;
    let rest = rest.strip_prefix(':')?;
    let (seen, rest) = rest.split_at_checked(STAMP_DIGITS)?;
    let (retired, rest) = match rest.split_at_checked(2)? {
        (":-", rest) => (false, rest),
        (":r", rest) => (true, rest),
        _ => return None,
    };
    let expiry = if has_expiry {
        let field = rest.strip_prefix(':')?.strip_suffix('\n')?;
        Some(parse_expiry(field).filter(|_| field.len() == STAMP_DIGITS + SUB_MS_DIGITS)?)
    } else {
        (rest == "\n").then_some(())?;
        None
    };
    let mut entries = &text[header_len..];
    let mut values = Vec::new();
    while !entries.is_empty() {
        let (name, rest) = prefixed(entries)?;
        let (json, rest) = prefixed(rest)?;
        values.push((name, json));
        entries = rest;
    }
    Some(Stored { created: digits(created)?, seen: digits(seen)?, retired, expiry, values })
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

    /// A date with nanoseconds: 2025-12-01 06:40:34.567123456 UTC.
    fn expiry() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(1_764_571_234_567_123_456).expect("a date")
    }

    fn record(created: i64, seen: i64, flag: char, entries: &str) -> String {
        format!("h4:{}:{}:{flag}:{}\n{entries}", stamp(created), stamp(seen), expiry_field(expiry()))
    }

    #[test]
    fn the_header_has_fixed_offsets() {
        let text = record(1, 2, '-', "");
        assert_eq!(text.len(), HEADER_LEN);
        // The scripts write `seen` at byte 20, the flag at byte 37 and the expiry at byte 39
        // (and read the expiry's milliseconds there), in format 4 as in format 3.
        assert_eq!(&text[20..36], stamp(2));
        assert_eq!(&text[37..38], "-");
        assert_eq!(&text[39..55], stamp(1_764_571_234_567));
        assert_eq!(&text[55..61], "123456");
    }

    #[test]
    fn values_and_the_expiry_round_trip_whatever_they_hold() {
        let text = record(1_764_571_234_567, 1_764_571_299_000, 'r', "4:user7:\"alice\"3:a:b5:\"1:2\"0:2:{}");
        let stored = parse(&text).expect("valid");
        assert_eq!(stored.created, 1_764_571_234_567);
        assert_eq!(stored.seen, 1_764_571_299_000);
        assert!(stored.retired);
        assert_eq!(stored.expiry, Some(expiry()), "to the nanosecond");
        assert_eq!(stored.values, vec![("user", "\"alice\""), ("a:b", "\"1:2\""), ("", "{}")]);
    }

    #[test]
    fn a_date_before_1970_is_stored_as_1970() {
        let field = expiry_field(OffsetDateTime::UNIX_EPOCH - time::Duration::days(1));
        assert_eq!(parse_expiry(&field), Some(OffsetDateTime::UNIX_EPOCH));
    }

    #[test]
    fn format_3_is_still_read_without_an_expiry() {
        let text = format!("h3:{}:{}:-\n1:a1:1", stamp(5), stamp(6));
        let stored = parse(&text).expect("valid");
        assert_eq!((stored.created, stored.seen, stored.retired, stored.expiry), (5, 6, false, None));
        assert_eq!(stored.values, vec![("a", "1")]);
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
            good.replacen("h4:", "h5:", 1),
            good.replacen("h4:", "h3:", 1),
            record(1, 1, 'x', ""),
            good[..HEADER_LEN - 1].to_owned(),
            good.replacen("0000000000000001:", "+000000000000001:", 1),
            good.replacen(":-:", ":-;", 1),
            good.replacen("123456\n", "12345x\n", 1),
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
