//! Teachers behind one small trait: an OpenAI-compatible server ([`openai`]) or distill's own
//! generation engine ([`local`]).

pub mod config;
pub mod local;
pub mod openai;
pub mod pool;
pub mod retry;
pub mod score;

use std::path::Path;
use std::sync::Arc;

use distill_data::{EndpointKind, FinishReason, Message, TokenLogprobs};
use distill_models::device::{DeviceKind, OnDevice, on_device};
use serde::{Deserialize, Serialize};

use self::config::BackendConfig;
use crate::error::{BackendError, Error, Result};

/// The teachers a `[…backend]` section names, checked before any long work: an endpoint that
/// does not answer, a missing model directory or an unknown device is an error here.
pub fn build(backend: &BackendConfig) -> Result<Vec<Arc<dyn Teacher>>> {
    match backend {
        BackendConfig::Openai { endpoints } => {
            if endpoints.is_empty() {
                return Err(Error::Config(
                    "backend kind openai needs at least one endpoint".into(),
                ));
            }
            endpoints
                .iter()
                .map(|e| {
                    preflight(&e.base_url)?;
                    let client = openai::OpenAiClient::new(e.clone(), None)?;
                    Ok(Arc::new(client) as Arc<dyn Teacher>)
                })
                .collect()
        }
        BackendConfig::Local { local, device } => {
            check_model_dir(&local.model_dir)?;
            let kind: DeviceKind = *device;
            struct Load<'a>(&'a local::LocalConfig);
            impl OnDevice for Load<'_> {
                type Output = Result<Arc<dyn Teacher>>;
                fn run<B: burn::prelude::Backend>(self, device: B::Device) -> Self::Output
                where
                    B::Device: Send,
                {
                    Ok(Arc::new(local::LocalTeacher::<B>::load(self.0, device)?))
                }
            }
            Ok(vec![on_device(kind, Load(local))??])
        }
    }
}

/// A Hugging Face model directory: at least its config.json.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if !dir.join("config.json").exists() {
        return Err(Error::Config(format!(
            "model directory {} does not exist or has no config.json",
            dir.display()
        )));
    }
    Ok(())
}

/// Fail early on an endpoint that does not answer at all (any HTTP answer counts as alive).
pub fn preflight(base_url: &str) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    agent
        .get(&url)
        .call()
        .map(|_| ())
        .map_err(|e| Error::Config(format!("teacher endpoint {base_url} is unreachable: {e}")))
}

/// Sampling settings sent with every request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSpec {
    pub temperature: f64,
    pub top_p: f64,
    /// Sent only when set (an extension vLLM, SGLang and llama-server accept).
    pub top_k: Option<u32>,
    pub max_tokens: u32,
    /// Base seed; each request derives its own from it and the prompt id.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl Default for SamplingSpec {
    fn default() -> Self {
        // R1's evaluation defaults.
        SamplingSpec {
            temperature: 0.6,
            top_p: 0.95,
            top_k: None,
            max_tokens: 4096,
            seed: Some(0),
            stop: vec![],
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// Completions wanted from this call.
    pub n: u32,
    pub sampling: SamplingSpec,
    /// This request's seed (None: the server's choice).
    pub seed: Option<u64>,
    /// Top-k log-probabilities per generated token, if wanted.
    pub logprobs: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Choice {
    /// The message content (may hold an inline `<think>` block).
    pub content: String,
    /// `reasoning_content` when the server splits it out.
    pub reasoning: Option<String>,
    pub finish_reason: FinishReason,
    pub logprobs: Option<TokenLogprobs>,
    /// Completion tokens of this choice, when known exactly.
    pub completion_tokens: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub choices: Vec<Choice>,
    pub prompt_tokens: u64,
    /// Completion tokens over all choices.
    pub completion_tokens: u64,
    /// The model name the server reported.
    pub model: String,
    /// Prompt tokens the server served from its cache (billed at the cached-input price).
    pub cached_prompt_tokens: u64,
    /// What the request cost, USD, when the endpoint has a `price`.
    pub cost_usd: Option<f64>,
}

/// Something that completes chats.
pub trait Teacher: Send + Sync {
    fn complete(&self, req: &ChatRequest) -> Result<Completion, BackendError>;

    /// Several requests at once; engines that batch override this.
    fn complete_many(&self, reqs: &[ChatRequest]) -> Vec<Result<Completion, BackendError>> {
        reqs.iter().map(|r| self.complete(r)).collect()
    }

    /// How many requests to hand to one `complete_many` call.
    fn batch_size(&self) -> usize {
        1
    }

    /// Concurrent callers this teacher should get (per endpoint for servers).
    fn concurrency(&self) -> usize {
        1
    }

    fn kind(&self) -> EndpointKind;
    fn model(&self) -> String;
    /// Where it is, for reports (never a secret).
    fn describe(&self) -> String;
}
