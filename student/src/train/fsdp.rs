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
//! Prefetch ([`FsdpOptions::prefetch`]): the next unit's gather runs on a scoped helper thread
//! while the current unit computes. burn-collective pairs each peer's calls by order, so a rank
//! never has two collectives in flight ([`Comms`]): a reduce-scatter first waits for the running
//! gather.
//!
//! Offload ([`FsdpOptions::offload`], ZeRO-Offload): the f32 master and AdamW's moments live on
//! the host ([`Host`], burn's CPU backend) and the update runs there; the device keeps its slices
//! in the compute dtype for the gathers. Each unit's reduce-scattered gradient slice goes to the
//! host at once and is summed there; after the update each changed slice goes back.
//!
//! Checkpoints and exports are consolidated (gathered unit by unit, written by rank 0) in the
//! same format as every other mode, so a run resumes at any world size or shard mode.

use std::collections::BTreeMap;
use std::ops::Range;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, TensorData};

use super::loss::{Head, LossSums, inputs};
use super::objective::Objective;
use super::optim::AdamW;
use super::pack::Batch;
use super::parallel::Parallel;
use super::policy::PolicyFigures;
use super::step::{StepOutcome, StepSpec, mean_losses, sums_of_squares};
use crate::error::{Error, Result};
use distill_models::ModelConfig;
use distill_models::device::{Cpu, CpuDevice};
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

/// How a rank runs the unit-by-unit schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FsdpOptions {
    /// Activation checkpointing: keep each layer's input only, re-gather and re-run the layer in
    /// the backward.
    pub recompute: bool,
    /// Gather the next unit on a helper thread while the current one computes.
    pub prefetch: bool,
    /// Keep the f32 master and AdamW's moments in host memory ([`Host`]).
    pub offload: bool,
    /// The forward/backward dtype; under offload, the dtype of the device's slices.
    pub compute: DType,
}

/// A rank's offloaded state (`[train.parallel] offload = "cpu"`): the f32 master slices and AdamW,
/// on the host backend. The device keeps only the slices in the compute dtype, refreshed after
/// each update.
pub struct Host {
    pub master: Vec<Option<Tensor<Cpu, 1>>>,
    pub opt: AdamW<Cpu>,
}

/// One rank's share of a parameter-sharded model.
pub struct Fsdp<I: Backend> {
    pub specs: Vec<ParamSpec>,
    pub dims: Dims,
    pub eps: f64,
    pub units: Units,
    pub opts: FsdpOptions,
    /// This rank's slice of each parameter (`None` where it owns none), in the trainer's flat
    /// layout (linear weights `[in, out]`): the f32 master, or under offload its copy in the
    /// compute dtype.
    pub shards: Vec<Option<Tensor<I, 1>>>,
    /// The f32 master and AdamW's state under offload.
    pub host: Option<Host>,
}

/// A host slice on the device in `dtype`, converted on the host so that only `dtype`'s bytes
/// cross the bus.
fn to_device<I: Backend>(t: &Tensor<Cpu, 1>, dtype: DType, device: &I::Device) -> Tensor<I, 1> {
    Tensor::from_data(t.clone().cast(dtype).into_data(), (device, dtype))
}

