//! The Hugging Face directory layout: load a model from it, export one to it.
//!
//! ```text
//! config.json  generation_config.json  tokenizer.json  tokenizer_config.json
//! model.safetensors | model-00001-of-0000N.safetensors + model.safetensors.index.json
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::Value;

use crate::checkpoint::{self, Checkpoint, SaveDtype};
use crate::config::ModelConfig;
use crate::error::{Error, IoContext, Result};
use crate::model::CausalLm;
use crate::weights::{CheckpointSource, Collect, WeightSink};

/// A loaded model and what loading noticed.
pub struct Loaded<B: Backend> {
    pub config: ModelConfig,
    pub model: CausalLm<B>,
    /// Tensors in the checkpoint that the model did not use (e.g. a redundant tied `lm_head`).
    pub unused: Vec<String>,
}

/// Load `dir/config.json` and its safetensors into a model on `device`.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<Loaded<B>> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    let mut src = CheckpointSource::new(&ckpt).with_fp8_block(fp8_block(dir)?);
    let model = CausalLm::load(&config, &mut src, device)?;
    let unused = src.unused();
    Ok(Loaded { config, model, unused })
}

/// `quantization_config` of a block-quantised FP8 checkpoint (DeepSeek-V3/R1's release format):
/// its `weight_block_size`. Other quantisation methods are refused by name.
pub fn fp8_block(dir: &Path) -> Result<Option<[usize; 2]>> {
    let p = dir.join("config.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).at(&p)?)
        .map_err(|e| Error::Config { path: p.clone(), msg: e.to_string() })?;
    let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) else { return Ok(None) };
    let bad = |msg: String| Err(Error::Config { path: p.clone(), msg });
    match q.get("quant_method").and_then(Value::as_str) {
        Some("fp8") => {}
        other => {
            return bad(format!(
                "quantization_config.quant_method {other:?} is not supported (only DeepSeek's block-wise \"fp8\")"
            ));
        }
    }
    if q.get("fmt").and_then(Value::as_str).is_some_and(|f| f != "e4m3") {
        return bad(format!("quantization_config.fmt {} is not supported (only e4m3)", q["fmt"]));
    }
    match q
        .get("weight_block_size")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0) as usize).collect::<Vec<_>>())
    {
        Some(b) if b.len() == 2 && b.iter().all(|&x| (1..=1 << 16).contains(&x)) => {
            Ok(Some([b[0], b[1]]))
        }
        _ => bad(format!(
            "quantization_config.weight_block_size must be two positive sizes, found {}",
            q.get("weight_block_size").unwrap_or(&Value::Null)
        )),
    }
}

/// Tokenizer and generation files that travel with a model.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    pub tokenizer_json: Option<Vec<u8>>,
    /// `tokenizer_config.json`, with `chat_template` inlined when the source had a separate
    /// `chat_template.jinja`.
    pub tokenizer_config: Option<Value>,
    pub generation_config: Option<Value>,
}

impl Assets {
    pub fn read(dir: &Path) -> Result<Assets> {
        let read_json = |name: &str| -> Result<Option<Value>> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).at(&p)?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
        };
        let mut tokenizer_config = read_json("tokenizer_config.json")?;
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            let t = std::fs::read_to_string(&jinja).at(&jinja)?;
            let tc = tokenizer_config.get_or_insert_with(|| Value::Object(Default::default()));
            if tc.get("chat_template").is_none() {
                tc["chat_template"] = Value::String(t);
            }
        }
        let tok = dir.join("tokenizer.json");
        Ok(Assets {
            tokenizer_json: if tok.exists() { Some(std::fs::read(&tok).at(&tok)?) } else { None },
            tokenizer_config,
            generation_config: read_json("generation_config.json")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub dtype: SaveDtype,
    /// Largest safetensors shard, in bytes.
    pub max_shard_bytes: u64,
    /// Stored in each safetensors header's `__metadata__` (string → string).
    pub metadata: HashMap<String, String>,
    /// Replace `out` if it exists.
    pub overwrite: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            dtype: SaveDtype::Bf16,
            max_shard_bytes: 5 << 30,
            metadata: HashMap::new(),
            overwrite: false,
        }
    }
}

/// Write `model` as a Hugging Face directory at `out`, via a temp directory renamed into place.
pub fn export<B: Backend>(
    model: &CausalLm<B>,
    config: &ModelConfig,
    assets: &Assets,
    out: &Path,
    opts: &ExportOptions,
) -> Result<Vec<PathBuf>> {
    let mut sink = Collect::default();
    model.export(&mut sink as &mut dyn WeightSink);
    write_dir(out, &sink.0, config, assets, opts)
}

/// Write tensors `(HF name, shape, data)` and the JSON files as a Hugging Face directory at `out`:
/// everything goes into a temp directory beside it, is fsynced, and is renamed into place.
pub fn write_dir(
    out: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    config: &ModelConfig,
    assets: &Assets,
    opts: &ExportOptions,
) -> Result<Vec<PathBuf>> {
    if out.exists() && !opts.overwrite {
        return Err(Error::Invalid(format!("{} exists; refusing to overwrite it", out.display())));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).at(parent)?;
    let name =
        out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    distill_data::fsutil::fresh_dir(&tmp)?;

    let mut meta = opts.metadata.clone();
    meta.insert("format".into(), "pt".into());
    let mut files =
        checkpoint::write_sharded(&tmp, tensors, opts.dtype, opts.max_shard_bytes, &meta)?;

    let write_json = |name: &str, v: &Value, files: &mut Vec<PathBuf>| -> Result<()> {
        let p = tmp.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).expect("json")).at(&p)?;
        files.push(p);
        Ok(())
    };
    write_json("config.json", &config.to_hf_json(opts.dtype.hf_name()), &mut files)?;
    let gen_cfg = assets.generation_config.clone().unwrap_or_else(|| {
        let mut g = serde_json::json!({"_from_model_config": true});
        if let Some(b) = config.bos_token_id {
            g["bos_token_id"] = b.into();
        }
        match config.eos_token_ids.as_slice() {
            [] => {}
            [e] => g["eos_token_id"] = (*e).into(),
            es => g["eos_token_id"] = es.into(),
        }
        g
    });
    write_json("generation_config.json", &gen_cfg, &mut files)?;
    if let Some(t) = &assets.tokenizer_json {
        let p = tmp.join("tokenizer.json");
        std::fs::write(&p, t).at(&p)?;
        files.push(p);
    }
    if let Some(tc) = &assets.tokenizer_config {
        write_json("tokenizer_config.json", tc, &mut files)?;
    }
    distill_data::fsutil::publish_dir(&tmp, out, &files)?;
    Ok(files.into_iter().map(|f| out.join(f.file_name().expect("file name"))).collect())
}
