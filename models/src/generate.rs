//! Generation with a KV cache: batched prompts of different lengths (left-padded), greedy or
//! temperature / top-k / top-p sampling, stop tokens and strings, max tokens, seeds, the
//! finish reason, and optionally the top-k log-probabilities of every generated token.
//!
//! Each request has its own random stream (from the seed and its index in the call), so a
//! request's sample does not depend on what else is in the batch.

use burn::prelude::*;
use burn::tensor::TensorData;
use distill_data::{FinishReason, TokenLogprobs};

use crate::error::{Error, Result};
use crate::masks;
use crate::model::{AttnMask, CausalLm, KvCache};
use crate::rope::Rope;
use crate::tokenizer::TextTokenizer;

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass; 1.0 disables it.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    pub max_tokens: usize,
    pub seed: u64,
    /// Token ids that end a sequence (included in `ids`, excluded from `text`).
    pub stop_ids: Vec<u32>,
    /// Strings that end a sequence (the text is cut before them).
    pub stop_strings: Vec<String>,
    /// Record this many top log-probabilities per generated token (0: none).
    pub logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 256,
            seed: 0,
            stop_ids: vec![],
            stop_strings: vec![],
            logprobs: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated ids, including the stop token if one ended the sequence.
    pub ids: Vec<u32>,
    /// Decoded text without the stop token or stop string.
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub logprobs: Option<TokenLogprobs>,
}

/// A model ready to generate.
pub struct Engine<'a, B: Backend> {
    pub model: &'a CausalLm<B>,
    pub rope: Rope<B>,
    pub device: B::Device,
    pub tokenizer: Option<&'a TextTokenizer>,
}

/// SplitMix64 per request.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Row {
    req: usize,
    ids: Vec<u32>,
    rng: Rng,
    logprobs: Option<TokenLogprobs>,
    done: Option<FinishReason>,
    text: String,
}

impl<'a, B: Backend> Engine<'a, B> {
    pub fn new(
        model: &'a CausalLm<B>,
        config: &crate::ModelConfig,
        tokenizer: Option<&'a TextTokenizer>,
        device: B::Device,
    ) -> Self {
        Engine { model, rope: Rope::new(config, &device), device, tokenizer }
    }

