//! Cross-entropy through the LM head without the `[tokens, vocab]` logits, with its own backward.
//!
//! Computed the ordinary way, a step keeps the logits and their softmax for every loss position
//! until the backward pass: at Open-R1's 32k context and Qwen2.5's 152k vocabulary that is about
//! 40 GB, the largest single item after the weights. This op (the idea of Liger Kernel's fused
//! linear cross-entropy and Apple's Cut Cross-Entropy) runs the LM head and the cross-entropy over
//! chunks of positions and keeps only the hidden states (which the graph holds anyway), the head's
//! weight and one log-sum-exp per position; the backward pass recomputes each chunk's logits and
//! turns them straight into the hidden states' and the weight's gradients.
//!
//! Under bf16 compute the matmuls run in the weights' dtype and every chunk's softmax in f32, as
//! the unchunked path does (its logits are cast to f32 before the log-softmax).
//!
//! Used on the backends of [`distill_models::attention`] under autodiff; elsewhere the plain computation
//! runs.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, TensorData, TensorPrimitive};

use distill_models::attention::{prim, same_type, wrap};

/// Calls `$m!(inner backend, checkpoint strategy)` for every autodiff backend the fused ops
/// (this module's, and the training attention's) have a backward for.
macro_rules! for_each_fused_backend {
    ($m:ident) => {
        $m!(distill_models::device::Flex, NoCheckpointing);
        $m!(distill_models::device::Flex, BalancedCheckpointing);
        $m!(distill_models::device::NdArray, NoCheckpointing);
        $m!(distill_models::device::NdArray, BalancedCheckpointing);
        #[cfg(feature = "cuda")]
        {
            $m!(distill_models::device::Cuda, NoCheckpointing);
            $m!(distill_models::device::Cuda, BalancedCheckpointing);
        }
        #[cfg(feature = "wgpu")]
        {
            $m!(distill_models::device::Wgpu, NoCheckpointing);
            $m!(distill_models::device::Wgpu, BalancedCheckpointing);
        }
    };
}

/// Logit elements per chunk (`rows × vocab`): 32M f32 = 128 MB per temporary.
pub const CHUNK_ELEMS: usize = 1 << 25;

/// `Σ_i −log softmax(hidden_i · weight)[target_i]`: `hidden` `[n, d]`, `weight` `[d, vocab]`,
/// `targets` n ids → a one-element tensor.
pub fn cross_entropy_sum<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: &[u32],
) -> Tensor<B, 1> {
    macro_rules! fused_on {
        ($inner:ty, $ckpt:ty) => {
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner, $ckpt>>() {
                return same_type(fused::<$inner, $ckpt>(
                    same_type(hidden),
                    same_type(weight),
                    targets,
                    CHUNK_ELEMS,
                ));
            }
        };
    }
    for_each_fused_backend!(fused_on);
    plain(hidden, weight, targets)
}

/// The unchunked computation (and the reference the op is tested against).
pub fn plain<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: &[u32],
) -> Tensor<B, 1> {
    let device = hidden.device();
    let n = targets.len();
    let logits = hidden.matmul(weight).cast(DType::F32); // [n, vocab]
    let tgt = Tensor::<B, 2, Int>::from_data(
        TensorData::new(targets.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n, 1]),
        &device,
    );
    log_softmax(logits, 1).gather(1, tgt).sum().neg()
}

#[derive(Debug, Clone)]
struct Saved<I: Backend> {
    hidden: Tensor<I, 2>,
    weight: Tensor<I, 2>,
    targets: Vec<u32>,
    /// Log-sum-exp per position, per chunk `[rows, 1]` (f32).
    lse: Vec<Tensor<I, 2>>,
    rows: usize,
}

#[derive(Debug)]
struct FusedCe;

impl<I: Backend> Backward<I, 2> for FusedCe {
    type State = Saved<I>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = wrap::<I, 1>(grads.consume::<I>(&ops.node));
        let (dh, dw) = backward(ops.state, g);
        let [ph, pw] = ops.parents;
        if let Some(node) = ph {
            grads.register::<I>(node.id, prim(dh));
        }
        if let Some(node) = pw {
            grads.register::<I>(node.id, prim(dw));
        }
    }
}

