//! An OpenAI-compatible endpoint as recipes name it: `[generate.backend]` with `kind = "openai"`,
//! each of its `[[generate.backend.endpoints]]`, and `[train.on_policy.endpoint]` (the teacher
//! that scores on-policy samples). One type for every section, so `check-recipe` refuses a
//! misspelled field in any of them. The client is `distill_teacher::backend::openai`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One endpoint (recipe section `[generate.backend]` with `kind = "openai"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// e.g. `http://127.0.0.1:8080/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The model name to request.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once against this endpoint.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Whole-request timeout, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Use server-sent events (streaming) instead of one JSON body.
    #[serde(default)]
    pub stream: bool,
    /// Most completions per request (`n`); larger sample counts are split.
    #[serde(default = "default_max_n")]
    pub max_n: u32,
    /// With log-probs, ask for tokens as `token_id:N` (vLLM's `return_tokens_as_token_ids`), so
    /// that byte-level BPE tokens keep their ids; servers that send ids anyway (llama-server)
    /// ignore it. Turn it off only for a server that rejects unknown request fields.
    #[serde(default = "yes")]
    pub token_ids: bool,
    /// The teacher's tokenizer (a directory with tokenizer.json), to map log-prob token strings
    /// to ids when a server returns strings only.
    #[serde(default)]
    pub tokenizer: Option<std::path::PathBuf>,
    /// More request fields, passed as given: engine parameters such as `min_p`,
    /// `repetition_penalty`, `chat_template_kwargs = { enable_thinking = true }` (Qwen3) or
    /// SGLang's `separate_reasoning`. Fields distill sets itself cannot be overridden here.
    #[serde(default)]
    pub extra_body: std::collections::BTreeMap<String, Value>,
    /// What the provider charges, USD per million tokens; the generate report adds it up.
    #[serde(default)]
    pub price: Option<Price>,
    /// The serving engine behind the URL; unset: detected from the server on first use
    /// (`/props`: llama-server, `/get_model_info`: SGLang, `/version`: vLLM, else `openai`).
    #[serde(default)]
    pub engine: Option<Engine>,
}

/// What answers at an endpoint, as far as distill's requests differ.
///
/// | engine | log-prob token ids | request fields beyond OpenAI's |
/// |---|---|---|
/// | `vllm` | asked for (`return_tokens_as_token_ids`) | accepted |
/// | `llama-server` | always sent (`id`) | accepted |
/// | `sglang` | strings only: needs `tokenizer` | accepted |
/// | `openai` (OpenAI, DeepSeek, any other) | strings only: needs `tokenizer` | none (`top_k` refused) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    Vllm,
    Sglang,
    LlamaServer,
    Openai,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::LlamaServer => "llama-server",
            Engine::Openai => "openai",
        }
    }

    /// Whether log-prob entries carry token ids (given how distill asks).
    pub fn sends_ids(self, token_ids: bool) -> bool {
        match self {
            Engine::Vllm => token_ids,
            Engine::LlamaServer => true,
            Engine::Sglang | Engine::Openai => false,
        }
    }
}

/// USD per million tokens, as a provider publishes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    /// Prompt tokens served from the provider's cache (default: the input price).
    #[serde(default)]
    pub cached_input: Option<f64>,
    pub output: f64,
}

impl Price {
    /// USD for one request's tokens.
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> f64 {
        let cached = cached.min(prompt);
        ((prompt - cached) as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + completion as f64 * self.output)
            / 1e6
    }
}

/// Request fields distill sets from the recipe, which `extra_body` may not replace.
pub const MANAGED_FIELDS: [&str; 13] = [
    "model",
    "messages",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stream",
    "stream_options",
    "seed",
    "stop",
    "logprobs",
    "top_logprobs",
];

impl OpenAiConfig {
    /// An endpoint with the same defaults a recipe gets.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            concurrency: default_concurrency(),
            timeout_s: default_timeout(),
            stream: false,
            max_n: default_max_n(),
            token_ids: true,
            tokenizer: None,
            extra_body: Default::default(),
            price: None,
            engine: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_concurrency() -> usize {
    4
}
fn default_timeout() -> f64 {
    600.0
}
fn default_max_n() -> u32 {
    8
}
