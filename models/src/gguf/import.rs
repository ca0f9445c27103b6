//! GGUF → Hugging Face directory: config.json from the metadata, tensors dequantized to f32 with
//! llama.cpp's Q/K row permutation undone, tokenizer.json built from the vocabulary, merges and
//! pre-tokenizer type, and the chat template and special tokens carried over.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Value as Json, json};

use super::{GgufFile, Value, dequant};
use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::hf::{self, Assets, ExportOptions};

/// Bumped whenever the importer's output changes, so that caches of imported models refresh.
pub const IMPORT_VERSION: u32 = 2;

/// GGUF tensor name (per layer, after `blk.N.`) → HF name (after `model.layers.N.`). The one
/// table for this format.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    // Mixture of Experts (qwen3moe, deepseek2): the router and the shared experts. The routed
    // experts (`ffn_*_exps`, stacked) and DeepSeek's split `attn_k_b`/`attn_v_b` are rebuilt in
    // `import`.
    ("ffn_gate_inp", "mlp.gate"),
    ("ffn_gate_shexp", "mlp.shared_experts.gate_proj"),
    ("ffn_up_shexp", "mlp.shared_experts.up_proj"),
    ("ffn_down_shexp", "mlp.shared_experts.down_proj"),
    // Multi-head Latent Attention (deepseek2).
    ("attn_q_a", "self_attn.q_a_proj"),
    ("attn_q_a_norm", "self_attn.q_a_layernorm"),
    ("attn_q_b", "self_attn.q_b_proj"),
    ("attn_kv_a_mqa", "self_attn.kv_a_proj_with_mqa"),
    ("attn_kv_a_norm", "self_attn.kv_a_layernorm"),
    ("attn_kv_b", "self_attn.kv_b_proj"),
];
const GLOBAL_NAMES: &[(&str, &str)] =
    &[("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")];

/// The HF name of a GGUF tensor name, if it is one we map.
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let hf = LAYER_NAMES.iter().find(|(g, _)| *g == part)?.1;
        return Some(format!("model.layers.{layer}.{hf}.{suffix}"));
    }
    GLOBAL_NAMES.iter().find(|(g, _)| *g == stem).map(|(_, h)| format!("{h}.{suffix}"))
}

/// A tensor's shape and values.
type ShapedF32 = (Vec<usize>, Vec<f32>);

/// What the import did, for the user.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub arch: String,
    pub tensors: usize,
    /// Count of source tensors by GGML type name.
    pub types: BTreeMap<String, usize>,
    pub vocab: usize,
    pub merges: usize,
    pub pre_tokenizer: String,
    pub warnings: Vec<String>,
}

