//! One optimizer step: micro-batches → loss → backward → gradient exchange → clip → AdamW, on
//! one device or as one rank of a data-parallel world (the shard modes of [`super::parallel`]).

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;

use super::loss::{Head, inputs};
use super::objective::{Objective, losses_from_hidden};
use super::optim::AdamW;
use super::pack::Batch;
use super::parallel::{Comm, Layout, Parallel, ShardMode};
use super::policy::PolicyFigures;
use crate::error::{Error, Result};
use distill_models::model::{CausalLm, ParamMut, RoutingLoad, add_routing};
use distill_models::rope::Rope;

/// Casts every float parameter to the compute dtype. Under autodiff the cast is part of the graph,
/// so gradients reach the f32 master weights (the cast's backward casts them back to f32).
pub struct CastParams(pub DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

fn flatten<B: Backend>(p: &ParamMut<'_, B>) -> (Tensor<B, 1>, Vec<usize>) {
    match p {
        ParamMut::Vector(p) => (p.val(), p.val().dims().to_vec()),
        ParamMut::Matrix(p) => {
            let d = p.val().dims();
            (p.val().reshape([d[0] * d[1]]), d.to_vec())
        }
    }
}

/// Names and element counts of the trainable parameters, in `params_mut` order.
pub fn param_sizes<B: Backend>(model: &mut CausalLm<B>) -> Vec<(String, usize)> {
    model
        .params_mut()
        .iter()
        .map(|(n, p)| (n.clone(), flatten(p).1.iter().product::<usize>()))
        .collect()
}

/// What an optimizer step needs besides the model, its optimizer and the batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSpec {
    /// Weight of the KL term against the teacher's top-k (0: cross-entropy only).
    pub kd_weight: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    pub lr: f64,
    /// The forward/backward dtype.
    pub compute: DType,
    /// `None`: SFT (cross-entropy, plus the KD term by `kd_weight`); else an on-policy
    /// divergence to the teacher on the student's own samples (`crate::onpolicy`), or the RL
    /// policy loss (`crate::grpo`).
    pub objective: Option<Objective>,
}

/// What one optimizer step did.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub loss: f64,
    pub ce: f64,
    pub kd: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Per-tensor gradient norms before and after clipping, by HF name (only when asked for, and
    /// only where a rank holds whole gradients).
    pub grad_norms: BTreeMap<String, f64>,
    pub clipped_grad_norms: BTreeMap<String, f64>,
    /// Loss tokens.
    pub tokens: usize,
    /// Seconds spent in collectives.
    pub comm_s: f64,
    /// Seconds spent on offload: gradient slices to the host, the host's update, slices back.
    pub offload_s: f64,
    /// The tokens each expert of each sparse layer got in this rank's micro-batches (empty for a
    /// dense model, and under the unit-by-unit schedule).
    pub routing: RoutingLoad,
    /// The policy loss's clip and KL sums over the step's RL tokens (all ranks; zero otherwise).
    pub policy: PolicyFigures,
}

/// One optimizer step on one device (world size 1), with per-tensor gradient norms.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step<B: AutodiffBackend>(
    model: &mut CausalLm<B>,
    rope: &Rope<B>,
    opt: &mut AdamW<B::InnerBackend>,
    micro: &[Batch],
    kd_weight: f64,
    max_grad_norm: f64,
    lr: f64,
    compute: DType,
    device: &B::Device,
) -> StepOutcome {
    let spec = StepSpec { kd_weight, max_grad_norm, lr, compute, objective: None };
    single_step(model, rope, opt, micro, &spec, device)
}

/// [`optimizer_step`] for any [`StepSpec`] (an on-policy objective, say).
pub fn single_step<B: AutodiffBackend>(
    model: &mut CausalLm<B>,
    rope: &Rope<B>,
    opt: &mut AdamW<B::InnerBackend>,
    micro: &[Batch],
    spec: &StepSpec,
    device: &B::Device,
) -> StepOutcome {
    let layout = Layout::new(&param_sizes(model), 1, usize::MAX);
    let par = Parallel { comm: Comm::single(), mode: ShardMode::None, layout };
    parallel_step(model, rope, opt, micro, spec, device, &par, true)
        .expect("world size 1 makes no collective call")
}

