//! OpenAI-compatible chat completions (vLLM, SGLang, llama.cpp's llama-server, DeepSeek's API).
//!
//! Keeps what the server says about reasoning (`reasoning_content`, or `reasoning`),
//! truncation (`finish_reason`), usage and log-probabilities. Token ids for log-probs come from
//! the entry's `id` (llama-server), a `token_id:N` token (vLLM with
//! `return_tokens_as_token_ids`), or the teacher tokenizer's vocabulary when given one.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use distill_data::redact::redact;
use distill_data::{EndpointKind, FinishReason, Role, TokenLogprobs};
use serde_json::{Value, json};

use super::retry::parse_retry_after;
use super::{ChatRequest, Choice, Completion, Teacher};
use crate::error::BackendError;

pub use distill_data::endpoint::{Engine, MANAGED_FIELDS, OpenAiConfig, Price};

/// Cached prompt tokens in a usage object: OpenAI's and vLLM's
/// `prompt_tokens_details.cached_tokens`, DeepSeek's `prompt_cache_hit_tokens`.
fn cached_tokens(usage: Option<&Value>) -> u64 {
    let u = match usage {
        Some(u) => u,
        None => return 0,
    };
    u.pointer("/prompt_tokens_details/cached_tokens")
        .or_else(|| u.get("prompt_cache_hit_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Token string → id for a teacher tokenizer: each id's own decoded text (what servers return
/// as `token`: `" the"`, not byte-level BPE's `"Ġthe"`), and its vocabulary piece. A string
/// two ids share is left out: it cannot name one of them.
pub fn token_map(dir: &std::path::Path) -> Result<HashMap<String, u32>, crate::Error> {
    let tok = distill_models::tokenizer::TextTokenizer::from_dir(dir)
        .map_err(|e| crate::Error::Config(format!("tokenizer {}: {e}", dir.display())))?;
    let mut map: HashMap<String, Option<u32>> = HashMap::new();
    for id in 0..tok.vocab_size() as u32 {
        if let Ok(text) = tok.decode(&[id], false) {
            map.entry(text).and_modify(|v| *v = None).or_insert(Some(id));
        }
    }
    Ok(map.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
}

pub struct OpenAiClient {
    cfg: OpenAiConfig,
    url: String,
    auth: Option<String>,
    agent: ureq::Agent,
    /// Token string → id, for servers that return only token strings.
    vocab: Option<HashMap<String, u32>>,
    /// The engine: from the config, else detected on first use.
    engine: std::sync::OnceLock<Engine>,
}

impl OpenAiClient {
    /// The API key is read from the environment here; a named variable that is unset is an error.
    pub fn new(
        cfg: OpenAiConfig,
        vocab: Option<HashMap<String, u32>>,
    ) -> Result<OpenAiClient, crate::Error> {
        let auth = match &cfg.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => {
                    distill_data::redact::register_secret(&k);
                    Some(format!("Bearer {k}"))
                }
                _ => {
                    return Err(crate::Error::Config(format!(
                        "{}: the API key variable {var} (api_key_env) is not set",
                        redact(&cfg.base_url)
                    )));
                }
            },
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s.max(0.001))))
            .http_status_as_error(false)
            .max_idle_connections_per_host(cfg.concurrency.max(1) * 2)
            .build()
            .into();
        if let Some(k) = cfg.extra_body.keys().find(|k| MANAGED_FIELDS.contains(&k.as_str())) {
            return Err(crate::Error::Config(format!(
                "{}: extra_body.{k} is set by distill from the recipe ([generate.sampling], logprobs, stream); set it there",
                redact(&cfg.base_url)
            )));
        }
        let vocab = match (vocab, &cfg.tokenizer) {
            (Some(v), _) => Some(v),
            (None, Some(dir)) => Some(token_map(dir)?),
            (None, None) => None,
        };
        let url = format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'));
        let engine = std::sync::OnceLock::new();
        if let Some(e) = cfg.engine {
            let _ = engine.set(e);
        }
        Ok(OpenAiClient { cfg, url, auth, agent, vocab, engine })
    }

    /// The engine behind the endpoint: configured, or detected once from what the server
    /// answers. An unreachable server is a transport error (retried), never a guess.
    pub fn engine(&self) -> Result<Engine, BackendError> {
        if let Some(e) = self.engine.get() {
            return Ok(*e);
        }
        let e = self.detect()?;
        Ok(*self.engine.get_or_init(|| e))
    }

    fn detect(&self) -> Result<Engine, BackendError> {
        let base = self.cfg.base_url.trim_end_matches('/');
        let root = base.strip_suffix("/v1").unwrap_or(base);
        let probes: [(&str, &str, Engine); 4] = [
            ("/props", "default_generation_settings", Engine::LlamaServer),
            ("/get_model_info", "model_path", Engine::Sglang),
            ("/server_info", "model_path", Engine::Sglang),
            ("/version", "version", Engine::Vllm),
        ];
        let mut reached = false;
        let mut last_err = None;
        for (path, key, engine) in probes {
            let mut call = self
                .agent
                .get(format!("{root}{path}"))
                .config()
                .timeout_global(Some(Duration::from_secs_f64(
                    self.cfg.timeout_s.clamp(0.001, 10.0),
                )))
                .build();
            if let Some(a) = &self.auth {
                call = call.header("Authorization", a);
            }
            match call.call() {
                Ok(mut r) => {
                    reached = true;
                    if r.status().as_u16() != 200 {
                        continue;
                    }
                    let text = r.body_mut().with_config().limit(1 << 20).read_to_string();
                    let v: Option<Value> = text.ok().and_then(|t| serde_json::from_str(&t).ok());
                    if v.as_ref().and_then(|v| v.get(key)).is_some() {
                        return Ok(engine);
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        match (reached, last_err) {
            (false, Some(e)) => Err(self.transport(format!("detecting the serving engine: {e}"))),
            _ => Ok(Engine::Openai),
        }
    }

    fn body(&self, req: &ChatRequest, engine: Engine) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let s = &req.sampling;
        let mut b = json!({
            "model": self.cfg.model,
            "messages": messages,
            "n": req.n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "stream": self.cfg.stream,
        });
        if let Some(k) = s.top_k {
            b["top_k"] = k.into();
        }
        if let Some(seed) = req.seed {
            b["seed"] = seed.into();
        }
        if !s.stop.is_empty() {
            b["stop"] = json!(s.stop);
        }
        if let Some(k) = req.logprobs {
            b["logprobs"] = true.into();
            b["top_logprobs"] = k.into();
            if engine == Engine::Vllm && self.cfg.token_ids {
                b["return_tokens_as_token_ids"] = true.into();
            }
        }
        for (k, v) in &self.cfg.extra_body {
            b[k.as_str()] = v.clone();
        }
        if self.cfg.stream {
            b["stream_options"] = json!({"include_usage": true});
        }
        b
    }

    fn transport(&self, msg: impl std::fmt::Display) -> BackendError {
        BackendError::Transport {
            endpoint: redact(&self.cfg.base_url),
            msg: redact(&msg.to_string()),
        }
    }

    fn malformed(&self, msg: impl std::fmt::Display) -> BackendError {
        BackendError::Malformed {
            endpoint: redact(&self.cfg.base_url),
            msg: redact(&msg.to_string()),
        }
    }

    fn token_id(&self, entry: &Value) -> Option<u32> {
        if let Some(id) = entry.get("id").and_then(Value::as_u64) {
            return Some(id as u32);
        }
        let tok = entry.get("token").and_then(Value::as_str)?;
        if let Some(n) = tok.strip_prefix("token_id:") {
            return n.parse().ok();
        }
        self.vocab.as_ref()?.get(tok).copied()
    }

    /// `logprobs.content` entries → compact top-k arrays. A token with no id is an error, never
    /// a trace that silently lost its log-probs.
    fn logprobs(&self, entries: &[Value], k: u32) -> Result<TokenLogprobs, BackendError> {
        let unknown = |e: &Value| {
            let tok = e.get("token").map_or_else(|| e.to_string(), Value::to_string);
            BackendError::Fatal(format!(
                "{}: a log-prob token has no id ({tok}); distill needs token ids: vLLM gives them with return_tokens_as_token_ids (token_ids = true, the default), llama-server always does; otherwise give the endpoint the teacher's tokenizer = \"DIR\"",
                redact(&self.cfg.base_url)
            ))
        };
        let mut lp = TokenLogprobs::new(k);
        for e in entries {
            let id = self.token_id(e).ok_or_else(|| unknown(e))?;
            let logprob = e
                .get("logprob")
                .and_then(Value::as_f64)
                .ok_or_else(|| self.malformed("a log-prob entry without `logprob`"))?
                as f32;
            let mut top: Vec<(u32, f32)> = Vec::new();
            for t in e.get("top_logprobs").and_then(Value::as_array).into_iter().flatten() {
                let id = self.token_id(t).ok_or_else(|| unknown(t))?;
                let lp = t
                    .get("logprob")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| self.malformed("a top_logprobs entry without `logprob`"))?;
                top.push((id, lp as f32));
            }
            lp.push(id, logprob, &top);
        }
        Ok(lp)
    }

    fn parse_full(&self, v: &Value, req: &ChatRequest) -> Result<Completion, BackendError> {
        let choices = v
            .get("choices")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed("no `choices` array"))?;
        let mut out = Vec::with_capacity(choices.len());
        for c in choices {
            let msg = c.get("message").ok_or_else(|| self.malformed("choice without `message`"))?;
            let content = msg.get("content").and_then(Value::as_str).unwrap_or("").to_string();
            let reasoning = msg
                .get("reasoning_content")
                .or_else(|| msg.get("reasoning"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let finish = c
                .get("finish_reason")
                .and_then(Value::as_str)
                .ok_or_else(|| self.malformed("choice without `finish_reason`"))?;
            let entries = c.pointer("/logprobs/content").and_then(Value::as_array);
            let logprobs = match (req.logprobs, entries) {
                (Some(k), Some(e)) => Some(self.logprobs(e, k)?),
                _ => None,
            };
            out.push(Choice {
                content,
                reasoning,
                finish_reason: FinishReason::from(finish.to_string()),
                completion_tokens: entries.map(|e| e.len() as u64),
                logprobs,
            });
        }
        let usage = v.get("usage");
        let get = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
        let (prompt, completion, cached) =
            (get("prompt_tokens"), get("completion_tokens"), cached_tokens(usage));
        Ok(Completion {
            choices: out,
            prompt_tokens: prompt,
            completion_tokens: completion,
            model: v.get("model").and_then(Value::as_str).unwrap_or(&self.cfg.model).to_string(),
            cached_prompt_tokens: cached,
            cost_usd: self.cfg.price.map(|p| p.cost(prompt, cached, completion)),
        })
    }

    /// Server-sent events: accumulate deltas per choice until `[DONE]`.
    fn read_stream(&self, body: impl Read, req: &ChatRequest) -> Result<Completion, BackendError> {
        #[derive(Default)]
        struct Acc {
            content: String,
            reasoning: String,
            finish: Option<String>,
            logprobs: Vec<Value>,
        }
        let mut accs: Vec<Acc> = Vec::new();
        let mut usage = None;
        let mut model = None;
        let mut done = false;
        for line in BufReader::new(body).lines() {
            let line = line.map_err(|e| self.transport(format!("stream broke: {e}")))?;
            let Some(data) = line.strip_prefix("data:") else { continue };
            let data = data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| self.malformed(format!("bad stream chunk: {e}")))?;
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                usage = Some(u.clone());
            }
            if model.is_none() {
                model = v.get("model").and_then(Value::as_str).map(str::to_string);
            }
            for c in v.get("choices").and_then(Value::as_array).into_iter().flatten() {
                let i = c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if accs.len() <= i {
                    accs.resize_with(i + 1, Acc::default);
                }
                let a = &mut accs[i];
                if let Some(d) = c.get("delta") {
                    if let Some(t) = d.get("content").and_then(Value::as_str) {
                        a.content.push_str(t);
                    }
                    if let Some(t) = d
                        .get("reasoning_content")
                        .or_else(|| d.get("reasoning"))
                        .and_then(Value::as_str)
                    {
                        a.reasoning.push_str(t);
                    }
                }
                if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                    a.finish = Some(f.to_string());
                }
                if let Some(e) = c.pointer("/logprobs/content").and_then(Value::as_array) {
                    a.logprobs.extend(e.iter().cloned());
                }
            }
        }
        if !done {
            return Err(self.transport("stream ended before [DONE]"));
        }
        let mut choices = Vec::with_capacity(accs.len());
        for (i, a) in accs.into_iter().enumerate() {
            let finish = a
                .finish
                .ok_or_else(|| self.malformed(format!("choice {i} has no finish_reason")))?;
            let logprobs = match req.logprobs {
                Some(k) if !a.logprobs.is_empty() => Some(self.logprobs(&a.logprobs, k)?),
                _ => None,
            };
            choices.push(Choice {
                completion_tokens: (!a.logprobs.is_empty()).then_some(a.logprobs.len() as u64),
                logprobs,
                content: a.content,
                reasoning: (!a.reasoning.is_empty()).then_some(a.reasoning),
                finish_reason: FinishReason::from(finish),
            });
        }
        let get =
            |k: &str| usage.as_ref().and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
        let (prompt, completion, cached) =
            (get("prompt_tokens"), get("completion_tokens"), cached_tokens(usage.as_ref()));
        Ok(Completion {
            choices,
            prompt_tokens: prompt,
            completion_tokens: completion,
            model: model.unwrap_or_else(|| self.cfg.model.clone()),
            cached_prompt_tokens: cached,
            cost_usd: self.cfg.price.map(|p| p.cost(prompt, cached, completion)),
        })
    }
}

