//! `[generate.backend]` and `[generate.retry]` (also `[eval.backend]`, `[eval.retry]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::local::LocalConfig;
use super::openai::OpenAiConfig;
use super::retry::RetryPolicy;

/// `[generate.backend]` (and `[eval.backend]`): one variant per `kind`, each with only its own
/// fields, so a field of another kind (or a misspelled one) is refused when the recipe is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// OpenAI-compatible servers: one or more endpoints; requests are balanced by whichever has a
    /// free slot.
    Openai { endpoints: Vec<OpenAiConfig> },
    /// distill's own engine, on `device` (`cpu`, `cuda` or `cuda:N`).
    Local {
        local: LocalConfig,
        #[serde(default)]
        device: distill_models::device::DeviceKind,
    },
}

impl BackendConfig {
    /// The endpoints of an `openai` backend (none for `local`).
    pub fn endpoints(&self) -> &[OpenAiConfig] {
        match self {
            BackendConfig::Openai { endpoints } => endpoints,
            BackendConfig::Local { .. } => &[],
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, BackendConfig::Local { .. })
    }
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
