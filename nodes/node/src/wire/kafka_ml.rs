//! Kafka-ML's RAW input format, with its `data_type` / `data_reshape` semantics.
//!
//! Read from Kafka-ML's own source (github.com/ertis-research/kafka-ml, commit 5b4dc79):
//! - `examples/MNIST_RAW_format/mnist_dataset_inference_example.py`: an inference client sends
//!   `producer.send(INPUT_TOPIC, x_test[i].tobytes())`: the value is numpy's `tobytes()` of one
//!   sample (C order, the machine's byte order: little-endian on x86 and ARM), no key, no headers.
//!   `datasources/raw_sink.py` (`RawSink.send`) sends `data.tobytes()` the same way.
//! - `model_inference/tensorflow/decoders.py` (`RawDecoder`): `data_type` goes through
//!   `string_to_numpy_type` (`model_inference/tensorflow/utils.py`: half, float, float32,
//!   double, int64, int32, int16, int8, uint16, uint8, bool; `float` is numpy's `np.float`, i.e.
//!   float64), and `data_reshape` is a string of integers separated by spaces
//!   (`np.fromstring(reshape, dtype=int, sep=' ')`, e.g. `"28 28"`).
//! - `model_inference/tensorflow/utils.py` and `model_inference/pytorch/utils.py`
//!   (`decode_raw`): `np.frombuffer(x, dtype=data_type)`, then `reshape(1, *data_reshape)`: the
//!   record must hold exactly `product(data_reshape)` values of `data_type`. The PyTorch decoder
//!   hands the name to numpy directly, which also knows `float16` and `float64`; both are
//!   accepted here.
//! - The inference pod then calls the model (`model.predict`), which casts the values to the
//!   model's input type; we cast the same way (see [`RawType::feeds`]).
//!
//! `string` is refused: it is not a tensor a model can take.

use super::{DType, DecodeError, Tensor};

/// A Kafka-ML `data_type`: numpy's element types that a model input can be built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawType {
    Float16,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Bool,
}

impl RawType {
    /// Kafka-ML's names (and numpy's), each with its type.
    const NAMES: [(&'static str, RawType); 15] = [
        ("half", RawType::Float16),
        ("float16", RawType::Float16),
        ("float32", RawType::Float32),
        ("float", RawType::Float64),
        ("double", RawType::Float64),
        ("float64", RawType::Float64),
        ("int8", RawType::Int8),
        ("int16", RawType::Int16),
        ("int32", RawType::Int32),
        ("int64", RawType::Int64),
        ("uint8", RawType::Uint8),
        ("uint16", RawType::Uint16),
        ("bool", RawType::Bool),
        // numpy's class name for bool (what Kafka-ML's sink writes via `type(x).__name__`).
        ("bool_", RawType::Bool),
        ("float_", RawType::Float64),
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
    }

    /// Every accepted name, for error messages.
    pub fn known() -> String {
        Self::NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }

    /// numpy's canonical name.
    pub fn name(self) -> &'static str {
        match self {
            RawType::Float16 => "float16",
            RawType::Float32 => "float32",
            RawType::Float64 => "float64",
            RawType::Int8 => "int8",
            RawType::Int16 => "int16",
            RawType::Int32 => "int32",
            RawType::Int64 => "int64",
            RawType::Uint8 => "uint8",
            RawType::Uint16 => "uint16",
            RawType::Bool => "bool",
        }
    }

    /// Bytes per value (numpy's itemsize).
    pub fn size(self) -> usize {
        match self {
            RawType::Int8 | RawType::Uint8 | RawType::Bool => 1,
            RawType::Float16 | RawType::Int16 | RawType::Uint16 => 2,
            RawType::Float32 | RawType::Int32 => 4,
            RawType::Float64 | RawType::Int64 => 8,
        }
    }

    /// The tensor type that carries these bytes unchanged, when there is one.
    fn dtype(self) -> Option<DType> {
        match self {
            RawType::Uint8 => Some(DType::U8),
            RawType::Float16 => Some(DType::F16),
            RawType::Float32 => Some(DType::F32),
            _ => None,
        }
    }

