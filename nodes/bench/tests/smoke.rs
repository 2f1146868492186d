#![allow(clippy::unwrap_used)]
//! The bench end to end on a real broker: a time-scaled `paper` run and a `burst`, checking
//! that every output exists and is well-formed (no timing thresholds).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The ddnn binary next to ours (cargo test --workspace builds it); built here if missing.
fn ddnn_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_ddnn-bench")).parent().unwrap().join("ddnn");
    if !bin.is_file() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-p", "ddnn", "--bin", "ddnn"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    bin
}

fn run(args: &[&str], out: &Path) {
    let ort = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".ddnn/ort/libonnxruntime.so.1.31.1"));
    let status = Command::new(env!("CARGO_BIN_EXE_ddnn-bench"))
        .current_dir(root())
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--ddnn-bin")
        .arg(ddnn_bin())
        .env("ORT_DYLIB_PATH", ort)
        .status()
        .unwrap();
    assert!(status.success(), "ddnn-bench {args:?} failed");
}

fn check_png(path: &Path) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(info.width >= 640 && info.height >= 360, "{}", path.display());
    assert!(buf.iter().any(|&b| b != 255), "{} is blank", path.display());
}

fn check_outputs(out: &Path, modes: &[&str], per_mode: usize) {
    check_outputs_each(out, &modes.iter().map(|m| (*m, per_mode)).collect::<Vec<_>>());
}

/// `modes`: each mode with the number of keys it sent.
fn check_outputs_each(out: &Path, modes: &[(&str, usize)]) {
    let csv = std::fs::read_to_string(out.join("messages.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "mode,key,client,stage,send_ts_s,exit_tier,rtt_ms,label,predicted,correct");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 10));
    for &(mode, per_mode) in modes {
        let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == mode).collect();
        assert_eq!(mine.len(), per_mode, "{mode}: every sent key accounted for");
        let keys: std::collections::HashSet<&str> = mine.iter().map(|r| r[1]).collect();
        assert_eq!(keys.len(), per_mode, "{mode}: keys are distinct");
        assert!(mine.iter().all(|r| r[6].parse::<f64>().unwrap() >= 0.0), "{mode}: RTTs are times");
        check_png(&out.join(format!("timeline-{mode}.png")));
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let ms = summary["modes"].as_array().unwrap();
    assert_eq!(ms.len(), modes.len());
    for m in ms {
        for field in [
            "sent",
            "answered",
            "duplicates",
            "elapsed_s",
            "throughput_msg_s",
            "peak_workers",
            "peak_rss_mib",
            "groups",
        ] {
            assert!(!m[field].is_null(), "summary field {field} missing");
        }
        assert_eq!(m["sent"], m["answered"]);
    }
    assert!(std::fs::read_to_string(out.join("summary.md")).unwrap().contains("| mode | exit tier |"));
    check_png(&out.join("rtt-boxplot.png"));
}

#[test]
fn paper_time_scaled_and_burst_produce_well_formed_reports() {
    let dir = tempfile::tempdir().unwrap();
    let paper = dir.path().join("paper");
    run(&["paper", "--clients", "1", "--time-scale", "40", "--modes", "elastic,relay"], &paper);
    check_outputs(&paper, &["elastic", "relay"], 400);
    let burst = dir.path().join("burst");
    run(&["burst", "--count", "300", "--idle-secs", "1", "--after-secs", "2", "--modes", "elastic"], &burst);
    check_outputs(&burst, &["elastic"], 300);
}

#[test]
fn constant_load_pins_workers_per_mode_and_reports_worker_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("constant");
    run(&["constant", "--rate", "50", "--secs", "3", "--modes", "fixed-1,fixed-max,adaptive"], &out);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // 50 msg/s in 10 ms slices for 3 s: 150, give or take the last slice.
    let sent: Vec<(&str, usize)> = summary["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mode"].as_str().unwrap(), m["sent"].as_u64().unwrap() as usize))
        .collect();
    assert!(sent.iter().all(|(_, n)| (145..=151).contains(n)), "{sent:?}");
    check_outputs_each(&out, &sent);
    let mut brokers = std::collections::HashSet::new();
    for m in summary["modes"].as_array().unwrap() {
        let mode = m["mode"].as_str().unwrap();
        // topology/local.toml: workers 1-2 per tier; fixed modes never move.
        let peak = m["peak_workers"]["edge"].as_f64().unwrap();
        match mode {
            "fixed-1" => assert_eq!(peak, 1.0, "{m}"),
            "fixed-max" => assert_eq!(peak, 2.0, "{m}"),
            _ => {}
        }
        let extra = &m["extra"];
        let ws = extra["worker_s_edge"].as_f64().unwrap();
        let elapsed = m["elapsed_s"].as_f64().unwrap();
        // Worker-seconds: the worker count integrated over the run (sampled every 250 ms).
        assert!(ws >= peak.min(1.0) * (elapsed - 0.5) && ws <= peak * (elapsed + 0.5), "{mode}: {ws} over {elapsed} s");
        assert!(extra["cpu_s_edge"].as_f64().unwrap() > 0.0, "{mode}: CPU-seconds measured");
        assert!(extra["cpu_s_broker"].as_f64().unwrap() > 0.0, "{mode}: the broker's CPU-seconds");
        let (busy, idle) =
            (extra["cpu_s_machine_busy"].as_f64().unwrap(), extra["cpu_s_machine_idle"].as_f64().unwrap());
        assert!(busy > 0.0 && idle >= 0.0 && extra["cpu_s_machine_steal"].as_f64().unwrap() >= 0.0, "{mode}");
        // The machine's CPU over the mode cannot exceed its cores times the mode's wall time.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(busy + idle <= cores * (elapsed + 60.0), "{mode}: {busy} + {idle} over {elapsed} s");
        assert!(brokers.insert(extra["broker_pid"].as_f64().unwrap() as u64), "{mode}: a fresh broker per mode");
        assert!(extra["p99_ms_sent_000s"].as_f64().is_some(), "{mode}: p99 per window");
        // Only adaptive mode has a moving threshold; all export it.
        assert!(extra["min_threshold_edge"].as_f64().is_some(), "{mode}: thresholds sampled");
    }
}