fn fused<I: Backend, C: CheckpointStrategy>(
    hidden: Tensor<Autodiff<I, C>, 2>,
    weight: Tensor<Autodiff<I, C>, 2>,
    targets: &[u32],
    chunk_elems: usize,
) -> Tensor<Autodiff<I, C>, 1> {
    let (h, w) = (prim(hidden), prim(weight));
    let (ih, iw) = (wrap::<I, 2>(h.primitive.clone()), wrap::<I, 2>(w.primitive.clone()));
    let vocab = iw.dims()[1];
    let rows = (chunk_elems / vocab.max(1)).max(1);
    let out =
        match FusedCe.prepare::<C>([h.node.clone(), w.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (sum, lse) = forward(&ih, &iw, targets, rows);
                prep.finish(
                    Saved { hidden: ih, weight: iw, targets: targets.to_vec(), lse, rows },
                    prim(sum),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(prim(forward(&ih, &iw, targets, rows).0)),
        };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn target_ids<I: Backend>(targets: &[u32], device: &I::Device) -> Tensor<I, 2, Int> {
    Tensor::from_data(
        TensorData::new(targets.iter().map(|&t| t as i64).collect::<Vec<_>>(), [targets.len(), 1]),
        device,
    )
}

/// The loss sum `[1]` and each chunk's log-sum-exp.
fn forward<I: Backend>(
    hidden: &Tensor<I, 2>,
    weight: &Tensor<I, 2>,
    targets: &[u32],
    rows: usize,
) -> (Tensor<I, 1>, Vec<Tensor<I, 2>>) {
    let [n, d] = hidden.dims();
    let device = hidden.device();
    let mut sum = Tensor::<I, 1>::zeros([1], &device);
    let mut lses = Vec::new();
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let logits = hidden.clone().slice([r0..r1, 0..d]).matmul(weight.clone()).cast(DType::F32); // [c, vocab]
        let m = logits.clone().max_dim(1); // [c, 1]
        // Under burn-fusion a reduction may feed one consumer only (see the attention op).
        let m2 = if distill_models::attention::reductions_feed_one_consumer::<I>() {
            logits.clone().max_dim(1)
        } else {
            m.clone()
        };
        let lse = (logits.clone() - m).exp().sum_dim(1).log() + m2;
        let picked = logits.gather(1, target_ids::<I>(&targets[r0..r1], &device)); // [c, 1]
        sum = sum + (lse.clone() - picked).sum();
        lses.push(lse);
    }
    (sum, lses)
}

/// d loss / d hidden `[n, d]` and d loss / d weight `[d, vocab]`, chunk by chunk.
fn backward<I: Backend>(st: Saved<I>, g: Tensor<I, 1>) -> (Tensor<I, 2>, Tensor<I, 2>) {
    let [n, d] = st.hidden.dims();
    let vocab = st.weight.dims()[1];
    let device = st.hidden.device();
    let dtype = st.weight.dtype();
    let g = g.cast(DType::F32).reshape([1, 1]);
    let mut dhs = Vec::new();
    let mut dw = Tensor::<I, 2>::zeros([d, vocab], &device).cast(DType::F32);
    for (k, r0) in (0..n).step_by(st.rows).enumerate() {
        let r1 = (r0 + st.rows).min(n);
        let c = r1 - r0;
        let h = st.hidden.clone().slice([r0..r1, 0..d]);
        let logits = h.clone().matmul(st.weight.clone()).cast(DType::F32);
        // softmax − one-hot(target), times the incoming gradient.
        let p = (logits - st.lse[k].clone()).exp();
        let minus_one = Tensor::<I, 2>::full([c, 1], -1.0, &device);
        let dlogits = p.scatter(
            1,
            target_ids::<I>(&st.targets[r0..r1], &device),
            minus_one,
            burn::tensor::IndexingUpdateOp::Add,
        ) * g.clone();
        let dlogits = dlogits.cast(dtype);
        dhs.push(dlogits.clone().matmul(st.weight.clone().transpose()).cast(st.hidden.dtype())); // [c, d]
        dw = dw + h.transpose().matmul(dlogits).cast(DType::F32); // [d, vocab]
    }
    let dh = if dhs.is_empty() { Tensor::zeros([0, d], &device) } else { Tensor::cat(dhs, 0) };
    (dh, dw.cast(dtype))
}

/// The logits at given ids only, `out[i][j] = hidden_i · weight[:, ids[i][j]]`: `hidden` `[n, d]`,
/// `weight` `[d, vocab]`, `ids` n·m ids (row-major) → `[n, m]`, without the `[n, vocab]` logits.
/// Logit distillation needs only these (the student renormalised over the teacher's top-k), so
/// with [`cross_entropy_sum`] a KD step never holds the full logits either. Its backward keeps
/// nothing but `hidden`, `weight` and the ids: each chunk's `weight` columns are gathered again.
pub fn gathered_logits<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    ids: &[u32],
    m: usize,
) -> Tensor<B, 2> {
    macro_rules! fused_on {
        ($inner:ty, $ckpt:ty) => {
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner, $ckpt>>() {
                return same_type(fused_gather::<$inner, $ckpt>(
                    same_type(hidden),
                    same_type(weight),
                    ids,
                    m,
                ));
            }
        };
    }
    for_each_fused_backend!(fused_on);
    plain_gathered(hidden, weight, ids, m)
}

/// The whole logits, then the ids gathered (the reference the op is tested against).
pub fn plain_gathered<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    ids: &[u32],
    m: usize,
) -> Tensor<B, 2> {
    let n = hidden.dims()[0];
    let device = hidden.device();
    let idx = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n, m]),
        &device,
    );
    hidden.matmul(weight).gather(1, idx)
}

