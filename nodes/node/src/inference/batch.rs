//! Turns a micro-batch of consumed records into outputs: decode, one ONNX call, exit rule.

use std::collections::BTreeMap;

use crate::messages::Consumed;
use crate::wire::{
    decode_input, encode_envelope, Decoded, Envelope, ExitRecord, Tensor, TierStamp, ENVELOPE_VERSION, ERROR_HEADER,
    SOURCE_HEADER,
};

use super::exit_rule::{exits, top1};
use super::model::BatchOutput;
use super::{Inferred, Route, TierSpec};

/// A dead letter for `msg`: its original bytes, its headers, plus why and where from.
pub fn dead_letter(spec: &TierSpec, msg: &Consumed, reason: &str) -> Inferred {
    let mut headers = msg.headers.clone();
    headers.insert(ERROR_HEADER.to_string(), reason.as_bytes().to_vec());
    headers.insert(
        SOURCE_HEADER.to_string(),
        format!("tier={} topic={} partition={} offset={}", spec.name, spec.input_topic, msg.partition, msg.offset)
            .into_bytes(),
    );
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
    pub input: Vec<f32>,
    pub rejected: Vec<Inferred>,
}

pub fn prepare<'a>(spec: &TierSpec, batch: &'a [Consumed]) -> Prepared<'a> {
    let width = spec.model_info.input_width();
    let mut out = Prepared {
        rows: Vec::with_capacity(batch.len()),
        input: Vec::with_capacity(batch.len() * width),
        rejected: Vec::new(),
    };
    for msg in batch {
        let Some(value) = msg.value.as_deref() else {
            out.rejected.push(dead_letter(spec, msg, "record has no value"));
            continue;
        };
        let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        match decode_input(spec.format, value, headers, msg.ts_ms, &spec.model_info.input_shape) {
            Ok(decoded) => {
                decoded.tensor.extend_f32(&mut out.input);
                out.rows.push((msg, decoded));
            }
            Err(e) => out.rejected.push(dead_letter(spec, msg, &format!("{:?} input: {e}", spec.format))),
        }
    }
    out
}

/// Applies the exit rule to the model's output and builds one record per row.
pub fn route(spec: &TierSpec, prepared: Prepared<'_>, output: &BatchOutput, now_ms: i64) -> Vec<Inferred> {
    let classes = spec.model_info.classes;
    let threshold = spec.threshold();
    let feat_shape = spec.model_info.features_shape.clone().unwrap_or_default();
    let feat_width: usize = feat_shape.iter().product();
    let mut results = prepared.rejected;
    for (i, (msg, decoded)) in prepared.rows.into_iter().enumerate() {
        let probs = &output.probs[i * classes..(i + 1) * classes];
        let (label, confidence) = top1(probs);
        let key = decoded.key.unwrap_or_else(|| msg.key.clone());
        let headers: BTreeMap<String, Vec<u8>> = match decoded.headers {
            Some(h) => h.into_iter().collect(),
            None => msg.headers.clone(),
        };
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
        let (route, value) = match features {
            Some(f) if !exits(confidence, threshold, spec.is_last) => {
                let env = Envelope {
                    version: ENVELOPE_VERSION,
                    key: key.clone(),
                    headers: headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    origin_ts_ms: decoded.origin_ts_ms,
                    tensor: Tensor::from_f32(
                        feat_shape.iter().map(|&d| d as u32).collect(),
                        &f[i * feat_width..(i + 1) * feat_width],
                    ),
                    trace,
                };
                (Route::Forward, encode_envelope(&env))
            }
            _ => {
                let record = ExitRecord {
                    key: key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
                    label: label as u32,
                    confidence,
                    exit_tier: spec.name.clone(),
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
