//! The exit record: what leaves the continuum for each input, in the tier's `exit_format`.

use serde::{Deserialize, Serialize};

use super::TierStamp;

/// JSON value of an exit record; the Kafka record key is the input key and its headers are the
/// input's headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Input key as text (lossy UTF-8; the Kafka record key carries the exact bytes).
    pub key: String,
    pub label: u32,
    pub confidence: f32,
    pub exit_tier: String,
    /// What decided the exit: the tier's rule as it held (`entropy <= 0.1`), or `last tier`.
    /// Absent in records of older nodes.
    #[serde(default)]
    pub exit_rule: String,
    /// The exit tier's model: `model_name` from the topology, else from the ONNX file.
    /// Absent (empty) in records of older nodes.
    #[serde(default)]
    pub model: String,
    /// The exit tier's model version, `null` when neither the topology nor the file gives one.
    #[serde(default)]
    pub model_version: Option<String>,
    pub probabilities: Vec<f32>,
    pub trace: Vec<TierStamp>,
}

impl ExitRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The value a Kafka-ML inference pod writes for one prediction, byte for byte.
///
/// Kafka-ML (github.com/ertis-research/kafka-ml, `model_inference/tensorflow/inference.py` and
/// `model_inference/pytorch/inference.py`) does
/// `json.dumps({'values': prediction_output.tolist()[0]}).encode()`: the model's output row
/// (float32, widened to Python floats by `tolist`) under the single key `values`, with
/// `json.dumps`'s default separators `", "` and `": "`. Its readers
/// (`backend/automl/websockets.py`) take `json.loads(value)["values"]` and its argmax.
pub fn kafka_ml_value(values: &[f32]) -> Vec<u8> {
    let mut out = String::with_capacity(12 + values.len() * 24);
    out.push_str("{\"values\": [");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&python_float_repr(f64::from(*v)));
    }
    out.push_str("]}");
    out.into_bytes()
}

/// `repr(float)` as CPython prints it (and `json.dumps` with it): the shortest digits that
/// read back to the same double, in fixed notation when the decimal exponent is in -4..16
/// (with `.0` on whole numbers), else as `d.ddde±XX` with at least two exponent digits.
/// Non-finite values print as `json.dumps` does (`NaN`, `Infinity`, `-Infinity`); exits never
/// carry them (such rows are dead-lettered).
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as CPython's repr (both pick the
    // shortest string that parses back to `x`): `-1.2345e-5`, `0e0`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected strings are CPython 3.11's `repr(float(x))` / `repr(float(np.float32(x)))`.
    #[test]
    fn floats_print_as_python_repr() {
        let cases: [(f64, &str); 22] = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-3.25e-10, "-3.25e-10"),
            (1e-100, "1e-100"),
            (5e-324, "5e-324"),
            (123456.0, "123456.0"),
            (1e15, "1000000000000000.0"),
            (1.2345e15, "1234500000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::from(0.1f32), "0.10000000149011612"),
            (f64::from(0.99999f32), "0.9999899864196777"),
            (f64::from(1.0e-6f32), "9.999999974752427e-07"),
            (f64::from(3.4028235e38f32), "3.4028234663852886e+38"),
        ];
        for (x, python) in cases {
            assert_eq!(python_float_repr(x), python, "{x:e}");
        }
        assert_eq!(python_float_repr(f64::NAN), "NaN");
        assert_eq!(python_float_repr(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn kafka_ml_values_print_as_json_dumps() {
        // json.dumps({'values': np.array([0.25, 0.1, 1e-06], np.float32).tolist()})
        assert_eq!(
            String::from_utf8(kafka_ml_value(&[0.25, 0.1, 1.0e-6])).unwrap_or_default(),
            r#"{"values": [0.25, 0.10000000149011612, 9.999999974752427e-07]}"#
        );
        assert_eq!(String::from_utf8(kafka_ml_value(&[])).unwrap_or_default(), r#"{"values": []}"#);
    }

    #[test]
    fn old_exit_records_without_model_still_read() {
        let old = br#"{"key":"k","label":1,"confidence":0.9,"exit_tier":"edge","probabilities":[0.1,0.9],"trace":[]}"#;
        let r = ExitRecord::from_json(old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.model.as_str(), r.model_version.as_deref(), r.exit_rule.as_str()), ("", None, ""));
    }
}
