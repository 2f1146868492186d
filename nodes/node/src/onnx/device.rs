//! `device = "cpu" | "cuda:N"`: where a tier's ONNX sessions run, and what a tier whose device
//! cannot be used reports.

use std::path::Path;

use crate::onnx::model::open_session_on;
use crate::onnx::runtime::ORT_LIB_NAME;

/// Where a tier's ONNX sessions run (`device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// ONNX Runtime's CUDA execution provider on GPU N.
    Cuda(u32),
}

impl Device {
    /// `cpu` or `cuda:N` (N a decimal GPU index that ONNX Runtime's `int device_id` can hold);
    /// anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        if text == "cpu" {
            return Some(Device::Cpu);
        }
        let n = text.strip_prefix("cuda:")?;
        // Digits only: `i32::from_str` alone would also take `+0` and `-1`.
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse::<i32>().ok().map(|n| Device::Cuda(n.unsigned_abs()))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What a tier whose device cannot be used reports, at validation and at worker start.
pub fn device_error(device: Device, ort_message: &str) -> String {
    format!(
        "cannot run on {device}: {ort_message} (a GPU needs the onnxruntime-gpu build of \
         {ORT_LIB_NAME} with its CUDA provider library next to it, and CUDA/cuDNN; device = \"cpu\" runs without)"
    )
}

/// Opens a session on `device` and drops it: whether the tier's sessions will start there.
pub fn check_device(path: &Path, device: Device) -> Result<(), String> {
    open_session_on(path, device).map(drop)
}

#[cfg(test)]
mod tests {
    use super::Device;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, device) in [("cpu", Device::Cpu), ("cuda:0", Device::Cuda(0)), ("cuda:12", Device::Cuda(12))] {
            assert_eq!(Device::parse(text), Some(device));
            assert_eq!(device.to_string(), text);
        }
        assert_eq!(Device::parse("cuda:2147483647"), Some(Device::Cuda(i32::MAX as u32)));
        for bad in ["", "gpu", "cuda", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda:2147483648", "CUDA:0", " cpu"] {
            assert_eq!(Device::parse(bad), None, "{bad:?}");
        }
    }
}