/// A device slice (an f32 gradient) in host memory.
fn to_host<I: Backend>(t: Tensor<I, 1>) -> Tensor<Cpu, 1> {
    Tensor::from_data(t.into_data(), (&CpuDevice::default(), DType::F32))
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
        opts: FsdpOptions,
    ) -> Result<Self> {
        let specs = spec::param_specs(cfg);
        let mut shards = Vec::with_capacity(specs.len());
        let mut master = Vec::with_capacity(if opts.offload { specs.len() } else { 0 });
        for (i, s) in specs.iter().enumerate() {
            let Some(r) = par.owned(i) else {
                src.skip(&s.name, &s.shape);
                shards.push(None);
                if opts.offload {
                    master.push(None);
                }
                continue;
            };
            // Only the owned slice is read and converted, transposed on the way for linear
            // weights (HF keeps [out, in], the trainer [in, out]).
            let part = src.read_part(&s.name, &s.shape, r.clone(), s.kind == Kind::Weight)?;
            let data = TensorData::new(part, [r.len()]);
            if opts.offload {
                let m = Tensor::<Cpu, 1>::from_data(data, &CpuDevice::default());
                shards.push(Some(to_device::<I>(&m, opts.compute, device)));
                master.push(Some(m));
            } else {
                shards.push(Some(Tensor::from_data(data, device)));
            }
        }
        let units = Units::of(&specs);
        let host = opts.offload.then(|| Host { master, opt: AdamW::new(Default::default()) });
        Ok(Fsdp {
            dims: spec::Dims::of(cfg),
            eps: cfg.rms_norm_eps,
            units,
            specs,
            opts,
            shards,
            host,
        })
    }

    /// Gather `unit`'s f32 weights (under offload, from the host master).
    fn gather_f32(
        &self,
        par: &Parallel<I>,
        unit: Range<usize>,
        device: &I::Device,
    ) -> Result<Vec<Tensor<I, 1>>> {
        match &self.host {
            None => par.gather(unit, &self.shards, DType::F32, device),
            Some(h) => {
                let mut own: Vec<Option<Tensor<I, 1>>> = vec![None; self.shards.len()];
                for i in unit.clone() {
                    own[i] = h.master[i].as_ref().map(|m| to_device::<I>(m, DType::F32, device));
                }
                par.gather(unit, &own, DType::F32, device)
            }
        }
    }

    /// Gather every parameter and hand rank 0 the model in HF layout (`(name, shape, f32 data)`,
    /// spec order) for a checkpoint or an export; the other ranks get an empty list. One unit is
    /// gathered at a time.
    pub fn consolidate(&self, par: &Parallel<I>, device: &I::Device) -> Result<Vec<NamedTensor>> {
        self.gather_whole(par, device, par.rank() == 0)
    }

    /// [`Self::consolidate`] on every rank: each gets the whole model (an on-policy rank samples
    /// from it).
    pub fn whole_on_every_rank(
        &self,
        par: &Parallel<I>,
        device: &I::Device,
    ) -> Result<Vec<NamedTensor>> {
        self.gather_whole(par, device, true)
    }

    fn gather_whole(
        &self,
        par: &Parallel<I>,
        device: &I::Device,
        keep: bool,
    ) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        let mut all: Vec<Range<usize>> = vec![self.units.embed.clone()];
        all.extend(self.units.layers.iter().cloned());
        all.push(self.units.head.clone());
        for unit in all {
            let full = self.gather_f32(par, unit.clone(), device)?;
            if !keep {
                continue;
            }
            for (i, t) in unit.zip(full) {
                let s = &self.specs[i];
                let v = t
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| Error::Readback(format!("{e:?}")))?;
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

/// The step's accumulated owned-slice gradients (f32): on the device, or under offload on the
/// host, where each unit's slice goes as soon as it is reduce-scattered.
enum Acc<I: Backend> {
    Device(Vec<Option<Tensor<I, 1>>>),
    /// The slices, and the seconds spent moving them.
    Host(Vec<Option<Tensor<Cpu, 1>>>, f64),
}

impl<I: Backend> Acc<I> {
    fn add(&mut self, unit: Range<usize>, g: Vec<Option<Tensor<I, 1>>>) {
        match self {
            Acc::Device(acc) => accumulate(acc, unit, g),
            Acc::Host(acc, secs) => {
                let t = Instant::now();
                accumulate(acc, unit, g.into_iter().map(|g| g.map(to_host::<I>)).collect());
                *secs += t.elapsed().as_secs_f64();
            }
        }
    }

    /// This rank's share of the squared global norm.
    fn sum_of_squares(&self) -> Result<f64> {
        Ok(match self {
            Acc::Device(acc) => sums_of_squares(acc.iter().flatten())?.iter().sum(),
            Acc::Host(acc, _) => sums_of_squares(acc.iter().flatten())?.iter().sum(),
        })
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

type Gathered<I> = Result<Vec<Tensor<I, 1>>>;

/// A gather started ahead of its use.
enum Pending<'s, I: Backend> {
    Idle,
    Running(Range<usize>, ScopedJoinHandle<'s, Gathered<I>>),
    Ready(Range<usize>, Gathered<I>),
}

/// The step's collectives, timed. With prefetch the next unit's gather runs on a helper thread
/// while the caller computes. At most one collective is in flight per rank and every rank issues
/// them in the same order (burn-collective matches calls by order): a reduce-scatter first waits
/// for a running prefetch.
struct Comms<'s, 'e, I: Backend> {
    scope: &'s Scope<'s, 'e>,
    par: &'e Parallel<I>,
    shards: &'e [Option<Tensor<I, 1>>],
    dtype: DType,
    device: &'e I::Device,
    prefetch: bool,
    pending: Pending<'s, I>,
    /// Seconds the step waited on collectives (a prefetched gather costs only what is left of it
    /// when it is needed).
    waited: f64,
}

impl<'s, 'e, I: Backend> Comms<'s, 'e, I> {
    /// Start gathering `unit` for later (nothing without prefetch).
    fn prefetch(&mut self, unit: &Range<usize>) {
        if !self.prefetch {
            return;
        }
        self.settle();
        let (par, shards, dtype, device, u) =
            (self.par, self.shards, self.dtype, self.device, unit.clone());
        let h = self.scope.spawn(move || par.gather(u, shards, dtype, device));
        self.pending = Pending::Running(unit.clone(), h);
    }

    /// Wait for a running prefetch and keep its result.
    fn settle(&mut self) {
        if let Pending::Running(..) = self.pending {
            let t = Instant::now();
            let Pending::Running(u, h) = std::mem::replace(&mut self.pending, Pending::Idle) else {
                unreachable!("matched above")
            };
            let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            self.waited += t.elapsed().as_secs_f64();
            self.pending = Pending::Ready(u, r);
        }
    }

    /// `unit`'s weights in the compute dtype: prefetched, or gathered now.
    fn gather(&mut self, unit: &Range<usize>) -> Gathered<I> {
        self.settle();
        match std::mem::replace(&mut self.pending, Pending::Idle) {
            Pending::Ready(u, r) if u == *unit => r,
            other => {
                debug_assert!(matches!(other, Pending::Idle), "a prefetch went unused");
                let t = Instant::now();
                let r = self.par.gather(unit.clone(), self.shards, self.dtype, self.device);
                self.waited += t.elapsed().as_secs_f64();
                r
            }
        }
    }

    fn scatter(
        &mut self,
        unit: &Range<usize>,
        g: Vec<Option<Tensor<I, 1>>>,
    ) -> Result<Vec<Option<Tensor<I, 1>>>> {
        self.settle();
        let t = Instant::now();
        let r = self.par.reduce_scatter(unit.clone(), g, self.device);
        self.waited += t.elapsed().as_secs_f64();
        r
    }
}

/// What the rounds of a step leave: the gradients and the loss sums.
struct Rounds<I: Backend> {
    acc: Acc<I>,
    ce_total: f64,
    kd_total: f64,
    policy: PolicyFigures,
    comm_s: f64,
}

/// One optimizer step under parameter sharding; the same contract as
/// [`parallel_step`](super::step::parallel_step) (every rank passes the same `micro`; micro-batch
/// i runs on rank i mod world).
pub fn fsdp_step<B: AutodiffBackend>(
    f: &mut Fsdp<B::InnerBackend>,
    rope: &Rope<B>,
    opt: &mut AdamW<B::InnerBackend>,
    micro: &[Batch],
    spec: &StepSpec,
    device: &B::Device,
    par: &Parallel<B::InnerBackend>,
) -> Result<StepOutcome> {
    let n_tokens: usize = micro.iter().map(Batch::loss_tokens).sum();
    let n_kd: usize = micro.iter().map(|b| b.kd.len()).sum();
    let w = if n_kd > 0 { spec.kd_weight } else { 0.0 };
    let r = std::thread::scope(|scope| {
        let mut comms = Comms {
            scope,
            par,
            shards: &f.shards,
            dtype: spec.compute,
            device,
            prefetch: f.opts.prefetch,
            pending: Pending::Idle,
            waited: 0.0,
        };
        rounds::<B>(f, rope, micro, (w, spec.objective), n_tokens, n_kd, device, &mut comms)
    })?;
    let Rounds { acc, ce_total, kd_total, policy: pf, mut comm_s } = r;

    let t = Instant::now();
    let sums = par.comm.sum(&[ce_total, kd_total, pf.tokens, pf.clipped, pf.kl], device)?;
    comm_s += t.elapsed().as_secs_f64();
    let world = par.world();
    let (ce_total, kd_total) = if world == 1 { (ce_total, kd_total) } else { (sums[0], sums[1]) };
    let pf = PolicyFigures { tokens: sums[2], clipped: sums[3], kl: sums[4] };
    let (loss, ce, kd) = mean_losses(ce_total, kd_total, n_tokens, n_kd, w);

    // Global norm from the owned slices (f64 sums of squares, summed over ranks).
    let grad_norm = par.comm.sum(&[acc.sum_of_squares()?], device)?[0].sqrt();
    let mut outcome = StepOutcome {
        loss,
        ce,
        kd,
        grad_norm,
        grad_norms: BTreeMap::new(),
        clipped_grad_norms: BTreeMap::new(),
        tokens: n_tokens,
        comm_s,
        offload_s: 0.0,
        routing: Default::default(),
        policy: pf,
    };
    if let Acc::Host(_, secs) = &acc {
        outcome.offload_s = *secs;
    }
    if !loss.is_finite() || !grad_norm.is_finite() {
        return Ok(outcome);
    }
    let clip = spec.max_grad_norm > 0.0;
    let coef = if clip { (spec.max_grad_norm / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
    // AdamW on the owned slices; nothing is gathered after the update (that is what ZeRO-3 saves).
    // A master is taken only when there is a gradient to apply.
    match (acc, f.host.as_mut()) {
        (Acc::Device(acc), _) => {
            for (i, g) in acc.into_iter().enumerate() {
                let Some(g) = g else { continue };
                let Some(master) = f.shards[i].take() else { continue };
                let g = if clip { g.mul_scalar(coef) } else { g };
                f.shards[i] = Some(opt.update(&f.specs[i].name, master, g, spec.lr));
            }
        }
        (Acc::Host(acc, _), Some(h)) => {
            // On the host; then each updated slice goes back to the device in the compute dtype.
            let t = Instant::now();
            for (i, g) in acc.into_iter().enumerate() {
                let Some(g) = g else { continue };
                let Some(master) = h.master[i].take() else { continue };
                let g = if clip { g.mul_scalar(coef) } else { g };
                let m = h.opt.update(&f.specs[i].name, master, g, spec.lr);
                f.shards[i] = Some(to_device::<B::InnerBackend>(&m, f.opts.compute, device));
                h.master[i] = Some(m);
            }
            h.opt.step += 1;
            outcome.offload_s += t.elapsed().as_secs_f64();
        }
        (Acc::Host(..), None) => unreachable!("host gradients only under offload"),
    }
    opt.step += 1;
    Ok(outcome)
}

/// The rounds of a step (micro-batch `round · world + rank` on this rank), unit by unit.
#[allow(clippy::too_many_arguments)]
fn rounds<B: AutodiffBackend>(
    f: &Fsdp<B::InnerBackend>,
    rope: &Rope<B>,
    micro: &[Batch],
    (w, objective): (f64, Option<Objective>),
    n_tokens: usize,
    n_kd: usize,
    device: &B::Device,
    comms: &mut Comms<'_, '_, B::InnerBackend>,
) -> Result<Rounds<B::InnerBackend>> {
    type G<B> = Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;
    let (rank, world) = (comms.par.rank(), comms.par.world());
    let np = f.specs.len();
    let tied = f.dims.tied;
    let recompute = f.opts.recompute;
    let mut acc =
        if f.host.is_some() { Acc::Host(vec![None; np], 0.0) } else { Acc::Device(vec![None; np]) };
    let (mut ce_total, mut kd_total) = (0.0f64, 0.0f64);
    let mut pf = PolicyFigures::default();
    let view = f.view();
    let units = &f.units;
    let n_layers = units.layers.len();
    // The unit gathered after layer l in the forward, and after layer l in the backward.
    let next_fwd = |l: usize| units.layers.get(l + 1).unwrap_or(&units.head);
    let next_bwd = |l: usize| if l == 0 { &units.embed } else { &units.layers[l - 1] };

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
            let (h, kv) = f.dims.rope_heads();
            LayerCtx::new(rope, positions, h, kv, mask)
        });
        let w0 = comms.gather(&units.embed)?;
        comms.prefetch(units.layers.first().unwrap_or(&units.head));
        let mut x: Option<Tensor<B, 3>> = prepared.as_ref().map(|(_, ids, _, _)| {
            embed(
                Tensor::<B, 1>::from_inner(w0[0].clone())
                    .reshape([f_vocab(&view), f_hidden(&view)]),
                ids.clone(),
            )
        });
        drop(w0);
        let mut inputs_l: Vec<Option<Tensor<B, 3>>> = Vec::with_capacity(n_layers);
        let mut kept: Vec<Option<Segment<B>>> = Vec::new();
        for (l, unit) in units.layers.iter().enumerate() {
            let wl = comms.gather(unit)?;
            comms.prefetch(next_fwd(l));
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
        let mut wh = Some(comms.gather(&units.head)?);
        let mut we = if tied { Some(comms.gather(&units.embed)?) } else { None };
        if recompute && n_layers > 0 {
            comms.prefetch(&units.layers[n_layers - 1]);
        }
        let mut g_x: Option<Tensor<B::InnerBackend, 3>> = None;
        let (mut gh, mut ge): (Vec<G<B>>, Vec<G<B>>) =
            (vec![None; units.head.len()], vec![None; 1]);
        if let (Some((b, _, _, _)), Some(xv)) = (prepared.as_ref(), x.take()) {
            let xl = Tensor::<B, 3>::from_inner(xv.inner()).require_grad();
            let wsh = leaves::<B>(wh.take().expect("gathered above"), true);
            let wse = we.take().map(|we| leaves::<B>(we, true));
            let (norm, head) = build_head::<B>(&view, &wsh, wse.as_ref().map(|v| v[0].clone()));
            let hidden = norm.forward(xl.clone());
            let (l, figures): (LossSums<B>, _) =
                super::objective::losses_from_hidden(&head, hidden, b, device, objective);
            pf.add(&figures);
            let loss = l.objective(w, n_tokens, n_kd, &mut ce_total, &mut kd_total);
            let grads = loss.backward();
            gh = leaf_grads::<B>(&wsh, &grads);
            if let Some(wse) = &wse {
                ge = leaf_grads::<B>(wse, &grads);
            }
            g_x = xl.grad(&grads);
        }
        drop((wh, we));
        let s = comms.scatter(&units.head, gh)?;
        acc.add(units.head.clone(), s);
        if tied {
            let s = comms.scatter(&units.embed, ge)?;
            acc.add(units.embed.clone(), s);
        }

        // Backward through the layers, last first.
        for (l, unit) in units.layers.iter().enumerate().rev() {
            let seg = if recompute {
                let wl = comms.gather(unit)?;
                comms.prefetch(next_bwd(l));
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
            let s = comms.scatter(unit, g)?;
            acc.add(unit.clone(), s);
        }

        // The embedding.
        let w0 = comms.gather(&units.embed)?;
        let mut g: Vec<G<B>> = vec![None; 1];
        if let (Some((_, ids, _, _)), Some(gy)) = (prepared.as_ref(), g_x.take()) {
            let ws = leaves::<B>(w0, true);
            let x0 = embed(ws[0].clone().reshape([f_vocab(&view), f_hidden(&view)]), ids.clone());
            let grads = (x0 * Tensor::<B, 3>::from_inner(gy)).sum().backward();
            g = leaf_grads::<B>(&ws, &grads);
        }
        let s = comms.scatter(&units.embed, g)?;
        acc.add(units.embed.clone(), s);
    }
    Ok(Rounds { acc, ce_total, kd_total, policy: pf, comm_s: comms.waited })
}

fn f_vocab(v: &FsdpView<'_>) -> usize {
    v.dims.vocab
}

fn f_hidden(v: &FsdpView<'_>) -> usize {
    v.dims.hidden
}

/// Held-out loss sums (Σ ce, tokens) of `chunks` under parameter sharding: forward only, unit by
/// unit, on the inner backend, in f32; chunk c runs on rank c mod world and every rank joins
/// every gather.
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
            let (h, kv) = f.dims.rope_heads();
            LayerCtx::new(rope, positions, h, kv, mask)
        });
        let w0 = f.gather_f32(par, f.units.embed.clone(), device)?;
        let mut x = prepared.as_ref().map(|(_, (ids, _, _))| {
            embed(w0[0].clone().reshape([f.dims.vocab, f.dims.hidden]), ids.clone())
        });
        drop(w0);
        for unit in &f.units.layers {
            let wl = f.gather_f32(par, unit.clone(), device)?;
            if let (Some(ctx), Some(xv)) = (ctx.as_ref(), x.take()) {
                x = Some(build_layer::<I>(&view, unit, &wl).forward(xv, ctx, None));
            }
        }
        let wh = f.gather_f32(par, f.units.head.clone(), device)?;
        let we = if f.dims.tied {
            Some(f.gather_f32(par, f.units.embed.clone(), device)?)
        } else {
            None
        };
        if let (Some((b, _)), Some(xv)) = (prepared.as_ref(), x.take()) {
            let (norm, head) = build_head::<I>(&view, &wh, we.map(|v| v[0].clone()));
            let l = super::loss::losses_from_hidden(&head, norm.forward(xv), b, device);
            sum += l.ce.into_scalar().elem::<f64>();
            n += l.tokens;
        }
    }
    Ok((sum, n))
}
