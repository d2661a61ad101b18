//! Validated newtypes for every identifier and scalar that crosses a module
//! boundary. Each type has exactly one validating constructor, and serde goes
//! through it, so a value read from disk, the network or a user is checked the
//! same way wherever it enters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a raw value was refused by a validating constructor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// The value is empty where a value is required.
    #[error("{what} must not be empty")]
    Empty {
        /// Which kind of value.
        what: &'static str,
    },
    /// The value is longer than its bound.
    #[error("{what} is {len} bytes long; at most {max_bytes} bytes are allowed")]
    TooLong {
        /// Which kind of value.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max_bytes: usize,
    },
    /// The value contains a character it may not contain.
    #[error("{what} contains {found:?} at byte {offset}; allowed: {allowed}")]
    BadChar {
        /// Which kind of value.
        what: &'static str,
        /// The offending character.
        found: char,
        /// Byte offset of the offending character.
        offset: usize,
        /// A description of the allowed characters.
        allowed: &'static str,
    },
    /// The value does not have the required shape.
    #[error("{what} {value:?} is malformed: {reason}")]
    Malformed {
        /// Which kind of value.
        what: &'static str,
        /// The refused value (truncated to a readable length).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

pub(crate) fn truncated(s: &str) -> String {
    const SHOW_CHARS: usize = 64;
    if s.chars().count() <= SHOW_CHARS {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(SHOW_CHARS).collect();
        out.push('…');
        out
    }
}

/// Character classes used by the string newtypes.
#[derive(Clone, Copy)]
enum Charset {
    /// Identifiers: ASCII letters, digits and `. _ - : / @ + #`.
    Ident,
    /// Free text that is safe to print on one line: any char but controls.
    Printable,
    /// Event kinds: lowercase ASCII letters, digits, `.`, `_`, `-`.
    Kind,
}

impl Charset {
    fn allows(self, c: char) -> bool {
        match self {
            Charset::Ident => c.is_ascii_alphanumeric() || "._-:/@+#".contains(c),
            Charset::Printable => !c.is_control(),
            Charset::Kind => c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c),
        }
    }

    /// Whether `b` is an ASCII character this class allows (same answer as
    /// [`Charset::allows`] for ASCII; false for every non-ASCII byte).
    fn allows_ascii(self, b: u8) -> bool {
        match self {
            Charset::Ident => {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'.' | b'_' | b'-' | b':' | b'/' | b'@' | b'+' | b'#')
            }
            Charset::Printable => b.is_ascii() && !b.is_ascii_control(),
            Charset::Kind => {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Charset::Ident => "ASCII letters, digits and . _ - : / @ + #",
            Charset::Printable => "any character except control characters",
            Charset::Kind => "lowercase ASCII letters, digits and . _ -",
        }
    }
}

