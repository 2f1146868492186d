//! The exit record: what leaves the continuum for each input.

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