/// The most bytes a reply about `tokens` tokens with `k` alternatives each can need: 1 MiB, plus
/// 1 KiB per token and 256 bytes per alternative (vLLM's entries are about 100), at most 1 GiB.
pub fn reply_limit(tokens: u64, k: u64) -> u64 {
    let per_token = 1024 + 256 * k;
    (1u64 << 20).saturating_add(tokens.saturating_mul(per_token)).min(1 << 30)
}

impl OpenAiClient {
    /// POST a JSON body; a non-200 answer is an [`BackendError::Http`] (its body redacted).
    fn post(
        &self,
        url: &str,
        body: &Value,
    ) -> Result<ureq::http::Response<ureq::Body>, BackendError> {
        let mut call = self.agent.post(url).header("Content-Type", "application/json");
        if let Some(a) = &self.auth {
            call = call.header("Authorization", a);
        }
        let body = serde_json::to_vec(body).expect("request JSON");
        let mut resp = call.send(&body[..]).map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let msg: String = text.chars().take(300).collect();
            return Err(BackendError::Http {
                endpoint: redact(&self.cfg.base_url),
                status,
                retry_after,
                // An endpoint may echo the request (its Authorization header included).
                msg: redact(&msg),
            });
        }
        Ok(resp)
    }

    /// A whole JSON response body, at most `limit` bytes (what the request can give back, from
    /// [`reply_limit`]): parsed into JSON values a body costs about 10× its bytes, and that again
    /// per concurrent request, so the bound is the request's, not a flat gigabyte.
    fn json_body(
        &self,
        resp: &mut ureq::http::Response<ureq::Body>,
        limit: u64,
    ) -> Result<Value, BackendError> {
        let text = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|e| self.transport(format!("reading body: {e}")))?;
        serde_json::from_str(&text).map_err(|e| self.malformed(e))
    }

    /// The teacher's scores of given tokens through vLLM's `/v1/completions` with
    /// `prompt_logprobs`: the prompt and completion go in as token ids, one token is generated
    /// (and ignored), and each completion position's entry gives the token's log-prob and the
    /// `k` most likely tokens (by `rank`). Engines that cannot score prompt tokens are refused.
    pub fn score_tokens(
        &self,
        prompt: &[u32],
        completion: &[u32],
        k: usize,
    ) -> Result<TokenLogprobs, BackendError> {
        let engine = self.engine()?;
        if engine != Engine::Vllm {
            return Err(BackendError::Fatal(format!(
                "{}: scoring given tokens needs vLLM's prompt_logprobs; engine {} cannot score them (llama-server returns log-probs of generated tokens only, docs/teacher.md)",
                redact(&self.cfg.base_url),
                engine.as_str()
            )));
        }
        let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
        let mut b = json!({
            "model": self.cfg.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": k,
            "return_tokens_as_token_ids": true,
        });
        for (key, v) in &self.cfg.extra_body {
            if !["chat_template_kwargs", "separate_reasoning"].contains(&key.as_str()) {
                b[key.as_str()] = v.clone();
            }
        }
        let url = format!("{}/completions", self.cfg.base_url.trim_end_matches('/'));
        let mut resp = self.post(&url, &b)?;
        let v = self.json_body(&mut resp, reply_limit(ids.len() as u64 + 1, k as u64))?;
        parse_prompt_logprobs(&v, prompt, completion, k).map_err(|e| self.malformed(e))
    }
}