/// Import the GGUF at `path` into an HF directory at `out`.
pub fn import(path: &Path, out: &Path, opts: &ExportOptions) -> Result<ImportReport> {
    let g = GgufFile::open(path)?;
    let err = |msg: String| Error::Gguf { path: path.to_path_buf(), msg };
    let mut report = ImportReport::default();
    let config = config_from_metadata(&g, &mut report).map_err(err)?;

    // Tensors, in HF naming, dequantized.
    let mut tensors = Vec::with_capacity(g.tensors.len());
    // DeepSeek's kv_b_proj, split by the converter into per-head k_b and v_b: (layer → parts).
    let mut kv_b: BTreeMap<usize, [Option<ShapedF32>; 2]> = BTreeMap::new();
    for t in &g.tensors {
        *report.types.entry(dequant::type_name(t.ggml_type)).or_default() += 1;
        if let Some((layer, part)) = t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            let layer: Option<usize> = layer.parse().ok();
            let expert_part = match part {
                "ffn_gate_exps.weight" => Some("gate_proj"),
                "ffn_up_exps.weight" => Some("up_proj"),
                "ffn_down_exps.weight" => Some("down_proj"),
                _ => None,
            };
            match (layer, part, expert_part) {
                // Routed experts stacked on the first axis: [experts, out, in].
                (Some(l), _, Some(proj)) => {
                    let shape = t.shape();
                    let data = g.read_f32(t)?;
                    if shape.len() != 3 {
                        return Err(err(format!(
                            "tensor '{}' is {shape:?}, not [experts, out, in]",
                            t.name
                        )));
                    }
                    let per = shape[1] * shape[2];
                    for (e, chunk) in data.chunks_exact(per).enumerate() {
                        tensors.push((
                            format!("model.layers.{l}.mlp.experts.{e}.{proj}.weight"),
                            vec![shape[1], shape[2]],
                            chunk.to_vec(),
                        ));
                    }
                    continue;
                }
                // DeepSeek-V3's score-correction bias.
                (Some(l), "exp_probs_b.bias", _) => {
                    tensors.push((
                        format!("model.layers.{l}.mlp.gate.e_score_correction_bias"),
                        t.shape(),
                        g.read_f32(t)?,
                    ));
                    continue;
                }
                (Some(l), "attn_k_b.weight" | "attn_v_b.weight", _) => {
                    let slot = usize::from(part == "attn_v_b.weight");
                    kv_b.entry(l).or_default()[slot] = Some((t.shape(), g.read_f32(t)?));
                    continue;
                }
                _ => {}
            }
        }
        let Some(name) = hf_name(&t.name) else {
            report
                .warnings
                .push(format!("tensor '{}' has no Hugging Face counterpart; skipped", t.name));
            continue;
        };
        let shape = t.shape();
        let mut data = g.read_f32(t)?;
        if config.arch == Arch::Llama && name.ends_with(".weight") {
            if name.ends_with("q_proj.weight") {
                data = unpermute(&data, &shape, config.num_attention_heads);
            } else if name.ends_with("k_proj.weight") {
                data = unpermute(&data, &shape, config.num_key_value_heads);
            }
        }
        tensors.push((name, shape, data));
    }
    // k_b [heads, kv_lora_rank, nope] (transposed by the converter) and v_b [heads, v, rank]
    // back into kv_b_proj [heads · (nope + v), rank].
    for (l, parts) in kv_b {
        let [Some((ks, k)), Some((vs, v))] = parts else {
            return Err(err(format!("layer {l} has only one of attn_k_b and attn_v_b")));
        };
        if ks.len() != 3 || vs.len() != 3 || ks[0] != vs[0] || ks[1] != vs[2] {
            return Err(err(format!(
                "layer {l}: attn_k_b {ks:?} and attn_v_b {vs:?} are not [heads, rank, nope] and [heads, v, rank]"
            )));
        }
        let (h, r, nope, vd) = (ks[0], ks[1], ks[2], vs[1]);
        let mut w = vec![0f32; h * (nope + vd) * r];
        for hh in 0..h {
            for i in 0..nope {
                for j in 0..r {
                    w[(hh * (nope + vd) + i) * r + j] = k[(hh * r + j) * nope + i];
                }
            }
            for i in 0..vd {
                let row = (hh * (nope + vd) + nope + i) * r;
                w[row..row + r].copy_from_slice(&v[(hh * vd + i) * r..(hh * vd + i + 1) * r]);
            }
        }
        tensors.push((
            format!("model.layers.{l}.self_attn.kv_b_proj.weight"),
            vec![h * (nope + vd), r],
            w,
        ));
    }
    report.tensors = tensors.len();

    // Validate against the model we will later build: every tensor present with its shape.
    let mut src = crate::weights::MapSource {
        tensors: tensors.iter().map(|(n, s, _)| (n.clone(), (s.clone(), vec![]))).collect(),
        origin: path.display().to_string(),
    };
    check_tensors(&config, &mut src)?;
    for extra in src.tensors.keys() {
        report
            .warnings
            .push(format!("tensor '{extra}' is not used by a {} model", config.arch.hf_class()));
    }

    let (tokenizer_json, tokenizer_config) =
        tokenizer_files(&g, &config, &mut report).map_err(err)?;
    let assets = Assets {
        tokenizer_json: Some(serde_json::to_vec_pretty(&tokenizer_json).expect("json")),
        tokenizer_config: Some(tokenizer_config),
        generation_config: None,
    };
    // The tokenizer must load.
    tokenizers::Tokenizer::from_bytes(assets.tokenizer_json.as_ref().unwrap()).map_err(|e| {
        err(format!("the tokenizer built from the GGUF vocabulary does not load: {e}"))
    })?;
    let mut opts = opts.clone();
    opts.metadata.insert(
        "distill.source".into(),
        path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
    );
    hf::write_dir(out, &tensors, &config, &assets, &opts)?;
    Ok(report)
}

/// Check names and shapes against the parameter spec without materialising a model.
fn check_tensors(cfg: &ModelConfig, src: &mut crate::weights::MapSource) -> Result<()> {
    use crate::weights::WeightSource;
    for spec in crate::spec::param_specs(cfg) {
        // MapSource checks presence and shape; the data was kept aside.
        src.read(&spec.name, &spec.shape)?;
    }
    Ok(())
}

