#![allow(clippy::unwrap_used)]
//! The model card (models/README.md) and the calibration tables (models/<set>/calibration.json),
//! both written by models/card.py with numpy, against the node's own exit-rule code: every
//! figure is recomputed with `exit_rule::decide` on the tiers' outputs from ONNX Runtime.
//!
//! - card: for every rule and threshold the card lists, the exits per tier and the overall
//!   accuracy on the held-out digits print exactly as the card says;
//! - calibration: for every tier but the last, rule and threshold, the exit fraction, the
//!   end-to-end accuracy and the accuracy of the exiting digits match the file (up to its
//!   rounding to 4 decimals).
//!
//! The tiers run on batches of 32 digits (as card.py runs them), split over a few threads, and
//! once for both tests (the resnet set costs ~17 ms a digit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ddnn::client::Digits;
use ddnn::config::{Exit, ExitRule};
use ddnn::inference::exit_rule::{decide, top1};
use ddnn::inference::model::Model;
use serde::Deserialize;

const SETS: [&str; 3] = ["mnist", "mnist-cnn", "mnist-resnet"];
const TIERS: [&str; 3] = ["edge", "fog", "cloud"];
const BATCH: usize = 32;

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

/// The card's rule rows, per model set (`mnist`, `mnist-cnn`, ...).
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

/// Every tier's probabilities for one digit.
type Probs = [Vec<f32>; 3];

/// Every tier's probabilities for the digits `batches` (batch indices) covers, each tier fed the
/// previous tier's features.
fn run_batches(set: &str, d: &Digits, batches: std::ops::Range<usize>) -> Vec<Probs> {
    let dir = root().join("models").join(set);
    let mut tiers: Vec<Model> = TIERS.iter().map(|t| Model::load(&dir.join(format!("{t}.onnx"))).unwrap()).collect();
    let mut out = Vec::new();
    for b in batches {
        let digits = &d.pixels[b * BATCH..((b + 1) * BATCH).min(d.pixels.len())];
        let rows = digits.len();
        let mut x: Vec<f32> = digits.iter().flatten().map(|&p| f32::from(p)).collect();
        let mut probs: Vec<Probs> = vec![Default::default(); rows];
        for (i, m) in tiers.iter_mut().enumerate() {
            let batch = m.run(&x, rows).unwrap();
            let classes = batch.probs.len() / rows;
            for (row, p) in probs.iter_mut().zip(batch.probs.chunks(classes)) {
                row[i] = p.to_vec();
            }
            x = batch.features.unwrap_or_default();
        }
        out.extend(probs);
    }
    out
}

