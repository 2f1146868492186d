//! Turns a micro-batch of consumed records into outputs: decode, one ONNX call, exit rule.

use crate::config::ExitFormat;
use crate::messages::Consumed;
use crate::wire::{
    decode_input, encode_envelope, kafka_ml_value, mark_dead_letter, DecodeError, Decoded, Envelope, ExitRecord,
    ModelInput, Tensor, TierStamp, ENVELOPE_VERSION,
};

use super::exit_rule::{decide, top1};
use super::{Inferred, Route, TierSpec};
use crate::onnx::model::{BatchOutput, InputBatch};

/// A dead letter for `msg`: its original bytes, every header in order (repeated keys too), plus
/// why and where from. An `x-ddnn-error`/`x-ddnn-source` it already carries is replaced, not
/// repeated.
pub fn dead_letter(spec: &TierSpec, msg: &Consumed, reason: &str) -> Inferred {
    let mut headers = msg.headers.clone();
    let source =
        format!("tier={} topic={} partition={} offset={}", spec.name, spec.input_topic, msg.partition, msg.offset);
    mark_dead_letter(&mut headers, reason, Some(source));
    Inferred {
        partition: msg.partition,
        offset: msg.offset,
        route: Route::DeadLetter,
        key: msg.key.clone(),
        headers,
        value: msg.value.clone().unwrap_or_default(),
        origin_ts_ms: None,
    }
}

/// Decoded records ready for the model, and dead letters for the rest.
pub struct Prepared<'a> {
    pub rows: Vec<(&'a Consumed, Decoded)>,
    /// The rows' model inputs, in the model's input type.
    pub input: InputBatch,
    pub rejected: Vec<Inferred>,
}

pub fn prepare<'a>(spec: &TierSpec, batch: &'a [Consumed]) -> Prepared<'a> {
    let width = spec.model_info.input_width();
    let mut out = Prepared {
        rows: Vec::with_capacity(batch.len()),
        input: InputBatch::with_capacity(spec.model_info.input_dtype, batch.len() * width),
        rejected: Vec::new(),
    };
    for msg in batch {
        let Some(value) = msg.value.as_deref() else {
            out.rejected.push(dead_letter(spec, msg, "record has no value"));
            continue;
        };
        let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        let model = ModelInput { shape: &spec.model_info.input_shape, dtype: spec.model_info.input_dtype };
        let decoded = decode_input(spec.format, &spec.settings, value, headers, msg.ts_ms, model)
            .and_then(|d| out.input.push(&d.tensor).map(|()| d).map_err(DecodeError));
        match decoded {
            Ok(decoded) => out.rows.push((msg, decoded)),
            Err(e) => out.rejected.push(dead_letter(spec, msg, &format!("{:?} input: {e}", spec.format))),
        }
    }
    out
}

/// `exit_rule` of a record leaving at the last tier, which exits whatever its rule says.
pub const LAST_TIER: &str = "last tier";

/// Dead-letter reason for a row whose model output holds NaN or infinity.
pub const NOT_FINITE: &str = "model output is not finite (NaN/Inf) for this record";

fn all_finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// Applies the exit rule to the model's output and builds one record per row.
pub fn route(spec: &TierSpec, prepared: Prepared<'_>, output: &BatchOutput, now_ms: i64) -> Vec<Inferred> {
    let classes = spec.model_info.classes;
    let exit = spec.exit();
    let feat_shape = spec.model_info.features_shape.clone().unwrap_or_default();
    let feat_width: usize = feat_shape.iter().product();
    let mut results = prepared.rejected;
    for (i, (msg, decoded)) in prepared.rows.into_iter().enumerate() {
        let probs = &output.probs[i * classes..(i + 1) * classes];
        // NaN/Inf would serialize as `null` in the exit JSON (or travel on in an envelope):
        // such a row is a dead letter, never an exit or a forward.
        if !all_finite(probs) {
            results.push(dead_letter(spec, msg, NOT_FINITE));
            continue;
        }
        let (label, confidence) = top1(probs);
        let key = decoded.key.unwrap_or_else(|| msg.key.clone());
        let headers = decoded.headers.unwrap_or_else(|| msg.headers.clone());
        let mut trace = decoded.trace;
        trace.push(TierStamp {
            tier: spec.name.clone(),
            partition: msg.partition,
            offset: msg.offset,
            received_ms: msg.received_ms,
            inferred_ms: now_ms,
            confidence,
        });
        let features = output.features.as_ref().filter(|_| !spec.is_last);
        let forward =
            features.filter(|_| !decide(exit, probs, spec.is_last)).map(|f| &f[i * feat_width..(i + 1) * feat_width]);
        if forward.is_some_and(|f| !all_finite(f)) {
            results.push(dead_letter(spec, msg, NOT_FINITE));
            continue;
        }
        let (route, value) = match forward {
            Some(f) => {
                let env = Envelope {
                    version: ENVELOPE_VERSION,
                    key: key.clone(),
                    headers: headers.clone(),
                    origin_ts_ms: decoded.origin_ts_ms,
                    tensor: Tensor::from_f32(feat_shape.iter().map(|&d| d as u32).collect(), f),
                    trace,
                };
                (Route::Forward, encode_envelope(&env))
            }
            None if spec.exit_format == ExitFormat::KafkaMl => (Route::Exit, kafka_ml_value(probs)),
            None => {
                let record = ExitRecord {
                    key: key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
                    label: label as u32,
                    confidence,
                    exit_tier: spec.name.clone(),
                    exit_rule: if spec.is_last { LAST_TIER.to_string() } else { exit.to_string() },
                    model: spec.model_id.name.clone(),
                    model_version: spec.model_id.version.clone(),
                    probabilities: probs.to_vec(),
                    trace,
                };
                (Route::Exit, record.to_json())
            }
        };
        results.push(Inferred {
            partition: msg.partition,
            offset: msg.offset,
            route,
            key,
            headers,
            value,
            origin_ts_ms: Some(decoded.origin_ts_ms),
        });
    }
    results
}