    /// Whether values of this type can be cast to a model input of type `model`: a float model
    /// takes any number (the model's own cast, as `model.predict` does in Kafka-ML); a uint8
    /// model only takes values that are uint8 already (a cast would wrap or truncate).
    pub fn feeds(self, model: DType) -> bool {
        match model {
            DType::F32 | DType::F16 => true,
            DType::U8 => matches!(self, RawType::Uint8 | RawType::Bool),
        }
    }

    /// One little-endian value as f64 (exact for every type but int64 beyond 2^53, which a
    /// float model could not hold exactly anyway).
    fn value(self, b: &[u8]) -> f64 {
        match self {
            RawType::Float16 => f64::from(half::f16::from_le_bytes([b[0], b[1]])),
            RawType::Float32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            RawType::Float64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            RawType::Int8 => f64::from(b[0] as i8),
            RawType::Int16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            RawType::Int32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            RawType::Int64 => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64,
            RawType::Uint8 => f64::from(b[0]),
            RawType::Uint16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            // numpy reads any non-zero byte of a bool array as True.
            RawType::Bool => f64::from(u8::from(b[0] != 0)),
        }
    }
}

/// `input = { format = "kafka-ml", data_type, data_reshape }`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMlRaw {
    pub data_type: RawType,
    /// The sample's shape without Kafka-ML's leading 1 (the batch).
    pub data_reshape: Vec<usize>,
}

impl KafkaMlRaw {
    pub fn values(&self) -> usize {
        self.data_reshape.iter().product()
    }

    /// `"28 28"`: the shape as Kafka-ML writes it.
    pub fn reshape_text(&self) -> String {
        self.data_reshape.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    }
}

/// Parses a `data_reshape` string as Kafka-ML does (`np.fromstring(s, dtype=int, sep=' ')`):
/// integers separated by whitespace. Every dimension must be at least 1 (numpy would also take
/// one `-1`; the model's shape already fixes every size, so there is nothing to infer).
pub fn parse_reshape(text: &str) -> Result<Vec<usize>, String> {
    let dims: Vec<usize> =
        text.split_whitespace().map(|d| d.parse::<usize>().ok().filter(|&d| d > 0)).collect::<Option<_>>().ok_or_else(
            || format!("{text:?} is not a list of positive integers separated by spaces, e.g. \"28 28\""),
        )?;
    if dims.is_empty() {
        return Err(format!("{text:?} has no dimension; e.g. \"28 28\""));
    }
    Ok(dims)
}

