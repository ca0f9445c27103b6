//! The training loop, one for every objective: a linear sequence of plain steps, setup →
//! (batch → loss → backward → clip → AdamW) × N → checkpoint → export, in torchtune's manner.
//!
//! The loop alone owns resume, held-out evaluation, metrics, checkpoints, export and the
//! non-finite check. What differs between objectives is where a step's batches come from and
//! which loss is taken on them: a [`BatchSource`]. Parallelism (DP, ZeRO-1/2, FSDP, offload) is a
//! layer around the model and the optimizer ([`super::parallel`], [`super::fsdp`]), so every
//! source runs on one device or many alike.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde_json::json;

use super::checkpoint::{self, RunState};
use super::config::TrainConfig;
use super::data::DataReport;
use super::fsdp::{Fsdp, FsdpOptions};
use super::metrics::{
    MoeLoad, Observer, StepMetrics, Summary, cpu_peak_tflops, host_peak_rss_mb, machine_memory_gb,
    reopen_metrics,
};
use super::optim::AdamW;
use super::parallel::{Comm, Layout, Offload, Parallel, ShardMode};
use super::source::{BatchSource, Student, StudentView};
use super::step::{StepSpec, parallel_step};
use crate::error::{Error, IoContext, Result};
use distill_models::device::CpuDevice;
use distill_models::hf::{self, Assets, ExportOptions};
use distill_models::model::CausalLm;
use distill_models::rope::Rope;

struct Quiet;
impl Observer for Quiet {}

/// Makes rank `rank` of `world` its source (each rank builds its own, on its own thread).
pub type MakeSource<'a, B> =
    dyn Fn(usize, usize) -> Result<Box<dyn BatchSource<B> + 'a>> + Sync + 'a;

/// Train per the config on the batches of the sources `make` builds, one rank per device in
/// `devices` (data parallel when there are several). With `resume`, continue from the newest
/// complete checkpoint.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    recipe: serde_json::Value,
    devices: Vec<B::Device>,
    resume: bool,
    obs: &mut dyn Observer,
    make: &MakeSource<'_, B>,
) -> Result<Summary> {
    cfg.validate()?;
    if devices.is_empty() {
        return Err(Error::Config { section: "train", msg: "no device to train on".into() });
    }
    let nodes = cfg.parallel.node_spec()?;
    let world = devices.len() * nodes.as_ref().map_or(1, |n| n.count);
    let ckpt_root = cfg.output.join("checkpoints");
    std::fs::create_dir_all(&cfg.output).at(&cfg.output)?;
    resume_from(&ckpt_root, resume)?;
    // The plan must fit before any rank loads anything.
    let config = distill_models::ModelConfig::from_file(&cfg.model.join("config.json"))?;
    let plan = super::plan::MemoryPlan::for_run(&config, cfg, world);
    // CPU peers share the machine's memory.
    let have = cfg.device_memory_gb.unwrap_or_else(|| {
        machine_memory_gb() / if cfg.on_cuda() { 1.0 } else { devices.len() as f64 }
    });
    if plan.total_gb() > have {
        return Err(Error::DoesNotFit(format!(
            "this run needs about {:.0} GB per rank but a device has {have:.0} GB:\n{}\nlower max_seq_len or micro_batch, turn on activation_checkpointing, add devices, or shard more ([train.parallel] shard = \"optimizer\", \"gradients\" or \"parameters\"); `distill plan` shows every mode",
            plan.total_gb(),
            plan.table()
        )));
    }

    // Offloaded state lives in this node's host memory, for every rank the node runs (on CPU
    // peers the devices' own share comes out of the same memory).
    if plan.offload {
        let local = devices.len() as f64;
        let need = (plan.host_gb() + if cfg.on_cuda() { 0.0 } else { plan.total_gb() }) * local;
        let host = cfg.parallel.host_memory_gb.unwrap_or_else(machine_memory_gb);
        if need > host {
            let parts: Vec<String> = plan
                .host_parts()
                .iter()
                .map(|(name, b)| format!("{name} {:.2} GB", b / 1e9))
                .collect();
            return Err(Error::DoesNotFit(format!(
                "offload = \"cpu\" needs about {need:.1} GB of host memory on this node but it has {host:.1} GB ([train.parallel] host_memory_gb, default: this machine's RAM): {} rank(s) × {:.2} GB of offloaded state ({}){}; add devices or nodes so each rank's share shrinks, or turn offload off if the devices can hold it (`distill plan` shows every mode)",
                devices.len(),
                plan.host_gb(),
                parts.join(", "),
                if cfg.on_cuda() {
                    String::new()
                } else {
                    format!(", plus {:.2} GB per CPU peer for the step itself", plan.total_gb())
                }
            )));
        }
    }

    super::parallel::launch::<B::InnerBackend, Summary>(
        devices,
        nodes.as_ref(),
        |comm, device| {
            fit::<B>(cfg, &recipe, resume, make(comm.rank, comm.world)?, comm, device, obs)
        },
        |comm, device| {
            fit::<B>(cfg, &recipe, resume, make(comm.rank, comm.world)?, comm, device, &mut Quiet)
        },
    )
}

