//! Parameter sharding (ZeRO-3 / FSDP), `[train.parallel] shard = "parameters"`: a layer around
//! the model and the optimizer, as the other shard modes are (see [`super::parallel`]).
//!
//! Storage. The parameters, flattened in spec order, are cut into `world` contiguous ranges by
//! the same [`Layout`](super::parallel::Layout) as the other modes; rank r keeps only its range:
//! the f32 master, AdamW's moments and the accumulated gradient. No rank holds the whole model
//! while loading (each rank reads its own slices from the memory-mapped safetensors) or during
//! the step (one unit's weights at a time, with activation checkpointing). The exception is
//! rank 0's host while it writes a checkpoint or the export (consolidated: the f32 model, 4 bytes
//! per parameter), until a streaming writer exists.
//!
//! The step runs **unit by unit** — the embedding, each decoder layer, the head (final norm and
//! LM head) — on a graph of its own:
//!
//! ```text
//! forward   for each unit: gather its weights (compute dtype) → run → drop the weights
//! head      gather → loss → backward → reduce-scatter its gradient → ∂loss/∂x_L
//! backward  for each layer, last first: gather again → re-run from its saved input →
//!           backward seeded with ∂loss/∂y → reduce-scatter the weight gradient → ∂loss/∂x
//! ```
//!
//! A gather is an all-reduce of a zero-padded buffer (burn-collective 0.21 has no all-gather;
//! x + 0 is x, so the gathered weights are bit-identical to the owners'), and a reduce-scatter is
//! an all-reduce followed by a slice. Every collective is made by this trainer code, in an order
//! every rank derives from the config; a rank with no micro-batch in a round runs the same
//! schedule without the compute. Gathering inside a custom autodiff op (the other way to build
//! this) would put the collectives in burn's backward pass, whose tape runs every such op last
//! (they sit next to the leaves) and cannot return an error; the unit-by-unit schedule keeps
//! them in order and fallible.
//!
//! With `activation_checkpointing`, the forward keeps only each layer's input and the backward
//! re-gathers and re-runs the layer: the live compute-dtype weights are one layer (plus the
//! embedding and head at the ends). Without it, each layer's graph (and its gathered weights)
//! is kept from the forward to its backward, which needs no second gather but holds the whole
//! compute-dtype model at the turn.
//!
//! Checkpoints and exports are consolidated (gathered unit by unit, written by rank 0) in the
//! same format as every other mode, so a run resumes at any world size or shard mode.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, TensorData};

use super::loss::{Head, LossSums, inputs, losses_from_hidden};
use super::optim::AdamW;
use super::pack::Batch;
use super::parallel::Parallel;
use super::train::{StepOutcome, mean_losses, sums_of_squares};
use crate::error::{Error, Result};
use distill_models::ModelConfig;
use distill_models::model::{DecoderLayer, LayerCtx, RmsNorm, embed};
use distill_models::rope::Rope;
use distill_models::spec::{self, Cursor, Dims, Kind, ParamSpec};
use distill_models::weights::{NamedTensor, WeightSource};

/// The units of the schedule, as ranges of parameter (slot) indices in spec order.
#[derive(Debug, Clone, PartialEq)]
pub struct Units {
    /// `model.embed_tokens.weight` (always slot 0).
    pub embed: Range<usize>,
    pub layers: Vec<Range<usize>>,
    /// `model.norm.weight`, then `lm_head.weight` (and bias) unless tied.
    pub head: Range<usize>,
}

impl Units {
    pub fn of(specs: &[ParamSpec]) -> Units {
        let mut layers: Vec<Range<usize>> = Vec::new();
        let mut head_start = specs.len();
        for (i, s) in specs.iter().enumerate().skip(1) {
            match s.name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()) {
                Some(l) => {
                    let l: usize = l.parse().expect("spec layer names are numbered");
                    if layers.len() == l {
                        layers.push(i..i + 1);
                    } else {
                        layers[l].end = i + 1;
                    }
                }
                None => {
                    head_start = i;
                    break;
                }
            }
        }
        Units { embed: 0..1, layers, head: head_start..specs.len() }
    }
}

/// One rank's share of a parameter-sharded model.
pub struct Fsdp<I: Backend> {
    pub specs: Vec<ParamSpec>,
    pub dims: Dims,
    pub eps: f64,
    pub units: Units,
    /// This rank's f32 master slice of each parameter (`None` where it owns none), in the
    /// trainer's flat layout (linear weights `[in, out]`).
    pub shards: Vec<Option<Tensor<I, 1>>>,
}