/// Rows per chunk of the gathered op: `rows × m × d` elements of gathered columns at a time.
fn gather_rows(m: usize, d: usize) -> usize {
    (CHUNK_ELEMS / (m * d).max(1)).max(1)
}

/// `weight`'s columns at `ids` as rows `[ids.len(), d]`.
fn columns<I: Backend>(weight_t: &Tensor<I, 2>, ids: &[u32]) -> Tensor<I, 2> {
    let device = weight_t.device();
    let idx = Tensor::<I, 1, Int>::from_data(
        TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [ids.len()]),
        &device,
    );
    weight_t.clone().select(0, idx)
}

fn gather_forward<I: Backend>(
    hidden: &Tensor<I, 2>,
    weight: &Tensor<I, 2>,
    ids: &[u32],
    m: usize,
) -> Tensor<I, 2> {
    let [n, d] = hidden.dims();
    let wt = weight.clone().transpose(); // [vocab, d]
    let rows = gather_rows(m, d);
    let mut out = Vec::new();
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let c = r1 - r0;
        let cols = columns(&wt, &ids[r0 * m..r1 * m]).reshape([c, m, d]);
        let h = hidden.clone().slice([r0..r1, 0..d]).reshape([c, 1, d]);
        out.push((cols * h).sum_dim(2).reshape([c, m]));
    }
    if out.is_empty() { Tensor::zeros([0, m], &hidden.device()) } else { Tensor::cat(out, 0) }
}

#[derive(Debug, Clone)]
struct SavedGather<I: Backend> {
    hidden: Tensor<I, 2>,
    weight: Tensor<I, 2>,
    ids: Vec<u32>,
    m: usize,
}

#[derive(Debug)]
struct FusedGather;

impl<I: Backend> Backward<I, 2> for FusedGather {
    type State = SavedGather<I>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = wrap::<I, 2>(grads.consume::<I>(&ops.node));
        let st = ops.state;
        let [n, d] = st.hidden.dims();
        let vocab = st.weight.dims()[1];
        let device = st.hidden.device();
        let wt = st.weight.clone().transpose();
        let rows = gather_rows(st.m, d);
        let m = st.m;
        let mut dhs = Vec::new();
        let mut dwt = Tensor::<I, 2>::zeros([vocab, d], &device).cast(st.weight.dtype());
        for r0 in (0..n).step_by(rows) {
            let r1 = (r0 + rows).min(n);
            let c = r1 - r0;
            let ids = &st.ids[r0 * m..r1 * m];
            let gc = g.clone().slice([r0..r1, 0..m]).reshape([c, m, 1]);
            let cols = columns(&wt, ids).reshape([c, m, d]);
            dhs.push((cols * gc.clone()).sum_dim(1).reshape([c, d]));
            let h = st.hidden.clone().slice([r0..r1, 0..d]).reshape([c, 1, d]);
            let contrib = (h * gc).reshape([c * m, d]);
            let idx = Tensor::<I, 1, Int>::from_data(
                TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [c * m]),
                &device,
            );
            dwt = dwt.select_assign(0, idx, contrib, burn::tensor::IndexingUpdateOp::Add);
        }
        let dh = if dhs.is_empty() { Tensor::zeros([0, d], &device) } else { Tensor::cat(dhs, 0) };
        let [ph, pw] = ops.parents;
        if let Some(node) = ph {
            grads.register::<I>(node.id, prim(dh));
        }
        if let Some(node) = pw {
            grads.register::<I>(node.id, prim(dwt.transpose()));
        }
    }
}

