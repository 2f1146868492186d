//! First-tier input formats (`paper-json`, `raw-u8`) and the envelope as tier input.

use crate::config::InputFormat;

use super::{decode_envelope, DType, DecodeError, Tensor, TierStamp};

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

/// Decodes one record's value for a model whose input is `model_shape` (no batch dimension).
pub fn decode_input<'a>(
    format: InputFormat,
    value: &[u8],
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    record_ts_ms: i64,
    model_shape: &[usize],
) -> Result<Decoded, DecodeError> {
    let width: usize = model_shape.iter().product();
    match format {
        InputFormat::PaperJson => {
            let tensor = parse_paper_json(value, model_shape)?;
            Ok(Decoded {
                tensor,
                origin_ts_ms: paper_json_ts(headers).unwrap_or(record_ts_ms),
                headers: None,
                key: None,
                trace: Vec::new(),
            })
        }
        InputFormat::RawU8 => {
            if value.len() != width {
                return Err(DecodeError::new(format!("raw-u8 input must be {width} bytes, got {}", value.len())));
            }
            Ok(Decoded {
                tensor: Tensor { dtype: DType::U8, shape: to_u32(model_shape), data: value.to_vec() },
                origin_ts_ms: paper_json_ts(headers).unwrap_or(record_ts_ms),
                headers: None,
                key: None,
                trace: Vec::new(),
            })
        }
        InputFormat::Envelope => {
            let env = decode_envelope(value)?;
            if env.tensor.elements() != width {
                return Err(DecodeError::new(format!(
                    "envelope tensor {:?} has {} values, the model takes {width} ({model_shape:?})",
                    env.tensor.shape,
                    env.tensor.elements()
                )));
            }
            Ok(Decoded {
                tensor: env.tensor,
                origin_ts_ms: env.origin_ts_ms,
                headers: Some(env.headers),
                key: Some(env.key),
                trace: env.trace,
            })
        }
    }
}

fn to_u32(shape: &[usize]) -> Vec<u32> {
    shape.iter().map(|&d| d as u32).collect()
}

fn parse_paper_json(value: &[u8], model_shape: &[usize]) -> Result<Tensor, DecodeError> {
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
    let mut data = Vec::with_capacity(shape.iter().product());
    flatten(&json, 0, &shape, &mut data)?;
    Ok(Tensor { dtype: DType::U8, shape: to_u32(&shape), data })
}

fn flatten(v: &serde_json::Value, depth: usize, shape: &[usize], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    if depth == shape.len() {
        let px = v
            .as_u64()
            .filter(|&n| n <= 255)
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=255.0).contains(f)).map(|f| f as u64))
            .ok_or_else(|| {
                DecodeError::new(format!("pixel at element {} is {v}, expected an integer 0..=255", out.len()))
            })?;
        out.push(px as u8);
        return Ok(());
    }
    match v {
        serde_json::Value::Array(items) if items.len() == shape[depth] => {
            items.iter().try_for_each(|item| flatten(item, depth + 1, shape, out))
        }
        _ => Err(DecodeError::new(format!(
            "ragged nested list: expected {} items at depth {depth} near element {}",
            shape[depth],
            out.len()
        ))),
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
        decode_input(format, value, h.iter().map(|(k, v)| (k.as_str(), v.as_slice())), 7, &SHAPE)
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
}
