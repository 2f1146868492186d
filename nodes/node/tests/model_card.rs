#![allow(clippy::unwrap_used)]
//! The model card (models/README.md, written by models/card.py with numpy) against the node's
//! own exit-rule code: for every rule and threshold the card lists, the exits per tier and the
//! overall accuracy on the held-out digits, recomputed with `exit_rule::decide` on the tiers'
//! outputs from ONNX Runtime, print exactly as the card says.

use std::path::{Path, PathBuf};

use ddnn::client::Digits;
use ddnn::config::{Exit, ExitRule};
use ddnn::inference::exit_rule::decide;
use ddnn::inference::model::Model;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// One rule row of the card: the rule and its four figures as printed.
type Row = (Exit, Vec<String>);

/// `| \`entropy <= 0.1\` | 86.1% | 4.2% | 9.7% | 93.00% |` -> (exit, the four figures as printed).
fn rule_row(line: &str) -> Option<Row> {
    let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
    let rule = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
    let mut words = rule.split(' ');
    let (name, _cmp, threshold) = (words.next()?, words.next()?, words.next()?);
    let exit = Exit { rule: ExitRule::parse(name)?, threshold: threshold.parse().ok()? };
    Some((exit, cells[1..].iter().map(|c| c.to_string()).collect()))
}

/// The card's rule rows, per model set (`mnist`, `mnist-cnn`).
fn card() -> Vec<(String, Vec<Row>)> {
    let doc = std::fs::read_to_string(root().join("models/README.md")).unwrap();
    let (_, card) = doc.split_once("<!-- card:begin -->").unwrap();
    let (card, _) = card.split_once("<!-- card:end -->").unwrap();
    let mut out: Vec<(String, Vec<Row>)> = Vec::new();
    for line in card.lines() {
        if let Some(set) = line.strip_prefix("### `models/").and_then(|s| s.strip_suffix('`')) {
            out.push((set.to_string(), Vec::new()));
        } else if let (Some(row), Some((_, rows))) = (rule_row(line), out.last_mut()) {
            rows.push(row);
        }
    }
    out
}

/// Every tier's probabilities for every digit (each tier fed the previous tier's features).
fn tier_probs(set: &str, d: &Digits) -> Vec<[Vec<f32>; 3]> {
    let dir = root().join("models").join(set);
    let mut tiers: Vec<Model> =
        ["edge", "fog", "cloud"].iter().map(|t| Model::load(&dir.join(format!("{t}.onnx"))).unwrap()).collect();
    d.pixels
        .iter()
        .map(|px| {
            let mut x: Vec<f32> = px.iter().map(|&p| f32::from(p)).collect();
            let mut probs: [Vec<f32>; 3] = Default::default();
            for (i, m) in tiers.iter_mut().enumerate() {
                let out = m.run(&x, 1).unwrap();
                probs[i] = out.probs;
                x = out.features.unwrap_or_default();
            }
            probs
        })
        .collect()
}

#[test]
fn every_rule_in_the_card_matches_the_node_exit_rule() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        std::env::set_var("ORT_DYLIB_PATH", root().join(".ddnn/ort/libonnxruntime.so.1.31.1"));
    }
    let d = Digits::load(&root().join("models/heldout.bin")).unwrap();
    let card = card();
    assert_eq!(card.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["mnist", "mnist-cnn"]);
    for (set, rows) in card {
        let rules: std::collections::BTreeSet<&str> = rows.iter().map(|(e, _)| e.rule.name()).collect();
        assert_eq!(rules.len(), 3, "{set}: the card covers every rule");
        let probs = tier_probs(&set, &d);
        let n = d.labels.len() as f64;
        for (exit, printed) in rows {
            let mut at = [0usize; 3];
            let mut correct = 0usize;
            for (p, &label) in probs.iter().zip(&d.labels) {
                let tier = (0..3).find(|&i| decide(exit, &p[i], i == 2)).unwrap();
                at[tier] += 1;
                let (predicted, _) = ddnn::inference::exit_rule::top1(&p[tier]);
                correct += usize::from(predicted == usize::from(label));
            }
            // As card.py prints them: 100 * (count / n), one and two decimals.
            let pct = |k: usize| 100.0 * (k as f64 / n);
            let ours = vec![
                format!("{:.1}%", pct(at[0])),
                format!("{:.1}%", pct(at[1])),
                format!("{:.1}%", pct(at[2])),
                format!("{:.2}%", pct(correct)),
            ];
            assert_eq!(ours, printed, "{set}: {exit}");
        }
    }
}
