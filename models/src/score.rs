//! Scoring given tokens with a teacher: for a prompt and a completion someone else sampled, the
//! teacher's log-prob of each completion token and its top-k at each completion position. On-policy
//! distillation asks this of the teacher for every student sample; the local engine answers with
//! one forward pass, an endpoint with `prompt_logprobs` (the teacher crate).

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use distill_data::TokenLogprobs;

use crate::error::{Error, Result};
use crate::masks;
use crate::model::{AttnMask, CausalLm};
use crate::rope::Rope;

/// A prompt and the completion to score, as token ids of the teacher's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRequest {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
}

/// Something that scores completions: the teacher of an on-policy run.
pub trait Scorer {
    /// One [`TokenLogprobs`] per request: `tokens` = the completion, `token_logprobs` = the
    /// teacher's log-prob of each, `top_*` = its `k` most likely tokens at each position.
    fn score(&self, reqs: &[ScoreRequest], k: usize) -> Result<Vec<TokenLogprobs>>;
    /// The teacher's name, as traces record it.
    fn model(&self) -> String;
    /// Where it runs, for logs and errors.
    fn describe(&self) -> String;
    /// What kind of backend it is, as traces record it.
    fn endpoint_kind(&self) -> distill_data::EndpointKind {
        distill_data::EndpointKind::Local
    }
}

/// The teacher on a device of this process.
pub struct LocalScorer<B: Backend> {
    pub model: CausalLm<B>,
    pub rope: Rope<B>,
    pub device: B::Device,
    pub name: String,
}

impl<B: Backend> LocalScorer<B> {
    pub fn new(
        model: CausalLm<B>,
        config: &crate::ModelConfig,
        device: B::Device,
        name: String,
    ) -> Self {
        let rope = Rope::new(config, &device);
        LocalScorer { model, rope, device, name }
    }
}

/// The top `k` of one row of log-probs, most likely first (ties by lower id).
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(row.len());
    if k == 0 {
        return vec![];
    }
    let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

impl<B: Backend> Scorer for LocalScorer<B> {
    fn score(&self, reqs: &[ScoreRequest], k: usize) -> Result<Vec<TokenLogprobs>> {
        let vocab = self.model.dims().vocab;
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            if r.prompt.is_empty() {
                return Err(Error::Generate("scoring: an empty prompt".into()));
            }
            if let Some(&bad) = r.prompt.iter().chain(&r.completion).find(|&&i| i as usize >= vocab)
            {
                return Err(Error::Generate(format!(
                    "scoring: token id {bad} is outside the teacher's vocabulary of {vocab}"
                )));
            }
            let mut lp = TokenLogprobs::new(k as u32);
            let c = r.completion.len();
            if c == 0 {
                out.push(lp);
                continue;
            }
            // Every token but the last goes in; positions p-1 .. p+c-2 predict the completion.
            let ids: Vec<i64> =
                r.prompt.iter().chain(&r.completion[..c - 1]).map(|&i| i as i64).collect();
            let n = ids.len();
            let x = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &self.device);
            let pos = masks::positions(1, n, 0, &self.device);
            let hidden = self.model.forward_hidden(x, pos, &self.rope, &AttnMask::Causal, None);
            let d = hidden.dims()[2];
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(((n - c) as i64..n as i64).collect::<Vec<_>>(), [c]),
                &self.device,
            );
            let h = hidden.reshape([n, d]).select(0, idx); // [c, d]
            let logits = self.model.logits(h).cast(burn::tensor::DType::F32); // [c, vocab]
            let rows: Vec<f32> = log_softmax(logits, 1)
                .into_data()
                .to_vec()
                .map_err(|e| Error::Generate(format!("scoring: {e:?}")))?;
            for (j, &tok) in r.completion.iter().enumerate() {
                let row = &rows[j * vocab..(j + 1) * vocab];
                lp.push(tok, row[tok as usize], &top_k(row, k));
            }
            out.push(lp);
        }
        Ok(out)
    }

    fn model(&self) -> String {
        self.name.clone()
    }

    fn describe(&self) -> String {
        format!("local engine ({})", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_orders_by_value_then_id() {
        let row = [0.1, 0.5, 0.5, -1.0, 0.3];
        assert_eq!(top_k(&row, 3), vec![(1, 0.5), (2, 0.5), (4, 0.3)]);
        assert_eq!(top_k(&row, 9).len(), 5);
        assert!(top_k(&row, 0).is_empty());
    }
}