/// Every set's probabilities for every held-out digit, computed once for all tests.
fn tier_probs() -> &'static (Digits, BTreeMap<&'static str, Vec<Probs>>) {
    static PROBS: OnceLock<(Digits, BTreeMap<&'static str, Vec<Probs>>)> = OnceLock::new();
    PROBS.get_or_init(|| {
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            std::env::set_var("ORT_DYLIB_PATH", root().join(".ddnn/ort/libonnxruntime.so.1.31.1"));
        }
        let d = Digits::load(&root().join("models/heldout.bin")).unwrap();
        let batches = d.labels.len().div_ceil(BATCH);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let per_thread = batches.div_ceil(threads);
        let mut sets = BTreeMap::new();
        for set in SETS {
            let probs: Vec<Probs> = std::thread::scope(|s| {
                let d = &d;
                let parts: Vec<_> = (0..threads)
                    .map(|t| {
                        let range = (t * per_thread).min(batches)..((t + 1) * per_thread).min(batches);
                        s.spawn(move || run_batches(set, d, range))
                    })
                    .collect();
                parts.into_iter().flat_map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(probs.len(), d.labels.len());
            sets.insert(set, probs);
        }
        (d, sets)
    })
}

#[test]
fn every_rule_in_the_card_matches_the_node_exit_rule() {
    let (d, sets) = tier_probs();
    let card = card();
    assert_eq!(card.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), SETS);
    for (set, rows) in card {
        let rules: std::collections::BTreeSet<&str> = rows.iter().map(|(e, _)| e.rule.name()).collect();
        assert_eq!(rules.len(), 3, "{set}: the card covers every rule");
        let probs = &sets[set.as_str()];
        let n = d.labels.len() as f64;
        for (exit, printed) in rows {
            let mut at = [0usize; 3];
            let mut correct = 0usize;
            for (p, &label) in probs.iter().zip(&d.labels) {
                let tier = (0..3).find(|&i| decide(exit, &p[i], i == 2)).unwrap();
                at[tier] += 1;
                let (predicted, _) = top1(&p[tier]);
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

/// models/<set>/calibration.json (format: models/README.md, "Calibration tables").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Calibration {
    set: String,
    heldout: usize,
    last_tier: String,
    /// tier -> rule name -> rows in increasing threshold order.
    tiers: BTreeMap<String, BTreeMap<String, Vec<CalibrationRow>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalibrationRow {
    threshold: f32,
    exit_fraction: f64,
    accuracy: f64,
    exit_accuracy: Option<f64>,
}

/// The file rounds to 4 decimals: anything further off is a wrong figure.
fn rounds_to(file: f64, exact: f64) -> bool {
    (file - exact).abs() <= 0.5e-4 + 1e-12
}

#[test]
fn every_calibration_table_matches_the_node_exit_rule() {
    let (d, sets) = tier_probs();
    let card = card();
    let n = d.labels.len();
    for set in SETS {
        let path = root().join("models").join(set).join("calibration.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: Calibration = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!((table.set.as_str(), table.heldout, table.last_tier.as_str()), (set, n, "cloud"), "{set}");
        assert_eq!(table.tiers.keys().collect::<Vec<_>>(), ["edge", "fog"], "{set}: every tier but the last");
        let probs = &sets[set];
        let card_rows = &card.iter().find(|(s, _)| s == set).unwrap().1;
        let mut checked = 0;
        for (tier_name, rules) in &table.tiers {
            let tier = TIERS.iter().position(|t| t == tier_name).unwrap();
            let mut names: Vec<&str> = rules.keys().map(String::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, ["entropy", "margin", "max-prob"], "{set}/{tier_name}: every rule");
            for (rule_name, rows) in rules {
                let rule = ExitRule::parse(rule_name).unwrap();
                let thresholds: Vec<f32> = rows.iter().map(|r| r.threshold).collect();
                assert!(thresholds.windows(2).all(|w| w[0] < w[1]), "{set}/{tier_name}/{rule_name}: sorted thresholds");
                for (exit, _) in card_rows.iter().filter(|(e, _)| e.rule == rule) {
                    assert!(
                        thresholds.contains(&exit.threshold),
                        "{set}/{tier_name}: the card's {exit} is in the table"
                    );
                }
                for row in rows {
                    let exit = Exit { rule, threshold: row.threshold };
                    let (mut exits, mut correct, mut exit_correct) = (0usize, 0usize, 0usize);
                    for (p, &label) in probs.iter().zip(&d.labels) {
                        let label = usize::from(label);
                        if decide(exit, &p[tier], false) {
                            exits += 1;
                            let right = usize::from(top1(&p[tier]).0 == label);
                            correct += right;
                            exit_correct += right;
                        } else {
                            correct += usize::from(top1(&p[2]).0 == label);
                        }
                    }
                    let what = format!("{set}/{tier_name}: {exit}: {row:?}");
                    assert!(rounds_to(row.exit_fraction, exits as f64 / n as f64), "{what}: {exits} of {n} exit");
                    assert!(rounds_to(row.accuracy, correct as f64 / n as f64), "{what}: {correct} of {n} right");
                    match row.exit_accuracy {
                        None => assert_eq!(exits, 0, "{what}: exit_accuracy is null only when none exits"),
                        Some(a) => assert!(
                            exits > 0 && rounds_to(a, exit_correct as f64 / exits as f64),
                            "{what}: {exit_correct} of {exits} exiting right"
                        ),
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 2 * (22 + 22 + 21), "{set}: {checked} rows");
    }
}