/// Undo llama.cpp's permutation of Q/K rows (`convert_hf_to_gguf.py`'s `permute`): within each
/// head, GGUF interleaves the two rotary halves; HF keeps them as halves.
pub fn unpermute(w: &[f32], shape: &[usize], n_head: usize) -> Vec<f32> {
    let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for s in 0..2 {
                let hf_row = h * hd + s * half + i;
                let gguf_row = h * hd + i * 2 + s;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&w[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    out
}

fn config_from_metadata(
    g: &GgufFile,
    report: &mut ImportReport,
) -> std::result::Result<ModelConfig, String> {
    let arch_name = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or("missing metadata `general.architecture`")?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "qwen3moe" | "deepseek2" => {
            report.arch = arch_name.to_string();
            return moe_config(g, arch_name, report);
        }
        other => {
            return Err(format!(
                "architecture '{other}' is not supported (llama, qwen2, qwen3, qwen3moe, deepseek2 are)"
            ));
        }
    };
    report.arch = arch_name.to_string();
    let key = |k: &str| format!("{arch_name}.{k}");
    let num = |k: &str| g.get(&key(k)).and_then(Value::as_u64).map(|v| v as usize);
    let need = |k: &str| num(k).ok_or_else(|| format!("missing metadata `{}`", key(k)));
    let float = |k: &str| g.get(&key(k)).and_then(Value::as_f64);
    let tokens = g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map_or(0, |a| a.len());
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    if heads == 0 {
        return Err(format!("metadata `{}` is 0", key("attention.head_count")));
    }
    let head_dim = num("attention.key_length")
        .or(num("rope.dimension_count"))
        .unwrap_or_else(|| hidden / heads);
    let rope_scaling = match g.get(&key("rope.scaling.type")).and_then(Value::as_str) {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: float("rope.scaling.factor").ok_or("linear rope scaling without a factor")?,
        },
        Some("yarn") => RopeScaling::Yarn {
            factor: float("rope.scaling.factor").ok_or("yarn rope scaling without a factor")?,
            original_max_position_embeddings: float("rope.scaling.original_context_length")
                .ok_or("yarn without original_context_length")?,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
        },
        Some(other) => return Err(format!("rope scaling type '{other}' is not supported")),
    };
    if g.tensor("rope_freqs.weight").is_some() {
        report.warnings.push("rope_freqs.weight (Llama 3.1 rope scaling) is not carried over: set rope_scaling in config.json by hand".into());
    }
    let tok =
        |k: &str| g.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64).map(|v| v as u32);
    let c = ModelConfig {
        arch,
        vocab_size: num("vocab_size").unwrap_or(tokens),
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: num("attention.head_count_kv").unwrap_or(heads),
        head_dim,
        max_position_embeddings: num("context_length").unwrap_or(4096),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling,
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
        o_bias: g.tensor("blk.0.attn_output.bias").is_some(),
        mlp_bias: g.tensor("blk.0.ffn_up.bias").is_some(),
        qk_norm: g.tensor("blk.0.attn_q_norm.weight").is_some(),
        // llama.cpp's `qwen3moe` (expert tensors `ffn_*_exps`) is not imported yet: the
        // architecture match above refuses it.
        moe: None,
        mla: None,
        dtype: Some("float32".into()),
        bos_token_id: tok("bos_token_id"),
        eos_token_ids: tok("eos_token_id").into_iter().collect(),
        pad_token_id: tok("padding_token_id"),
    };
    // The file's own tensors bound the layer count: each layer has at least nine.
    if c.num_hidden_layers > g.tensors.len() {
        return Err(format!(
            "metadata `{}` is {}, but the file holds only {} tensors",
            key("block_count"),
            c.num_hidden_layers,
            g.tensors.len()
        ));
    }
    crate::config::check_dims(&c)?;
    Ok(c)
}

