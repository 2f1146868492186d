//! First-tier input formats and the envelope as tier input: record bytes -> the model's input.
//!
//! - `tensor`: raw little-endian values of `dtype` (from the topology, else the model's input
//!   type) in the model's shape, row-major; `raw-u8` is `tensor` of uint8 for 784-value models.
//! - `json`: nested arrays of exactly the model's shape; `paper-json` is `json` of uint8 values
//!   in the paper's [1][28][28] (its clients' format).
//! - `image`: PNG or JPEG plus `preprocess` (see `image.rs`).
//! - `kafka-ml`: Kafka-ML's RAW records (see `kafka_ml.rs`).
//! - `envelope`: what the previous tier forwards.
//!
//! Every first-tier format takes the send time from the paper's `X-INFERENCE-TS` header when
//! present, else the record timestamp. A record that does not fit the model (size, shape, type,
//! channels, an undecodable image) is a [`DecodeError`] naming what was expected and what came:
//! the caller dead-letters it.

use crate::config::{InputFormat, InputSettings};

use super::{decode_envelope, image, kafka_ml, DType, DecodeError, Tensor, TierStamp};

/// The paper's clients put the send time (float seconds since the epoch) in this header.
pub const PAPER_TS_HEADER: &str = "X-INFERENCE-TS";

/// A decoded input record: the model input and what travels with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub tensor: Tensor,
    pub origin_ts_ms: i64,
    /// Headers to carry on; `None` means "the Kafka record's own headers".
    pub headers: Option<Vec<(String, Vec<u8>)>>,
    pub key: Option<Option<Vec<u8>>>,
    pub trace: Vec<TierStamp>,
}

/// What the model takes: its input shape without the batch dimension, and its element type.
#[derive(Debug, Clone, Copy)]
pub struct ModelInput<'a> {
    pub shape: &'a [usize],
    pub dtype: DType,
}

/// Send time from the paper's header, in ms; `None` when absent, unreadable, not finite or
/// outside what an `i64` of milliseconds holds (callers then use the record timestamp).
pub fn paper_json_ts<'a>(mut headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Option<i64> {
    let (_, v) = headers.find(|(k, _)| k.eq_ignore_ascii_case(PAPER_TS_HEADER))?;
    let secs: f64 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    secs_to_ms(secs)
}

/// Float seconds -> whole milliseconds, or `None` when the result does not fit an `i64` (an
/// `as` cast would saturate silently, and NaN would become 0).
fn secs_to_ms(secs: f64) -> Option<i64> {
    let ms = (secs * 1000.0).round();
    // -2^63 and 2^63 are exact in f64; i64 holds [-2^63, 2^63).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (ms.is_finite() && (-LIMIT..LIMIT).contains(&ms)).then_some(ms as i64)
}

