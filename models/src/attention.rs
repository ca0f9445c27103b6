//! Memory-efficient causal attention for training, with its own backward pass.
//!
//! burn 0.21 differentiates attention as a chain of tensor ops, so autodiff keeps two
//! `[batch, heads, q, k]` score-sized tensors (the exponentials and the probabilities) plus the
//! mask for every layer until the backward pass: at seq 2048 that is most of the memory of a step
//! and grows with the square of the context. This op keeps only what FlashAttention keeps — the
//! inputs, the output and the per-row log-sum-exp — and recomputes the probabilities chunk by chunk
//! of query rows in the backward pass. Chunks skip the keys that causality hides, which also halves
//! the matmul work.
//!
//! It applies the causal mask always (queries aligned to the last keys), plus an optional explicit
//! mask on top: every multi-query mask distill builds (packed documents, padding) is a subset of
//! causal, so this is the same attention as burn's for them. Rows with every key masked give 0,
//! as burn's does.
//!
//! Under bf16 compute, q, k, v and the output stay bf16 and every chunk is computed in f32
//! (the log-sum-exp is kept in f32; burn's `cast` is a no-op when the dtype already matches).
//!
//! Used when the model runs under autodiff on a backend listed in [`causal`]; everywhere else (and
//! for inference) burn's own `attention` runs.

use std::any::{Any, TypeId};
use std::ops::Range;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, FloatTensor};
use burn::tensor::{DType, TensorPrimitive};

/// Score elements per chunk (`batch × heads × rows × keys`): 4M f32 = 16 MB of temporaries.
const CHUNK_ELEMS: usize = 1 << 22;

/// Causal attention `softmax(q kᵀ / √d + mask) v` with an optional extra mask (`true` = masked).
/// `q` `[b, h, t, d]`, `k`/`v` `[b, h, s, d]` with `s ≥ t`, `mask` `[b, 1, t, s]` → `[b, h, t, d]`.
pub fn causal<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    macro_rules! fused_on {
        ($inner:ty, $ckpt:ty) => {
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner, $ckpt>>() {
                return same_type(fused::<$inner, $ckpt>(
                    same_type(q),
                    same_type(k),
                    same_type(v),
                    mask.map(same_type),
                    CHUNK_ELEMS,
                ));
            }
        };
    }
    fused_on!(crate::device::Flex, NoCheckpointing);
    fused_on!(crate::device::Flex, BalancedCheckpointing);
    fused_on!(crate::device::NdArray, NoCheckpointing);
    fused_on!(crate::device::NdArray, BalancedCheckpointing);
    #[cfg(feature = "cuda")]
    {
        fused_on!(crate::device::Cuda, NoCheckpointing);
        fused_on!(crate::device::Cuda, BalancedCheckpointing);
    }
    #[cfg(feature = "wgpu")]
    {
        fused_on!(crate::device::Wgpu, NoCheckpointing);
        fused_on!(crate::device::Wgpu, BalancedCheckpointing);
    }
    // burn's attention: the explicit masks are causal already, so causal masking is only asked
    // for without one (the same calls the model made before this op existed).
    let [b, h, t, s] = [q.dims()[0], q.dims()[1], q.dims()[2], k.dims()[2]];
    let opts = AttentionModuleOptions { scale: None, softcap: None, is_causal: mask.is_none() };
    attention(q, k, v, mask.map(|m| m.expand([b, h, t, s])), None, opts)
}

/// Moves a value between two names of the same type (checked by `TypeId` at the call).
#[doc(hidden)]
pub fn same_type<T: 'static, U: 'static>(x: T) -> U {
    *(Box::new(x) as Box<dyn Any>).downcast::<U>().expect("backend dispatch: type mismatch")
}

#[doc(hidden)]
pub fn wrap<I: Backend, const D: usize>(p: FloatTensor<I>) -> Tensor<I, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

#[doc(hidden)]
pub fn prim<I: Backend, const D: usize>(t: Tensor<I, D>) -> FloatTensor<I> {
    t.into_primitive().tensor()
}

/// What the backward pass needs: inputs, output, per-chunk log-sum-exp `[b, h, rows, 1]`, mask.
#[derive(Debug, Clone)]
struct Saved<I: Backend> {
    q: Tensor<I, 4>,
    k: Tensor<I, 4>,
    v: Tensor<I, 4>,
    out: Tensor<I, 4>,
    lse: Vec<Tensor<I, 4>>,
    mask: Option<Tensor<I, 4, Bool>>,
    chunk_elems: usize,
}

