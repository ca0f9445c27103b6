//! Losses: token-sum cross-entropy over assistant tokens, and forward KL to the teacher's
//! renormalised top-k. Both return sums; the trainer divides by counts over the whole accumulated
//! batch, which makes the loss a token mean across micro-batches (as TRL computes it).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, TensorData};

use super::pack::Batch;
use distill_models::masks;
use distill_models::model::CausalLm;
use distill_models::rope::Rope;

/// Sums for one micro-batch.
pub struct LossSums<B: Backend> {
    /// Σ −log p(target) over loss tokens (scalar tensor).
    pub ce: Tensor<B, 1>,
    /// Σ KL(teacher top-k ‖ student top-k) over scored positions, if any.
    pub kd: Option<Tensor<B, 1>>,
    pub tokens: usize,
    pub kd_positions: usize,
}

impl<B: Backend> LossSums<B> {
    /// This micro-batch's part of the step's objective, `(1−w)·Σce/N + w·Σkd/N_kd` over the
    /// whole step's N loss tokens and N_kd scored positions; its sums are added to `ce_total`
    /// and `kd_total` (the KD sum only when the KD term is on).
    pub fn objective(
        &self,
        w: f64,
        n_tokens: usize,
        n_kd: usize,
        ce_total: &mut f64,
        kd_total: &mut f64,
    ) -> Tensor<B, 1> {
        let mut loss = self.ce.clone().mul_scalar((1.0 - w) / n_tokens.max(1) as f64);
        *ce_total += self.ce.clone().into_scalar().elem::<f64>();
        if let (Some(kd), true) = (self.kd.as_ref(), w > 0.0) {
            *kd_total += kd.clone().into_scalar().elem::<f64>();
            loss = loss + kd.clone().mul_scalar(w / n_kd.max(1) as f64);
        }
        loss
    }
}

/// The LM head: a `[hidden, vocab]` weight (a transposed view of the embedding when tied) and
/// the bias, if it has one.
pub struct Head<B: Backend> {
    pub weight: Tensor<B, 2>,
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Head<B> {
    pub fn of(model: &CausalLm<B>) -> Self {
        match &model.lm_head {
            Some(h) => Head { weight: h.weight.val(), bias: h.bias.as_ref().map(|b| b.val()) },
            None => Head { weight: model.model.embed_tokens.val().transpose(), bias: None },
        }
    }

    /// `[n, hidden]` → `[n, vocab]`.
    pub(crate) fn logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = x.matmul(self.weight.clone());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze(),
            None => y,
        }
    }
}

/// The batch's input ids `[rows, len]`, attention mask and positions.
pub fn inputs<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, distill_models::model::AttnMask<B>, Tensor<B, 2, Int>) {
    let (r, t) = (batch.rows, batch.len);
    let ids: Vec<i64> = batch.ids.iter().map(|&x| x as i64).collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [r, t]), device);
    let docs: Vec<Vec<u32>> = batch.docs.chunks(t).map(<[u32]>::to_vec).collect();
    let (mask, positions) = masks::packed::<B>(&docs, device);
    (input, mask, positions)
}

/// Forward the batch and compute the loss sums. Only positions with a target go through the
/// LM head, so prompt tokens and padding cost no vocabulary-sized logits.
pub fn losses<B: Backend>(
    model: &CausalLm<B>,
    rope: &Rope<B>,
    batch: &Batch,
    device: &B::Device,
) -> LossSums<B> {
    let (input, mask, positions) = inputs(batch, device);
    let hidden = model.forward_hidden(input, positions, rope, &mask, None); // [r, t, d]
    losses_from_hidden(&Head::of(model), hidden, batch, device)
}

/// The loss sums from the final (normed) hidden states `[rows, len, hidden]` and the LM head.
pub fn losses_from_hidden<B: Backend>(
    head: &Head<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch,
    device: &B::Device,
) -> LossSums<B> {
    // DISTILL_PLAIN_CE=1 computes the whole logits (to measure the difference).
    let chunked = std::env::var_os("DISTILL_PLAIN_CE").is_none() && head.bias.is_none();
    losses_with(head, hidden, batch, device, chunked)
}

