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
