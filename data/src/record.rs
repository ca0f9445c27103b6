//! The trace record: one teacher sample for one prompt, with everything needed to train on it,
//! audit it and reproduce it. Documented field by field in `docs/trace-format.md`.
//!
//! Schema policy: every record carries `schema`. A record whose schema is newer than
//! [`SCHEMA_VERSION`] is rejected with [`Error::SchemaVersion`] rather than half-read, and unknown
//! fields are an error, so a record that parses round-trips losslessly.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::logprobs::TokenLogprobs;

/// The trace schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The longest record id, in bytes. One limit for the writer (which refuses longer ids) and the
/// shard reader (which sizes the id block by it).
pub const MAX_ID_BYTES: usize = 255;

/// A record id as the corpus stores it: non-empty, at most [`MAX_ID_BYTES`], no newline.
pub fn check_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() || id.contains('\n') || id.len() > MAX_ID_BYTES {
        return Err(format!(
            "ids must be non-empty, at most {MAX_ID_BYTES} bytes ({} here) and hold no newline",
            id.len()
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// Trace schema version; see [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Stable id: `{prompt_id}#{sample}`. Unique within a corpus.
    pub id: String,
    /// Id of the prompt this trace answers (see `prompts::Prompt::id`).
    pub prompt_id: String,
    /// Index of this sample among the samples drawn for the prompt (0-based).
    pub sample: u32,
    /// Where the prompt came from.
    pub source: Source,
    /// The prompt as chat messages (system/user/…), without the teacher's reply.
    pub messages: Vec<Message>,
    /// The chain of thought, without `<think>` tags. Empty if the teacher gave none.
    pub reasoning: String,
    /// The final answer text that follows the reasoning.
    pub answer: String,
    pub finish_reason: FinishReason,
    pub teacher: Teacher,
    pub usage: Usage,
    /// Verdicts of the verifiers and filters that ran, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<Verdict>,
    /// The reference (gold) answer of the prompt, if the dataset has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Per-token top-k teacher log-probabilities of the completion, if captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<TokenLogprobs>,
    /// Free-form metadata (JSON object).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl Trace {
    /// The id of sample `sample` of prompt `prompt_id`.
    pub fn make_id(prompt_id: &str, sample: u32) -> String {
        format!("{prompt_id}#{sample}")
    }

    /// True when no verdict failed (a trace that was never verified passes).
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.passed)
    }

    /// The first failing verdict, if any.
    pub fn first_failure(&self) -> Option<&Verdict> {
        self.verdicts.iter().find(|v| !v.passed)
    }

    /// Serialize as one JSON line (no trailing newline). JSON strings escape `\n`, so a record
    /// never spans lines.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Trace always serializes")
    }

    /// Parse one JSON record, enforcing the schema policy.
    pub fn from_json(line: &str) -> Result<Trace> {
        match serde_json::from_str::<Trace>(line) {
            Ok(t) if t.schema > SCHEMA_VERSION => {
                Err(Error::SchemaVersion { id: t.id, found: t.schema, supported: SCHEMA_VERSION })
            }
            Ok(t) if t.schema == 0 => {
                Err(Error::Record { id: t.id, msg: "schema version 0 is not valid".into() })
            }
            Ok(t) => Ok(t),
            Err(e) => {
                // A newer record may fail on a field we do not know: report the version, not the field.
                #[derive(Deserialize)]
                struct Head {
                    schema: Option<u32>,
                    id: Option<String>,
                }
                match serde_json::from_str::<Head>(line) {
                    Ok(Head { schema: Some(s), id }) if s > SCHEMA_VERSION => {
                        Err(Error::SchemaVersion {
                            id: id.unwrap_or_default(),
                            found: s,
                            supported: SCHEMA_VERSION,
                        })
                    }
                    Ok(Head { id, .. }) => Err(Error::Record {
                        id: id.unwrap_or_else(|| "?".into()),
                        msg: e.to_string(),
                    }),
                    Err(_) => Err(Error::Record { id: "?".into(), msg: e.to_string() }),
                }
            }
        }
    }

    /// A rough size in bytes of the JSON form, without serializing.
    pub fn approx_json_len(&self) -> usize {
        let msgs: usize = self.messages.iter().map(|m| m.content.len() + 32).sum();
        let lp = self.logprobs.as_ref().map_or(0, |l| l.tokens.len() * (2 + 2 * l.k as usize) * 6);
        400 + self.id.len() * 2 + msgs + self.reasoning.len() + self.answer.len() + lp
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Dataset name, e.g. `gsm8k-train`.
    pub dataset: String,
    /// 0-based row (line) in the dataset file.
    pub row: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
}

/// Why generation stopped, as the server said it. Unknown values are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Other(String),
}

impl From<String> for FinishReason {
    fn from(s: String) -> Self {
        match s.as_str() {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Other(s),
        }
    }
}

impl From<FinishReason> for String {
    fn from(f: FinishReason) -> String {
        f.as_str().to_string()
    }
}

impl FinishReason {
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
        }
    }
}

/// Which kind of teacher produced the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// An OpenAI-compatible chat-completions server (vLLM, SGLang, llama-server, DeepSeek API).
    OpenaiChat,
    /// distill's own generation engine.
    Local,
    /// Imported from an external trace set; the teacher fields are what the source said.
    Import,
    /// Synthetic data (benchmarks and demos), not a model.
    Synthetic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teacher {
    /// Model name as the endpoint reported or the recipe named it.
    pub model: String,
    pub endpoint: EndpointKind,
    pub sampling: Sampling,
}

/// Sampling settings of the request. `None` means unknown (imported traces) or the server default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Which check ran, e.g. `math`, `format`, `filter.language_mix`.
    pub verifier: String,
    pub passed: bool,
    /// The answer the verifier extracted from the trace, if it extracts one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted: Option<String>,
    /// Why it passed or failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
