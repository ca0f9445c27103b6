//! One completion choice → one verified trace.

use distill_data::think::{ThinkBlock, split_think};
use distill_data::{Prompt, SCHEMA_VERSION, Sampling, Teacher as TeacherInfo, Trace, Usage};
use serde_json::json;

use super::config::GenerateConfig;
use crate::backend::{Choice, Completion, Teacher};
use crate::verify::{Sample, verify};

/// Where a choice came from: its completion (with how many choices it had), the teacher, the
/// attempts it took and the request's seed.
pub(super) struct Origin<'a> {
    pub completion: &'a Completion,
    pub choices: usize,
    pub teacher: &'a dyn Teacher,
    pub attempts: u32,
    pub seed: u64,
}

/// Split the reasoning from the answer (a server's `reasoning_content`, or a `<think>` block in
/// the content), verify, and build the trace of sample `sample` of `prompt`. Returns it with
/// whether every verdict passed.
pub(super) fn assemble(
    cfg: &GenerateConfig,
    prompt: &Prompt,
    sample: u32,
    choice: Choice,
    from: &Origin,
) -> (Trace, bool) {
    let (c, teacher, attempts, seed) = (from.completion, from.teacher, from.attempts, from.seed);
    let n = from.choices.max(1) as u64;
    let (reasoning, answer, think) = match &choice.reasoning {
        Some(r) => {
            let (_, a, _) = split_think(&choice.content);
            let a = if choice.content.contains("</think>") {
                a
            } else {
                choice.content.trim().to_string()
            };
            let think = if r.trim().is_empty() { ThinkBlock::Absent } else { ThinkBlock::Closed };
            (r.trim().to_string(), a, think)
        }
        None => split_think(&choice.content),
    };
    let verdicts = verify(
        &Sample {
            reasoning: &reasoning,
            answer: &answer,
            think,
            finish_reason: &choice.finish_reason,
            reference: prompt.reference.as_deref(),
        },
        &cfg.verify,
    );
    let completion_tokens = choice.completion_tokens.unwrap_or(c.completion_tokens / n);
    let mut metadata = serde_json::Map::new();
    metadata.insert("endpoint".into(), json!(teacher.describe()));
    metadata.insert("attempts".into(), json!(attempts));
    if choice.completion_tokens.is_none() && n > 1 {
        metadata.insert("usage_estimated".into(), json!(true));
    }
    let passed = verdicts.iter().all(|v| v.passed);
    let trace = Trace {
        schema: SCHEMA_VERSION,
        id: Trace::make_id(&prompt.id, sample),
        prompt_id: prompt.id.clone(),
        sample,
        source: prompt.source.clone(),
        messages: prompt.messages.clone(),
        reasoning,
        answer,
        finish_reason: choice.finish_reason,
        teacher: TeacherInfo {
            model: c.model.clone(),
            endpoint: teacher.kind(),
            sampling: Sampling {
                temperature: Some(cfg.sampling.temperature),
                top_p: Some(cfg.sampling.top_p),
                top_k: cfg.sampling.top_k,
                max_tokens: Some(cfg.sampling.max_tokens),
                seed: Some(seed),
            },
        },
        usage: Usage { prompt_tokens: c.prompt_tokens, completion_tokens },
        verdicts,
        reference: prompt.reference.clone(),
        logprobs: choice.logprobs.map(|mut l| {
            l.encoding = cfg.logprobs_encoding;
            l
        }),
        metadata,
    };
    (trace, passed)
}
