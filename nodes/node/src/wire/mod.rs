//! Every byte format a node reads or writes: the inter-tier envelope, first-tier input formats
//! and the exit record. Pure functions, no I/O.

mod envelope;
mod exit;
pub mod image;
mod input;
pub mod kafka_ml;

pub use envelope::{
    decode_envelope, encode_envelope, DType, Envelope, Tensor, TierStamp, ENVELOPE_VERSION, OLDEST_READABLE_VERSION,
};
pub use exit::{kafka_ml_value, python_float_repr, ExitRecord};
pub use input::{decode_input, encode_paper_json, paper_json_ts, Decoded, ModelInput, PAPER_TS_HEADER};

/// Header on dead-lettered records saying why the record was rejected.
pub const ERROR_HEADER: &str = "x-ddnn-error";
/// Header on dead-lettered records naming the tier, topic, partition and offset it came from.
pub const SOURCE_HEADER: &str = "x-ddnn-source";

/// Marks headers as a dead letter's: `reason` replaces any `x-ddnn-error` already there; a
/// `source` replaces any `x-ddnn-source` (without one, an existing source stays). Every other
/// header keeps its place, repeated keys included.
pub fn mark_dead_letter(headers: &mut Vec<(String, Vec<u8>)>, reason: &str, source: Option<String>) {
    headers.retain(|(k, _)| k != ERROR_HEADER && (source.is_none() || k != SOURCE_HEADER));
    headers.push((ERROR_HEADER.to_string(), reason.as_bytes().to_vec()));
    if let Some(source) = source {
        headers.push((SOURCE_HEADER.to_string(), source.into_bytes()));
    }
}

/// Why a record could not be decoded; the text goes into the dead letter's `x-ddnn-error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}