fn fused_gather<I: Backend, C: CheckpointStrategy>(
    hidden: Tensor<Autodiff<I, C>, 2>,
    weight: Tensor<Autodiff<I, C>, 2>,
    ids: &[u32],
    m: usize,
) -> Tensor<Autodiff<I, C>, 2> {
    let (h, w) = (prim(hidden), prim(weight));
    let (ih, iw) = (wrap::<I, 2>(h.primitive.clone()), wrap::<I, 2>(w.primitive.clone()));
    let out =
        match FusedGather.prepare::<C>([h.node.clone(), w.node.clone()]).compute_bound().stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = gather_forward(&ih, &iw, ids, m);
                prep.finish(SavedGather { hidden: ih, weight: iw, ids: ids.to_vec(), m }, prim(y))
            }
            OpsKind::UnTracked(prep) => prep.finish(prim(gather_forward(&ih, &iw, ids, m))),
        };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use distill_models::device::{Flex, FlexDevice};

    type Ad = Autodiff<Flex>;

    fn run(
        f: impl Fn(Tensor<Ad, 2>, Tensor<Ad, 2>) -> Tensor<Ad, 1>,
        h: &Tensor<Flex, 2>,
        w: &Tensor<Flex, 2>,
    ) -> Vec<Vec<f32>> {
        let (h, w) = (
            Tensor::<Ad, 2>::from_inner(h.clone()).require_grad(),
            Tensor::<Ad, 2>::from_inner(w.clone()).require_grad(),
        );
        let loss = f(h.clone(), w.clone());
        let grads = loss.clone().mul_scalar(0.37).backward();
        let flat = |x: Tensor<Flex, 2>| x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        vec![
            loss.inner().into_data().to_vec::<f32>().unwrap(),
            flat(h.grad(&grads).unwrap()),
            flat(w.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn chunked_cross_entropy_matches_the_plain_one_in_value_and_gradients() {
        let dev = FlexDevice;
        let (n, d, vocab) = (53, 24, 301);
        let h = Tensor::<Flex, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<Flex, 2>::random([d, vocab], Distribution::Normal(0.0, 0.3), &dev);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 97 + 13) % vocab as u32).collect();
        let reference = run(|h, w| plain(h, w, &targets), &h, &w);
        // One chunk, several (uneven), and one row per chunk.
        for elems in [1 << 25, 7 * vocab, vocab] {
            let ours = run(|h, w| fused(h, w, &targets, elems), &h, &w);
            for (name, (a, e)) in
                ["loss", "d hidden", "d weight"].iter().zip(ours.iter().zip(&reference))
            {
                let scale = e.iter().map(|x| x.abs()).fold(0f32, f32::max).max(1e-12);
                let err = a.iter().zip(e).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale;
                assert!(err < 1e-5, "{name}: relative error {err} (chunk {elems} elements)");
            }
        }
    }

    /// The gathered logits equal the whole logits' entries, in value and in both gradients.
    #[test]
    fn gathered_logits_match_the_plain_ones_in_value_and_gradients() {
        let dev = FlexDevice;
        let (n, d, v, m) = (37, 24, 301, 5);
        let h = Tensor::<Flex, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<Flex, 2>::random([d, v], Distribution::Normal(0.0, 0.3), &dev);
        let ids: Vec<u32> = (0..n * m).map(|i| ((i * 7919 + 13) % v) as u32).collect();
        // One non-uniform upstream gradient for both (made once: the backend's RNG is shared with
        // tests running in parallel).
        let upstream = Tensor::<Flex, 2>::random([n, m], Distribution::Normal(0.0, 1.0), &dev);
        let run2 = |f: &dyn Fn(Tensor<Ad, 2>, Tensor<Ad, 2>) -> Tensor<Ad, 2>| {
            let (h, w) = (
                Tensor::<Ad, 2>::from_inner(h.clone()).require_grad(),
                Tensor::<Ad, 2>::from_inner(w.clone()).require_grad(),
            );
            let y = f(h.clone(), w.clone());
            let grads =
                (y.clone() * Tensor::<Ad, 2>::from_inner(upstream.clone())).sum().backward();
            let flat = |x: Tensor<Flex, 2>| x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            vec![flat(y.inner()), flat(h.grad(&grads).unwrap()), flat(w.grad(&grads).unwrap())]
        };
        let plain = run2(&|h, w| plain_gathered(h, w, &ids, m));
        let fused = run2(&|h, w| gathered_logits(h, w, &ids, m));
        for (what, (a, b)) in ["value", "d hidden", "d weight"].iter().zip(plain.iter().zip(&fused))
        {
            let scale = a.iter().fold(0f32, |x, y| x.max(y.abs())).max(1e-6);
            let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale;
            assert!(err < 1e-5, "{what}: relative error {err}");
        }
    }
}