/// `qwen3moe` and `deepseek2`: the config.json transformers would read, built from the metadata
/// and parsed as config.json is (the same checks and derived values).
fn moe_config(
    g: &GgufFile,
    arch_name: &str,
    report: &mut ImportReport,
) -> std::result::Result<ModelConfig, String> {
    let key = |k: &str| format!("{arch_name}.{k}");
    let num = |k: &str| g.get(&key(k)).and_then(Value::as_u64).map(|v| v as usize);
    let need = |k: &str| num(k).ok_or_else(|| format!("missing metadata `{}`", key(k)));
    let float = |k: &str| g.get(&key(k)).and_then(Value::as_f64);
    let flag = |k: &str| g.get(&key(k)).and_then(Value::as_bool);
    let tokens = g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map_or(0, |a| a.len());
    let tok =
        |k: &str| g.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64).map(|v| v as u32);
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let layers = need("block_count")?;
    if heads == 0 || layers > g.tensors.len() {
        return Err(format!(
            "metadata `{}` = {heads} or `{}` = {layers} does not fit a file of {} tensors",
            key("attention.head_count"),
            key("block_count"),
            g.tensors.len()
        ));
    }
    let mut c = json!({
        "vocab_size": num("vocab_size").unwrap_or(tokens),
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": num("context_length").unwrap_or(4096),
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        "rope_theta": float("rope.freq_base").unwrap_or(10_000.0),
        "tie_word_embeddings": g.tensor("output.weight").is_none(),
        "n_routed_experts": need("expert_count")?,
        "num_experts": need("expert_count")?,
        "num_experts_per_tok": need("expert_used_count")?,
        "moe_intermediate_size": need("expert_feed_forward_length")?,
        "bos_token_id": tok("bos_token_id"),
        "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"),
        "dtype": "float32",
    });
    if arch_name == "qwen3moe" {
        // llama.cpp always renormalises Qwen3-MoE's top-k and makes every layer sparse.
        c["architectures"] = json!(["Qwen3MoeForCausalLM"]);
        c["num_key_value_heads"] = num("attention.head_count_kv").unwrap_or(heads).into();
        c["head_dim"] = num("attention.key_length").unwrap_or(hidden / heads).into();
        c["norm_topk_prob"] = true.into();
        c["decoder_sparse_step"] = 1.into();
        c["mlp_only_layers"] = json!([]);
    } else {
        // MLA is written as MQA: `key_length_mla`/`value_length_mla` are the per-head widths
        // (older files: `key_length`/`value_length`).
        let rope = need("rope.dimension_count")?;
        let qk = num("attention.key_length_mla")
            .or(num("attention.key_length"))
            .ok_or(format!("missing metadata `{}`", key("attention.key_length_mla")))?;
        let sigmoid = num("expert_gating_func") == Some(2);
        let groups = num("expert_group_count").unwrap_or(1);
        c["architectures"] =
            json!([if sigmoid { "DeepseekV3ForCausalLM" } else { "DeepseekV2ForCausalLM" }]);
        c["q_lora_rank"] = num("attention.q_lora_rank").filter(|&r| r > 0).into();
        c["kv_lora_rank"] = need("attention.kv_lora_rank")?.into();
        c["qk_rope_head_dim"] = rope.into();
        c["qk_nope_head_dim"] =
            qk.checked_sub(rope).ok_or("key length below the rope width")?.into();
        c["v_head_dim"] =
            num("attention.value_length_mla").or(num("attention.value_length")).into();
        c["n_shared_experts"] = num("expert_shared_count").unwrap_or(0).into();
        c["first_k_dense_replace"] = num("leading_dense_block_count").unwrap_or(0).into();
        c["routed_scaling_factor"] = float("expert_weights_scale").unwrap_or(1.0).into();
        c["norm_topk_prob"] = flag("expert_weights_norm").unwrap_or(false).into();
        c["n_group"] = groups.into();
        c["topk_group"] = num("expert_group_used_count").unwrap_or(groups).into();
        c["scoring_func"] = if sigmoid { "sigmoid" } else { "softmax" }.into();
        c["topk_method"] = match (sigmoid, groups > 1) {
            (true, _) => "noaux_tc",
            (false, true) => "group_limited_greedy",
            (false, false) => "greedy",
        }
        .into();
    }
    match g.get(&key("rope.scaling.type")).and_then(Value::as_str) {
        None | Some("none") => {}
        Some("yarn") => {
            let mut y = json!({
                "type": "yarn",
                "factor": float("rope.scaling.factor").ok_or("yarn rope scaling without a factor")?,
                "original_max_position_embeddings": float("rope.scaling.original_context_length")
                    .ok_or("yarn without original_context_length")?,
                "beta_fast": float("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                "beta_slow": float("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
            });
            // The converter writes 0.1 · mscale_all_dim; mscale itself is not written (llama.cpp
            // takes it equal, as every released DeepSeek config has it).
            if let Some(m) = float("rope.scaling.yarn_log_multiplier").filter(|m| *m != 0.0) {
                y["mscale"] = (m / 0.1).into();
                y["mscale_all_dim"] = (m / 0.1).into();
                report.warnings.push(
                    "YaRN mscale is taken equal to mscale_all_dim (GGUF keeps only the latter)"
                        .into(),
                );
            }
            c["rope_scaling"] = y;
        }
        Some(other) => return Err(format!("rope scaling type '{other}' is not supported")),
    }
    ModelConfig::from_json(&c.to_string()).map_err(|e| e.0)
}

