//! Reads a model set's calibration table (`calibration.json`, written by
//! `models/card.py --write` next to the ONNX files) for one tier and one exit rule.
//!
//! Format: `{"set": .., "heldout": N, "tiers": {"<tier file stem>": {"<rule>": [{"threshold":
//! t, "exit_fraction": f, "accuracy": a, "exit_accuracy": e}, ..]}}}`; see models/README.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{CalPoint, ExitRule};

#[derive(Debug, Deserialize)]
struct File {
    tiers: BTreeMap<String, BTreeMap<String, Vec<Row>>>,
}

#[derive(Debug, Deserialize)]
struct Row {
    threshold: f64,
    exit_fraction: f64,
    accuracy: f64,
}

/// The calibration file of `model`: `calibration.json` in the same folder.
pub fn file_of(model: &Path) -> PathBuf {
    model.with_file_name("calibration.json")
}

/// The table of `model`'s tier (its file stem, e.g. `edge` for `edge.onnx`) for `rule`.
pub fn load(model: &Path, rule: ExitRule) -> Result<Vec<CalPoint>, String> {
    let path = file_of(model);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!("cannot read {}: {e} (models/card.py --write writes it next to the model)", path.display())
    })?;
    let file: File =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a calibration table: {e}", path.display()))?;
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(rules) = file.tiers.get(&stem) else {
        let known: Vec<&str> = file.tiers.keys().map(String::as_str).collect();
        return Err(format!("{} has no table for tier {stem:?} (it has: {})", path.display(), known.join(", ")));
    };
    let Some(rows) = rules.get(rule.name()) else {
        return Err(format!("{} has no {} table for tier {stem:?}", path.display(), rule.name()));
    };
    let bad = |what: &str, v: f64| {
        format!("{}: tier {stem:?}, rule {}: {what} {v} is outside 0..1", path.display(), rule.name())
    };
    rows.iter()
        .map(|r| {
            for (what, v) in [("threshold", r.threshold), ("exit_fraction", r.exit_fraction), ("accuracy", r.accuracy)]
            {
                if !(0.0..=1.0).contains(&v) {
                    return Err(bad(what, v));
                }
            }
            Ok(CalPoint { threshold: r.threshold as f32, exit_fraction: r.exit_fraction, accuracy: r.accuracy })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_and_rule_table_is_read_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("edge.onnx");
        let missing = load(&model, ExitRule::MaxProb).unwrap_err();
        assert!(missing.contains("calibration.json") && missing.contains("card.py"), "{missing}");
        std::fs::write(
            file_of(&model),
            r#"{"set":"x","heldout":2,"tiers":{"edge":{"max-prob":[{"threshold":0.8,"exit_fraction":0.9,"accuracy":0.97,"exit_accuracy":0.99}]}}}"#,
        )
        .unwrap();
        let t = load(&model, ExitRule::MaxProb).unwrap();
        assert_eq!(t, vec![CalPoint { threshold: 0.8, exit_fraction: 0.9, accuracy: 0.97 }]);
        let e = load(&model, ExitRule::Entropy).unwrap_err();
        assert!(e.contains("no entropy table"), "{e}");
        let e = load(&dir.path().join("fog.onnx"), ExitRule::MaxProb).unwrap_err();
        assert!(e.contains("no table for tier \"fog\"") && e.contains("edge"), "{e}");
        std::fs::write(
            file_of(&model),
            r#"{"tiers":{"edge":{"max-prob":[{"threshold":1.8,"exit_fraction":0.9,"accuracy":0.97}]}}}"#,
        )
        .unwrap();
        assert!(load(&model, ExitRule::MaxProb).unwrap_err().contains("threshold 1.8 is outside"));
    }
}
