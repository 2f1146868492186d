//! Every byte format a node reads or writes: the inter-tier envelope, first-tier input formats
//! and the exit record. Pure functions, no I/O.

mod envelope;
mod exit;
mod input;

pub use envelope::{decode_envelope, encode_envelope, DType, Envelope, Tensor, TierStamp, ENVELOPE_VERSION};
pub use exit::ExitRecord;
pub use input::{decode_input, encode_paper_json, paper_json_ts, Decoded, PAPER_TS_HEADER};

/// Header on dead-lettered records saying why the record was rejected.
pub const ERROR_HEADER: &str = "x-ddnn-error";
/// Header on dead-lettered records naming the tier, topic, partition and offset it came from.
pub const SOURCE_HEADER: &str = "x-ddnn-source";

/// Why a record could not be decoded; the text goes into the dead letter's `x-ddnn-error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}
