//! The versioned bincode envelope carried between tiers.
//!
//! Layout: 4 magic bytes `DDNE`, one version byte, then the bincode (standard config) body. The
//! magic and version let a tier reject foreign or future records with a clear reason instead
//! of misreading them.
//!
//! Versions: a node writes `ENVELOPE_VERSION` and reads every version in
//! `OLDEST_READABLE_VERSION..=ENVELOPE_VERSION`, one decode function per version
//! (`decode_version`). During a rolling upgrade an older tier meets a newer writer's records:
//! it dead-letters them with both versions named instead of misreading them. A recorded
//! envelope of each version (`tests/fixtures/wire/`) must keep decoding; see
//! docs/design-notes.md for how a version 2 is added.

use serde::{Deserialize, Serialize};

use super::DecodeError;

const MAGIC: &[u8; 4] = b"DDNE";
/// The version this node writes, and the newest it reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// The oldest version this node reads. Raise it only once no tier writes that version any more
/// (and its fixture stays as a test that it is refused clearly).
pub const OLDEST_READABLE_VERSION: u8 = 1;
/// Refuse absurd tensors before allocating (a corrupted length would otherwise ask for GiBs).
const MAX_TENSOR_BYTES: usize = 64 << 20;

/// Element type of a tensor. New variants go at the end: bincode writes the variant's index, so
/// envelopes written before a variant was added keep decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    U8,
    F32,
    /// IEEE 754 half precision (a model may take float16 input).
    F16,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::U8, DType::F32, DType::F16];

    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    /// The name in topology.toml, dead-letter reasons and `ddnn check` (ONNX's names).
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::F32 => "float32",
            DType::F16 => "float16",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A dense tensor without its batch dimension; `data` is little-endian, row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<u32>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn from_f32(shape: Vec<u32>, values: &[f32]) -> Self {
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Self { dtype: DType::F32, shape, data }
    }

    pub fn elements(&self) -> usize {
        self.shape.iter().map(|&d| d as usize).product()
    }

    /// Appends the values as f32 to `out` (u8 pixels become 0.0..=255.0; f16 widens exactly).
    pub fn extend_f32(&self, out: &mut Vec<f32>) {
        match self.dtype {
            DType::U8 => out.extend(self.data.iter().map(|&b| f32::from(b))),
            DType::F32 => out.extend(self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            DType::F16 => {
                out.extend(self.data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            }
        }
    }

    fn check(&self) -> Result<(), DecodeError> {
        let want = self
            .shape
            .iter()
            .try_fold(self.dtype.size(), |acc, &d| acc.checked_mul(d as usize))
            .filter(|&n| n <= MAX_TENSOR_BYTES)
            .ok_or_else(|| DecodeError::new(format!("tensor shape {:?} is too large", self.shape)))?;
        if want != self.data.len() {
            return Err(DecodeError::new(format!(
                "tensor {:?} {:?} needs {want} bytes, has {}",
                self.dtype,
                self.shape,
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// What one tier did to a message, appended as it passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierStamp {
    pub tier: String,
    pub partition: i32,
    pub offset: i64,
    /// Wall-clock milliseconds when the tier fetched the record.
    pub received_ms: i64,
    /// Wall-clock milliseconds when inference finished.
    pub inferred_ms: i64,
    /// max(softmax) at this tier.
    pub confidence: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    pub key: Option<Vec<u8>>,
    /// Every header of the original input record, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// When the client sent the original input (ms since the Unix epoch).
    pub origin_ts_ms: i64,
    pub tensor: Tensor,
    pub trace: Vec<TierStamp>,
}

pub fn encode_envelope(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + env.tensor.data.len());
    out.extend_from_slice(MAGIC);
    out.push(ENVELOPE_VERSION);
    // Encoding plain owned data into a Vec cannot fail; an error here is a bug in the types.
    let body = bincode::serde::encode_to_vec(env, bincode::config::standard())
        .unwrap_or_else(|e| panic!("envelope encoding failed: {e}"));
    out.extend_from_slice(&body);
    out
}

/// bincode counts what it decodes in memory sizes: at most 8 per wire byte (a varint length or
/// integer of 1 byte claims 8). A body can therefore never legitimately claim more than this
/// many times its length; a larger declared string length is a lie and fails before the
/// allocation.
const CLAIM_PER_BYTE: usize = 8;
/// Largest claim of any envelope: the biggest tensor plus room for key, headers and trace.
const MAX_CLAIM: usize = MAX_TENSOR_BYTES + (1 << 20);

/// Decodes the bincode body with a byte limit sized to `body`: bincode's limit is a constant,
/// so the smallest of a few steps that still covers `CLAIM_PER_BYTE * body.len()`. bincode
/// allocates a string's declared length before reading it; the limit bounds that allocation.
fn decode_body(body: &[u8]) -> Result<(Envelope, usize), bincode::error::DecodeError> {
    fn with<const LIMIT: usize>(body: &[u8]) -> Result<(Envelope, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(body, bincode::config::standard().with_limit::<LIMIT>())
    }
    const STEPS: [usize; 3] = [64 << 10, 1 << 20, 16 << 20];
    let claim = body.len().saturating_mul(CLAIM_PER_BYTE);
    if claim <= STEPS[0] {
        with::<{ STEPS[0] }>(body)
    } else if claim <= STEPS[1] {
        with::<{ STEPS[1] }>(body)
    } else if claim <= STEPS[2] {
        with::<{ STEPS[2] }>(body)
    } else {
        with::<MAX_CLAIM>(body)
    }
}

pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(DecodeError::new("not a ddnn envelope (missing DDNE magic)"));
    };
    let Some((&version, body)) = rest.split_first() else {
        return Err(DecodeError::new("truncated envelope (no version byte)"));
    };
    let env = decode_version(version, body)?;
    env.tensor.check()?;
    Ok(env)
}

/// The decode dispatch: one arm per readable version, each turning its body into today's
/// `Envelope`. A version outside the readable range is refused with both ends named, so the
/// dead letter says which side of a rolling upgrade has to move.
fn decode_version(version: u8, body: &[u8]) -> Result<Envelope, DecodeError> {
    match version {
        1 => decode_v1(body),
        v if v > ENVELOPE_VERSION => Err(DecodeError::new(format!(
            "envelope version {v} is newer than this node reads \
             ({OLDEST_READABLE_VERSION}..={ENVELOPE_VERSION}): upgrade this tier"
        ))),
        v => Err(DecodeError::new(format!(
            "envelope version {v} is older than this node reads \
             ({OLDEST_READABLE_VERSION}..={ENVELOPE_VERSION}): replay it through a node that still reads it"
        ))),
    }
}

/// Version 1: the bincode of `Envelope` itself (its `version` field repeats the byte). While 1
/// is the newest version, `Envelope` *is* the v1 layout; adding version 2 freezes today's
/// struct as the v1 wire type here (see docs/design-notes.md).
fn decode_v1(body: &[u8]) -> Result<Envelope, DecodeError> {
    let (env, used) = decode_body(body).map_err(|e| DecodeError::new(format!("corrupt envelope: {e}")))?;
    if used != body.len() {
        return Err(DecodeError::new(format!("corrupt envelope: {} trailing bytes", body.len() - used)));
    }
    if env.version != 1 {
        return Err(DecodeError::new("corrupt envelope: version mismatch"));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            key: Some(b"k-1".to_vec()),
            headers: vec![("X-INFERENCE-TS".into(), b"1.5".to_vec()), ("a".into(), vec![0, 255])],
            origin_ts_ms: 1_700_000_000_123,
            tensor: Tensor::from_f32(vec![2, 2], &[1.0, -2.5, 0.0, 3.25]),
            trace: vec![TierStamp {
                tier: "edge".into(),
                partition: 1,
                offset: 42,
                received_ms: 5,
                inferred_ms: 6,
                confidence: 0.5,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let env = sample();
        let bytes = encode_envelope(&env);
        assert_eq!(decode_envelope(&bytes).unwrap(), env);
        let mut vals = Vec::new();
        env.tensor.extend_f32(&mut vals);
        assert_eq!(vals, vec![1.0, -2.5, 0.0, 3.25]);
    }

    #[test]
    fn rejects_every_truncation() {
        let bytes = encode_envelope(&sample());
        for cut in 0..bytes.len() {
            assert!(decode_envelope(&bytes[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
    }

    #[test]
    fn rejects_garbage_version_and_trailing_bytes() {
        assert_eq!(decode_envelope(b"hello").unwrap_err().0, "not a ddnn envelope (missing DDNE magic)");
        let mut bytes = encode_envelope(&sample());
        bytes[4] = 9;
        assert_eq!(
            decode_envelope(&bytes).unwrap_err().0,
            "envelope version 9 is newer than this node reads (1..=1): upgrade this tier"
        );
        let mut bytes = encode_envelope(&sample());
        bytes.push(0);
        assert_eq!(decode_envelope(&bytes).unwrap_err().0, "corrupt envelope: 1 trailing bytes");
    }

    #[test]
    fn the_version_dispatch_reads_its_range_and_names_both_ends_outside_it() {
        let body = &encode_envelope(&sample())[5..];
        assert_eq!(decode_version(1, body), Ok(sample()));
        for v in [ENVELOPE_VERSION + 1, 200, u8::MAX] {
            assert_eq!(
                decode_version(v, body).unwrap_err().0,
                format!("envelope version {v} is newer than this node reads (1..=1): upgrade this tier"),
            );
        }
        assert_eq!(
            decode_version(0, body).unwrap_err().0,
            "envelope version 0 is older than this node reads (1..=1): replay it through a node that still reads it"
        );
        // The body's own version field must agree with the byte in front of it.
        let mut env = sample();
        env.version = 2;
        let inner = encode_envelope(&env);
        assert_eq!(decode_version(1, &inner[5..]).unwrap_err().0, "corrupt envelope: version mismatch");
    }

    /// Width of the edge model's `features` (the fixture's tensor).
    const FIXTURE_FEATURES: usize = 32;

    /// The committed v1 fixture (recorded from a running edge tier, see
    /// tests/fixtures/wire/README.md) decodes, and while 1 is the version we write, today's
    /// encoder reproduces it byte for byte: a change to `Envelope`'s layout fails here.
    #[test]
    fn the_recorded_v1_fixture_decodes_and_reencodes_identically() {
        let bytes = include_bytes!("../../tests/fixtures/wire/envelope-v1.bin");
        let env = decode_envelope(bytes).expect("v1 fixture");
        assert_eq!(env.version, 1);
        assert_eq!(env.key.as_deref(), Some(&b"5f0c7a0e-3b8e-4d51-9a8e-2f6f1c9e4b21"[..]));
        let names: Vec<&str> = env.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["X-INFERENCE-TS", "x-client"]);
        assert_eq!(env.headers[1].1, b"fixture-recorder");
        assert_eq!((env.tensor.dtype, env.tensor.elements()), (DType::F32, FIXTURE_FEATURES));
        assert_eq!(env.trace.len(), 1);
        assert_eq!((env.trace[0].tier.as_str(), env.trace[0].partition, env.trace[0].offset), ("edge", 0, 0));
        assert!(env.trace[0].received_ms <= env.trace[0].inferred_ms);
        if ENVELOPE_VERSION == 1 {
            assert_eq!(encode_envelope(&env), bytes.to_vec());
        }
    }

    /// `DDNE`, version 1, then a body whose first header key declares `len` bytes.
    fn lying_header_key(len: u64) -> Vec<u8> {
        let mut bytes = b"DDNE\x01".to_vec();
        bytes.push(ENVELOPE_VERSION); // Envelope.version
        bytes.push(0); // key: None
        bytes.push(1); // one header
        bytes.push(253); // varint: a u64 follows
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.resize(20, 0);
        bytes
    }

    #[test]
    fn a_declared_huge_string_is_rejected_before_allocating() {
        let bytes = lying_header_key(1 << 40);
        assert_eq!(bytes.len(), 20);
        let started = std::time::Instant::now();
        let err = decode_envelope(&bytes).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(err.0, "corrupt envelope: LimitExceeded");
        // Below the largest limit but far beyond what 15 bytes of body can hold: rejected by the
        // limit sized to the record, not by reading past the end after a 1 MiB allocation.
        assert_eq!(decode_envelope(&lying_header_key(1 << 20)).unwrap_err().0, "corrupt envelope: LimitExceeded");
    }

    #[test]
    fn a_declared_huge_tensor_is_rejected_quickly() {
        let mut env = sample();
        env.tensor.data = vec![7; 3];
        let mut bytes = encode_envelope(&env);
        // The tensor's data length (3) sits right before its 3 bytes; make it claim 2^40.
        let at = bytes.windows(4).rposition(|w| w == [3, 7, 7, 7]).unwrap();
        bytes.splice(at..at + 1, [253].into_iter().chain((1u64 << 40).to_le_bytes()));
        let started = std::time::Instant::now();
        assert!(decode_envelope(&bytes).unwrap_err().0.starts_with("corrupt envelope: "));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
    }

    #[test]
    fn the_limit_admits_the_densest_valid_bodies_of_every_size() {
        // Empty header keys and values: 2 wire bytes that claim 16, the worst ratio there is.
        for n in [0, 10, 4_000, 4_100, 70_000, 1_100_000] {
            let mut env = sample();
            env.headers = vec![(String::new(), Vec::new()); n];
            let bytes = encode_envelope(&env);
            assert_eq!(decode_envelope(&bytes).map(|e| e.headers.len()), Ok(n), "{n} headers");
        }
        // A large tensor (past the last step) still decodes.
        let mut env = sample();
        let len = 4 << 20;
        env.tensor = Tensor { dtype: DType::U8, shape: vec![len as u32], data: vec![1; len] };
        assert_eq!(decode_envelope(&encode_envelope(&env)).map(|e| e.tensor.data.len()), Ok(len));
    }

    #[test]
    fn rejects_shape_data_mismatch() {
        let mut env = sample();
        env.tensor.shape = vec![3, 2];
        let err = decode_envelope(&encode_envelope(&env)).unwrap_err();
        assert_eq!(err.0, "tensor F32 [3, 2] needs 24 bytes, has 16");
    }
}
