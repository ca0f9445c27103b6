//! `[generate.backend]` and `[generate.retry]` (also `[eval.backend]`, `[eval.retry]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::local::LocalConfig;
use super::openai::OpenAiConfig;
use super::retry::RetryPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// OpenAI-compatible servers.
    Openai,
    /// distill's own engine.
    Local,
}

/// `[generate.backend]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// For `openai`: one or more endpoints; requests are balanced by whichever has a free slot.
    #[serde(default)]
    pub endpoints: Vec<OpenAiConfig>,
    /// For `local`.
    #[serde(default)]
    pub local: Option<LocalConfig>,
    /// For `local`: `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: distill_models::device::DeviceKind,
}

/// `[generate.retry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub base_ms: u64,
    pub cap_s: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { max_attempts: 6, base_ms: 500, cap_s: 30.0 }
    }
}

impl RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            base: Duration::from_millis(self.base_ms),
            cap: Duration::from_secs_f64(self.cap_s),
        }
    }
}
