//! Per-token divergences between the student and the teacher on the student's own samples.
//!
//! Each scored position predicts a token the student sampled; the teacher's scores there are its
//! log-prob of that token (`Batch::kd_token`) and its top-k (`Batch::kd`).
//!
//! - **`reverse_kl`** — the sampled-token estimator of KL(student ‖ teacher), as Thinking
//!   Machines' on-policy distillation uses it: at each position the per-token reverse KL
//!   `A = log q(x) − log p(x)` of the sampled token `x` is an advantage for the student's
//!   log-prob gradient, `∇ = A·∇log q(x)` (with `A` held constant). Over samples from the student
//!   this is an unbiased estimate of the full-vocabulary reverse KL's gradient (per token, without
//!   credit to later tokens), and it needs nothing but the teacher's log-prob of the sampled
//!   token: an endpoint that can score prompts gives it exactly. The top-k closed form would be
//!   biased by the mass outside the teacher's k tokens and by renormalisation, which is largest
//!   exactly where the student wanders off the teacher's support. The value reported is `A`
//!   itself (the objective is built as `A·(log q − sg(log q)) + A`), so the loss curve is the
//!   per-token reverse-KL estimate.
//! - **`gkd`** — GKD's generalised Jensen-Shannon divergence with `beta` over the teacher's top-k
//!   support, both distributions renormalised there (as the KD term of SFT is): with
//!   `M = β·P + (1−β)·Q`, `JSD_β = β·KL(P‖M) + (1−β)·KL(Q‖M)`; `beta = 0` is forward
//!   KL(P‖Q), `beta = 1` reverse KL(Q‖P), as in TRL's `generalized_jsd_loss`.
//!
//! Both return per-position sums; the trainer divides by the step's scored positions.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::loss::{Head, LossSums, inputs};
use super::pack::Batch;
use distill_models::model::CausalLm;
use distill_models::rope::Rope;

/// Which divergence an on-policy step minimises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "loss", rename_all = "snake_case", deny_unknown_fields)]
pub enum Divergence {
    /// Sampled-token reverse KL, as a per-token advantage.
    ReverseKl,
    /// Generalised JSD over the teacher's top-k; `beta` 0 = forward KL, 1 = reverse KL.
    Gkd { beta: f64 },
}

/// Forward the batch and return the divergence summed over its scored positions (in `ce`, with
/// `tokens` = positions), for [`LossSums::objective`] with no KD weight.
pub fn losses<B: Backend>(
    model: &CausalLm<B>,
    rope: &Rope<B>,
    batch: &Batch,
    device: &B::Device,
    div: Divergence,
) -> LossSums<B> {
    let (input, mask, positions) = inputs(batch, device);
    let hidden = model.forward_hidden(input, positions, rope, &mask, None); // [r, t, d]
    losses_from_hidden(&Head::of(model), hidden, batch, device, div)
}

/// As [`losses`], from the final hidden states `[rows, len, hidden]`.
pub fn losses_from_hidden<B: Backend>(
    head: &Head<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch,
    device: &B::Device,
    div: Divergence,
) -> LossSums<B> {
    let n = batch.kd.len();
    let none = || LossSums { ce: Tensor::zeros([1], device), kd: None, tokens: 0, kd_positions: 0 };
    if n == 0 {
        return none();
    }
    let (r, t) = (batch.rows, batch.len);
    let d = hidden.dims()[2];
    let at: Vec<i64> = batch.kd.iter().map(|(p, _, _)| *p as i64).collect();
    let sel = Tensor::<B, 1, Int>::from_data(TensorData::new(at, [n]), device);
    let x = hidden.reshape([r * t, d]).select(0, sel); // [n, d]
    let logits = head.logits(x).cast(burn::tensor::DType::F32); // [n, vocab]
    let sum = match div {
        Divergence::ReverseKl => {
            assert_eq!(
                batch.kd_token.len(),
                n,
                "reverse_kl needs the teacher's log-prob of every sampled token"
            );
            let targets: Vec<i64> = batch
                .kd
                .iter()
                .map(|(p, _, _)| batch.targets[*p].expect("a scored position has a target") as i64)
                .collect();
            let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), device);
            let log_q = log_softmax(logits, 1).gather(1, tgt).reshape([n]); // [n]
            let log_p =
                Tensor::<B, 1>::from_data(TensorData::new(batch.kd_token.clone(), [n]), device);
            let adv = log_q.clone().detach() - log_p; // A, constant
            // Value A, gradient A·∇log q.
            (adv.clone() * (log_q.clone() - log_q.detach()) + adv).sum()
        }
        Divergence::Gkd { beta } => gkd_sum(logits, batch, device, beta),
    };
    LossSums { ce: sum, kd: None, tokens: n, kd_positions: 0 }
}