/// Null relay: the record goes on unchanged (to the next tier, or out as the "exit").
pub fn relay(spec: &TierSpec, msg: &Consumed) -> Inferred {
    let origin = crate::wire::paper_json_ts(msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    Inferred {
        partition: msg.partition,
        offset: msg.offset,
        route: if spec.is_last { Route::Exit } else { Route::Forward },
        key: msg.key.clone(),
        headers: msg.headers.clone(),
        value: msg.value.clone().unwrap_or_default(),
        origin_ts_ms: origin,
    }
}

#[cfg(test)]
mod tests {
    use crate::wire::{ERROR_HEADER, SOURCE_HEADER};
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::{Batch, Input, InputFormat, ScalerSettings, Scaling, Tier, TopicRef, Workers};
    use crate::onnx::model::ModelInfo;
    use crate::wire::{decode_envelope, ExitRecord};

    /// A tier taking raw-u8 [2] into 2 classes and 2 features.
    fn spec(is_last: bool) -> TierSpec {
        spec_with(is_last, InputFormat::RawU8)
    }

    fn spec_with(is_last: bool, format: InputFormat) -> TierSpec {
        let topic = |t: &str| TopicRef { cluster: "local".into(), topic: t.into(), partitions: 1 };
        let tier = Tier {
            name: "edge".into(),
            model: PathBuf::from("unused.onnx"),
            model_info: ModelInfo {
                input_name: "x".into(),
                input_shape: vec![2],
                input_dtype: crate::wire::DType::F32,
                classes: 2,
                features_shape: Some(vec![2]),
                fixed_batch: None,
            },
            input: Input { topic: topic("in"), format, settings: Default::default() },
            exits: topic("exits"),
            next: (!is_last).then(|| "fog".to_string()),
            exit: crate::config::Exit::max_prob(0.8),
            workers: Workers { min: 1, max: 1 },
            scaling: Scaling::Fixed,
            batch: Batch { max: 8, max_delay: Duration::ZERO },
            scaler: ScalerSettings {
                tick: Duration::from_millis(250),
                target_drain: Duration::from_secs(1),
                stabilization: Duration::from_secs(5),
            },
            group: "ddnn.edge".into(),
            auto_offset_reset: crate::config::OffsetReset::Earliest,
            exit_format: ExitFormat::Json,
            device: crate::config::Device::Cpu,
            model_id: crate::config::ModelId { name: "edge-mlp".into(), version: Some("3".into()) },
            adaptive: None,
        };
        TierSpec::new(&tier, is_last)
    }

    fn consumed(offset: i64) -> Consumed {
        Consumed {
            partition: 0,
            offset,
            key: Some(format!("k{offset}").into_bytes()),
            headers: Default::default(),
            value: Some(vec![offset as u8, 1]),
            ts_ms: 1_000,
            received_ms: 2_000,
            attempts: 0,
            budget: None,
        }
    }

    fn header<'a>(r: &'a Inferred, key: &str) -> Option<&'a [u8]> {
        r.headers.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v.as_slice())
    }

    #[test]
    fn non_finite_probabilities_are_dead_letters_not_exits() {
        let spec = spec(true);
        let batch: Vec<Consumed> = (0..4).map(consumed).collect();
        let prepared = prepare(&spec, &batch);
        assert_eq!(prepared.rows.len(), 4);
        let output = BatchOutput {
            probs: vec![0.1, 0.9, f32::NAN, 0.5, 0.5, f32::INFINITY, 0.3, 0.7],
            features: Some(vec![0.0; 8]),
        };
        let out = route(&spec, prepared, &output, 3_000);
        let routes: Vec<(i64, Route)> = out.iter().map(|r| (r.offset, r.route)).collect();
        assert_eq!(routes, [(0, Route::Exit), (1, Route::DeadLetter), (2, Route::DeadLetter), (3, Route::Exit)]);
        for dead in &out[1..3] {
            assert_eq!(header(dead, ERROR_HEADER), Some(NOT_FINITE.as_bytes()));
            assert_eq!(dead.value, batch[dead.offset as usize].value.clone().unwrap_or_default());
            assert_eq!(dead.origin_ts_ms, None);
        }
        for exit in [&out[0], &out[3]] {
            let record = ExitRecord::from_json(&exit.value).unwrap_or_else(|e| panic!("exit JSON: {e}"));
            assert!(record.confidence.is_finite());
            assert!(!String::from_utf8_lossy(&exit.value).contains("null"));
        }
    }

    #[test]
    fn exit_records_name_what_decided() {
        for (is_last, probs, decided) in
            [(false, vec![0.05, 0.95], "max-prob >= 0.8"), (true, vec![0.5, 0.5], LAST_TIER)]
        {
            let spec = spec(is_last);
            let batch = vec![consumed(0)];
            let prepared = prepare(&spec, &batch);
            let output = BatchOutput { probs, features: Some(vec![0.0; 2]) };
            let out = route(&spec, prepared, &output, 3_000);
            assert_eq!(out[0].route, Route::Exit);
            let record = ExitRecord::from_json(&out[0].value).unwrap_or_else(|e| panic!("exit JSON: {e}"));
            assert_eq!(record.exit_rule, decided);
        }
    }

    #[test]
    fn json_exits_name_the_tiers_model() {
        let spec = spec(true);
        let batch = vec![consumed(0)];
        let out = route(&spec, prepare(&spec, &batch), &BatchOutput { probs: vec![0.5, 0.5], features: None }, 3_000);
        let record = ExitRecord::from_json(&out[0].value).unwrap_or_else(|e| panic!("exit JSON: {e}"));
        assert_eq!((record.model.as_str(), record.model_version.as_deref()), ("edge-mlp", Some("3")));
    }

    #[test]
    fn kafka_ml_exits_are_the_values_alone_with_key_and_headers_kept() {
        let mut spec = spec(false);
        spec.exit_format = ExitFormat::KafkaMl;
        let headers = vec![h("z", "1"), h("a", "2")];
        let batch: Vec<Consumed> = (0..2).map(|o| Consumed { headers: headers.clone(), ..consumed(o) }).collect();
        // Row 0 exits here (0.9 >= 0.8); row 1 goes on as an envelope, whatever the exit format.
        let output = BatchOutput { probs: vec![0.9, 0.1, 0.5, 0.5], features: Some(vec![1.0, 2.0, 3.0, 4.0]) };
        let out = route(&spec, prepare(&spec, &batch), &output, 3_000);
        assert_eq!((out[0].route, out[1].route), (Route::Exit, Route::Forward));
        assert_eq!(String::from_utf8_lossy(&out[0].value), r#"{"values": [0.8999999761581421, 0.10000000149011612]}"#);
        assert_eq!((out[0].key.as_deref(), &out[0].headers), (Some(&b"k0"[..]), &headers));
        assert!(decode_envelope(&out[1].value).is_ok());
    }

    #[test]
    fn non_finite_features_are_dead_letters_when_forwarded() {
        let spec = spec(false);
        let batch: Vec<Consumed> = (0..3).map(consumed).collect();
        let prepared = prepare(&spec, &batch);
        // Row 0 forwards finite features; row 1 would forward NaN; row 2 exits here, so its
        // (infinite) features are never sent and do not matter.
        let output = BatchOutput {
            probs: vec![0.5, 0.5, 0.6, 0.4, 0.05, 0.95],
            features: Some(vec![1.0, 2.0, f32::NAN, 0.0, f32::NEG_INFINITY, 0.0]),
        };
        let out = route(&spec, prepared, &output, 3_000);
        let routes: Vec<(i64, Route)> = out.iter().map(|r| (r.offset, r.route)).collect();
        assert_eq!(routes, [(0, Route::Forward), (1, Route::DeadLetter), (2, Route::Exit)]);
        assert_eq!(header(&out[1], ERROR_HEADER), Some(NOT_FINITE.as_bytes()));
        let env = decode_envelope(&out[0].value).unwrap_or_else(|e| panic!("envelope: {e}"));
        let mut features = Vec::new();
        env.tensor.extend_f32(&mut features);
        assert_eq!(features, [1.0, 2.0]);
    }

    fn h(k: &str, v: &str) -> (String, Vec<u8>) {
        (k.to_string(), v.as_bytes().to_vec())
    }

    #[test]
    fn dead_letters_keep_repeated_headers_and_replace_their_own() {
        let spec = spec(true);
        let mut msg = consumed(5);
        msg.headers = vec![h("b", "1"), h(ERROR_HEADER, "old"), h("a", "x"), h("b", "2"), h(SOURCE_HEADER, "old")];
        let dead = dead_letter(&spec, &msg, "why");
        assert_eq!(
            dead.headers,
            [
                h("b", "1"),
                h("a", "x"),
                h("b", "2"),
                h(ERROR_HEADER, "why"),
                h(SOURCE_HEADER, "tier=edge topic=in partition=0 offset=5"),
            ]
        );
        // A record without a value is dead-lettered by prepare() the same way.
        msg.value = None;
        let prepared = prepare(&spec, std::slice::from_ref(&msg));
        assert_eq!(prepared.rejected[0].headers[..3], [h("b", "1"), h("a", "x"), h("b", "2")]);
        assert_eq!(header(&prepared.rejected[0], ERROR_HEADER), Some(&b"record has no value"[..]));
    }

    #[test]
    fn exits_and_forwards_keep_every_header_in_order() {
        let headers = vec![h("z", "1"), h("a", "2"), h("z", "3")];
        let batch: Vec<Consumed> = (0..2).map(|o| Consumed { headers: headers.clone(), ..consumed(o) }).collect();
        let spec = spec(false);
        let output = BatchOutput { probs: vec![0.9, 0.1, 0.5, 0.5], features: Some(vec![1.0, 2.0, 3.0, 4.0]) };
        let out = route(&spec, prepare(&spec, &batch), &output, 3_000);
        assert_eq!((out[0].route, out[1].route), (Route::Exit, Route::Forward));
        assert_eq!(out[0].headers, headers);
        assert_eq!(out[1].headers, headers);
        let env = decode_envelope(&out[1].value).unwrap();
        assert_eq!(env.headers, headers);
        // The next tier carries the envelope's headers on, repeats and order included.
        let next = Consumed { value: Some(out[1].value.clone()), headers: Vec::new(), ..consumed(0) };
        let mut last = spec_with(true, InputFormat::Envelope);
        last.name = "fog".into();
        let out = route(&last, prepare(&last, &[next]), &BatchOutput { probs: vec![0.4, 0.6], features: None }, 4_000);
        assert_eq!((out[0].route, &out[0].headers), (Route::Exit, &headers));
        // The null relay too.
        assert_eq!(relay(&spec, &batch[0]).headers, headers);
    }

    #[test]
    fn records_that_do_not_fit_the_models_input_type_are_dead_letters() {
        // A uint8 model fed float32 envelopes: a dtype mismatch, named.
        let mut spec = spec_with(true, InputFormat::Envelope);
        spec.model_info.input_dtype = crate::wire::DType::U8;
        let env = Envelope {
            version: ENVELOPE_VERSION,
            key: None,
            headers: Vec::new(),
            origin_ts_ms: 0,
            tensor: Tensor::from_f32(vec![2], &[1.0, 2.0]),
            trace: Vec::new(),
        };
        let u8_env = Envelope {
            tensor: Tensor { dtype: crate::wire::DType::U8, shape: vec![2], data: vec![1, 2] },
            ..env.clone()
        };
        let batch = [
            Consumed { value: Some(encode_envelope(&env)), ..consumed(0) },
            Consumed { value: Some(encode_envelope(&u8_env)), ..consumed(1) },
        ];
        let prepared = prepare(&spec, &batch);
        assert_eq!(prepared.rows.len(), 1);
        assert_eq!(prepared.input, InputBatch::U8(vec![1, 2]));
        assert_eq!(
            header(&prepared.rejected[0], ERROR_HEADER),
            Some(&b"Envelope input: dtype mismatch: the record carries float32 values, the model takes uint8"[..])
        );
        // A float16 model takes them, rounded.
        spec.model_info.input_dtype = crate::wire::DType::F16;
        let prepared = prepare(&spec, &batch);
        let want: Vec<half::f16> = [1.0f32, 2.0, 1.0, 2.0].iter().map(|&v| half::f16::from_f32(v)).collect();
        assert_eq!((prepared.rows.len(), prepared.input), (2, InputBatch::F16(want)));
    }
}
