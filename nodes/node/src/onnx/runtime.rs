//! Loads the ONNX Runtime shared library once per process.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`) so the binary builds without it; the
//! path comes from `ORT_DYLIB_PATH`, else from the places `scripts/setup.sh` installs it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The library version the `ort` API level (api-31) was built against.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

static INIT: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
        return out;
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join(ORT_LIB_NAME));
            out.push(dir.join("../lib").join(ORT_LIB_NAME));
        }
    }
    out.push(PathBuf::from(".ddnn/ort").join(ORT_LIB_NAME));
    out.push(PathBuf::from("/usr/local/lib").join(ORT_LIB_NAME));
    out
}

/// Loads ONNX Runtime (idempotent) and returns the process-wide environment sessions are built
/// in. The error says where it looked and how to fix it.
pub fn ensure_init() -> Result<&'static ort::environment::Environment, String> {
    init().map(|(_, env)| env)
}

/// Path of the loaded library (for logs).
pub fn library_path() -> Result<&'static Path, String> {
    init().map(|(p, _)| p.as_path())
}

fn init() -> Result<&'static (PathBuf, ort::environment::Environment), String> {
    INIT.get_or_init(|| {
        let tried = candidates();
        let Some(path) = tried.iter().find(|p| p.is_file()).cloned() else {
            let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "ONNX Runtime library {ORT_LIB_NAME} not found (looked at: {}); run scripts/setup.sh or set ORT_DYLIB_PATH",
                list.join(", ")
            ));
        };
        let builder = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let env = builder
            .with_name("ddnn")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        Ok((path, env))
    })
    .as_ref()
    .map_err(Clone::clone)
}
