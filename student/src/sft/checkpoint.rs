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
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, Moments, OptimConfig};
use crate::checkpoint::{Checkpoint, SaveDtype, write_sharded};
use crate::config::ModelConfig;
use crate::error::{Error, IoContext, Result};
use crate::model::CausalLm;
use crate::weights::{Collect, WeightSink};

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

pub fn dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Save atomically under `root/step-NNNNNN`, then drop all but the newest `keep`.
pub fn save<B: Backend, O: Backend>(root: &Path, model: &CausalLm<B>, config: &ModelConfig, opt: &AdamW<O>, state: &RunState, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(root).at(root)?;
    let name = dir_name(state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    let mut sink = Collect::default();
    model.export(&mut sink as &mut dyn WeightSink);
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut files = write_sharded(&tmp, &sink.0, SaveDtype::F32, u64::MAX, &meta)?;
    let moments: Vec<(String, Vec<usize>, Vec<f32>)> = opt
        .state
        .iter()
        .flat_map(|(n, m)| {
            let v = |t: &Tensor<O, 1>| t.clone().into_data().convert::<f32>().into_vec::<f32>().expect("f32");
            let (a, b) = (v(&m.exp_avg), v(&m.exp_avg_sq));
            [(format!("exp_avg.{n}"), vec![a.len()], a), (format!("exp_avg_sq.{n}"), vec![b.len()], b)]
        })
        .collect();
    let opt_dir = tmp.join("optimizer");
    std::fs::create_dir_all(&opt_dir).at(&opt_dir)?;
    files.extend(write_sharded(&opt_dir, &moments, SaveDtype::F32, u64::MAX, &HashMap::new())?);
    let write = |p: PathBuf, bytes: Vec<u8>| -> Result<PathBuf> {
        std::fs::write(&p, bytes).at(&p)?;
        Ok(p)
    };
    files.push(write(tmp.join("config.json"), serde_json::to_vec_pretty(&config.to_hf_json("float32")).expect("json"))?);
    files.push(write(tmp.join("state.json"), serde_json::to_vec_pretty(state).expect("json"))?);
    for f in &files {
        std::fs::File::open(f).and_then(|f| f.sync_all()).at(f)?;
    }
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).at(&dst)?;
    }
    std::fs::rename(&tmp, &dst).at(&dst)?;
    std::fs::File::open(root).and_then(|d| d.sync_all()).at(root)?;
    let mut all = list(root)?;
    while all.len() > keep.max(1) {
        let (_, old) = all.remove(0);
        std::fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(dst)
}

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

/// Load a checkpoint's state, model and optimizer. Every file is checked; a damaged checkpoint is
/// an error naming it and what is wrong.
pub fn load<B: AutodiffBackend>(dir: &Path, device: &B::Device, optim: OptimConfig) -> Result<(RunState, crate::hf::Loaded<B>, AdamW<B::InnerBackend>)> {
    let bad = |msg: String| Error::Invalid(format!("checkpoint {} is unusable: {msg}", dir.display()));
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| bad(format!("state.json: {e}")))?;
    let state: RunState = serde_json::from_str(&text).map_err(|e| bad(format!("state.json: {e}")))?;
    if state.format != FORMAT || state.version != VERSION {
        return Err(bad(format!("format {} v{} is not {FORMAT} v{VERSION}; it was written by another distill version", state.format, state.version)));
    }
    let loaded = crate::hf::load_model::<B>(dir, device).map_err(|e| bad(e.to_string()))?;
    let ckpt = Checkpoint::open(&dir.join("optimizer")).map_err(|e| bad(e.to_string()))?;
    let mut opt = AdamW::new(optim);
    opt.step = state.step;
    let names: Vec<String> = ckpt.names().filter_map(|n| n.strip_prefix("exp_avg.").map(str::to_string)).collect();
    for n in names {
        let shape = ckpt.shape(&format!("exp_avg.{n}")).map(<[usize]>::to_vec).unwrap_or_default();
        let a = ckpt.read_f32(&format!("exp_avg.{n}"), &shape).map_err(|e| bad(e.to_string()))?;
        let b = ckpt.read_f32(&format!("exp_avg_sq.{n}"), &shape).map_err(|e| bad(e.to_string()))?;
        let t = |v: Vec<f32>| Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(v, [shape[0]]), device);
        opt.state.insert(n, Moments { exp_avg: t(a), exp_avg_sq: t(b) });
    }
    if state.step > 0 && opt.state.is_empty() {
        return Err(bad("the optimizer state is empty".into()));
    }
    Ok((state, loaded, opt))
}