/// [`losses_from_hidden`], through the chunked LM head (`chunked`, needs a head without bias) or
/// the whole logits.
pub fn losses_with<B: Backend>(
    head: &Head<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch,
    device: &B::Device,
    chunked: bool,
) -> LossSums<B> {
    let chunked = chunked && head.bias.is_none();
    let (r, t) = (batch.rows, batch.len);
    let d = hidden.dims()[2];
    let flat = hidden.reshape([r * t, d]);

    let rows: Vec<usize> = (0..r * t).filter(|&i| batch.targets[i].is_some()).collect();
    let tokens = rows.len();
    if tokens == 0 {
        return LossSums { ce: Tensor::zeros([1], device), kd: None, tokens: 0, kd_positions: 0 };
    }
    let idx = Tensor::<B, 1, Int>::from_data(
        TensorData::new(rows.iter().map(|&i| i as i64).collect::<Vec<_>>(), [tokens]),
        device,
    );
    let selected = flat.select(0, idx); // [tokens, d]
    let targets: Vec<u32> = rows.iter().map(|&i| batch.targets[i].unwrap()).collect();
    // The LM head chunk by chunk, never the [tokens, vocab] logits (crate::lm_head_loss): the
    // cross-entropy, and for KD only the student's logits at the teacher's top-k ids.
    let full_logits = (!chunked).then(|| head.logits(selected.clone()).cast(DType::F32)); // [tokens, vocab]
    let ce = match &full_logits {
        None => {
            crate::lm_head_loss::cross_entropy_sum(selected.clone(), head.weight.clone(), &targets)
        }
        Some(logits) => {
            let logp = log_softmax(logits.clone(), 1);
            let t: Vec<i64> = targets.iter().map(|&x| x as i64).collect();
            let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(t, [tokens, 1]), device);
            logp.gather(1, tgt).sum().neg()
        }
    };

    let kd = (!batch.kd.is_empty()).then(|| {
        let k = batch.kd_k;
        let pos_of: std::collections::HashMap<usize, usize> =
            rows.iter().enumerate().map(|(j, &i)| (i, j)).collect();
        let at: Vec<i64> = batch.kd.iter().map(|(p, _, _)| pos_of[p] as i64).collect();
        let n = at.len();
        let sel = Tensor::<B, 1, Int>::from_data(TensorData::new(at, [n]), device);
        // Padded alternatives (id u32::MAX, logprob -inf) point at token 0 with zero teacher mass.
        let ids: Vec<u32> = batch
            .kd
            .iter()
            .flat_map(|(_, ids, _)| ids.iter().map(|&i| if i == u32::MAX { 0 } else { i }))
            .collect();
        let mut tp: Vec<f32> = Vec::with_capacity(n * k);
        let mut valid: Vec<f32> = Vec::with_capacity(n * k);
        for (_, ids, lps) in &batch.kd {
            let max = lps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = lps.iter().map(|&l| (l - max).exp()).sum();
            for (&i, &l) in ids.iter().zip(lps) {
                let ok = i != u32::MAX && l.is_finite();
                tp.push(if ok { (l - max).exp() / z } else { 0.0 });
                valid.push(if ok { 0.0 } else { f32::NEG_INFINITY });
            }
        }
        let picked = match &full_logits {
            None => crate::lm_head_loss::gathered_logits(
                selected.clone().select(0, sel),
                head.weight.clone(),
                &ids,
                k,
            )
            .cast(DType::F32),
            Some(logits) => {
                let g: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                let gather = Tensor::<B, 2, Int>::from_data(TensorData::new(g, [n, k]), device);
                logits.clone().select(0, sel).gather(1, gather)
            }
        }; // [n, k]
        let s_top = picked + Tensor::<B, 2>::from_data(TensorData::new(valid, [n, k]), device);
        let log_q = log_softmax(s_top, 1); // student renormalised over the teacher's top-k
        let p = Tensor::<B, 2>::from_data(TensorData::new(tp.clone(), [n, k]), device);
        let log_p: Vec<f32> = tp.iter().map(|&x| if x > 0.0 { x.ln() } else { 0.0 }).collect();
        let log_p = Tensor::<B, 2>::from_data(TensorData::new(log_p, [n, k]), device);
        // Zero-mass entries contribute 0 · (0 − log q); mask them to avoid 0 · ∞.
        let safe_log_q = log_q.mask_fill(p.clone().equal_elem(0.0), 0.0);
        (p * (log_p - safe_log_q)).sum()
    });
    LossSums { ce, kd, tokens, kd_positions: batch.kd.len() }
}