/// One rank's run: load (or resume) the student and its optimizer, then step through the
/// source's batches, evaluating, logging and saving as configured, and export at the end.
fn fit<'s, B: AutodiffBackend>(
    cfg: &TrainConfig,
    recipe: &serde_json::Value,
    resume: bool,
    mut source: Box<dyn BatchSource<B> + 's>,
    comm: Comm<B::InnerBackend>,
    device: B::Device,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    let (rank, world) = (comm.rank, comm.world);
    let lead = rank == 0;
    let total = source.total_steps();
    let ckpt_root = cfg.output.join("checkpoints");
    let resume_dir =
        if resume { checkpoint::list(&ckpt_root)?.pop().map(|(_, d)| d) } else { None };
    // Where the weights come from: the student, or the checkpoint to resume.
    let (mut state, weights_dir) = match &resume_dir {
        Some(dir) => (checkpoint::load_state(dir)?, dir.clone()),
        None => (RunState::fresh(recipe.clone()), cfg.model.clone()),
    };
    let unusable = |e: distill_models::Error| match &resume_dir {
        Some(dir) => Error::Checkpoint { dir: dir.clone(), msg: e.to_string() },
        None => e.into(),
    };
    let config = distill_models::ModelConfig::from_file(&weights_dir.join("config.json"))
        .map_err(unusable)?;
    // The flat layout comes from the parameter spec (the order `params_mut` walks).
    let sizes: Vec<(String, usize)> = distill_models::spec::param_specs(&config)
        .into_iter()
        .map(|s| (s.name, s.shape.iter().product()))
        .collect();
    let layout = Layout::new(&sizes, world, (cfg.parallel.bucket_mb * 1e6) as usize);
    let par = Parallel { comm, mode: cfg.parallel.shard, layout };
    // Under `parameters`, each rank reads only its slices; otherwise every rank the whole model.
    // At world size 1 there is nothing to shard: `parameters` runs as `none`, except that
    // activation checkpointing there runs the same unit-by-unit schedule (every unit owned whole),
    // which recomputes each layer from its input: burn's own checkpointing of the whole graph
    // (op-level, it keeps every matmul output) saved 7% of the memory where this saves the
    // activations (docs/benchmarks.md, "Parameter sharding").
    let offload = cfg.parallel.offload == Offload::Cpu;
    let units =
        uses_units(cfg.parallel.shard, world, cfg.activation_checkpointing, cfg.parallel.offload);
    let mut student: Student<B> = if units {
        let ckpt = distill_models::checkpoint::Checkpoint::open(&weights_dir).map_err(unusable)?;
        let mut src = distill_models::weights::CheckpointSource::new(&ckpt);
        let opts = FsdpOptions {
            recompute: cfg.activation_checkpointing,
            prefetch: cfg.parallel.prefetch,
            offload,
            compute: cfg.compute(),
        };
        let f = Fsdp::load(&config, &mut src, &par, &device, opts).map_err(|e| match e {
            Error::Model(m) => unusable(m),
            e => e,
        })?;
        Student::Sharded(Box::new(f))
    } else {
        let loaded = hf::load_model::<B>(&weights_dir, &device).map_err(unusable)?;
        Student::Whole(Box::new(loaded.model))
    };
    // AdamW's moments: on the device, or under offload on the host beside the f32 master (the
    // device's optimizer then stays empty).
    let mut opt = match (&resume_dir, offload) {
        (Some(dir), false) => {
            checkpoint::load_optimizer(dir, cfg.optim.clone(), state.step, &par, &device)?
        }
        _ => AdamW::<B::InnerBackend>::new(cfg.optim.clone()),
    };
    if let Student::Sharded(f) = &mut student
        && let Some(h) = f.host.as_mut()
    {
        h.opt = match &resume_dir {
            Some(dir) => checkpoint::load_optimizer(
                dir,
                cfg.optim.clone(),
                state.step,
                &par,
                &CpuDevice::default(),
            )?,
            None => AdamW::new(cfg.optim.clone()),
        };
    }
    let rope = Rope::<B>::new(&config, &device);
    let n_params = par.layout.total;
    let peak = cfg.peak_tflops.unwrap_or_else(cpu_peak_tflops) * 1e12 * world as f64;
    macro_rules! view {
        () => {
            StudentView { student: &student, par: &par, device: &device, config: &config }
        };
    }
    source.start(&state, &view!())?;
    let report = source.report().clone();
    let eval_key = source.eval_key();

    // metrics.jsonl (rank 0): keep exactly the lines up to the resumed step, so a resumed run's
    // file equals an uninterrupted one.
    let metrics_path = cfg.output.join("metrics.jsonl");
    let mut metrics = if lead { Some(reopen_metrics(&metrics_path, state.step)?) } else { None };
    fn log(
        metrics: &mut Option<std::fs::File>,
        path: &Path,
        line: serde_json::Value,
    ) -> Result<()> {
        if let Some(f) = metrics.as_mut() {
            writeln!(f, "{line}").at(path)?;
            f.flush().at(path)?;
        }
        Ok(())
    }
    if lead {
        obs.started(total, state.step, &report);
    }

    let first_eval = if state.step == 0 { source.eval(&view!())? } else { None };
    if let Some(l) = first_eval {
        log(&mut metrics, &metrics_path, json!({"step": 0, eval_key: l}))?;
        if lead {
            obs.eval(0, l);
        }
    }

    let t_run = Instant::now();
    let elapsed0 = state.elapsed_s;
    let mut last_eval = None;
    let fault = injected_fault();
    // A checkpoint of the weights (gathered under sharding), AdamW's moments and the run state;
    // returns the weights (rank 0's; empty elsewhere).
    let save = |student: &Student<B>, opt: &AdamW<B::InnerBackend>, state: &RunState| {
        let weights = student.consolidate(&par, &device)?;
        let dir = checkpoint::save(
            &ckpt_root,
            &weights,
            &config,
            &student.moments(opt),
            state,
            cfg.keep_checkpoints,
            &par,
            &device,
        )?;
        Ok::<_, Error>((weights, dir))
    };
    // Seconds spent in this invocation's optimizer steps, and how many ran (the time budget).
    let (mut steps_s, mut steps_here) = (0.0f64, 0u64);
    while state.step < total {
        if let Some(budget) = cfg.max_step_seconds
            && steps_here > 0
        {
            // Run the next step only if that ends nearer the budget than stopping now. Ranks
            // agree on rank 0's clock.
            let mean = steps_s / steps_here as f64;
            let spent = elapsed0 + steps_s;
            let stop = rank == 0 && spent + mean / 2.0 > budget;
            if par.comm.sum(&[if stop { 1.0 } else { 0.0 }], &device)?[0] > 0.0 {
                break;
            }
        }
        if fault == Some((rank, state.step + 1)) {
            panic!(
                "injected fault (DISTILL_FAULT_INJECT) on rank {rank} at step {}",
                state.step + 1
            );
        }
        let t0 = Instant::now();
        let batch = source.next(&mut state, &view!())?;
        let seen: u64 = batch.micro.iter().map(|b| b.real_tokens as u64).sum();
        let lr = cfg.optim.lr_at(state.step, total);
        let spec = StepSpec {
            kd_weight: batch.kd_weight,
            max_grad_norm: cfg.optim.max_grad_norm,
            lr,
            compute: cfg.compute(),
            objective: batch.objective,
        };
        let micro = &batch.micro;
        let mut moe_load = None;
        let out = match &mut student {
            Student::Whole(model) => {
                let sparse = sparse_layers(model);
                let out =
                    parallel_step(model, &rope, &mut opt, micro, &spec, &device, &par, false)?;
                if !sparse.is_empty() {
                    let (rate, r) = (cfg.moe_bias_update, &out.routing);
                    moe_load = Some(balance_experts(model, &sparse, r, rate, &par, &device)?);
                }
                out
            }
            Student::Sharded(f) => {
                super::fsdp::fsdp_step(f, &rope, &mut opt, micro, &spec, &device, &par)?
            }
        };
        let (loss, ce, kd, grad_norm, n_tokens) =
            (out.loss, out.ce, out.kd, out.grad_norm, out.tokens);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let last = checkpoint::list(&ckpt_root)?
                .pop()
                .map_or("none".to_string(), |(_, d)| d.display().to_string());
            return Err(Error::NonFinite {
                what: if loss.is_finite() { "gradient" } else { "loss" },
                step: state.step + 1,
                loss,
                grad_norm,
                last,
            });
        }
        state.step += 1;
        state.tokens_seen += seen;
        let secs = t0.elapsed().as_secs_f64();
        steps_s += secs;
        steps_here += 1;
        let m = StepMetrics {
            step: state.step,
            total_steps: total,
            epoch: batch.epoch,
            loss,
            ce,
            kd,
            lr,
            grad_norm,
            tokens: n_tokens as u64,
            tokens_per_s: seen as f64 / secs,
            mfu: 6.0 * n_params as f64 * seen as f64 / secs / peak,
            elapsed_s: elapsed0 + t_run.elapsed().as_secs_f64(),
            step_s: secs,
            world,
            comm_s: out.comm_s,
            offload_s: offload.then_some(out.offload_s),
            moe_load,
            host_peak_rss_mb: host_peak_rss_mb(),
        };
        let mut line = serde_json::to_value(&m).expect("json");
        for (k, v) in batch.figures {
            line[k.as_str()] = v;
        }
        if out.policy.tokens > 0.0 {
            // The policy loss's own figures, on the weights this step started from.
            line["clip_fraction"] = json!(out.policy.clipped / out.policy.tokens);
            line["kl_ref"] = json!(out.policy.kl / out.policy.tokens);
        }
        log(&mut metrics, &metrics_path, line)?;
        if lead {
            obs.step(&m);
        }
        if cfg.eval_every > 0
            && state.step % cfg.eval_every == 0
            && state.step < total
            && let Some(l) = source.eval(&view!())?
        {
            log(&mut metrics, &metrics_path, json!({"step": state.step, eval_key: l}))?;
            if lead {
                obs.eval(state.step, l);
            }
        }
        if cfg.save_every > 0 && state.step % cfg.save_every == 0 && state.step < total {
            if let Some(f) = metrics.as_mut() {
                f.sync_all().at(&metrics_path)?;
            }
            state.elapsed_s = elapsed0 + t_run.elapsed().as_secs_f64();
            let (_, dir) = save(&student, &opt, &state)?;
            if lead {
                obs.saved(&dir);
            }
        }
    }
    if let Some(l) = source.eval(&view!())? {
        log(&mut metrics, &metrics_path, json!({"step": state.step, eval_key: l}))?;
        if lead {
            obs.eval(state.step, l);
        }
        last_eval = Some(l);
    }
    if let Some(f) = metrics.as_mut() {
        f.sync_all().at(&metrics_path)?;
    }
    state.elapsed_s = elapsed0 + t_run.elapsed().as_secs_f64();
    let (weights, dir) = save(&student, &opt, &state)?;
    if lead {
        obs.saved(&dir);
    }

    // Export (rank 0: the weights are the same on every rank), recording what the model was
    // distilled from.
    let export_dir = cfg.output.join("export");
    let exported = if lead {
        export(cfg, recipe, &report, &weights, &config, &state, &export_dir)
    } else {
        Ok(())
    };
    let ok = par.comm.agree(exported.is_ok(), &device)?;
    exported?;
    if !ok {
        return Err(Error::Collective { rank, msg: "rank 0 failed to export".into() });
    }
    Ok(Summary {
        steps: state.step,
        final_eval_loss: last_eval,
        first_eval_loss: first_eval,
        export_dir,
        data: report,
    })
}