/// Decodes one record's value for `model`.
pub fn decode_input<'a>(
    format: InputFormat,
    settings: &InputSettings,
    value: &[u8],
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    record_ts_ms: i64,
    model: ModelInput<'_>,
) -> Result<Decoded, DecodeError> {
    let shape = model.shape;
    let width: usize = shape.iter().product();
    let tensor = match format {
        InputFormat::Envelope => {
            let env = decode_envelope(value)?;
            if env.tensor.elements() != width {
                return Err(DecodeError::new(format!(
                    "envelope tensor {:?} has {} values, the model takes {width} ({shape:?})",
                    env.tensor.shape,
                    env.tensor.elements()
                )));
            }
            return Ok(Decoded {
                tensor: env.tensor,
                origin_ts_ms: env.origin_ts_ms,
                headers: Some(env.headers),
                key: Some(env.key),
                trace: env.trace,
            });
        }
        InputFormat::PaperJson => parse_json(value, shape, DType::U8, "pixel")?,
        InputFormat::Json => parse_json(value, shape, settings.dtype.unwrap_or(model.dtype), "value")?,
        InputFormat::RawU8 => {
            if value.len() != width {
                return Err(DecodeError::new(format!("raw-u8 input must be {width} bytes, got {}", value.len())));
            }
            Tensor { dtype: DType::U8, shape: to_u32(shape), data: value.to_vec() }
        }
        InputFormat::Tensor => {
            let dtype = settings.dtype.unwrap_or(model.dtype);
            let want = width * dtype.size();
            if value.len() != want {
                return Err(DecodeError::new(format!(
                    "expected {want} bytes ({width} {dtype} values for shape {shape:?}), got {}",
                    value.len()
                )));
            }
            Tensor { dtype, shape: to_u32(shape), data: value.to_vec() }
        }
        InputFormat::Image => image::decode(value, &settings.preprocess, model.dtype, shape)?,
        InputFormat::KafkaMl => {
            let raw = settings
                .kafka_ml
                .as_ref()
                .ok_or_else(|| DecodeError::new("kafka-ml input without data_type (a validation bug)"))?;
            kafka_ml::decode(value, raw, model.dtype, shape)?
        }
    };
    Ok(Decoded {
        tensor,
        origin_ts_ms: paper_json_ts(headers).unwrap_or(record_ts_ms),
        headers: None,
        key: None,
        trace: Vec::new(),
    })
}

fn to_u32(shape: &[usize]) -> Vec<u32> {
    shape.iter().map(|&d| d as u32).collect()
}

/// Nested JSON arrays of exactly `model_shape`, each value a number of `dtype`.
fn parse_json(value: &[u8], model_shape: &[usize], dtype: DType, noun: &str) -> Result<Tensor, DecodeError> {
    let json: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| DecodeError::new(format!("bad JSON: {e}")))?;
    let mut shape = Vec::new();
    let mut probe = &json;
    while let serde_json::Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    if shape != model_shape {
        return Err(DecodeError::new(format!("wrong shape: expected nested list {model_shape:?}, found {shape:?}")));
    }
    let mut data = Vec::with_capacity(shape.iter().product::<usize>() * dtype.size());
    let mut count = 0;
    flatten(&json, 0, &shape, &mut |v| {
        let at = count;
        count += 1;
        push_value(v, dtype, &mut data)
            .map_err(|expected| DecodeError::new(format!("{noun} at element {at} is {v}, expected {expected}")))
    })?;
    Ok(Tensor { dtype, shape: to_u32(&shape), data })
}

/// Appends one JSON number as `dtype`; on failure, what was expected.
fn push_value(v: &serde_json::Value, dtype: DType, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match dtype {
        DType::U8 => {
            let px = v
                .as_u64()
                .filter(|&n| n <= 255)
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=255.0).contains(f)).map(|f| f as u64))
                .ok_or("an integer 0..=255")?;
            out.push(px as u8);
        }
        DType::F32 => {
            let f = v.as_f64().filter(|f| f.abs() <= f64::from(f32::MAX)).ok_or("a number within float32")?;
            out.extend_from_slice(&(f as f32).to_le_bytes());
        }
        DType::F16 => {
            let f = v
                .as_f64()
                .filter(|f| f.abs() <= f64::from(half::f16::MAX))
                .ok_or("a number within float16 (±65504)")?;
            out.extend_from_slice(&half::f16::from_f64(f).to_le_bytes());
        }
    }
    Ok(())
}

fn flatten(
    v: &serde_json::Value,
    depth: usize,
    shape: &[usize],
    leaf: &mut impl FnMut(&serde_json::Value) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    if depth == shape.len() {
        return leaf(v);
    }
    match v {
        serde_json::Value::Array(items) if items.len() == shape[depth] => {
            items.iter().try_for_each(|item| flatten(item, depth + 1, shape, leaf))
        }
        _ => Err(DecodeError::new(format!("ragged nested list: expected {} items at depth {depth}", shape[depth]))),
    }
}