fn check_text(
    what: &'static str,
    s: &str,
    max_bytes: usize,
    charset: Charset,
) -> Result<(), InvalidValue> {
    if s.is_empty() {
        return Err(InvalidValue::Empty { what });
    }
    if s.len() > max_bytes {
        return Err(InvalidValue::TooLong {
            what,
            len: s.len(),
            max_bytes,
        });
    }
    // Almost every value is plain ASCII: check bytes first, and look for
    // the offending character (or accept non-ASCII text) only otherwise.
    if s.bytes().all(|b| charset.allows_ascii(b)) {
        return Ok(());
    }
    if let Some((offset, found)) = s.char_indices().find(|(_, c)| !charset.allows(*c)) {
        return Err(InvalidValue::BadChar {
            what,
            found,
            offset,
            allowed: charset.describe(),
        });
    }
    Ok(())
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $charset:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in bytes.
            pub const MAX_BYTES: usize = $max;

            /// Validates and wraps a raw value.
            pub fn new(raw: impl Into<String>) -> Result<Self, InvalidValue> {
                let raw = raw.into();
                check_text($what, &raw, Self::MAX_BYTES, $charset)?;
                Ok(Self(raw))
            }

            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::new(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_newtype!(
    /// The device that recorded an event (`device:laptop-1`).
    DeviceId, "device id", 128, Charset::Ident
);
text_newtype!(
    /// Who or what caused an event (`actor:agent-one`).
    ActorId, "actor", 256, Charset::Ident
);
text_newtype!(
    /// What an event is about (`object:alpha`, a capability ref, a path digest).
    Subject, "subject", 512, Charset::Ident
);
text_newtype!(
    /// The session an event belongs to (`urn:srcos:session:s1`).
    SessionRef, "session", 256, Charset::Ident
);
text_newtype!(
    /// A client-chosen key that makes a submission idempotent: non-empty, at
    /// most 256 bytes, no control characters.
    IdempotencyKey, "idempotency key", 256, Charset::Printable
);
text_newtype!(
    /// The profile a store belongs to (`profile:local-dev`).
    ProfileId, "profile", 128, Charset::Ident
);

/// The kind of an event (`object.created`): dotted lowercase segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKind(String);

impl EventKind {
    /// Longest accepted kind, in bytes.
    pub const MAX_BYTES: usize = 128;

    /// Validates and wraps a raw kind: lowercase ASCII segments separated by
    /// single dots, no leading or trailing dot.
    pub fn new(raw: impl Into<String>) -> Result<Self, InvalidValue> {
        let raw = raw.into();
        check_text("event kind", &raw, Self::MAX_BYTES, Charset::Kind)?;
        // A segment is empty exactly when the kind starts or ends with a
        // dot or has two in a row (it is not empty: checked above).
        if raw.starts_with('.') || raw.ends_with('.') || raw.contains("..") {
            return Err(InvalidValue::Malformed {
                what: "event kind",
                value: truncated(&raw),
                reason: "segments separated by single dots, none empty",
            });
        }
        Ok(Self(raw))
    }

    /// The validated kind.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first segment (`object` of `object.created`): what projections
    /// match first, so that most kinds are passed over by one comparison
    /// of lengths rather than a prefix test per namespace.
    pub fn namespace(&self) -> &str {
        self.0.split_once('.').map_or(self.0.as_str(), |(ns, _)| ns)
    }

    /// True for kinds in the reserved `syncd.` namespace, which only syncd
    /// itself may record.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with("syncd.")
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EventKind {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::new(raw).map_err(serde::de::Error::custom)
    }
}

/// A position in the log. The first event is 1; 0 is never a sequence
/// number (it means "before the first event" where a position is needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    /// The first sequence number of every log.
    pub const FIRST: Seq = Seq(1);

    /// Validates a raw sequence number (must be at least 1).
    pub fn new(raw: u64) -> Result<Self, InvalidValue> {
        if raw == 0 {
            return Err(InvalidValue::Malformed {
                what: "sequence number",
                value: "0".into(),
                reason: "sequence numbers start at 1",
            });
        }
        Ok(Self(raw))
    }

    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The next sequence number, or `None` at the end of the range.
    pub fn next(self) -> Option<Seq> {
        self.0.checked_add(1).map(Seq)
    }

    /// The storage key: 8 bytes, big-endian, so that keys sort by sequence.
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Reads a storage key written by [`Seq::to_key`].
    pub fn from_key(key: &[u8]) -> Result<Self, InvalidValue> {
        let bytes: [u8; 8] = key.try_into().map_err(|_| InvalidValue::Malformed {
            what: "sequence key",
            value: format!("{} bytes", key.len()),
            reason: "a sequence key is exactly 8 bytes",
        })?;
        Seq::new(u64::from_be_bytes(bytes))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Seq {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Seq::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A blake3 digest (32 bytes). Serialised as a CBOR byte string; shown as
/// `blake3:` followed by 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Length of the digest in bytes.
    pub const LEN: usize = 32;
    const PREFIX: &'static str = "blake3:";

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Hashes `data` with blake3.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a digest from a byte slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidValue> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| InvalidValue::Malformed {
            what: "digest",
            value: format!("{} bytes", bytes.len()),
            reason: "a blake3 digest is exactly 32 bytes",
        })?;
        Ok(Self(arr))
    }

    /// Lowercase hex of the raw bytes, without prefix.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            for nibble in [b >> 4, b & 0x0f] {
                out.push(char::from(
                    HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ));
            }
        }
        out
    }

    /// Parses `blake3:<64 hex>` or bare 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        let hex = text.strip_prefix(Self::PREFIX).unwrap_or(text);
        let malformed = |reason| InvalidValue::Malformed {
            what: "digest",
            value: truncated(text),
            reason,
        };
        if hex.len() != 64 {
            return Err(malformed("expected blake3: followed by 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            let pair = hex
                .get(i * 2..i * 2 + 2)
                .ok_or_else(|| malformed("expected hex digits"))?;
            *slot = u8::from_str_radix(pair, 16).map_err(|_| malformed("expected hex digits"))?;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        Digest::from_slice(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An event id: a UUID version 7 (time-ordered). Serialised as a 16-byte CBOR
/// byte string; shown in the canonical hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(uuid::Uuid);

impl EventId {
    /// Validates a UUID: it must be version 7.
    pub fn new(id: uuid::Uuid) -> Result<Self, InvalidValue> {
        if id.get_version_num() != 7 {
            return Err(InvalidValue::Malformed {
                what: "event id",
                value: id.to_string(),
                reason: "event ids are UUID version 7",
            });
        }
        Ok(Self(id))
    }

    /// Parses the canonical text form.
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        let id = uuid::Uuid::parse_str(text).map_err(|_| InvalidValue::Malformed {
            what: "event id",
            value: truncated(text),
            reason: "expected a hyphenated UUID",
        })?;
        Self::new(id)
    }

    /// Wraps a UUID built by this crate with version 7 already set.
    pub(crate) fn from_v7_unchecked(id: uuid::Uuid) -> Self {
        debug_assert_eq!(id.get_version_num(), 7);
        Self(id)
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_bytes())
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let id = uuid::Uuid::from_slice(&bytes).map_err(serde::de::Error::custom)?;
        EventId::new(id).map_err(serde::de::Error::custom)
    }
}

/// A UTC instant with microsecond precision, written as RFC 3339 with a `Z`
/// suffix and exactly six fractional digits, so that its text is canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From microseconds since the Unix epoch.
    pub fn from_unix_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 text (any offset; stored as UTC).
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        // The canonical form is what every stored event carries; any other
        // form goes through the general parser.
        if let Some(micros) = parse_canonical(text) {
            return Ok(Self(micros));
        }
        let parsed =
            chrono::DateTime::parse_from_rfc3339(text).map_err(|_| InvalidValue::Malformed {
                what: "timestamp",
                value: truncated(text),
                reason: "expected RFC 3339, e.g. 2026-11-24T09:00:00Z",
            })?;
        Ok(Self(parsed.timestamp_micros()))
    }
}

