//! The one place that knows the on-disk encoding (CBOR through ciborium).
//! Everything else calls `encode`/`decode`, so the codec can change without
//! touching the log, the projections or the doctor.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encoding failed (a value serde cannot express in CBOR).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what} as CBOR: {detail}")]
pub struct EncodeError {
    /// What was being encoded.
    pub what: &'static str,
    /// The encoder's message.
    pub detail: String,
}

/// Decoding failed: the bytes are not a valid encoding of the expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}: {detail}")]
pub struct DecodeError {
    /// What was being decoded.
    pub what: &'static str,
    /// The decoder's message.
    pub detail: String,
}

/// Encodes `value` as CBOR into a fresh buffer.
pub fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    encode_into(what, value, &mut out)?;
    Ok(out)
}

/// Encodes `value` as CBOR, appending to `out`.
pub fn encode_into<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    ciborium::ser::into_writer(value, out).map_err(|e| EncodeError {
        what,
        detail: e.to_string(),
    })
}

/// Scratch space for decoding, in bytes.
const DECODE_SCRATCH_BYTES: usize = 512;

/// Decodes one CBOR value from `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    // The decoder copies short strings through this scratch space; longer
    // ones are read straight into their own allocation. The library's
    // default zeroes 4 KiB on every call, which measured as the largest
    // single cost of reading the log.
    let mut scratch = [0u8; DECODE_SCRATCH_BYTES];
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_buffer(&mut reader, &mut scratch).map_err(|e| {
        DecodeError {
            what,
            detail: e.to_string(),
        }
    })?;
    if !reader.is_empty() {
        return Err(DecodeError {
            what,
            detail: format!("{} trailing bytes after the value", reader.len()),
        });
    }
    Ok(value)
}

/// Writers of single CBOR items in their shortest form (RFC 8949 §4.2.1,
/// which is also what ciborium writes), for records whose layout is fixed
/// and written on a hot path (the event envelope).
pub(crate) mod write {
    /// CBOR major types used here, already shifted into the top three bits.
    const MAJOR_UINT: u8 = 0x00;
    const MAJOR_BYTES: u8 = 0x40;
    const MAJOR_TEXT: u8 = 0x60;
    const MAJOR_MAP: u8 = 0xa0;

    /// The head of an item: major type and argument, shortest form.
    fn head(major: u8, arg: u64, out: &mut Vec<u8>) {
        // Each arm's range makes the narrowing exact.
        match arg {
            0..=23 => out.push(major | arg as u8),
            24..=0xff => out.extend_from_slice(&[major | 24, arg as u8]),
            0x100..=0xffff => {
                out.push(major | 25);
                out.extend_from_slice(&(arg as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(major | 26);
                out.extend_from_slice(&(arg as u32).to_be_bytes());
            }
            _ => {
                out.push(major | 27);
                out.extend_from_slice(&arg.to_be_bytes());
            }
        }
    }

    /// An unsigned integer.
    pub(crate) fn uint(n: u64, out: &mut Vec<u8>) {
        head(MAJOR_UINT, n, out);
    }

    /// A byte string.
    pub(crate) fn bytes(b: &[u8], out: &mut Vec<u8>) {
        head(MAJOR_BYTES, b.len() as u64, out);
        out.extend_from_slice(b);
    }

    /// A text string.
    pub(crate) fn text(s: &str, out: &mut Vec<u8>) {
        head(MAJOR_TEXT, s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }

    /// The header of a definite-length map of `n` entries.
    pub(crate) fn map_header(n: u64, out: &mut Vec<u8>) {
        head(MAJOR_MAP, n, out);
    }
}

/// A reader of single CBOR items from a byte slice, for records whose
/// layout is fixed. Every method returns `None` when the next item is not
/// what was asked for (wrong type, indefinite length, truncated input);
/// the caller then falls back to the general decoder, which either accepts
/// an unusual but valid encoding or names what is wrong.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// True when every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    /// The head of the next item when its major type is `major` (0 to 7):
    /// its argument. Indefinite lengths and reserved values are refused.
    fn head(&mut self, major: u8) -> Option<u64> {
        let (&first, rest) = self.rest.split_first()?;
        if first >> 5 != major {
            return None;
        }
        self.rest = rest;
        let info = first & 0x1f;
        match info {
            0..=23 => Some(u64::from(info)),
            24 => self.take(1).and_then(|b| b.first().copied()).map(u64::from),
            25 => self
                .take(2)
                .and_then(|b| b.try_into().ok())
                .map(|b| u64::from(u16::from_be_bytes(b))),
            26 => self
                .take(4)
                .and_then(|b| b.try_into().ok())
                .map(|b| u64::from(u32::from_be_bytes(b))),
            27 => self
                .take(8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
            _ => None,
        }
    }

    /// An unsigned integer.
    pub(crate) fn uint(&mut self) -> Option<u64> {
        self.head(0)
    }

    /// A definite-length byte string.
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.head(2)?).ok()?;
        self.take(len)
    }

    /// A definite-length text string (valid UTF-8).
    pub(crate) fn text(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.head(3)?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// The entry count of a definite-length map.
    pub(crate) fn map_header(&mut self) -> Option<u64> {
        self.head(5)
    }

    /// Consumes the next item if it is exactly the short text `key`
    /// (at most 23 bytes, so its head is one byte); otherwise leaves the
    /// reader where it was and returns false.
    pub(crate) fn key(&mut self, key: &str) -> bool {
        let k = key.as_bytes();
        // Compared byte by byte: keys are a few bytes long, shorter than
        // the set-up of a general comparison.
        let matches = k.len() < 24
            && self.rest.first() == Some(&(0x60 | k.len() as u8))
            && self.rest.len() > k.len()
            && k.iter().zip(self.rest.iter().skip(1)).all(|(a, b)| a == b);
        if matches {
            self.rest = self.rest.get(k.len() + 1..).unwrap_or_default();
        }
        matches
    }
}