/// vLLM's `prompt_logprobs` reply (`choices[0].prompt_logprobs`, one entry per prompt token, each
/// `{"<id>": {"logprob", "rank"}}`) as the completion tokens' log-probs and top-`k`. The reply is
/// the endpoint's: every entry is checked, nothing in it is trusted to index or size anything.
pub fn parse_prompt_logprobs(
    v: &Value,
    prompt: &[u32],
    completion: &[u32],
    k: usize,
) -> Result<TokenLogprobs, String> {
    let n = prompt.len() + completion.len();
    let entries = v
        .pointer("/choices/0/prompt_logprobs")
        .and_then(Value::as_array)
        .ok_or("no choices[0].prompt_logprobs (is this vLLM?)")?;
    if entries.len() != n {
        return Err(format!("prompt_logprobs has {} entries for {n} prompt tokens", entries.len()));
    }
    let mut lp = TokenLogprobs::new(k as u32);
    for (j, (&tok, e)) in completion.iter().zip(&entries[prompt.len()..]).enumerate() {
        let m = e
            .as_object()
            .ok_or_else(|| format!("prompt_logprobs[{}] is not an object", prompt.len() + j))?;
        let mut own = None;
        let mut top: Vec<(u64, u32, f32)> = Vec::with_capacity(m.len().min(k + 1));
        for (key, x) in m {
            let id: u32 = key
                .parse()
                .map_err(|_| format!("prompt_logprobs key {key:?} is not a token id"))?;
            let l = x
                .get("logprob")
                .and_then(Value::as_f64)
                .ok_or("a prompt_logprobs entry without `logprob`")? as f32;
            let rank = x.get("rank").and_then(Value::as_u64).unwrap_or(u64::MAX);
            if id == tok {
                own = Some(l);
            }
            if rank >= 1 && rank <= k as u64 {
                top.push((rank, id, l));
            }
        }
        let own = own.ok_or_else(|| {
            format!("prompt_logprobs[{}] does not score the prompt token {tok}", prompt.len() + j)
        })?;
        top.sort_by_key(|t| (t.0, t.1));
        let top: Vec<(u32, f32)> = top.into_iter().map(|(_, i, l)| (i, l)).collect();
        lp.push(tok, own, &top);
    }
    Ok(lp)
}