/// Decodes one record as Kafka-ML's inference pod would (`np.frombuffer` + reshape), into a
/// tensor of the model's shape. Values of uint8, float16 and float32 keep their bytes (the batch
/// converts them to the model's type); other types are cast to `model` here.
pub fn decode(value: &[u8], raw: &KafkaMlRaw, model: DType, model_shape: &[usize]) -> Result<Tensor, DecodeError> {
    let size = raw.data_type.size();
    let want = raw.values() * size;
    if value.len() != want {
        return Err(DecodeError::new(format!(
            "expected {want} bytes ({} {} values for data_reshape {:?}), got {}",
            raw.values(),
            raw.data_type.name(),
            raw.reshape_text(),
            value.len()
        )));
    }
    let shape = model_shape.iter().map(|&d| d as u32).collect();
    if let Some(dtype) = raw.data_type.dtype() {
        return Ok(Tensor { dtype, shape, data: value.to_vec() });
    }
    let values = value.chunks_exact(size).map(|b| raw.data_type.value(b));
    let data = match model {
        DType::F32 => values.flat_map(|v| (v as f32).to_le_bytes()).collect(),
        DType::F16 => values.flat_map(|v| half::f16::from_f64(v).to_le_bytes()).collect(),
        // Only bool reaches here (validation admits uint8 and bool for a uint8 model).
        DType::U8 => values.map(|v| v as u8).collect(),
    };
    Ok(Tensor { dtype: model, shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(t: &str, reshape: &str) -> KafkaMlRaw {
        KafkaMlRaw { data_type: RawType::parse(t).unwrap(), data_reshape: parse_reshape(reshape).unwrap() }
    }

    #[test]
    fn names_are_kafka_mls_and_numpys() {
        assert_eq!(RawType::parse("half"), Some(RawType::Float16));
        assert_eq!(RawType::parse("float"), Some(RawType::Float64), "np.float is Python's float: float64");
        assert_eq!(RawType::parse("double"), Some(RawType::Float64));
        assert_eq!(RawType::parse("bool_"), Some(RawType::Bool));
        assert_eq!(RawType::parse("string"), None);
        assert_eq!(RawType::parse("uint32"), None, "not in Kafka-ML's list");
    }

    #[test]
    fn reshape_strings_parse_like_numpy_fromstring() {
        assert_eq!(parse_reshape("28 28").unwrap(), [28, 28]);
        assert_eq!(parse_reshape(" 1  28 28 ").unwrap(), [1, 28, 28]);
        assert_eq!(
            parse_reshape("28,28").unwrap_err(),
            "\"28,28\" is not a list of positive integers separated by spaces, e.g. \"28 28\""
        );
        assert!(parse_reshape("-1 28").is_err());
        assert_eq!(parse_reshape("").unwrap_err(), "\"\" has no dimension; e.g. \"28 28\"");
    }

    #[test]
    fn bytes_are_numpy_tobytes_little_endian() {
        // np.array([[1, 2], [3, 4]], dtype=np.int16).tobytes()
        let bytes = [1, 0, 2, 0, 3, 0, 0xff, 0xff];
        let t = decode(&bytes, &raw("int16", "2 2"), DType::F32, &[4]).unwrap();
        let mut out = Vec::new();
        t.extend_f32(&mut out);
        assert_eq!(out, [1.0, 2.0, 3.0, -1.0]);
        assert_eq!(t.shape, [4], "the model's shape, whatever data_reshape says");
        // float64 into a float16 model is cast.
        let bytes: Vec<u8> = [0.5f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = decode(&bytes, &raw("double", "2"), DType::F16, &[2]).unwrap();
        assert_eq!(t.dtype, DType::F16);
        assert_eq!(t.data, [0x00, 0x38, 0x00, 0x40]);
        // uint8 and float32 keep their bytes.
        let t = decode(&[7, 8], &raw("uint8", "2"), DType::F32, &[1, 2]).unwrap();
        assert_eq!((t.dtype, t.data.as_slice()), (DType::U8, &[7u8, 8][..]));
        // bool: any non-zero byte is true.
        let t = decode(&[0, 5], &raw("bool", "2"), DType::U8, &[2]).unwrap();
        assert_eq!(t.data, [0, 1]);
    }

    #[test]
    fn a_wrong_byte_count_names_both_sizes() {
        let e = decode(&[0; 783], &raw("uint8", "28 28"), DType::F32, &[1, 28, 28]).unwrap_err();
        assert_eq!(e.0, "expected 784 bytes (784 uint8 values for data_reshape \"28 28\"), got 783");
        let e = decode(&[0; 784], &raw("float32", "28 28"), DType::F32, &[1, 28, 28]).unwrap_err();
        assert_eq!(e.0, "expected 3136 bytes (784 float32 values for data_reshape \"28 28\"), got 784");
    }

    #[test]
    fn only_uint8_and_bool_feed_a_uint8_model() {
        assert!(RawType::Uint8.feeds(DType::U8) && RawType::Bool.feeds(DType::U8));
        assert!(!RawType::Float32.feeds(DType::U8) && !RawType::Int16.feeds(DType::U8));
        assert!(RawType::Int64.feeds(DType::F32) && RawType::Float64.feeds(DType::F16));
    }
}
