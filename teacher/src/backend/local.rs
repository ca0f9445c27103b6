//! distill's own generation engine as a teacher, on any checkpoint the student crate loads.
//! Requests are batched: every sample of every request in a `complete_many` call decodes together.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::prelude::Backend;
use distill_data::EndpointKind;
use distill_models::generate::{Engine, SamplingParams};
use distill_models::hf::{self, Loaded};
use distill_models::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};

use super::{ChatRequest, Choice, Completion, Teacher};
use crate::error::BackendError;

/// Recipe section `[generate.backend]` with `kind = "local"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// A Hugging Face model directory.
    pub model_dir: PathBuf,
    /// Sequences decoded together. Larger batches use the CPU better and more memory.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

impl LocalConfig {
    /// A local model with the same defaults a recipe gets.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        LocalConfig { model_dir: model_dir.into(), batch: default_batch() }
    }
}

fn default_batch() -> usize {
    8
}

struct State<B: Backend> {
    loaded: Loaded<B>,
    tok: TextTokenizer,
    device: B::Device,
}

pub struct LocalTeacher<B: Backend> {
    state: Mutex<State<B>>,
    name: String,
    dir: PathBuf,
    batch: usize,
}

impl<B: Backend> LocalTeacher<B> {
    pub fn load(cfg: &LocalConfig, device: B::Device) -> Result<Self, crate::Error> {
        let loaded = hf::load_model::<B>(&cfg.model_dir, &device)?;
        let tok = TextTokenizer::from_dir(&cfg.model_dir)?;
        if tok.chat.is_none() {
            return Err(crate::Error::Config(format!(
                "{}: the model has no chat template",
                cfg.model_dir.display()
            )));
        }
        let name = cfg
            .model_dir
            .file_name()
            .map_or_else(|| "local".into(), |n| n.to_string_lossy().to_string());
        Ok(LocalTeacher {
            state: Mutex::new(State { loaded, tok, device }),
            name,
            dir: cfg.model_dir.clone(),
            batch: cfg.batch.max(1),
        })
    }

    pub fn model_dir(&self) -> &Path {
        &self.dir
    }
}

impl<B: Backend> Teacher for LocalTeacher<B>
where
    B::Device: Send,
{
    fn complete(&self, req: &ChatRequest) -> Result<Completion, BackendError> {
        self.complete_many(std::slice::from_ref(req)).pop().expect("one result per request")
    }

    fn complete_many(&self, reqs: &[ChatRequest]) -> Vec<Result<Completion, BackendError>> {
        let fatal = |e: &dyn std::fmt::Display| BackendError::Fatal(format!("local engine: {e}"));
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let chat = st.tok.chat.as_ref().expect("checked at load");
        let Some(first) = reqs.first() else { return vec![] };
        // One decode call per distinct sampling setting (in a run there is one).
        if reqs.iter().any(|r| r.sampling != first.sampling || r.logprobs != first.logprobs) {
            return reqs
                .iter()
                .map(|r| self.complete_many_same(&st, chat, std::slice::from_ref(r)))
                .flat_map(|mut v| v.pop())
                .collect();
        }
        let _ = fatal;
        self.complete_many_same(&st, chat, reqs)
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn kind(&self) -> EndpointKind {
        EndpointKind::Local
    }

    fn model(&self) -> String {
        self.name.clone()
    }

    fn describe(&self) -> String {
        format!("local engine on {}", self.dir.display())
    }
}

impl<B: Backend> LocalTeacher<B> {
    fn complete_many_same(
        &self,
        st: &State<B>,
        chat: &distill_models::chat::ChatTemplate,
        reqs: &[ChatRequest],
    ) -> Vec<Result<Completion, BackendError>> {
        let fatal = |e: &dyn std::fmt::Display| BackendError::Fatal(format!("local engine: {e}"));
        let mut prompts = Vec::new();
        let mut seeds = Vec::new();
        let mut owner = Vec::new();
        let mut prompt_tokens = vec![0u64; reqs.len()];
        for (r, req) in reqs.iter().enumerate() {
            let ids = match chat
                .render(&req.messages, true)
                .map_err(|e| fatal(&e))
                .and_then(|t| st.tok.encode(&t).map_err(|e| fatal(&e)))
            {
                Ok(ids) => ids,
                Err(e) => return reqs.iter().map(|_| Err(e.clone())).collect(),
            };
            prompt_tokens[r] = ids.len() as u64;
            for k in 0..req.n {
                prompts.push(ids.clone());
                seeds.push(
                    req.seed
                        .unwrap_or(0)
                        .wrapping_add(k as u64)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                owner.push(r);
            }
        }
        let s = &reqs[0].sampling;
        let params = SamplingParams {
            temperature: s.temperature as f32,
            top_p: s.top_p as f32,
            top_k: s.top_k.unwrap_or(0) as usize,
            max_tokens: s.max_tokens as usize,
            seed: 0,
            stop_ids: st.tok.eos_ids(&st.loaded.config.eos_token_ids),
            stop_strings: s.stop.clone(),
            logprobs: reqs[0].logprobs.unwrap_or(0) as usize,
        };
        let engine =
            Engine::new(&st.loaded.model, &st.loaded.config, Some(&st.tok), st.device.clone());
        let mut outs: Vec<Completion> = reqs
            .iter()
            .enumerate()
            .map(|(r, _)| Completion {
                cached_prompt_tokens: 0,
                cost_usd: None,
                choices: vec![],
                prompt_tokens: prompt_tokens[r],
                completion_tokens: 0,
                model: self.name.clone(),
            })
            .collect();
        // Decode in chunks of the configured batch size.
        for start in (0..prompts.len()).step_by(self.batch) {
            let end = (start + self.batch).min(prompts.len());
            let got = match engine.generate_seeded(
                &prompts[start..end],
                &seeds[start..end],
                &params,
                |_| {},
            ) {
                Ok(g) => g,
                Err(e) => return reqs.iter().map(|_| Err(fatal(&e))).collect(),
            };
            for (i, c) in got.into_iter().enumerate() {
                let o = &mut outs[owner[start + i]];
                o.completion_tokens += c.ids.len() as u64;
                o.choices.push(Choice {
                    content: c.text,
                    reasoning: None,
                    finish_reason: c.finish_reason,
                    completion_tokens: Some(c.ids.len() as u64),
                    logprobs: c.logprobs,
                });
            }
        }
        outs.into_iter().map(Ok).collect()
    }
}