    /// Generate one completion per prompt. `on_step` is called with the number of tokens
    /// produced in each step (for progress bars). Prompt `i` samples with seed
    /// `params.seed ^ mix(i)`; use [`Engine::generate_seeded`] to give each prompt its own.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        on_step: impl FnMut(usize),
    ) -> Result<Vec<Completion>> {
        let seeds: Vec<u64> = (0..prompts.len())
            .map(|i| params.seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407))
            .collect();
        self.generate_seeded(prompts, &seeds, params, on_step)
    }

    /// Like [`Engine::generate`], with one seed per prompt, so that what a prompt samples does
    /// not depend on the rest of the batch.
    pub fn generate_seeded(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        params: &SamplingParams,
        mut on_step: impl FnMut(usize),
    ) -> Result<Vec<Completion>> {
        if seeds.len() != prompts.len() {
            return Err(Error::Generate(format!(
                "{} seeds for {} prompts",
                seeds.len(),
                prompts.len()
            )));
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::Generate("empty prompt".into()));
        }
        if !params.stop_strings.is_empty() && self.tokenizer.is_none() {
            return Err(Error::Generate("stop strings need a tokenizer".into()));
        }
        let n = prompts.len();
        let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pad: Vec<usize> = prompts.iter().map(|p| max_len - p.len()).collect();
        let mut rows: Vec<Row> = (0..n)
            .map(|i| Row {
                req: i,
                ids: vec![],
                rng: Rng(seeds[i]),
                logprobs: (params.logprobs > 0).then(|| TokenLogprobs::new(params.logprobs as u32)),
                done: None,
                text: String::new(),
            })
            .collect();
        let mut out: Vec<Option<Completion>> = vec![None; n];

        // Prefill: all prompts, left-padded, in one forward.
        let flat: Vec<i64> = prompts
            .iter()
            .zip(&pad)
            .flat_map(|(p, &k)| std::iter::repeat_n(0i64, k).chain(p.iter().map(|&t| t as i64)))
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [n, max_len]), &self.device);
        let (mask, pos) = if pad.iter().all(|&p| p == 0) {
            (AttnMask::Causal, masks::positions(n, max_len, 0, &self.device))
        } else {
            masks::left_padded(&pad, max_len, max_len, &self.device)
        };
        let mut cache = KvCache::new(self.model.model.layers.len());
        let hidden = self.model.forward_hidden(ids, pos, &self.rope, &mask, Some(&mut cache));
        let d = hidden.dims()[2];
        let mut logits = self.model.logits(hidden.narrow(1, max_len - 1, 1).reshape([n, d])); // [n, vocab]
        let mut active: Vec<usize> = (0..n).collect(); // batch row → index into `rows`
        let mut active_pad = pad.clone();

        for step in 0..params.max_tokens {
            let vocab = logits.dims()[1];
            let host: Vec<f32> = logits
                .into_data()
                .convert::<f32>()
                .into_vec()
                .map_err(|e| Error::Generate(format!("{e:?}")))?;
            let mut next = Vec::with_capacity(active.len());
            for (b, &r) in active.iter().enumerate() {
                let row = &mut rows[r];
                let lg = &host[b * vocab..(b + 1) * vocab];
                let tok = pick(lg, params, &mut row.rng);
                if let Some(lp) = row.logprobs.as_mut() {
                    record_logprobs(lp, lg, tok, params.logprobs);
                }
                row.ids.push(tok);
                next.push(tok);
                if params.stop_ids.contains(&tok) {
                    row.done = Some(FinishReason::Stop);
                } else if let Some(tk) = self.tokenizer.filter(|_| !params.stop_strings.is_empty())
                {
                    let text = tk.decode(&row.ids, true)?;
                    if let Some(cut) =
                        params.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min()
                    {
                        row.text = text[..cut].to_string();
                        row.done = Some(FinishReason::Stop);
                    }
                }
                if row.done.is_none() && step + 1 == params.max_tokens {
                    row.done = Some(FinishReason::Length);
                }
            }
            on_step(active.len());
            // Retire finished rows; shrink the batch and the cache.
            let keep: Vec<usize> =
                (0..active.len()).filter(|&b| rows[active[b]].done.is_none()).collect();
            for &b in (0..active.len()).filter(|b| !keep.contains(b)).collect::<Vec<_>>().iter() {
                let r = active[b];
                let req = rows[r].req;
                out[req] = Some(self.finish(&mut rows[r], prompts[req].len(), params)?);
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                let idx = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(
                        keep.iter().map(|&b| b as i64).collect::<Vec<_>>(),
                        [keep.len()],
                    ),
                    &self.device,
                );
                cache.select_rows(idx);
                active = keep.iter().map(|&b| active[b]).collect();
                active_pad = keep.iter().map(|&b| active_pad[b]).collect();
                next = keep.iter().map(|&b| next[b]).collect();
            }
            // Decode one token for every live row.
            let m = active.len();
            let ids = Tensor::<B, 2, Int>::from_data(
                TensorData::new(next.iter().map(|&t| t as i64).collect::<Vec<_>>(), [m, 1]),
                &self.device,
            );
            let cached = cache.len();
            let (mask, pos) = masks::decode(
                &active_pad,
                cached,
                KvCache::<B>::capacity_for(cached + 1),
                &self.device,
            );
            let hidden = self.model.forward_hidden(ids, pos, &self.rope, &mask, Some(&mut cache));
            logits = self.model.logits(hidden.reshape([m, d]));
        }
        for row in rows.iter_mut() {
            if out[row.req].is_none() {
                row.done.get_or_insert(FinishReason::Length);
                out[row.req] = Some(self.finish(row, prompts[row.req].len(), params)?);
            }
        }
        Ok(out.into_iter().map(|c| c.expect("every request finishes")).collect())
    }

    fn finish(
        &self,
        row: &mut Row,
        prompt_tokens: usize,
        params: &SamplingParams,
    ) -> Result<Completion> {
        let reason = row.done.clone().unwrap_or(FinishReason::Length);
        let text = if !row.text.is_empty() {
            std::mem::take(&mut row.text)
        } else if let Some(tk) = self.tokenizer {
            let body: &[u32] = match row.ids.last() {
                Some(t) if params.stop_ids.contains(t) => &row.ids[..row.ids.len() - 1],
                _ => &row.ids,
            };
            tk.decode(body, false)?
        } else {
            String::new()
        };
        Ok(Completion {
            ids: std::mem::take(&mut row.ids),
            text,
            finish_reason: reason,
            prompt_tokens,
            logprobs: row.logprobs.take(),
        })
    }
}

/// Choose the next token from one row of logits.
fn pick(logits: &[f32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    if p.temperature <= 0.0 {
        // First maximum, as torch.argmax.
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut cand: Vec<(u32, f32)> =
        logits.iter().enumerate().map(|(i, &x)| (i as u32, x / p.temperature)).collect();
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, &x) in probs.iter().enumerate() {
            cum += x;
            if cum >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let t: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= t);
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    for (i, &x) in probs.iter().enumerate() {
        cum += x;
        if u < cum {
            return cand[i].0;
        }
    }
    cand[probs.len() - 1].0
}

/// Log-softmax of the raw logits (temperature 1): the chosen token's log-prob and the top `k`.
fn record_logprobs(lp: &mut TokenLogprobs, logits: &[f32], tok: u32, k: usize) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &x) in logits.iter().enumerate() {
        if top.len() < k || x > top[top.len() - 1].1 {
            let at = top.partition_point(|t| t.1 >= x);
            top.insert(at, (i as u32, x));
            top.truncate(k);
        }
    }
    let top: Vec<(u32, f32)> = top.into_iter().map(|(i, x)| (i, x - lse)).collect();
    lp.push(tok, logits[tok as usize] - lse, &top);
}