/// The split regex of a llama.cpp pre-tokenizer type, or `None` for GPT-2's ByteLevel regex.
/// `smollm` gets GPT-2's regex, as transformers' GGUF loader builds it (llama.cpp also splits
/// digits one by one there; the two differ only on non-ASCII numerals such as `½`).
fn pre_tokenizer(pre: &str) -> Option<Json> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]})
    };
    match pre {
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => Some(split(LLAMA3)),
        "qwen2" | "deepseek-r1-qwen" => Some(split(QWEN2)),
        _ => None,
    }
}

fn tokenizer_files(
    g: &GgufFile,
    cfg: &ModelConfig,
    report: &mut ImportReport,
) -> std::result::Result<(Json, Json), String> {
    let meta_str = |k: &str| g.get(k).and_then(Value::as_str);
    let model =
        meta_str("tokenizer.ggml.model").ok_or("missing metadata `tokenizer.ggml.model`")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model '{model}' is not supported (byte-level BPE, 'gpt2', is)"
        ));
    }
    let tokens: Vec<&str> = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or("missing metadata `tokenizer.ggml.tokens`")?
        .as_strs()
        .ok_or("tokenizer.ggml.tokens is not an array of strings")?
        .iter()
        .map(String::as_str)
        .collect();
    let types: Vec<i64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .and_then(|a| a.to_i64s())
        .unwrap_or_else(|| vec![1; tokens.len()]);
    let merges: Vec<&str> = g
        .get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .ok_or("missing metadata `tokenizer.ggml.merges`")?
        .as_strs()
        .ok_or("tokenizer.ggml.merges is not an array of strings")?
        .iter()
        .map(String::as_str)
        .collect();
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.contains_key(*t) {
            report
                .warnings
                .push(format!("token {i} '{t}' repeats an earlier token; the first id is kept"));
            continue;
        }
        vocab.insert(t.to_string(), json!(i));
    }
    // CONTROL (3) tokens are special added tokens; USER_DEFINED (4) are added, not special.
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3 | 4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": types[i] == 4, "special": types[i] == 3})
        })
        .collect();
    let pre = meta_str("tokenizer.ggml.pre").unwrap_or("default");
    report.pre_tokenizer = pre.to_string();
    let pre_tok = pre_tokenizer(pre).unwrap_or_else(|| {
        // `smollm` deliberately takes GPT-2's regex (see `pre_tokenizer`): no warning for it.
        if !matches!(pre, "gpt2" | "default" | "smollm") {
            report.warnings.push(format!("pre-tokenizer '{pre}' is unknown; using GPT-2's byte-level regex"));
        }
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
    });
    report.vocab = tokens.len();
    report.merges = merges.len();
    let merge_pairs: Vec<Json> = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => json!([a, b]),
            None => json!([m, ""]),
        })
        .collect();
    let normalizer = if pre.starts_with("qwen2") || pre == "deepseek-r1-qwen" {
        json!({"type": "NFC"})
    } else {
        Json::Null
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tok,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merge_pairs},
    });

    let name_of = |k: &str| {
        g.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
            .and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
        "add_bos_token": g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false),
        "add_eos_token": g.get("tokenizer.ggml.add_eos_token").and_then(Value::as_bool).unwrap_or(false),
    });
    for (field, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(t) = name_of(key) {
            tc[field] = Json::String(t);
        }
    }
    if let Some(t) = meta_str("tokenizer.chat_template") {
        tc["chat_template"] = Json::String(t.to_string());
    } else {
        report.warnings.push("the GGUF has no chat template".into());
    }
    let _ = HashMap::<(), ()>::new();
    Ok((tokenizer, tc))
}