#[derive(Debug)]
struct FusedAttention;

impl<I: Backend> Backward<I, 3> for FusedAttention {
    type State = Saved<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad_out = wrap::<I, 4>(grads.consume::<I>(&ops.node));
        let (dq, dk, dv) = backward(ops.state, grad_out);
        let [pq, pk, pv] = ops.parents;
        for (parent, g) in [(pq, dq), (pk, dk), (pv, dv)] {
            if let Some(node) = parent {
                grads.register::<I>(node.id, prim(g));
            }
        }
    }
}

/// The autodiff op on `Autodiff<I, C>`: shapes as in [`causal`]; `chunk_elems` bounds the score
/// elements computed at once (tests shrink it to force several chunks).
fn fused<I: Backend, C: CheckpointStrategy>(
    q: Tensor<Autodiff<I, C>, 4>,
    k: Tensor<Autodiff<I, C>, 4>,
    v: Tensor<Autodiff<I, C>, 4>,
    mask: Option<Tensor<Autodiff<I, C>, 4, Bool>>,
    chunk_elems: usize,
) -> Tensor<Autodiff<I, C>, 4> {
    let (q, k, v) = (prim(q), prim(k), prim(v));
    let mask = mask.map(|m| Tensor::<I, 4, Bool>::from_primitive(m.into_primitive()));
    let (iq, ik, iv) = (
        wrap::<I, 4>(q.primitive.clone()),
        wrap::<I, 4>(k.primitive.clone()),
        wrap::<I, 4>(v.primitive.clone()),
    );
    let out = match FusedAttention
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, lse) = forward(&iq, &ik, &iv, mask.as_ref(), chunk_elems);
            let saved = Saved { q: iq, k: ik, v: iv, out: out.clone(), lse, mask, chunk_elems };
            prep.finish(saved, prim(out))
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(prim(forward(&iq, &ik, &iv, mask.as_ref(), chunk_elems).0))
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Whether each consumer of a reduction (`max_dim`, `sum_dim`) must get its own: burn-fusion 0.21
/// (wgpu and CUDA builds) fuses a reduction whose output feeds two consumers into a kernel that
/// computes wrong values at some shapes. Found on the CPU Vulkan device (tests/cubecl.rs): the
/// row max and sum of `[2, 4, 40, 40]` scores, each used twice, gave outputs off by 3–5; at 48
/// keys, or with each reduction used once, the results match flex to 1e-6 (docs/backends.md). A
/// second reduction costs one more pass over the scores, against a wrong result.
pub fn reductions_feed_one_consumer<B: Backend>() -> bool {
    std::any::type_name::<B>().starts_with("burn_fusion::")
}

/// Query-row chunks and, for each, the keys it can see (`0..end`, causal).
fn chunks(b: usize, h: usize, t: usize, s: usize, elems: usize) -> Vec<(Range<usize>, usize)> {
    let rows = (elems / (b * h * s).max(1)).clamp(1, t.max(1));
    (0..t)
        .step_by(rows)
        .map(|r0| {
            let r1 = (r0 + rows).min(t);
            (r0..r1, r1 + (s - t))
        })
        .collect()
}

/// Scaled, masked scores of query rows `rows` against keys `0..end`: `[b, h, rows, end]`.
fn scores<I: Backend>(
    q: &Tensor<I, 4>,
    k: &Tensor<I, 4>,
    mask: Option<&Tensor<I, 4, Bool>>,
    rows: Range<usize>,
    end: usize,
    s: usize,
) -> (Tensor<I, 4>, Tensor<I, 4>) {
    let [b, h, t, d] = q.dims();
    let scale = 1.0 / (d as f64).sqrt();
    let qc = q.clone().slice([0..b, 0..h, rows.clone(), 0..d]).cast(DType::F32);
    let kc = k.clone().slice([0..b, 0..h, 0..end, 0..d]).cast(DType::F32);
    let sc = qc.clone().matmul(kc.swap_dims(2, 3)).mul_scalar(scale);
    let n = rows.len();
    let device = q.device();
    // Causal: key j is hidden from query row i when j > i + (s - t).
    let row = Tensor::<I, 1, Int>::arange(rows.start as i64..rows.end as i64, &device)
        .add_scalar((s - t) as i64);
    let col = Tensor::<I, 1, Int>::arange(0..end as i64, &device);
    let hidden =
        col.reshape([1, end]).expand([n, end]).greater(row.reshape([n, 1]).expand([n, end]));
    // One contiguous `[b, h, n, end]` mask, built by whole-row copies (`repeat_dim`): flex's
    // mask_fill makes a broadcast (`expand`ed) mask contiguous one element at a time, which
    // cost 8% of a SmolLM2 training step.
    let mut hidden = hidden.reshape([1, 1, n, end]).repeat_dim(0, b); // [b, 1, n, end]
    if let Some(m) = mask {
        let mc = m.clone().slice([0..b, 0..1, rows, 0..end]); // [b, 1, n, end], strided
        hidden = hidden.bool_or(mc);
    }
    let sc = sc.mask_fill(hidden.repeat_dim(1, h), f32::NEG_INFINITY);
    (sc, qc)
}

