//! Training checkpoints: the model, AdamW's moments, and where the run was (step, epoch, data
//! position, resolved recipe), written to a temp directory and renamed into place. The last K
//! are kept; a run resumes from the newest that is complete.
//!
//! ```text
//! checkpoints/step-000100/  config.json  model.safetensors  optimizer.safetensors  state.json
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, Moments, OptimConfig};
use super::parallel::{Layout, Parallel, ShardMode};
use crate::error::{Error, IoContext, Result};
use distill_models::checkpoint::{Checkpoint, SaveDtype, write_sharded};
use distill_models::config::ModelConfig;
use distill_models::weights::NamedTensor;

pub const FORMAT: &str = "distill-train-checkpoint";
pub const VERSION: u32 = 1;

/// Where the run stands, saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    pub version: u32,
    /// Optimizer steps done.
    pub step: u64,
    pub epoch: u64,
    /// Next row of the epoch's shuffled order.
    pub epoch_row: u64,
    pub tokens_seen: u64,
    pub elapsed_s: f64,
    /// The resolved recipe (what produced this checkpoint).
    pub recipe: serde_json::Value,
}

impl RunState {
    /// The state of a run that has not taken a step.
    pub fn fresh(recipe: serde_json::Value) -> RunState {
        RunState {
            format: FORMAT.into(),
            version: VERSION,
            step: 0,
            epoch: 0,
            epoch_row: 0,
            tokens_seen: 0,
            elapsed_s: 0.0,
            recipe,
        }
    }
}

pub fn dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Save atomically under `root/step-NNNNNN`, then drop all but the newest `keep`. Every rank
/// calls it: rank 0 writes the model (the same on every rank), the config and the state; AdamW's
/// moments are written whole by rank 0 when they are replicated, or by each rank for its own
/// range under `optimizer/rank-NNNNN/` with `optimizer/shards.json` saying how they were cut.
/// Ranks meet at three barriers that carry failure, so a rank that cannot write fails them all.
#[allow(clippy::too_many_arguments)]
pub fn save<O: Backend>(
    root: &Path,
    weights: &[NamedTensor],
    config: &ModelConfig,
    moments: &[NamedTensor],
    state: &RunState,
    keep: usize,
    par: &Parallel<O>,
    device: &O::Device,
) -> Result<PathBuf> {
    let lead = par.rank() == 0;
    let name = dir_name(state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let dst = root.join(&name);
    let failed = |what: &str| Error::Collective {
        rank: par.rank(),
        msg: format!("saving checkpoint {}: {what} failed on another rank", dst.display()),
    };

    // 1. Rank 0 lays out the temp directory.
    let made = if lead { prepare_tmp(root, &tmp) } else { Ok(()) };
    if !par.comm.agree(made.is_ok(), device)? {
        made?;
        return Err(failed("creating the directory"));
    }
    // 2. Moments: whole (rank 0) or each rank its range.
    let opt_dir = tmp.join("optimizer");
    let wrote = if par.replicated() {
        if lead { write_moments(&opt_dir, moments) } else { Ok(vec![]) }
    } else {
        write_moments(&opt_dir.join(format!("rank-{:05}", par.rank())), moments)
    };
    if !par.comm.agree(wrote.is_ok(), device)? {
        wrote?;
        return Err(failed("writing optimizer state"));
    }
    // 3. Rank 0: the model, config, state and shard index; then the rename.
    let finished = if lead {
        finish_dir(root, &tmp, &dst, weights, config, state, keep, par, wrote.unwrap_or_default())
    } else {
        Ok(())
    };
    if !par.comm.agree(finished.is_ok(), device)? {
        finished?;
        return Err(failed("publishing the checkpoint"));
    }
    Ok(dst)
}

fn prepare_tmp(root: &Path, tmp: &Path) -> Result<()> {
    std::fs::create_dir_all(root).at(root)?;
    Ok(distill_data::fsutil::fresh_dir(tmp)?)
}

/// AdamW's moments as checkpoint tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`, flat f32), wherever
/// the optimizer runs.
pub fn moments_of<O: Backend>(opt: &AdamW<O>) -> Vec<NamedTensor> {
    opt.state
        .iter()
        .flat_map(|(n, m)| {
            let v = |t: &Tensor<O, 1>| {
                t.clone().into_data().convert::<f32>().into_vec::<f32>().expect("f32")
            };
            let (a, b) = (v(&m.exp_avg), v(&m.exp_avg_sq));
            [
                (format!("exp_avg.{n}"), vec![a.len()], a),
                (format!("exp_avg_sq.{n}"), vec![b.len()], b),
            ]
        })
        .collect()
}

fn write_moments(dir: &Path, moments: &[NamedTensor]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).at(dir)?;
    let files = write_sharded(dir, moments, SaveDtype::F32, u64::MAX, &HashMap::new())?;
    for f in &files {
        std::fs::File::open(f).and_then(|f| f.sync_all()).at(f)?;
    }
    Ok(files)
}

