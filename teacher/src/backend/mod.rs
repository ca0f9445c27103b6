//! Teachers behind one small trait: an OpenAI-compatible server ([`openai`]) or distill's own
//! generation engine ([`local`]).

pub mod local;
pub mod openai;
pub mod pool;
pub mod retry;

use distill_data::{EndpointKind, FinishReason, Message, TokenLogprobs};
use serde::{Deserialize, Serialize};

use crate::error::BackendError;

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