/// The sparse layers of a model and their expert counts.
fn sparse_layers<B: Backend>(model: &CausalLm<B>) -> Vec<(usize, usize)> {
    model
        .model
        .layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match &l.mlp {
            distill_models::model::FeedForward::Sparse(m) => Some((i, m.experts.len())),
            distill_models::model::FeedForward::Dense(_) => None,
        })
        .collect()
}

/// The step's expert load (this rank's routing, summed over ranks in a fixed layout so every
/// rank agrees), and with `rate > 0` DeepSeek-V3's bias update on every rank alike.
fn balance_experts<B: AutodiffBackend>(
    model: &mut CausalLm<B>,
    sparse: &[(usize, usize)],
    recorded: &distill_models::model::RoutingLoad,
    rate: f64,
    par: &Parallel<B::InnerBackend>,
    device: &B::Device,
) -> Result<MoeLoad> {
    let mut flat = Vec::new();
    for &(layer, experts) in sparse {
        let l = recorded.get(&layer);
        flat.extend((0..experts).map(|e| l.and_then(|v| v.get(e)).copied().unwrap_or(0) as f64));
    }
    let flat = if par.world() > 1 { par.comm.sum(&flat, device)? } else { flat };
    let mut at = 0;
    let per_layer: Vec<Vec<f64>> = sparse
        .iter()
        .map(|&(_, experts)| {
            at += experts;
            flat[at - experts..at].to_vec()
        })
        .collect();
    if rate > 0.0 {
        for (&(layer, _), load) in sparse.iter().zip(&per_layer) {
            if let distill_models::model::FeedForward::Sparse(m) =
                &mut model.model.layers[layer].mlp
            {
                m.update_bias(load, rate);
            }
        }
    }
    Ok(MoeLoad::of(&per_layer))
}