impl Teacher for OpenAiClient {
    fn complete(&self, req: &ChatRequest) -> Result<Completion, BackendError> {
        if req.messages.iter().any(|m| m.role == Role::Tool) {
            return Err(BackendError::Fatal(
                "tool messages are not supported by the teacher client".into(),
            ));
        }
        let engine = self.engine()?;
        if engine == Engine::Openai && req.sampling.top_k.is_some() {
            return Err(BackendError::Fatal(format!(
                "{}: top_k is not an OpenAI API parameter (engine = \"openai\"); drop it from [generate.sampling], or set engine = \"vllm\" / \"sglang\" / \"llama-server\" if the server is one",
                redact(&self.cfg.base_url)
            )));
        }
        if req.logprobs.is_some() && self.vocab.is_none() && !engine.sends_ids(self.cfg.token_ids) {
            return Err(BackendError::Fatal(format!(
                "{}: engine {} returns log-prob tokens as strings, not ids; give the endpoint the teacher's tokenizer = \"DIR\" to map them{}",
                redact(&self.cfg.base_url),
                engine.as_str(),
                if engine == Engine::Openai {
                    " (or set engine = \"vllm\" or \"llama-server\" if the server is one: it was not detected)"
                } else {
                    ""
                }
            )));
        }
        let mut resp = self.post(&self.url, &self.body(req, engine))?;
        let out = if self.cfg.stream {
            self.read_stream(resp.body_mut().as_reader(), req)?
        } else {
            let tokens = u64::from(req.n.max(1)) * u64::from(req.sampling.max_tokens);
            let v = self
                .json_body(&mut resp, reply_limit(tokens, u64::from(req.logprobs.unwrap_or(0))))?;
            self.parse_full(&v, req)?
        };
        if out.choices.len() != req.n as usize {
            return Err(self.malformed(format!(
                "asked for n={} completions, got {}",
                req.n,
                out.choices.len()
            )));
        }
        Ok(out)
    }