#[cfg(test)]
mod chunked_tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;
    use distill_models::device::{Flex, FlexDevice};

    type Ad = Autodiff<Flex>;

    /// Cross-entropy plus logit distillation through the chunked LM head equals the whole-logits
    /// computation: both sums and the gradients of the hidden states and the head, within 1e-5
    /// relative (padded top-k alternatives and positions without KD included).
    #[test]
    fn chunked_ce_and_kd_equal_the_whole_logits() {
        let dev = FlexDevice;
        let (rows, len, d, v, k) = (2, 9, 16, 211, 4);
        let h0 = Tensor::<Flex, 3>::random([rows, len, d], Distribution::Normal(0.0, 1.0), &dev);
        let w0 = Tensor::<Flex, 2>::random([d, v], Distribution::Normal(0.0, 0.3), &dev);
        let targets: Vec<Option<u32>> =
            (0..rows * len).map(|i| (i % 5 != 0).then_some(((i * 31 + 7) % v) as u32)).collect();
        let kd: Vec<(usize, Vec<u32>, Vec<f32>)> = (0..rows * len)
            .filter(|i| targets[*i].is_some() && i % 3 != 0)
            .map(|i| {
                let mut ids: Vec<u32> = (0..k).map(|j| ((i * 13 + j * 57) % v) as u32).collect();
                let mut lps: Vec<f32> = (0..k).map(|j| -0.3 - j as f32 * 0.7).collect();
                if i % 4 == 1 {
                    ids[k - 1] = u32::MAX;
                    lps[k - 1] = f32::NEG_INFINITY;
                }
                (i, ids, lps)
            })
            .collect();
        let batch = Batch {
            rows,
            len,
            ids: vec![3; rows * len],
            docs: vec![0; rows * len],
            targets,
            kd,
            kd_k: k,
            kd_token: vec![],
            rl: vec![],
            real_tokens: rows * len,
        };
        let run = |chunked: bool| {
            let h = Tensor::<Ad, 3>::from_inner(h0.clone()).require_grad();
            let w = Tensor::<Ad, 2>::from_inner(w0.clone()).require_grad();
            let l = losses_with(
                &Head { weight: w.clone(), bias: None },
                h.clone(),
                &batch,
                &dev,
                chunked,
            );
            let kd = l.kd.unwrap();
            let total = l.ce.clone().mul_scalar(0.6) + kd.clone().mul_scalar(0.4);
            let grads = total.backward();
            let f = |x: Vec<f32>| x;
            vec![
                f(l.ce.inner().into_data().to_vec().unwrap()),
                f(kd.inner().into_data().to_vec().unwrap()),
                h.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(),
                w.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(),
            ]
        };
        let (plain, chunked) = (run(false), run(true));
        for (what, (a, b)) in
            ["ce", "kd", "d hidden", "d head"].iter().zip(plain.iter().zip(&chunked))
        {
            let scale = a.iter().fold(0f32, |x, y| x.max(y.abs())).max(1e-6);
            let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale;
            assert!(err < 1e-5, "{what}: relative error {err}");
        }
    }
}