/// How sharded optimizer state was cut: the flat layout's parameters and the world size.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardIndex {
    world: usize,
    mode: ShardMode,
    /// `(name, numel)` in layout order.
    params: Vec<(String, usize)>,
}

#[allow(clippy::too_many_arguments)]
fn finish_dir<O: Backend>(
    root: &Path,
    tmp: &Path,
    dst: &Path,
    weights: &[NamedTensor],
    config: &ModelConfig,
    state: &RunState,
    keep: usize,
    par: &Parallel<O>,
    mut files: Vec<PathBuf>,
) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    files.extend(write_sharded(tmp, weights, SaveDtype::F32, u64::MAX, &meta)?);
    let write = |p: PathBuf, bytes: Vec<u8>| -> Result<PathBuf> {
        std::fs::write(&p, bytes).at(&p)?;
        Ok(p)
    };
    files.push(write(
        tmp.join("config.json"),
        serde_json::to_vec_pretty(&config.to_hf_json("float32")).expect("json"),
    )?);
    files.push(write(tmp.join("state.json"), serde_json::to_vec_pretty(state).expect("json"))?);
    if !par.replicated() {
        let index = ShardIndex {
            world: par.world(),
            mode: par.mode,
            params: par.layout.slots.iter().map(|s| (s.name.clone(), s.numel)).collect(),
        };
        files.push(write(
            tmp.join("optimizer").join(SHARD_INDEX),
            serde_json::to_vec_pretty(&index).expect("json"),
        )?);
    }
    distill_data::fsutil::publish_dir(tmp, dst, &files)?;
    let mut all = list(root)?;
    while all.len() > keep.max(1) {
        let (_, old) = all.remove(0);
        std::fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(())
}

const SHARD_INDEX: &str = "shards.json";

