#![allow(clippy::unwrap_used)]
//! `DDNN__*` environment overrides of topology.toml. They apply to every load in the process,
//! so they live in their own test binary (cargo runs test binaries one after another), and the
//! one test here sets and clears them itself.

use std::path::{Path, PathBuf};

use ddnn::config::load;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.onnx"))
}

#[test]
fn scalar_keys_and_broker_lists_come_from_the_environment() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::env::set_var("ORT_DYLIB_PATH", root.join(".ddnn/ort/libonnxruntime.so.1.31.1"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[clusters.edge-site]
brokers = ["127.0.0.1:9092"]

[[tiers]]
name = "edge"
model = "{}"
input = {{ cluster = "edge-site", topic = "in", format = "paper-json" }}
exits = {{ cluster = "edge-site", topic = "exits" }}
threshold = 0.8

[dead_letter]
cluster = "edge-site"
topic = "dlq"
"#,
            fixture("edge").display()
        ),
    )
    .unwrap();

    let vars = [
        ("DDNN__OFFSETS_TOPIC", "env_offsets"),
        ("DDNN__METRICS__LISTEN", "127.0.0.1:9999"),
        ("DDNN__DEAD_LETTER__TOPIC", "env.dlq"),
        ("DDNN__DEAD_LETTER__PARTITIONS", "4"),
        ("DDNN_BROKERS_EDGE_SITE", "k1:9092, k2:9093,"),
    ];
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let t = load(&path);
    let bad = {
        std::env::set_var("DDNN__METRICS__PORT", "1");
        let bad = load(&path);
        std::env::remove_var("DDNN__METRICS__PORT");
        bad
    };
    for (k, _) in vars {
        std::env::remove_var(k);
    }

    let t = t.unwrap();
    assert_eq!(t.offsets_topic, "env_offsets");
    assert_eq!(t.metrics_listen, Some("127.0.0.1:9999".parse().unwrap()));
    assert_eq!((t.dead_letter.topic.as_str(), t.dead_letter.partitions), ("env.dlq", 4));
    assert_eq!(t.cluster("edge-site").unwrap().brokers, ["k1:9092", "k2:9093"]);
    // An unknown key set from the environment is reported like one in the file.
    assert_eq!(
        bad.unwrap_err().to_string(),
        format!("{}: metrics: unknown field `port`, expected `listen`", path.display())
    );
    // Without the variables, the file's values.
    let t = load(&path).unwrap();
    assert_eq!((t.offsets_topic.as_str(), t.metrics_listen), ("__ddnn_offsets", None));
    assert_eq!(t.cluster("edge-site").unwrap().brokers, ["127.0.0.1:9092"]);
}