/// Output `[b, h, t, d]` and, per chunk, the log-sum-exp `[b, h, rows, 1]`, kept as separate
/// contiguous tensors: flex's fast row-broadcast path needs them contiguous.
fn forward<I: Backend>(
    q: &Tensor<I, 4>,
    k: &Tensor<I, 4>,
    v: &Tensor<I, 4>,
    mask: Option<&Tensor<I, 4, Bool>>,
    elems: usize,
) -> (Tensor<I, 4>, Vec<Tensor<I, 4>>) {
    let [b, h, t, d] = q.dims();
    let s = k.dims()[2];
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    let once = reductions_feed_one_consumer::<I>();
    for (rows, end) in chunks(b, h, t, s, elems) {
        let (sc, _) = scores(q, k, mask, rows, end, s); // [b, h, n, end]
        let m = sc.clone().max_dim(3).clamp_min(f32::MIN);
        let m2 = if once { sc.clone().max_dim(3).clamp_min(f32::MIN) } else { m.clone() };
        let p = (sc - m).exp();
        let l = p.clone().sum_dim(3).clamp_min(f32::MIN_POSITIVE);
        let l2 = if once { p.clone().sum_dim(3).clamp_min(f32::MIN_POSITIVE) } else { l.clone() };
        let vc = v.clone().slice([0..b, 0..h, 0..end, 0..d]).cast(DType::F32);
        outs.push(p.matmul(vc).div(l));
        lses.push(m2 + l2.log());
    }
    (Tensor::cat(outs, 2).cast(q.dtype()), lses)
}

/// A contiguous copy of a (small) strided view.
fn contiguous<I: Backend>(x: Tensor<I, 4>) -> Tensor<I, 4> {
    let dims = x.dims();
    x.reshape([dims.iter().product::<usize>()]).reshape(dims)
}

/// `[b, h, n, d]` → `[b, h, s, d]`, zeros after row `n`: an accumulation stays contiguous.
fn pad_rows<I: Backend>(x: Tensor<I, 4>, s: usize) -> Tensor<I, 4> {
    let [b, h, n, d] = x.dims();
    if n == s {
        return x;
    }
    let zeros = Tensor::zeros([b, h, s - n, d], &x.device());
    Tensor::cat(vec![x, zeros], 2)
}