/// Finished checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(root).at(root)? {
        let e = e.at(root)?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
            out.push((step, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Load a checkpoint's state and model. Every file is checked; a damaged checkpoint is an error
/// naming it and what is wrong.
pub fn load_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(RunState, distill_models::hf::Loaded<B>)> {
    let state = load_state(dir)?;
    let loaded = distill_models::hf::load_model::<B>(dir, device)
        .map_err(|e| Error::Checkpoint { dir: dir.to_path_buf(), msg: e.to_string() })?;
    Ok((state, loaded))
}

/// A checkpoint's `state.json`, checked.
pub fn load_state(dir: &Path) -> Result<RunState> {
    let bad = |msg: String| Error::Checkpoint { dir: dir.to_path_buf(), msg };
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| bad(format!("state.json: {e}")))?;
    let state: RunState =
        serde_json::from_str(&text).map_err(|e| bad(format!("state.json: {e}")))?;
    if state.format != FORMAT || state.version != VERSION {
        return Err(bad(format!(
            "format {} v{} is not {FORMAT} v{VERSION}; it was written by another distill version",
            state.format, state.version
        )));
    }
    Ok(state)
}

/// Load AdamW's moments for the ranges this rank owns under `par`, whatever world size and shard
/// mode wrote them: re-sharding is reading other ranges of the same flat layout. Every moment is
/// checked against the parameter's size.
pub fn load_optimizer<O: Backend, H: Backend>(
    dir: &Path,
    optim: OptimConfig,
    step: u64,
    par: &Parallel<O>,
    device: &H::Device,
) -> Result<AdamW<H>> {
    let bad = |msg: String| Error::Checkpoint { dir: dir.to_path_buf(), msg };
    let opt_dir = dir.join("optimizer");
    let mut opt = AdamW::new(optim);
    opt.step = step;
    let index_path = opt_dir.join(SHARD_INDEX);
    // The saved layout: whole moments (one "rank"), or the ranks' ranges.
    let (saved, files): (Layout, Vec<Checkpoint>) = if index_path.exists() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| bad(format!("optimizer/{SHARD_INDEX}: {e}")))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| bad(format!("optimizer/{SHARD_INDEX}: {e}")))?;
        if index.world == 0 || index.world > 1 << 16 {
            return Err(bad(format!(
                "optimizer/{SHARD_INDEX}: world size {} is out of range",
                index.world
            )));
        }
        if index.params
            != par.layout.slots.iter().map(|s| (s.name.clone(), s.numel)).collect::<Vec<_>>()
        {
            return Err(bad(format!(
                "optimizer/{SHARD_INDEX}: its parameters are not the model's"
            )));
        }
        let files = (0..index.world)
            .map(|r| {
                Checkpoint::open(&opt_dir.join(format!("rank-{r:05}")))
                    .map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        (Layout::new(&index.params, index.world, usize::MAX), files)
    } else {
        let params: Vec<(String, usize)> =
            par.layout.slots.iter().map(|s| (s.name.clone(), s.numel)).collect();
        (
            Layout::new(&params, 1, usize::MAX),
            vec![Checkpoint::open(&opt_dir).map_err(|e| bad(e.to_string()))?],
        )
    };
    let mut found = 0usize;
    for (i, slot) in par.layout.slots.iter().enumerate() {
        let Some(want) = par.owned(i) else { continue };
        let (mut a, mut b) = (Vec::with_capacity(want.len()), Vec::with_capacity(want.len()));
        for (r, ckpt) in files.iter().enumerate() {
            let Some(have) = saved.owned(i, r) else { continue };
            let (lo, hi) = (want.start.max(have.start), want.end.min(have.end));
            if lo >= hi {
                continue;
            }
            let key = format!("exp_avg.{}", slot.name);
            if !ckpt.contains(&key) {
                continue; // a parameter that never had a gradient
            }
            let m = ckpt.read_f32(&key, &[have.len()]).map_err(|e| bad(e.to_string()))?;
            let v = ckpt
                .read_f32(&format!("exp_avg_sq.{}", slot.name), &[have.len()])
                .map_err(|e| bad(e.to_string()))?;
            a.extend_from_slice(&m[lo - have.start..hi - have.start]);
            b.extend_from_slice(&v[lo - have.start..hi - have.start]);
        }
        if a.is_empty() {
            continue;
        }
        if a.len() != want.len() {
            return Err(bad(format!(
                "the optimizer state of {} covers {} of the {} elements this rank needs",
                slot.name,
                a.len(),
                want.len()
            )));
        }
        let t = |v: Vec<f32>| Tensor::<H, 1>::from_data(TensorData::new(v, [want.len()]), device);
        opt.state.insert(slot.name.clone(), Moments { exp_avg: t(a), exp_avg_sq: t(b) });
        found += 1;
    }
    if step > 0
        && found == 0
        && par.layout.slots.iter().enumerate().any(|(i, _)| par.owned(i).is_some())
    {
        return Err(bad("the optimizer state is empty".into()));
    }
    Ok(opt)
}