/// Reads the canonical form `YYYY-MM-DDTHH:MM:SS.ffffffZ` (years 0000 to
/// 9999, no leap second) as Unix microseconds; `None` for any other text,
/// including every invalid date, which the general parser then judges.
fn parse_canonical(text: &str) -> Option<i64> {
    let b: &[u8; 27] = text.as_bytes().try_into().ok()?;
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|(i, c)| b.get(*i) != Some(c)) || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b.get(from..to)?.iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let micros = num(20, 26)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000_000) + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year, month and day of a day count since 1970-01-01 (proleptic
/// Gregorian calendar), by the days-from-civil inverse.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written directly: this runs for every event shown or sealed.
        if let Some(text) = self.canonical_text() {
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        match chrono::DateTime::<chrono::Utc>::from_timestamp_micros(self.0) {
            Some(dt) => write!(f, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            // Outside chrono's range (±262,000 years): still print something
            // unambiguous instead of failing a Display call.
            None => write!(f, "unix-micros:{}", self.0),
        }
    }
}

impl Timestamp {
    /// Appends the canonical text as a CBOR text string (what serialising
    /// it writes), without building a `String` first.
    pub(crate) fn write_text(&self, out: &mut Vec<u8>) {
        match self.canonical_text() {
            Some(b) => crate::codec::write::text(std::str::from_utf8(&b).unwrap_or_default(), out),
            None => crate::codec::write::text(&self.to_string(), out),
        }
    }

    /// The canonical text for years 0000 to 9999, digit by digit: this
    /// runs for every event sealed. `None` outside those years.
    fn canonical_text(&self) -> Option<[u8; 27]> {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        if !(0..=9999).contains(&year) {
            return None;
        }
        let sod = secs.rem_euclid(86_400);
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        let fields = [
            (0, 4, year),
            (5, 2, month),
            (8, 2, day),
            (11, 2, sod / 3_600),
            (14, 2, sod % 3_600 / 60),
            (17, 2, sod % 60),
            (20, 6, micros),
        ];
        for (at, width, mut value) in fields {
            for slot in b.iter_mut().skip(at).take(width).rev() {
                // `value` is non-negative here, so the digit is 0 to 9.
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Some(b)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Timestamp::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_bounds() {
        assert!(IdempotencyKey::new("k-001").is_ok());
        assert!(matches!(
            IdempotencyKey::new(""),
            Err(InvalidValue::Empty { .. })
        ));
        assert!(matches!(
            IdempotencyKey::new("a".repeat(257)),
            Err(InvalidValue::TooLong { len: 257, .. })
        ));
        assert!(IdempotencyKey::new("a".repeat(256)).is_ok());
        assert!(matches!(
            IdempotencyKey::new("a\nb"),
            Err(InvalidValue::BadChar { offset: 1, .. })
        ));
        assert!(IdempotencyKey::new("ünï code ok").is_ok());
    }

    #[test]
    fn kinds_are_dotted_lowercase() {
        assert!(EventKind::new("object.created").is_ok());
        assert!(EventKind::new("Object.created").is_err());
        assert!(EventKind::new("object..created").is_err());
        assert!(EventKind::new(".object").is_err());
        assert!(EventKind::new("object.").is_err());
        assert!(EventKind::new("syncd.repair").is_ok_and(|k| k.is_reserved()));
    }

    #[test]
    fn seq_zero_is_refused_and_keys_round_trip() {
        assert!(Seq::new(0).is_err());
        let s = Seq::new(0x0102_0304_0506_0708).unwrap();
        assert_eq!(s.to_key(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Seq::from_key(&s.to_key()).unwrap(), s);
        assert!(Seq::from_key(&[1, 2, 3]).is_err());
        assert!(Seq::from_key(&[0; 8]).is_err());
    }

    #[test]
    fn digest_text_round_trip() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert_eq!(Digest::parse(&d.to_hex()).unwrap(), d);
        assert!(Digest::parse("blake3:zz").is_err());
        assert!(Digest::parse(&"g".repeat(64)).is_err());
    }

    #[test]
    fn serde_runs_the_validating_constructor() {
        let bad: Result<ActorId, _> = serde_json::from_str("\"has space\"");
        assert!(bad.is_err());
        let bad_seq: Result<Seq, _> = serde_json::from_str("0");
        assert!(bad_seq.is_err());
        let ts: Timestamp = serde_json::from_str("\"2026-11-24T09:00:00+01:00\"").unwrap();
        assert_eq!(ts.to_string(), "2026-11-24T08:00:00.000000Z");
    }

    #[test]
    fn timestamp_text_matches_chrono_across_the_calendar() {
        let mut t: i64 = -62_135_596_800_000_000; // 0001-01-01
        let step = 7_948_800_123_457; // about 92 days, with odd seconds and microseconds
        while t < 253_402_300_799_000_000 {
            let ours = Timestamp::from_unix_micros(t).to_string();
            let theirs = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            assert_eq!(ours, theirs, "at {t}");
            assert_eq!(Timestamp::parse(&ours).unwrap().unix_micros(), t);
            t += step;
        }
        assert_eq!(
            Timestamp::from_unix_micros(0).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp::from_unix_micros(-1).to_string(),
            "1969-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn digest_hex_is_lowercase_pairs() {
        let d = Digest::from_bytes([0xab; 32]);
        assert_eq!(d.to_hex(), "ab".repeat(32));
        assert_eq!(Digest::from_bytes([0x0f; 32]).to_hex(), "0f".repeat(32));
    }

    #[test]
    fn event_ids_must_be_v7() {
        assert!(EventId::new(uuid::Uuid::nil()).is_err());
        let v7 = uuid::Uuid::now_v7();
        assert!(EventId::new(v7).is_ok());
        assert!(EventId::parse(&v7.to_string()).is_ok());
    }

    fn chrono_micros(text: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_micros())
    }

    #[test]
    fn canonical_timestamps_parse_as_the_general_parser_reads_them() {
        // Day by day through leap and century years, year 0 and 9999.
        let mut days = Vec::new();
        for year in [0i64, 1, 4, 100, 1600, 1900, 1970, 2000, 2024, 2100, 9999] {
            for day in 0..366 {
                days.push(days_from_civil(year, 1, 1) + day);
            }
        }
        for d in days {
            for micros in [0, 1, 86_399_999_999, 43_200_123_456] {
                let t = Timestamp::from_unix_micros(d * 86_400_000_000 + micros);
                let text = t.to_string();
                if text.len() != 27 {
                    continue;
                }
                assert_eq!(parse_canonical(&text), Some(t.unix_micros()), "{text}");
                assert_eq!(chrono_micros(&text), Some(t.unix_micros()), "{text}");
            }
        }
    }

    #[test]
    fn canonical_timestamp_parser_never_accepts_what_chrono_refuses() {
        // Every character at every position of a few dates, including the
        // edges of months, leap days and the end of a day.
        let bases = [
            "2024-02-29T23:59:59.999999Z",
            "2023-02-28T00:00:00.000000Z",
            "0000-01-01T00:00:00.000000Z",
            "9999-12-31T23:59:59.999999Z",
            "2026-04-30T12:34:56.789012Z",
        ];
        for base in bases {
            for i in 0..base.len() {
                for c in (0x20u8..0x7f).chain([0u8, 0xc3]) {
                    let mut b = base.as_bytes().to_vec();
                    b[i] = c;
                    let Ok(text) = String::from_utf8(b) else {
                        continue;
                    };
                    if let Some(micros) = parse_canonical(&text) {
                        assert_eq!(chrono_micros(&text), Some(micros), "{text}");
                    }
                    assert_eq!(
                        Timestamp::parse(&text).ok().map(Timestamp::unix_micros),
                        chrono_micros(&text),
                        "{text}"
                    );
                }
            }
        }
        for bad in [
            "2023-02-29T00:00:00.000000Z",
            "2024-13-01T00:00:00.000000Z",
            "2024-04-31T00:00:00.000000Z",
            "2024-01-01T24:00:00.000000Z",
            "2024-01-01T00:60:00.000000Z",
            "2024-01-00T00:00:00.000000Z",
        ] {
            assert_eq!(parse_canonical(bad), None, "{bad}");
        }
    }

    #[test]
    fn ascii_fast_check_gives_the_same_answer_as_the_character_check() {
        for charset in [Charset::Ident, Charset::Printable, Charset::Kind] {
            for b in 0..=255u8 {
                let expected = b.is_ascii() && charset.allows(char::from(b));
                assert_eq!(charset.allows_ascii(b), expected, "byte {b:#04x}");
            }
        }
        // Non-ASCII text still takes the character check.
        assert!(IdempotencyKey::new("ünï").is_ok());
        assert!(ActorId::new("actor:ü").is_err());
    }
}