impl<I: Backend> Fsdp<I> {
    /// Read this rank's slices of every parameter from `src` (a checkpoint directory's
    /// safetensors), converting HF `[out, in]` weights to the `[in, out]` layout slice by slice:
    /// no full copy of the model is ever built, on the host or on the device.
    pub fn load(
        cfg: &ModelConfig,
        src: &mut dyn WeightSource,
        par: &Parallel<I>,
        device: &I::Device,
    ) -> Result<Self> {
        let specs = spec::param_specs(cfg);
        let mut shards = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let Some(r) = par.owned(i) else {
                src.skip(&s.name, &s.shape);
                shards.push(None);
                continue;
            };
            // Only the owned slice is read and converted, transposed on the way for linear
            // weights (HF keeps [out, in], the trainer [in, out]).
            let part = src.read_part(&s.name, &s.shape, r.clone(), s.kind == Kind::Weight)?;
            shards.push(Some(Tensor::from_data(TensorData::new(part, [r.len()]), device)));
        }
        let units = Units::of(&specs);
        Ok(Fsdp { dims: spec::Dims::of(cfg), eps: cfg.rms_norm_eps, units, specs, shards })
    }

    /// Gather every parameter and hand rank 0 the model in HF layout (`(name, shape, f32 data)`,
    /// spec order) for a checkpoint or an export; the other ranks get an empty list. One unit is
    /// gathered at a time.
    pub fn consolidate(&self, par: &Parallel<I>, device: &I::Device) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        let mut all: Vec<Range<usize>> = vec![self.units.embed.clone()];
        all.extend(self.units.layers.iter().cloned());
        all.push(self.units.head.clone());
        for unit in all {
            let full = par.gather(unit.clone(), &self.shards, DType::F32, device)?;
            if par.rank() != 0 {
                continue;
            }
            for (i, t) in unit.zip(full) {
                let s = &self.specs[i];
                let v = t
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| Error::Invalid(format!("{e:?}")))?;
                let v = if s.kind == Kind::Weight {
                    let (d_out, d_in) = (s.shape[0], s.shape[1]);
                    let mut t = vec![0f32; v.len()];
                    for i in 0..d_in {
                        for o in 0..d_out {
                            t[o * d_in + i] = v[i * d_out + o];
                        }
                    }
                    t
                } else {
                    v
                };
                out.push((s.name.clone(), s.shape.clone(), v));
            }
        }
        Ok(out)
    }
}

/// The gathered, flat weights of one unit as tensors of the step's backend: tracked leaves when
/// their gradient is wanted.
fn leaves<B: AutodiffBackend>(
    gathered: Vec<Tensor<B::InnerBackend, 1>>,
    track: bool,
) -> Vec<Tensor<B, 1>> {
    gathered
        .into_iter()
        .map(|t| {
            let t = Tensor::<B, 1>::from_inner(t);
            if track { t.require_grad() } else { t }
        })
        .collect()
}

fn build_layer<B: Backend>(
    f: &FsdpView<'_>,
    unit: &Range<usize>,
    w: &[Tensor<B, 1>],
) -> DecoderLayer<B> {
    let mut at = Cursor::new(&f.specs[unit.clone()]);
    let mut it = w.iter().cloned();
    let layer = DecoderLayer::from_flat(&mut at, f.dims, f.eps, &mut |_| {
        it.next().expect("one tensor per spec")
    });
    at.finish();
    layer
}

/// The head from its gathered weights (`model.norm`, then `lm_head` or, tied, the embedding).
fn build_head<B: Backend>(
    f: &FsdpView<'_>,
    w: &[Tensor<B, 1>],
    tied_embed: Option<Tensor<B, 1>>,
) -> (RmsNorm<B>, Head<B>) {
    let specs = &f.specs[f.units.head.clone()];
    let mut at = Cursor::new(specs);
    let mut it = w.iter().cloned();
    let norm = RmsNorm::from_flat(&mut at, f.eps, &mut |_| it.next().expect("norm"));
    let head = match tied_embed {
        Some(e) => {
            Head { weight: e.reshape([f.dims.vocab, f.dims.hidden]).transpose(), bias: None }
        }
        None => {
            let spec = at.next(Kind::Weight);
            let weight = it.next().expect("lm_head").reshape([spec.shape[1], spec.shape[0]]);
            let bias = at.next_if(Kind::Bias).map(|_| it.next().expect("lm_head bias"));
            Head { weight, bias }
        }
    };
    at.finish();
    (norm, head)
}