/// Σ over positions of JSD_β between the teacher's and the student's distributions renormalised
/// over the teacher's top-k (padding entries carry no mass on either side).
fn gkd_sum<B: Backend>(
    logits: Tensor<B, 2>,
    batch: &Batch,
    device: &B::Device,
    beta: f64,
) -> Tensor<B, 1> {
    let (n, k) = (batch.kd.len(), batch.kd_k);
    let mut ids = Vec::with_capacity(n * k);
    let mut pad = Vec::with_capacity(n * k);
    let mut log_p = Vec::with_capacity(n * k);
    for (_, tid, tlp) in &batch.kd {
        let max = tlp
            .iter()
            .zip(tid)
            .filter(|(l, i)| **i != u32::MAX && l.is_finite())
            .map(|(l, _)| *l)
            .fold(f32::NEG_INFINITY, f32::max);
        let lse = max
            + tlp
                .iter()
                .zip(tid)
                .filter(|(l, i)| **i != u32::MAX && l.is_finite())
                .map(|(l, _)| (l - max).exp())
                .sum::<f32>()
                .ln();
        for (&i, &l) in tid.iter().zip(tlp) {
            let ok = i != u32::MAX && l.is_finite();
            ids.push(if ok { i as i64 } else { 0 });
            pad.push(!ok);
            log_p.push(if ok { l - lse } else { 0.0 });
        }
    }
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, k]), device);
    let pad = Tensor::<B, 2, Bool>::from_data(TensorData::new(pad, [n, k]), device);
    let log_p = Tensor::<B, 2>::from_data(TensorData::new(log_p, [n, k]), device); // 0 at pads
    let p = log_p.clone().exp().mask_fill(pad.clone(), 0.0);
    // The student over the teacher's support: padding gets −∞ before the softmax.
    let s = logits.gather(1, ids).mask_fill(pad.clone(), f32::NEG_INFINITY);
    let log_q_raw = log_softmax(s, 1);
    let q = log_q_raw.clone().exp(); // 0 at pads
    let log_q = log_q_raw.mask_fill(pad.clone(), 0.0);
    let term = |w: Tensor<B, 2>, a: Tensor<B, 2>, b: Tensor<B, 2>| (w * (a - b)).sum();
    if beta <= 0.0 {
        return term(p, log_p, log_q); // KL(P‖Q)
    }
    if beta >= 1.0 {
        return term(q, log_q, log_p); // KL(Q‖P)
    }
    // log M = logsumexp(log P + ln β, log Q + ln(1−β)), stable at every entry (pads are 0s).
    let a = log_p.clone().add_scalar(beta.ln());
    let b = log_q.clone().add_scalar((1.0 - beta).ln());
    let m = a.clone().max_pair(b.clone());
    let log_m = m.clone() + ((a - m.clone()).exp() + (b - m).exp()).log();
    let log_m = log_m.mask_fill(pad, 0.0);
    term(p, log_p, log_m.clone()).mul_scalar(beta) + term(q, log_q, log_m).mul_scalar(1.0 - beta)
}
