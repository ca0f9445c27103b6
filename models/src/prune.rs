//! Depth pruning (Minitron's prune-then-distill): a copy of a model that keeps only some of its
//! decoder layers, weights copied as they are. Distillation then teaches the shorter stack to
//! behave like the full one.

use std::path::Path;

use crate::checkpoint::{Checkpoint, SaveDtype};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hf::{self, Assets, ExportOptions};

/// Write `src` with only the decoder layers in `keep` (in that order) to `out`.
pub fn prune_layers(
    src: &Path,
    keep: &[usize],
    out: &Path,
    dtype: SaveDtype,
) -> Result<ModelConfig> {
    let mut cfg = ModelConfig::from_file(&src.join("config.json"))?;
    if keep.is_empty() || keep.iter().any(|&l| l >= cfg.num_hidden_layers) {
        return Err(Error::Invalid(format!(
            "layers to keep {keep:?} must be a non-empty subset of 0..{}",
            cfg.num_hidden_layers
        )));
    }
    let ckpt = Checkpoint::open(src)?;
    let mut tensors = Vec::new();
    for name in ckpt.names() {
        let new_name = match name.strip_prefix("model.layers.") {
            None => Some(name.to_string()),
            Some(rest) => {
                let (idx, tail) = rest
                    .split_once('.')
                    .ok_or_else(|| Error::Invalid(format!("odd tensor name {name}")))?;
                let idx: usize =
                    idx.parse().map_err(|_| Error::Invalid(format!("odd tensor name {name}")))?;
                keep.iter().position(|&k| k == idx).map(|new| format!("model.layers.{new}.{tail}"))
            }
        };
        if let Some(n) = new_name {
            let shape = ckpt.shape(name).expect("listed").to_vec();
            let data = ckpt.read_f32(name, &shape)?;
            tensors.push((n, shape, data));
        }
    }
    // Checkpoint order: by layer index, then name.
    tensors.sort_by_key(|a| layer_key(&a.0));
    cfg.num_hidden_layers = keep.len();
    let opts = ExportOptions { dtype, overwrite: true, ..Default::default() };
    hf::write_dir(out, &tensors, &cfg, &Assets::read(src)?, &opts)?;
    Ok(cfg)
}

fn layer_key(name: &str) -> (usize, String) {
    let idx = name
        .strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    (
        idx.map_or(if name.starts_with("model.embed") { 0 } else { usize::MAX }, |i| i + 1),
        name.to_string(),
    )
}