/// What the builders need of an [`Fsdp`], without its tensors' backend.
struct FsdpView<'a> {
    specs: &'a [ParamSpec],
    dims: &'a Dims,
    eps: f64,
    units: &'a Units,
}

impl<I: Backend> Fsdp<I> {
    fn view(&self) -> FsdpView<'_> {
        FsdpView { specs: &self.specs, dims: &self.dims, eps: self.eps, units: &self.units }
    }
}

/// Add owned-slice gradients of `unit` into `acc`.
fn accumulate<I: Backend>(
    acc: &mut [Option<Tensor<I, 1>>],
    unit: Range<usize>,
    g: Vec<Option<Tensor<I, 1>>>,
) {
    for (i, g) in unit.zip(g) {
        acc[i] = match (acc[i].take(), g) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// A layer's graph from its forward to its backward: the input leaf, the output, the weight
/// leaves.
type Segment<B> = (Tensor<B, 3>, Tensor<B, 3>, Vec<Tensor<B, 1>>);

/// The f32 gradients of a unit's leaves (none where a leaf got no gradient).
fn leaf_grads<B: AutodiffBackend>(
    w: &[Tensor<B, 1>],
    grads: &<B as AutodiffBackend>::Gradients,
) -> Vec<Option<Tensor<B::InnerBackend, 1>>> {
    w.iter().map(|t| t.grad(grads).map(|g| g.cast(DType::F32))).collect()
}

/// One optimizer step under parameter sharding; the same contract as
/// [`parallel_step`](super::train::parallel_step) (every rank passes the same `micro`; micro-batch
/// i runs on rank i mod world).
#[allow(clippy::too_many_arguments)]
pub fn fsdp_step<B: AutodiffBackend>(
    f: &mut Fsdp<B::InnerBackend>,
    rope: &Rope<B>,
    opt: &mut AdamW<B::InnerBackend>,
    micro: &[Batch],
    kd_weight: f64,
    max_grad_norm: f64,
    lr: f64,
    compute: DType,
    device: &B::Device,
    par: &Parallel<B::InnerBackend>,
    recompute: bool,
) -> Result<StepOutcome> {
    type G<B> = Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;
    let (rank, world) = (par.rank(), par.world());
    let n_tokens: usize = micro.iter().map(Batch::loss_tokens).sum();
    let n_kd: usize = micro.iter().map(|b| b.kd.len()).sum();
    let w = if n_kd > 0 { kd_weight } else { 0.0 };
    let np = f.specs.len();
    let tied = f.dims.tied;
    let mut comm_s = 0.0;
    let mut acc: Vec<G<B>> = vec![None; np];
    let (mut ce_total, mut kd_total) = (0.0f64, 0.0f64);
    let view = f.view();
    let units = f.units.clone();
    let shards = &f.shards;
    // Gathers and reduce-scatters, timed.
    let gather =
        |unit: &Range<usize>, comm_s: &mut f64| -> Result<Vec<Tensor<B::InnerBackend, 1>>> {
            let t = Instant::now();
            let r = par.gather(unit.clone(), shards, compute, device);
            *comm_s += t.elapsed().as_secs_f64();
            r
        };
    let scatter = |unit: &Range<usize>, g: Vec<G<B>>, comm_s: &mut f64| -> Result<Vec<G<B>>> {
        let t = Instant::now();
        let r = par.reduce_scatter(unit.clone(), g, device);
        *comm_s += t.elapsed().as_secs_f64();
        r
    };

    for round in 0..micro.len().div_ceil(world) {
        // A rank without a micro-batch this round runs the same collectives with no compute.
        let b = micro.get(round * world + rank);
        let prepared = b.map(|b| {
            let (ids, mask, positions) = inputs::<B>(b, device);
            (b, ids, mask, positions)
        });

        // Forward: embedding, then the layers; keep each layer's input (and, without
        // recomputation, its graph).
        // The rotary tables and the mask every layer shares, built once per round.
        let ctx = prepared.as_ref().map(|(_, _, mask, positions)| {
            LayerCtx::new(rope, positions, f.dims.heads, f.dims.kv_heads, mask)
        });
        let w0 = gather(&units.embed, &mut comm_s)?;
        let mut x: Option<Tensor<B, 3>> = prepared.as_ref().map(|(_, ids, _, _)| {
            embed(
                Tensor::<B, 1>::from_inner(w0[0].clone())
                    .reshape([f_vocab(&view), f_hidden(&view)]),
                ids.clone(),
            )
        });
        drop(w0);
        let mut inputs_l: Vec<Option<Tensor<B, 3>>> = Vec::with_capacity(units.layers.len());
        let mut kept: Vec<Option<Segment<B>>> = Vec::new();
        for unit in &units.layers {
            let wl = gather(unit, &mut comm_s)?;
            if let (Some(ctx), Some(xv)) = (ctx.as_ref(), x.take()) {
                if recompute {
                    let layer = build_layer::<B>(&view, unit, &leaves::<B>(wl, false));
                    inputs_l.push(Some(xv.clone()));
                    x = Some(layer.forward(xv, ctx, None));
                } else {
                    let xl = Tensor::<B, 3>::from_inner(xv.inner()).require_grad();
                    let ws = leaves::<B>(wl, true);
                    let layer = build_layer::<B>(&view, unit, &ws);
                    let y = layer.forward(xl.clone(), ctx, None);
                    x = Some(y.clone());
                    kept.push(Some((xl, y, ws)));
                    inputs_l.push(None);
                }
            } else {
                inputs_l.push(None);
                kept.push(None);
            }
        }

        // Head: loss, its gradient, and ∂loss/∂x_L.
        // Held in options so that a rank without a micro-batch drops them here too.
        let mut wh = Some(gather(&units.head, &mut comm_s)?);
        let mut we = if tied { Some(gather(&units.embed, &mut comm_s)?) } else { None };
        let mut g_x: Option<Tensor<B::InnerBackend, 3>> = None;
        let (mut gh, mut ge): (Vec<G<B>>, Vec<G<B>>) =
            (vec![None; units.head.len()], vec![None; 1]);
        if let (Some((b, _, _, _)), Some(xv)) = (prepared.as_ref(), x.take()) {
            let xl = Tensor::<B, 3>::from_inner(xv.inner()).require_grad();
            let wsh = leaves::<B>(wh.take().expect("gathered above"), true);
            let wse = we.take().map(|we| leaves::<B>(we, true));
            let (norm, head) = build_head::<B>(&view, &wsh, wse.as_ref().map(|v| v[0].clone()));
            let l: LossSums<B> = losses_from_hidden(&head, norm.forward(xl.clone()), b, device);
            let mut loss = l.ce.clone().mul_scalar((1.0 - w) / n_tokens.max(1) as f64);
            ce_total += l.ce.clone().into_scalar().elem::<f64>();
            if let (Some(kd), true) = (l.kd.as_ref(), w > 0.0) {
                kd_total += kd.clone().into_scalar().elem::<f64>();
                loss = loss + kd.clone().mul_scalar(w / n_kd.max(1) as f64);
            }
            let grads = loss.backward();
            gh = leaf_grads::<B>(&wsh, &grads);
            if let Some(wse) = &wse {
                ge = leaf_grads::<B>(wse, &grads);
            }
            g_x = xl.grad(&grads);
        }
        drop((wh, we));
        let s = scatter(&units.head, gh, &mut comm_s)?;
        accumulate(&mut acc, units.head.clone(), s);
        if tied {
            let s = scatter(&units.embed, ge, &mut comm_s)?;
            accumulate(&mut acc, units.embed.clone(), s);
        }

        // Backward through the layers, last first.
        for (l, unit) in units.layers.iter().enumerate().rev() {
            let seg = if recompute {
                let wl = gather(unit, &mut comm_s)?;
                match (ctx.as_ref(), inputs_l[l].take()) {
                    (Some(ctx), Some(xv)) => {
                        let xl = Tensor::<B, 3>::from_inner(xv.inner()).require_grad();
                        let ws = leaves::<B>(wl, true);
                        let y = build_layer::<B>(&view, unit, &ws).forward(xl.clone(), ctx, None);
                        Some((xl, y, ws))
                    }
                    _ => None,
                }
            } else {
                kept[l].take()
            };
            let mut g: Vec<G<B>> = vec![None; unit.len()];
            if let (Some((xl, y, ws)), Some(gy)) = (seg, g_x.take()) {
                let grads = (y * Tensor::<B, 3>::from_inner(gy)).sum().backward();
                g = leaf_grads::<B>(&ws, &grads);
                g_x = xl.grad(&grads);
            }
            let s = scatter(unit, g, &mut comm_s)?;
            accumulate(&mut acc, unit.clone(), s);
        }

        // The embedding.
        let w0 = gather(&units.embed, &mut comm_s)?;
        let mut g: Vec<G<B>> = vec![None; 1];
        if let (Some((_, ids, _, _)), Some(gy)) = (prepared.as_ref(), g_x.take()) {
            let ws = leaves::<B>(w0, true);
            let x0 = embed(ws[0].clone().reshape([f_vocab(&view), f_hidden(&view)]), ids.clone());
            let grads = (x0 * Tensor::<B, 3>::from_inner(gy)).sum().backward();
            g = leaf_grads::<B>(&ws, &grads);
        }
        let s = scatter(&units.embed, g, &mut comm_s)?;
        accumulate(&mut acc, units.embed.clone(), s);
    }

    let t = Instant::now();
    let sums = par.comm.sum(&[ce_total, kd_total], device)?;
    comm_s += t.elapsed().as_secs_f64();
    let (ce_total, kd_total) = if world == 1 { (ce_total, kd_total) } else { (sums[0], sums[1]) };
    let (loss, ce, kd) = mean_losses(ce_total, kd_total, n_tokens, n_kd, w);

    // Global norm from the owned slices (f64 sums of squares, summed over ranks).
    let local: f64 = sums_of_squares(acc.iter().flatten())?.iter().sum();
    let grad_norm = par.comm.sum(&[local], device)?[0].sqrt();
    let outcome = StepOutcome {
        loss,
        ce,
        kd,
        grad_norm,
        grad_norms: BTreeMap::new(),
        clipped_grad_norms: BTreeMap::new(),
        tokens: n_tokens,
        comm_s,
    };
    if !loss.is_finite() || !grad_norm.is_finite() {
        return Ok(outcome);
    }
    let coef =
        if max_grad_norm > 0.0 { (max_grad_norm / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
    // AdamW on the owned slices; nothing is gathered after the update (that is what ZeRO-3 saves).
    for (i, g) in acc.into_iter().enumerate() {
        // The master is taken only when there is a gradient to apply.
        let Some(g) = g else { continue };
        let Some(master) = f.shards[i].take() else { continue };
        let g = if max_grad_norm > 0.0 { g.mul_scalar(coef) } else { g };
        f.shards[i] = Some(opt.update(&f.specs[i].name, master, g, lr));
    }
    opt.step += 1;
    Ok(outcome)
}

fn f_vocab(v: &FsdpView<'_>) -> usize {
    v.dims.vocab
}

fn f_hidden(v: &FsdpView<'_>) -> usize {
    v.dims.hidden
}

/// Held-out loss sums (Σ ce, tokens) of `chunks` under parameter sharding: forward only, unit by
/// unit, on the inner backend; chunk c runs on rank c mod world and every rank joins every
/// gather.
pub fn eval_sums<I: Backend>(
    f: &Fsdp<I>,
    rope: &Rope<I>,
    chunks: &[Batch],
    device: &I::Device,
    par: &Parallel<I>,
) -> Result<(f64, usize)> {
    let (rank, world) = (par.rank(), par.world());
    let view = f.view();
    let (mut sum, mut n) = (0.0, 0usize);
    for round in 0..chunks.len().div_ceil(world) {
        let b = chunks.get(round * world + rank);
        let prepared = b.map(|b| (b, inputs::<I>(b, device)));
        let ctx = prepared.as_ref().map(|(_, (_, mask, positions))| {
            LayerCtx::new(rope, positions, f.dims.heads, f.dims.kv_heads, mask)
        });
        let w0 = par.gather(f.units.embed.clone(), &f.shards, DType::F32, device)?;
        let mut x = prepared.as_ref().map(|(_, (ids, _, _))| {
            embed(w0[0].clone().reshape([f.dims.vocab, f.dims.hidden]), ids.clone())
        });
        drop(w0);
        for unit in &f.units.layers {
            let wl = par.gather(unit.clone(), &f.shards, DType::F32, device)?;
            if let (Some(ctx), Some(xv)) = (ctx.as_ref(), x.take()) {
                x = Some(build_layer::<I>(&view, unit, &wl).forward(xv, ctx, None));
            }
        }
        let wh = par.gather(f.units.head.clone(), &f.shards, DType::F32, device)?;
        let we = if f.dims.tied {
            Some(par.gather(f.units.embed.clone(), &f.shards, DType::F32, device)?)
        } else {
            None
        };
        if let (Some((b, _)), Some(xv)) = (prepared.as_ref(), x.take()) {
            let (norm, head) = build_head::<I>(&view, &wh, we.map(|v| v[0].clone()));
            let l = losses_from_hidden(&head, norm.forward(xv), b, device);
            sum += l.ce.into_scalar().elem::<f64>();
            n += l.tokens;
        }
    }
    Ok((sum, n))
}