/// Encodes 784 pixels as the paper's client does: `[[[p, ...], ...]]` ([1][28][28]).
pub fn encode_paper_json(pixels: &[u8]) -> Vec<u8> {
    let rows: Vec<Vec<u8>> = pixels.chunks(28).map(<[u8]>::to_vec).collect();
    serde_json::to_vec(&[rows]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: [usize; 3] = [1, 28, 28];

    fn headers(ts: &str) -> Vec<(String, Vec<u8>)> {
        vec![(PAPER_TS_HEADER.to_string(), ts.as_bytes().to_vec())]
    }

    fn decode(format: InputFormat, value: &[u8], h: &[(String, Vec<u8>)]) -> Result<Decoded, DecodeError> {
        decode_as(format, &InputSettings::default(), value, h, &SHAPE, DType::F32)
    }

    fn decode_as(
        format: InputFormat,
        settings: &InputSettings,
        value: &[u8],
        h: &[(String, Vec<u8>)],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Decoded, DecodeError> {
        let headers = h.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        decode_input(format, settings, value, headers, 7, ModelInput { shape, dtype })
    }

    #[test]
    fn paper_json_round_trip_and_timestamp() {
        let pixels: Vec<u8> = (0..784).map(|i| (i % 256) as u8).collect();
        let d = decode(InputFormat::PaperJson, &encode_paper_json(&pixels), &headers("1700000000.25")).unwrap();
        assert_eq!(d.tensor.data, pixels);
        assert_eq!(d.tensor.shape, vec![1, 28, 28]);
        assert_eq!(d.origin_ts_ms, 1_700_000_000_250);
        // No header: the record timestamp stands in.
        let d = decode(InputFormat::PaperJson, &encode_paper_json(&pixels), &[]).unwrap();
        assert_eq!(d.origin_ts_ms, 7);
    }

    #[test]
    fn paper_json_errors_name_the_problem() {
        let e = |v: &[u8]| decode(InputFormat::PaperJson, v, &[]).unwrap_err().0;
        assert!(e(b"{not json").starts_with("bad JSON: "));
        assert_eq!(e(b"[[1,2],[3,4]]"), "wrong shape: expected nested list [1, 28, 28], found [2, 2]");
        let mut rows = vec![vec![0u16; 28]; 28];
        rows[3][4] = 300;
        let bad = serde_json::to_vec(&[rows]).unwrap();
        assert_eq!(e(&bad), "pixel at element 88 is 300, expected an integer 0..=255");
        let mut rows = vec![vec![0u8; 28]; 28];
        rows[5].pop();
        let ragged = serde_json::to_vec(&[rows]).unwrap();
        assert!(e(&ragged).starts_with("ragged nested list"));
    }

    #[test]
    fn extreme_timestamps_fall_back_to_the_record_timestamp() {
        let pixels = encode_paper_json(&[0u8; 784]);
        for ts in ["1e300", "-1e300", "inf", "-inf", "nan", "NaN", "9.3e15", "-9.3e15", "1e17"] {
            let d = decode(InputFormat::PaperJson, &pixels, &headers(ts)).unwrap();
            assert_eq!(d.origin_ts_ms, 7, "header {ts:?}");
            let d = decode(InputFormat::RawU8, &[0u8; 784], &headers(ts)).unwrap();
            assert_eq!(d.origin_ts_ms, 7, "header {ts:?}");
        }
        // The edges of the i64 range still convert exactly.
        assert_eq!(secs_to_ms(-9_223_372_036_854_775.808), Some(i64::MIN));
        assert_eq!(secs_to_ms(9_223_372_036_854_775.807), None, "rounds to 2^63, one past i64::MAX");
        assert_eq!(secs_to_ms(9_000_000_000_000_000.0), Some(9_000_000_000_000_000_000));
        assert_eq!(secs_to_ms(-0.0004), Some(0));
    }

    #[test]
    fn raw_u8_needs_exact_size() {
        let d = decode(InputFormat::RawU8, &[9u8; 784], &[]).unwrap();
        assert_eq!(d.tensor.data.len(), 784);
        assert_eq!(
            decode(InputFormat::RawU8, &[9u8; 783], &[]).unwrap_err().0,
            "raw-u8 input must be 784 bytes, got 783"
        );
    }

    #[test]
    fn tensor_records_are_raw_little_endian_values() {
        let values = [1.5f32, -2.0, 0.25, 8.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let d = decode_as(InputFormat::Tensor, &InputSettings::default(), &bytes, &headers("2.5"), &[2, 2], DType::F32)
            .unwrap();
        assert_eq!((d.tensor.dtype, d.tensor.shape.as_slice(), d.origin_ts_ms), (DType::F32, &[2u32, 2][..], 2_500));
        assert_eq!(d.tensor.data, bytes);
        // The dtype comes from the model unless the topology names one.
        let e = decode_as(InputFormat::Tensor, &InputSettings::default(), &bytes, &[], &[2, 2], DType::F16);
        assert_eq!(e.unwrap_err().0, "expected 8 bytes (4 float16 values for shape [2, 2]), got 16");
        let u8s = InputSettings { dtype: Some(DType::U8), ..InputSettings::default() };
        let d = decode_as(InputFormat::Tensor, &u8s, &[1, 2, 3, 4], &[], &[2, 2], DType::F32).unwrap();
        assert_eq!((d.tensor.dtype, d.tensor.data.as_slice()), (DType::U8, &[1u8, 2, 3, 4][..]));
        let e = decode_as(InputFormat::Tensor, &InputSettings::default(), &bytes[1..], &[], &[2, 2], DType::F32);
        assert_eq!(e.unwrap_err().0, "expected 16 bytes (4 float32 values for shape [2, 2]), got 15");
    }

    #[test]
    fn json_takes_any_shape_in_the_models_type() {
        let f = |dtype| {
            decode_as(InputFormat::Json, &InputSettings::default(), b"[[0.5, 2], [3, -4]]", &[], &[2, 2], dtype)
        };
        let d = f(DType::F32).unwrap();
        let mut v = Vec::new();
        d.tensor.extend_f32(&mut v);
        assert_eq!((d.tensor.dtype, v), (DType::F32, vec![0.5, 2.0, 3.0, -4.0]));
        let d = f(DType::F16).unwrap();
        assert_eq!(d.tensor.dtype, DType::F16);
        assert_eq!(d.tensor.data[..2], half::f16::from_f32(0.5).to_le_bytes());
        assert_eq!(f(DType::U8).unwrap_err().0, "value at element 0 is 0.5, expected an integer 0..=255");
        let e = decode_as(InputFormat::Json, &InputSettings::default(), b"[1, 2, 3]", &[], &[2, 2], DType::F32);
        assert_eq!(e.unwrap_err().0, "wrong shape: expected nested list [2, 2], found [3]");
        let e = decode_as(InputFormat::Json, &InputSettings::default(), b"[1e39]", &[], &[1], DType::F32);
        assert_eq!(e.unwrap_err().0, "value at element 0 is 1e+39, expected a number within float32");
        let e = decode_as(InputFormat::Json, &InputSettings::default(), b"[70000]", &[], &[1], DType::F16);
        assert_eq!(e.unwrap_err().0, "value at element 0 is 70000, expected a number within float16 (±65504)");
        let e = decode_as(InputFormat::Json, &InputSettings::default(), b"[\"a\"]", &[], &[1], DType::F32);
        assert_eq!(e.unwrap_err().0, "value at element 0 is \"a\", expected a number within float32");
        // A declared dtype wins over the model's: uint8 values for a float32 model.
        let u8s = InputSettings { dtype: Some(DType::U8), ..InputSettings::default() };
        let e = decode_as(InputFormat::Json, &u8s, b"[1.5]", &[], &[1], DType::F32);
        assert_eq!(e.unwrap_err().0, "value at element 0 is 1.5, expected an integer 0..=255");
    }
}