/// The newest checkpoint under `root` to resume from (`resume`), or `None` for a fresh run;
/// refuses `--resume` without a checkpoint and a fresh run over existing ones.
pub fn resume_from(root: &Path, resume: bool) -> Result<Option<PathBuf>> {
    let mut existing = checkpoint::list(root)?;
    match (resume, existing.is_empty()) {
        (true, true) => {
            Err(Error::Resume(format!("--resume: no checkpoint under {}", root.display())))
        }
        (false, false) => Err(Error::Resume(format!(
            "{} already holds checkpoints; pass --resume to continue the run, or choose another output",
            root.display()
        ))),
        (true, false) => Ok(existing.pop().map(|(_, d)| d)),
        (false, true) => Ok(None),
    }
}

pub(crate) fn export(
    cfg: &TrainConfig,
    recipe: &serde_json::Value,
    report: &DataReport,
    weights: &[distill_models::weights::NamedTensor],
    config: &distill_models::ModelConfig,
    state: &RunState,
    export_dir: &Path,
) -> Result<()> {
    let mut assets = Assets::read(&cfg.model)?;
    let mut recipe = recipe.clone();
    distill_data::redact::redact_json(&mut recipe);
    let provenance = json!({"corpus_manifest_blake3": report.corpus_checksums, "corpora": cfg.data.corpus, "recipe": recipe, "steps": state.step, "base_model": cfg.model});
    if let Some(g) = assets.generation_config.as_mut() {
        g["distill"] = provenance.clone();
    }
    let metadata = std::collections::HashMap::from([
        ("distill.corpus_manifest_blake3".to_string(), report.corpus_checksums.join(",")),
        ("distill.recipe".to_string(), serde_json::to_string(&recipe).expect("json")),
    ]);
    let opts = ExportOptions {
        dtype: cfg.export.dtype.save(),
        max_shard_bytes: (cfg.export.max_shard_gb * 1e9) as u64,
        metadata,
        overwrite: true,
    };
    hf::write_dir(export_dir, weights, config, &assets, &opts)?;
    distill_data::fsutil::atomic_write(
        &export_dir.join("distill.json"),
        &serde_json::to_vec_pretty(&provenance).expect("json"),
    )?;
    Ok(())
}