    fn concurrency(&self) -> usize {
        self.cfg.concurrency.max(1)
    }

    fn kind(&self) -> EndpointKind {
        EndpointKind::OpenaiChat
    }

    fn model(&self) -> String {
        self.cfg.model.clone()
    }

    fn describe(&self) -> String {
        redact(&self.cfg.base_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A vLLM-like scorer whose valid reply is far larger than the request can need (a 300 MB
    /// one reached 6.8 GB RSS, parsed, under the old flat 1 GiB cap) is refused while it is read,
    /// at the request's own bound (about 1 MiB here).
    #[test]
    fn a_scoring_reply_larger_than_the_request_needs_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let pad = 64usize << 20;
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 {
                        return;
                    }
                    let h = h.trim_end().to_ascii_lowercase();
                    if h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                let (open, close) = (b"{\"pad\": \"", b"\"}");
                let mut w = s;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    open.len() + pad + close.len()
                );
                let _ = w.write_all(head.as_bytes()).and_then(|_| w.write_all(open));
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..pad >> 20 {
                    if w.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let _ = w.write_all(close);
            }
        });
        let mut cfg = OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "t");
        cfg.engine = Some(Engine::Vllm);
        let client = OpenAiClient::new(cfg, None).unwrap();
        let limit = reply_limit(6, 5);
        assert!(limit < 16 << 20, "{limit}");
        let e = client.score_tokens(&[1, 2], &[3, 4, 5], 5).unwrap_err().to_string();
        assert!(e.contains("reading body"), "{e}");
    }
}