/// Gradients of q, k, v from the output's gradient, recomputing probabilities per chunk.
fn backward<I: Backend>(
    st: Saved<I>,
    dout: Tensor<I, 4>,
) -> (Tensor<I, 4>, Tensor<I, 4>, Tensor<I, 4>) {
    let [b, h, t, d] = st.q.dims();
    let s = st.k.dims()[2];
    let scale = 1.0 / (d as f64).sqrt();
    let device = st.q.device();
    // D_i = Σ_j dO_ij O_ij = Σ_j P_ij dP_ij, the softmax backward's row term.
    let dtype = st.q.dtype();
    let dout = dout.cast(DType::F32);
    let delta = (dout.clone() * st.out.cast(DType::F32)).sum_dim(3); // [b, h, t, 1]
    let mut dk = Tensor::<I, 4>::zeros([b, h, s, d], &device);
    let mut dv = Tensor::<I, 4>::zeros([b, h, s, d], &device);
    let mut dqs = Vec::new();
    for ((rows, end), lse) in chunks(b, h, t, s, st.chunk_elems).into_iter().zip(st.lse) {
        let (sc, qc) = scores(&st.q, &st.k, st.mask.as_ref(), rows.clone(), end, s);
        let p = (sc - lse).exp(); // [b, h, n, end]
        let doc = dout.clone().slice([0..b, 0..h, rows.clone(), 0..d]);
        let kc = st.k.clone().slice([0..b, 0..h, 0..end, 0..d]).cast(DType::F32);
        let vc = st.v.clone().slice([0..b, 0..h, 0..end, 0..d]).cast(DType::F32);
        dv = dv + pad_rows(p.clone().swap_dims(2, 3).matmul(doc.clone()), s);
        let dp = doc.matmul(vc.swap_dims(2, 3));
        let ds = p * (dp - contiguous(delta.clone().slice([0..b, 0..h, rows, 0..1])));
        dqs.push(ds.clone().matmul(kc).mul_scalar(scale));
        dk = dk + pad_rows(ds.swap_dims(2, 3).matmul(qc).mul_scalar(scale), s);
    }
    (Tensor::cat(dqs, 2).cast(dtype), dk.cast(dtype), dv.cast(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Flex, FlexDevice};
    use burn::tensor::Distribution;
    use burn::tensor::module::attention_fallback;

    type Ad = Autodiff<Flex>;

    /// Forward output and q/k/v gradients of a weighted sum of the attention output.
    fn run(
        f: impl Fn(Tensor<Ad, 4>, Tensor<Ad, 4>, Tensor<Ad, 4>) -> Tensor<Ad, 4>,
        inputs: &[Tensor<Flex, 4>; 4],
    ) -> Vec<Vec<f32>> {
        let [q, k, v, w] = inputs.clone();
        let (q, k, v) = (
            Tensor::<Ad, 4>::from_inner(q).require_grad(),
            Tensor::<Ad, 4>::from_inner(k).require_grad(),
            Tensor::<Ad, 4>::from_inner(v).require_grad(),
        );
        let out = f(q.clone(), k.clone(), v.clone());
        let grads = (out.clone() * Tensor::from_inner(w)).sum().backward();
        let flat = |x: Tensor<Flex, 4>| x.into_data().to_vec::<f32>().unwrap();
        vec![
            flat(out.inner()),
            flat(q.grad(&grads).unwrap()),
            flat(k.grad(&grads).unwrap()),
            flat(v.grad(&grads).unwrap()),
        ]
    }

    fn check(mask: Option<Tensor<Flex, 4, Bool>>, b: usize, h: usize, t: usize, d: usize) {
        let dev = FlexDevice;
        let r = |n| Tensor::<Flex, 4>::random([b, h, n, d], Distribution::Normal(0.0, 1.5), &dev);
        let inputs = [r(t), r(t), r(t), r(t)];
        let m = mask.clone();
        let reference = run(
            move |q, k, v| {
                let opts = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
                let m =
                    m.clone().map(|m| Tensor::<Ad, 4, Bool>::from_inner(m).expand([b, h, t, t]));
                attention_fallback(q, k, v, m, None, opts)
            },
            &inputs,
        );
        for elems in [1 << 22, 3 * b * h * t, b * h * t] {
            let m = mask.clone();
            let ours = run(
                move |q, k, v| fused(q, k, v, m.clone().map(Tensor::from_inner), elems),
                &inputs,
            );
            for (name, (a, e)) in ["out", "dq", "dk", "dv"].iter().zip(ours.iter().zip(&reference))
            {
                let err = a.iter().zip(e).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(err < 2e-5, "{name}: max error {err} (chunk {elems} elements)");
            }
        }
    }

    #[test]
    fn causal_matches_burns_attention_in_value_and_gradient() {
        check(None, 2, 3, 37, 8);
    }

    #[test]
    fn packed_documents_and_fully_masked_rows_match() {
        // Row 0: documents [0..10), [10..37). Row 1: 5 left-padding tokens, whose query rows see
        // nothing at all.
        let (t, dev) = (37, FlexDevice);
        let mut m = vec![false; 2 * t * t];
        for q in 0..t {
            for k in 0..t {
                m[q * t + k] = k > q || (q >= 10 && k < 10);
                m[t * t + q * t + k] = k > q || k < 5;
            }
        }
        let mask = Tensor::<Flex, 4, Bool>::from_data(
            burn::tensor::TensorData::new(m, [2, 1, t, t]),
            &dev,
        );
        check(Some(mask), 2, 3, t, 8);
    }
}