/// `DISTILL_FAULT_INJECT=rank=R,step=S` makes rank R panic before step S: how the tests kill
/// one rank of a data-parallel run.
fn injected_fault() -> Option<(usize, u64)> {
    let v = std::env::var("DISTILL_FAULT_INJECT").ok()?;
    let mut rank = None;
    let mut step = None;
    for kv in v.split(',') {
        match kv.split_once('=') {
            Some(("rank", r)) => rank = r.trim().parse().ok(),
            Some(("step", s)) => step = s.trim().parse().ok(),
            _ => {}
        }
    }
    Some((rank?, step?))
}

/// Whether a run uses the unit-by-unit schedule ([`super::fsdp`]): parameter sharding on several
/// ranks, activation checkpointing on one, or offload at any world size.
pub fn uses_units(shard: ShardMode, world: usize, checkpointing: bool, offload: Offload) -> bool {
    (shard == ShardMode::Parameters && world > 1)
        || (world == 1 && checkpointing)
        || offload == Offload::Cpu
}

impl<B: AutodiffBackend> Student<B> {
    /// The model in HF layout for a checkpoint or an export: on rank 0 (every rank must call it;
    /// under `parameters` it gathers), empty elsewhere.
    fn consolidate(
        &self,
        par: &Parallel<B::InnerBackend>,
        device: &B::Device,
    ) -> Result<Vec<distill_models::weights::NamedTensor>> {
        match self {
            Student::Whole(_) if par.rank() != 0 => Ok(vec![]),
            Student::Whole(model) => {
                let mut sink = distill_models::weights::Collect::default();
                model.export(&mut sink as &mut dyn distill_models::weights::WeightSink);
                Ok(sink.0)
            }
            Student::Sharded(f) => f.consolidate(par, device),
        }
    }

    /// This rank's AdamW moments for a checkpoint: `opt`'s, or under offload the host's.
    fn moments(&self, opt: &AdamW<B::InnerBackend>) -> Vec<distill_models::weights::NamedTensor> {
        match self {
            Student::Sharded(f) if f.host.is_some() => {
                checkpoint::moments_of(&f.host.as_ref().expect("matched").opt)
            }
            _ => checkpoint::moments_of(opt),
        }
    }
}