/// One optimizer step over the micro-batches of a global batch: each micro-batch's loss is scaled
/// by the token counts of the whole batch, gradients are summed (over micro-batches, then over
/// ranks), clipped by their global norm, and AdamW updates every parameter at `lr` — each rank
/// the part it owns under the shard mode. Every rank passes the same `micro` list; it computes
/// micro-batch i when i mod world is its rank (the others need only their token counts).
/// Parameters are left untouched if the loss or a gradient is not finite.
#[allow(clippy::too_many_arguments)]
pub fn parallel_step<B: AutodiffBackend>(
    model: &mut CausalLm<B>,
    rope: &Rope<B>,
    opt: &mut AdamW<B::InnerBackend>,
    micro: &[Batch],
    spec: &StepSpec,
    device: &B::Device,
    par: &Parallel<B::InnerBackend>,
    per_tensor_norms: bool,
) -> Result<StepOutcome> {
    let StepSpec { kd_weight, max_grad_norm, lr, compute, objective } = *spec;
    type G<B> = Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;
    let (rank, world) = (par.rank(), par.world());
    let n_tokens: usize = micro.iter().map(Batch::loss_tokens).sum();
    let n_kd: usize = micro.iter().map(|b| b.kd.len()).sum();
    let w = if n_kd > 0 { kd_weight } else { 0.0 };
    let np = par.layout.slots.len();
    let mut comm_s = 0.0;
    let mut acc: Vec<G<B>> = vec![None; np];
    let (mut ce_total, mut kd_total) = (0.0f64, 0.0f64);
    let mut routing = RoutingLoad::new();
    let mut pf = PolicyFigures::default();
    let add = |a: G<B>, b: G<B>| match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    for round in 0..micro.len().div_ceil(world) {
        let mut g: Vec<G<B>> = vec![None; np];
        if let Some(b) = micro.get(round * world + rank) {
            // The forward runs on a copy whose weights are cast to the compute dtype (a no-op for
            // f32). The cast is made anew for each micro-batch: a backward pass consumes the graph
            // it belongs to, and a cast shared across micro-batches would pass no gradient to the
            // f32 masters after the first.
            let fwd = if compute == DType::F32 {
                model.clone()
            } else {
                model.clone().map(&mut CastParams(compute))
            };
            // As `loss::losses` (or `divergence::losses`), keeping the forward's routing.
            let (input, mask, positions) = inputs(b, device);
            let (hidden, routed) = fwd.forward_hidden_routed(input, positions, rope, &mask, None);
            for (layer, counts) in routed {
                add_routing(&mut routing, layer, &counts);
            }
            let head = Head::of(&fwd);
            let (l, f) = losses_from_hidden(&head, hidden, b, device, objective);
            pf.add(&f);
            let loss = l.objective(w, n_tokens, n_kd, &mut ce_total, &mut kd_total);
            let grads = loss.backward();
            for (i, (_, p)) in model.params_mut().into_iter().enumerate() {
                // The gradient of the parameter tensor itself (a reshaped view would be a new
                // node). A parameter the step did not reach (an expert no token was routed to)
                // has a zero gradient, as in PyTorch: AdamW still decays it and ages its moments.
                g[i] = Some(match &p {
                    ParamMut::Vector(p) => p
                        .val()
                        .grad(&grads)
                        .unwrap_or_else(|| Tensor::zeros([p.val().dims()[0]], device)),
                    ParamMut::Matrix(p) => {
                        let [a, b] = p.val().dims();
                        p.val()
                            .grad(&grads)
                            .map_or_else(|| Tensor::zeros([a * b], device), |g| g.reshape([a * b]))
                    }
                });
            }
        }
        if par.replicated() || par.mode == ShardMode::Optimizer {
            acc = acc.into_iter().zip(g).map(|(a, b)| add(a, b)).collect();
        } else {
            let t = Instant::now();
            let s = par.reduce_scatter_grads(g, device)?;
            comm_s += t.elapsed().as_secs_f64();
            acc = acc.into_iter().zip(s).map(|(a, b)| add(a, b)).collect();
        }
    }
    let t = Instant::now();
    let sums = par.comm.sum(&[ce_total, kd_total, pf.tokens, pf.clipped, pf.kl], device)?;
    // Whole reduced gradients on every rank, except under `gradients` (owned ranges only).
    let whole = par.replicated() || par.mode == ShardMode::Optimizer;
    if whole {
        par.all_reduce_grads(&mut acc, device)?;
    }
    comm_s += t.elapsed().as_secs_f64();
    let (ce_total, kd_total) = if world == 1 { (ce_total, kd_total) } else { (sums[0], sums[1]) };
    let pf = PolicyFigures { tokens: sums[2], clipped: sums[3], kl: sums[4] };
    let (loss, ce, kd) = mean_losses(ce_total, kd_total, n_tokens, n_kd, w);

    // Global norm: per-tensor sums of squares of what this rank holds, in parameter order, summed
    // over ranks when each holds a part.
    let held: Vec<(usize, Tensor<B::InnerBackend, 1>)> =
        acc.iter().enumerate().filter_map(|(i, g)| g.clone().map(|g| (i, g))).collect();
    let sq = sums_of_squares(held.iter().map(|(_, g)| g))?;
    let local: f64 = sq.iter().sum();
    let total_sq = if whole { local } else { par.comm.sum(&[local], device)?[0] };
    let grad_norm = total_sq.sqrt();
    let coef =
        if max_grad_norm > 0.0 { (max_grad_norm / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
    let name = |i: usize| par.layout.slots[i].name.clone();
    let want_norms = per_tensor_norms && whole;
    let grad_norms: BTreeMap<String, f64> = if want_norms {
        held.iter().zip(&sq).map(|((i, _), s)| (name(*i), s.sqrt())).collect()
    } else {
        BTreeMap::new()
    };
    if max_grad_norm > 0.0 {
        acc = acc.into_iter().map(|g| g.map(|g| g.mul_scalar(coef))).collect();
    }
    let norm = |t: &Tensor<B::InnerBackend, 1>| {
        t.clone().square().sum().into_scalar().elem::<f64>().sqrt()
    };
    let clipped_grad_norms = if want_norms {
        acc.iter().enumerate().filter_map(|(i, g)| g.as_ref().map(|g| (name(i), norm(g)))).collect()
    } else {
        BTreeMap::new()
    };
    let mut outcome = StepOutcome {
        loss,
        ce,
        kd,
        grad_norm,
        grad_norms,
        clipped_grad_norms,
        tokens: n_tokens,
        comm_s,
        offload_s: 0.0,
        routing,
        policy: pf,
    };
    if whole && !par.replicated() {
        // ZeRO-1: keep the owned ranges for the update.
        acc = acc
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                g.and_then(|g| par.owned(i).map(|r| super::parallel::own_copy(g.slice(r))))
            })
            .collect();
    }
    if !loss.is_finite() || !grad_norm.is_finite() {
        return Ok(outcome);
    }

    // AdamW on what this rank owns.
    let mut own: Vec<G<B>> = vec![None; np];
    for (i, (name, p)) in model.params_mut().into_iter().enumerate() {
        let (Some(g), Some(r)) = (acc[i].take(), par.owned(i)) else { continue };
        let (t, _) = flatten(&p);
        let t = t.inner();
        let seg = if r.len() == par.layout.slots[i].numel { t } else { t.slice(r) };
        own[i] = Some(opt.update(&name, seg, g, lr));
    }
    let updated: Vec<G<B>> = if par.replicated() {
        own
    } else {
        let t = Instant::now();
        let all = par.all_gather_params(&own, device)?;
        outcome.comm_s += t.elapsed().as_secs_f64();
        all.into_iter().map(Some).collect()
    };
    for ((_, p), new) in model.params_mut().into_iter().zip(updated) {
        let Some(new) = new else { continue };
        match p {
            ParamMut::Vector(p) => *p = Param::from_tensor(Tensor::from_inner(new).require_grad()),
            ParamMut::Matrix(p) => {
                let [a, b] = p.val().dims();
                *p = Param::from_tensor(Tensor::from_inner(new.reshape([a, b])).require_grad())
            }
        }
    }
    opt.step += 1;
    Ok(outcome)
}

/// The step's mean losses from the micro-batches' sums: `(loss, ce, kd)`, with `w` the KD weight.
pub(crate) fn mean_losses(
    ce_total: f64,
    kd_total: f64,
    n_tokens: usize,
    n_kd: usize,
    w: f64,
) -> (f64, f64, Option<f64>) {
    let ce = ce_total / n_tokens.max(1) as f64;
    let kd = (n_kd > 0 && w > 0.0).then(|| kd_total / n_kd as f64);
    ((1.0 - w) * ce + w * kd.unwrap_or(0.0), ce, kd)
}

/// Per-tensor sums of squares in f64 (a sum over a shard and a sum over the whole tensor then
/// agree), read back in one transfer.
pub(crate) fn sums_of_squares<'a, B: Backend>(
    tensors: impl Iterator<Item = &'a Tensor<B, 1>>,
) -> Result<Vec<f64>> {
    let parts: Vec<Tensor<B, 1>> =
        tensors.map(|g| g.clone().cast(DType::F64).square().sum()).collect();
    if parts.is_empty() {
        return Ok(vec![]);
    }
    Tensor::cat(parts, 0)
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map_err(|e| Error::Readback(format!("{e:?}")))
}
