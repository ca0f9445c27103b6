//! A serde mirror of Hugging Face `config.json` for `LlamaForCausalLM`, `Qwen2ForCausalLM` and
//! `Qwen3ForCausalLM`, tolerant of what is found in the wild: `rope_theta` at the top level or in
//! transformers 5's `rope_parameters`; `rope_scaling` of type llama3, linear, yarn or default;
//! `torch_dtype` or `dtype`; unknown keys ignored. Missing required keys are errors naming the key.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// Llama 2/3 (and SmolLM2): no biases unless `attention_bias`.
    Llama,
    /// Qwen2 / Qwen2.5: bias on q/k/v, none on o.
    Qwen2,
    /// Qwen3: q/k RMSNorm over the head dimension; biases only if `attention_bias`.
    Qwen3,
    /// Qwen3-MoE: Qwen3's attention, and sparse Mixture-of-Experts MLPs ([`MoeDims`]).
    Qwen3Moe,
    /// DeepSeek-V2 (and V2-Lite): Multi-head Latent Attention ([`MlaDims`]) and an MoE with
    /// softmax routing (greedy or group-limited), shared experts, dense first layers.
    DeepseekV2,
    /// DeepSeek-V3 / R1: MLA, and an MoE with sigmoid scoring, `e_score_correction_bias`,
    /// group-limited top-k over the top-2 sum of each group, normalised weights scaled by
    /// `routed_scaling_factor`.
    DeepseekV3,
}

impl Arch {
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Qwen3Moe => "Qwen3MoeForCausalLM",
            Arch::DeepseekV2 => "DeepseekV2ForCausalLM",
            Arch::DeepseekV3 => "DeepseekV3ForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3_moe",
            Arch::DeepseekV2 => "deepseek_v2",
            Arch::DeepseekV3 => "deepseek_v3",
        }
    }
    fn from_name(name: &str) -> Option<Arch> {
        match name {
            "LlamaForCausalLM" | "llama" => Some(Arch::Llama),
            "Qwen2ForCausalLM" | "qwen2" => Some(Arch::Qwen2),
            "Qwen3ForCausalLM" | "qwen3" => Some(Arch::Qwen3),
            "Qwen3MoeForCausalLM" | "qwen3_moe" => Some(Arch::Qwen3Moe),
            "DeepseekV2ForCausalLM" | "deepseek_v2" => Some(Arch::DeepseekV2),
            "DeepseekV3ForCausalLM" | "deepseek_v3" => Some(Arch::DeepseekV3),
            _ => None,
        }
    }
}

/// How RoPE frequencies are scaled for long context.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN (Qwen2.5/Qwen3 long context).
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        /// DeepSeek's `mscale` / `mscale_all_dim` (kept to write the config back; the attention
        /// factor and MLA's softmax scale are derived from them).
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
    },
}

/// How a router turns logits into expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scoring {
    /// Softmax over all experts, in f32 (Qwen3-MoE, DeepSeek-V2).
    Softmax,
    /// An independent sigmoid per expert (DeepSeek-V3).
    Sigmoid,
}

/// How group-limited routing scores a group of experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GroupScore {
    /// The sum of the group's two best (biased) scores (DeepSeek-V3's `noaux_tc`).
    Top2Sum,
    /// The group's best score (DeepSeek-V2's `group_limited_greedy`).
    Max,
}

/// A Mixture-of-Experts feed-forward: a router (`mlp.gate`) scores every expert, each token goes
/// to its `top_k` best (within its `topk_groups` best groups when routing is group-limited), and
/// their SwiGLU outputs are summed weighted by the router's (optionally renormalised, scaled)
/// scores, plus the always-on shared experts (DeepSeek).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MoeDims {
    /// `num_experts` / `n_routed_experts`.
    pub experts: usize,
    /// `num_experts_per_tok`.
    pub top_k: usize,
    /// `moe_intermediate_size`: each expert's SwiGLU width.
    pub intermediate: usize,
    /// `norm_topk_prob`: the top-k weights renormalised to sum to 1.
    pub norm_topk_prob: bool,
    /// Bit `i` set: layer `i`'s MLP is sparse; the others are dense, `intermediate_size` wide
    /// (from `decoder_sparse_step`/`mlp_only_layers`, or `first_k_dense_replace`).
    pub sparse: u128,
    pub scoring: Scoring,
    /// Group-limited routing: experts in `groups` equal groups (1: not limited) …
    pub groups: usize,
    /// … of which each token may use its best `topk_groups`.
    pub topk_groups: usize,
    pub group_score: GroupScore,
    /// `mlp.gate.e_score_correction_bias` (V3): added to the scores to choose experts, not to
    /// weight them.
    pub score_bias: bool,
    /// `routed_scaling_factor`: the routed experts' weights are multiplied by it.
    pub routed_scaling: f64,
    /// The shared experts' width (`moe_intermediate_size · n_shared_experts`); 0: none.
    pub shared_intermediate: usize,
}

/// Multi-head Latent Attention (DeepSeek-V2/V3): queries through an optional low-rank
/// bottleneck, keys and values from one compressed latent per token plus a rotary key shared by
/// all heads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MlaDims {
    /// `q_lora_rank`: `None` projects queries directly (V2-Lite).
    pub q_lora_rank: Option<usize>,
    /// `kv_lora_rank`: the latent `c_kv` each token caches.
    pub kv_lora_rank: usize,
    /// `qk_nope_head_dim`: the part of each query/key head without rotary embedding.
    pub qk_nope: usize,
    /// `qk_rope_head_dim`: the rotary part; the key's is shared across heads.
    pub qk_rope: usize,
    /// `v_head_dim`.
    pub v_head: usize,
    /// Rotary pairs are adjacent elements (DeepSeek's layout) instead of the two halves.
    pub interleave: bool,
    /// `qk_head_dim^-0.5`, times YaRN's `mscale(factor, mscale_all_dim)²` under YaRN.
    pub softmax_scale: f64,
}

impl MlaDims {
    /// Query/key head width: `qk_nope + qk_rope`.
    pub fn qk_head(&self) -> usize {
        self.qk_nope + self.qk_rope
    }

    /// Cached values per token and layer: the latent and the rotary key (the full-KV equivalent
    /// is `heads · (qk_head + v_head)`).
    pub fn cache_per_token(&self) -> usize {
        self.kv_lora_rank + self.qk_rope
    }
}

impl MoeDims {
    /// Whether layer `i` has a sparse MLP.
    pub fn is_sparse(&self, i: usize) -> bool {
        i < 128 && self.sparse >> i & 1 == 1
    }

    /// The layers with a dense MLP, among `layers`.
    pub fn dense_layers(&self, layers: usize) -> Vec<usize> {
        (0..layers).filter(|&i| !self.is_sparse(i)).collect()
    }
}

/// MoE configs name at most this many layers (the sparse-layer mask is 128 bits; the largest
/// MoE models have 94 layers).
pub const MAX_MOE_LAYERS: usize = 128;

/// The resolved model configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Qwen3's per-head RMSNorm on q and k.
    pub qk_norm: bool,
    /// Mixture-of-Experts MLPs (Qwen3-MoE, DeepSeek); `None` for dense models.
    pub moe: Option<MoeDims>,
    /// Multi-head Latent Attention (DeepSeek); `None`: grouped-query attention.
    pub mla: Option<MlaDims>,
    /// dtype of the stored weights (`bfloat16`, `float32`…), as the config said.
    pub dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// The raw JSON, as loose as the wild requires.
#[derive(Deserialize)]
struct Raw {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<Value>,
    use_sliding_window: Option<bool>,
    /// transformers 5 writes `num_local_experts` for Qwen3-MoE; checkpoints say `num_experts`.
    #[serde(alias = "num_local_experts")]
    num_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_intermediate_size: Option<usize>,
    norm_topk_prob: Option<bool>,
    decoder_sparse_step: Option<usize>,
    mlp_only_layers: Option<Vec<usize>>,
    // DeepSeek-V2/V3.
    q_lora_rank: Option<usize>,
    kv_lora_rank: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    n_routed_experts: Option<usize>,
    n_shared_experts: Option<usize>,
    first_k_dense_replace: Option<usize>,
    moe_layer_freq: Option<usize>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    routed_scaling_factor: Option<f64>,
    topk_method: Option<String>,
    scoring_func: Option<String>,
    rope_interleave: Option<bool>,
}

fn ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

/// What is wrong with a config.json's text (which key, which value); `from_file` adds the path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::from_json(&text).map_err(|e| Error::Config { path: path.to_path_buf(), msg: e.0 })
    }

    /// Parse config.json text. The error names the key.
    pub fn from_json(text: &str) -> std::result::Result<ModelConfig, ConfigError> {
        Self::parse_json(text).map_err(ConfigError)
    }

    fn parse_json(text: &str) -> std::result::Result<ModelConfig, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            let m = e.to_string();
            match m.strip_prefix("missing field ") {
                Some(rest) => {
                    format!("missing required key {}", rest.split(" at ").next().unwrap_or(rest))
                }
                None => m,
            }
        })?;
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or(raw.model_type.clone())
            .ok_or("missing required key `architectures` (or `model_type`)")?;
        let arch = Arch::from_name(&arch_name).ok_or_else(|| {
            format!("unsupported architecture '{arch_name}' (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM)")
        })?;
        if raw.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            return Err(format!(
                "unsupported hidden_act '{}' (only silu)",
                raw.hidden_act.unwrap()
            ));
        }
        if raw.use_sliding_window == Some(true) {
            return Err("use_sliding_window = true is not supported".into());
        }
        if raw.num_attention_heads == 0 || raw.hidden_size == 0 {
            return Err("num_attention_heads and hidden_size must be positive".into());
        }
        let deepseek = matches!(arch, Arch::DeepseekV2 | Arch::DeepseekV3);
        // MLA has one latent for all heads: key/value heads are the query heads.
        let kv = if deepseek {
            raw.num_attention_heads
        } else {
            raw.num_key_value_heads.unwrap_or(raw.num_attention_heads)
        };
        if kv == 0 || !raw.num_attention_heads.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({kv})",
                raw.num_attention_heads
            ));
        }
        // DeepSeek: `head_dim` is the rotary width (what RoPE tables are built for).
        let head_dim = if deepseek {
            raw.qk_rope_head_dim.ok_or("missing required key `qk_rope_head_dim`")?
        } else {
            raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads)
        };
        if !head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {head_dim} must be even for RoPE"));
        }

        // transformers 5 puts theta and scaling together in `rope_parameters`.
        let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let rope_theta = raw
            .rope_theta
            .or_else(|| params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10_000.0);
        let rope_scaling = match params {
            None | Some(Value::Null) => RopeScaling::None,
            Some(p) => parse_scaling(p, raw.max_position_embeddings)?,
        };
        let attention_bias = raw.attention_bias.unwrap_or(false);
        if deepseek && attention_bias {
            return Err("attention_bias = true is not supported for DeepSeek's MLA".into());
        }
        let (moe, mla) = match arch {
            Arch::Qwen3Moe => (Some(qwen3_moe(&raw)?), None),
            Arch::DeepseekV2 | Arch::DeepseekV3 => {
                let (moe, mla) = deepseek_parts(&raw, arch, params)?;
                (Some(moe), Some(mla))
            }
            _ => (None, None),
        };
        let c = ModelConfig {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: kv,
            head_dim,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: match arch {
                Arch::Qwen2 => true,
                _ => attention_bias,
            },
            o_bias: match arch {
                Arch::Qwen2 => false,
                _ => attention_bias,
            },
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe),
            moe,
            mla,
            dtype: raw.dtype.or(raw.torch_dtype),
            bos_token_id: ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: ids(&raw.eos_token_id),
            pad_token_id: ids(&raw.pad_token_id).first().copied(),
        };
        check_dims(&c)?;
        Ok(c)
    }

    /// Write as a transformers-loadable config.json (both `rope_theta` spellings, both dtype keys).
    pub fn to_hf_json(&self, dtype: &str) -> Value {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings,
            }),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
            } => {
                let mut y = serde_json::json!({
                    "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original_max_position_embeddings,
                    "beta_fast": beta_fast, "beta_slow": beta_slow,
                });
                // With mscale/mscale_all_dim the attention factor is derived, as transformers does.
                match (mscale, mscale_all_dim) {
                    (Some(m), Some(a)) => {
                        y["mscale"] = (*m).into();
                        y["mscale_all_dim"] = (*a).into();
                    }
                    _ => y["attention_factor"] = (*attention_factor).into(),
                }
                y
            }
        };
        let mut v = serde_json::json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "mlp_bias": self.mlp_bias,
            "torch_dtype": dtype,
            "dtype": dtype,
            "use_cache": true,
        });
        if self.arch != Arch::Qwen2 {
            v["attention_bias"] = Value::Bool(self.qkv_bias);
        }
        if let (Some(m), Some(a)) = (&self.moe, &self.mla) {
            let v3 = self.arch == Arch::DeepseekV3;
            v["q_lora_rank"] = a.q_lora_rank.into();
            v["kv_lora_rank"] = a.kv_lora_rank.into();
            v["qk_nope_head_dim"] = a.qk_nope.into();
            v["qk_rope_head_dim"] = a.qk_rope.into();
            v["v_head_dim"] = a.v_head.into();
            v["head_dim"] = a.qk_rope.into();
            if v3 {
                v["rope_interleave"] = a.interleave.into();
                v["scoring_func"] = "sigmoid".into();
                v["topk_method"] = "noaux_tc".into();
            } else {
                v["topk_method"] =
                    if m.groups > 1 { "group_limited_greedy" } else { "greedy" }.into();
            }
            v["n_routed_experts"] = m.experts.into();
            v["num_experts_per_tok"] = m.top_k.into();
            v["moe_intermediate_size"] = m.intermediate.into();
            v["n_shared_experts"] = (m.shared_intermediate / m.intermediate.max(1)).into();
            v["norm_topk_prob"] = m.norm_topk_prob.into();
            v["n_group"] = m.groups.into();
            v["topk_group"] = m.topk_groups.into();
            v["routed_scaling_factor"] = m.routed_scaling.into();
            v["first_k_dense_replace"] =
                (0..self.num_hidden_layers).find(|&i| m.is_sparse(i)).unwrap_or(0).into();
            v["moe_layer_freq"] = 1.into();
            v["num_nextn_predict_layers"] = 0.into();
        } else if let Some(m) = &self.moe {
            // Sparse layers as one rule transformers reads: every layer sparse except the listed.
            v["num_experts"] = m.experts.into();
            v["num_experts_per_tok"] = m.top_k.into();
            v["moe_intermediate_size"] = m.intermediate.into();
            v["norm_topk_prob"] = m.norm_topk_prob.into();
            v["decoder_sparse_step"] = 1.into();
            v["mlp_only_layers"] = m.dense_layers(self.num_hidden_layers).into();
            v["output_router_logits"] = false.into();
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => v["eos_token_id"] = (*e).into(),
            es => v["eos_token_id"] = es.into(),
        }
        if let Some(p) = self.pad_token_id {
            v["pad_token_id"] = p.into();
        }
        v
    }
}

/// Bounds no real model comes near (the largest R1 student has 80 layers, 8192 hidden, 152k
/// vocabulary), so a hostile config cannot make the parameter spec allocate without limit.
const MAX_LAYERS: usize = 4096;
const MAX_DIM: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;

/// The dimensions every model needs to be buildable: positive, GQA-divisible, RoPE-even, bounded.
/// Shared by config.json and the GGUF import.
pub(crate) fn check_dims(c: &ModelConfig) -> std::result::Result<(), String> {
    let (h, kv) = (c.num_attention_heads, c.num_key_value_heads);
    if h == 0 || kv == 0 || c.hidden_size == 0 || c.head_dim == 0 || c.vocab_size == 0 {
        return Err(format!(
            "num_attention_heads ({h}), num_key_value_heads ({kv}), hidden_size ({}), head_dim ({}) and vocab_size ({}) must be positive",
            c.hidden_size, c.head_dim, c.vocab_size
        ));
    }
    if !h.is_multiple_of(kv) {
        return Err(format!(
            "num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kv})"
        ));
    }
    if !c.head_dim.is_multiple_of(2) {
        return Err(format!("head_dim {} must be even for RoPE", c.head_dim));
    }
    if c.num_hidden_layers > MAX_LAYERS {
        return Err(format!(
            "num_hidden_layers {} is beyond any real model (at most {MAX_LAYERS})",
            c.num_hidden_layers
        ));
    }
    for (name, v) in [
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("head_dim", c.head_dim),
        ("num_attention_heads", h),
    ] {
        if v > MAX_DIM {
            return Err(format!("{name} {v} is beyond any real model (at most {MAX_DIM})"));
        }
    }
    if c.vocab_size > MAX_VOCAB {
        return Err(format!(
            "vocab_size {} is beyond any real model (at most {MAX_VOCAB})",
            c.vocab_size
        ));
    }
    // Values that make every logit NaN (RMSNorm's sqrt of a negative, RoPE's 0^x) with a
    // successful exit.
    if !(c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0 && c.rms_norm_eps < 1.0) {
        return Err(format!("rms_norm_eps {} must be a positive number below 1", c.rms_norm_eps));
    }
    if !(c.rope_theta.is_finite() && c.rope_theta > 1.0) {
        return Err(format!("rope_theta {} must be a finite number above 1", c.rope_theta));
    }
    Ok(())
}

/// The expert counts every MoE config must satisfy; `experts_key` is the config's name for the
/// expert count (`num_experts`, `n_routed_experts`).
fn check_experts(
    experts_key: &str,
    experts: usize,
    top_k: usize,
    intermediate: usize,
    layers: usize,
) -> std::result::Result<(), String> {
    if experts == 0 || top_k == 0 || intermediate == 0 {
        return Err(format!(
            "{experts_key} ({experts}), num_experts_per_tok ({top_k}) and moe_intermediate_size ({intermediate}) must be positive"
        ));
    }
    if top_k > experts {
        return Err(format!(
            "num_experts_per_tok ({top_k}) must not exceed {experts_key} ({experts})"
        ));
    }
    if experts > 1 << 16 || intermediate > MAX_DIM {
        return Err(format!(
            "{experts_key} {experts} or moe_intermediate_size {intermediate} is beyond any real model"
        ));
    }
    if layers > MAX_MOE_LAYERS {
        return Err(format!(
            "num_hidden_layers {layers}: MoE models of more than {MAX_MOE_LAYERS} layers are not supported"
        ));
    }
    Ok(())
}

/// Qwen3-MoE's feed-forward: which layers are sparse (`(i + 1) % decoder_sparse_step == 0` and
/// not in `mlp_only_layers`, as transformers decides) and how tokens route.
fn qwen3_moe(raw: &Raw) -> std::result::Result<MoeDims, String> {
    let need = |v: Option<usize>, k: &str| v.ok_or(format!("missing required key `{k}`"));
    let experts = need(raw.num_experts, "num_experts")?;
    let top_k = need(raw.num_experts_per_tok, "num_experts_per_tok")?;
    let intermediate = need(raw.moe_intermediate_size, "moe_intermediate_size")?;
    let step = raw.decoder_sparse_step.unwrap_or(1);
    let layers = raw.num_hidden_layers;
    check_experts("num_experts", experts, top_k, intermediate, layers)?;
    if step == 0 {
        return Err("decoder_sparse_step must be at least 1".into());
    }
    let only = raw.mlp_only_layers.clone().unwrap_or_default();
    if let Some(&bad) = only.iter().find(|&&i| i >= layers) {
        return Err(format!("mlp_only_layers names layer {bad}, but the model has {layers}"));
    }
    let sparse = (0..layers)
        .filter(|&i| !only.contains(&i) && (i + 1) % step == 0)
        .fold(0u128, |m, i| m | 1 << i);
    Ok(MoeDims {
        experts,
        top_k,
        intermediate,
        norm_topk_prob: raw.norm_topk_prob.unwrap_or(false),
        sparse,
        scoring: Scoring::Softmax,
        groups: 1,
        topk_groups: 1,
        group_score: GroupScore::Max,
        score_bias: false,
        routed_scaling: 1.0,
        shared_intermediate: 0,
    })
}

/// YaRN's magnitude correction, as transformers' `yarn_get_mscale`.
fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
    if factor <= 1.0 { 1.0 } else { 0.1 * mscale * factor.ln() + 1.0 }
}

/// DeepSeek-V2/V3: the MoE (as `DeepseekV{2,3}MoE` routes) and the MLA dimensions.
fn deepseek_parts(
    raw: &Raw,
    arch: Arch,
    rope: Option<&Value>,
) -> std::result::Result<(MoeDims, MlaDims), String> {
    let need = |v: Option<usize>, k: &str| v.ok_or(format!("missing required key `{k}`"));
    let v3 = arch == Arch::DeepseekV3;
    let experts = need(raw.n_routed_experts, "n_routed_experts")?;
    let top_k = need(raw.num_experts_per_tok, "num_experts_per_tok")?;
    let intermediate = need(raw.moe_intermediate_size, "moe_intermediate_size")?;
    let layers = raw.num_hidden_layers;
    check_experts("n_routed_experts", experts, top_k, intermediate, layers)?;
    let method = raw.topk_method.as_deref().unwrap_or(if v3 { "noaux_tc" } else { "greedy" });
    let (groups, group_score, score_bias) = match (v3, method) {
        (true, "noaux_tc") => (raw.n_group.unwrap_or(1), GroupScore::Top2Sum, true),
        (false, "greedy") => (1, GroupScore::Max, false),
        (false, "group_limited_greedy") => (raw.n_group.unwrap_or(1), GroupScore::Max, false),
        (_, other) => {
            return Err(format!(
                "topk_method '{other}' is not supported for {} (supported: {})",
                arch.model_type(),
                if v3 { "noaux_tc" } else { "greedy, group_limited_greedy" }
            ));
        }
    };
    let topk_groups = if groups > 1 { raw.topk_group.unwrap_or(groups) } else { 1 };
    if groups == 0 || !experts.is_multiple_of(groups) {
        return Err(format!("n_group ({groups}) must divide n_routed_experts ({experts})"));
    }
    if topk_groups == 0 || topk_groups > groups {
        return Err(format!("topk_group ({topk_groups}) must be in 1..=n_group ({groups})"));
    }
    if groups > 1 && top_k > topk_groups * (experts / groups) {
        return Err(format!(
            "num_experts_per_tok ({top_k}) is more than the {} experts of topk_group ({topk_groups}) groups",
            topk_groups * (experts / groups)
        ));
    }
    if groups > 1 && group_score == GroupScore::Top2Sum && experts / groups < 2 {
        return Err(format!(
            "n_group ({groups}) leaves fewer than 2 experts per group; V3 scores a group by its top 2"
        ));
    }
    let scoring = match raw.scoring_func.as_deref() {
        None if v3 => Scoring::Sigmoid,
        None | Some("softmax") if !v3 => Scoring::Softmax,
        Some("sigmoid") if v3 => Scoring::Sigmoid,
        Some(other) => {
            return Err(format!(
                "scoring_func '{other}' is not supported for {}",
                arch.model_type()
            ));
        }
        None => unreachable!("handled above"),
    };
    let first_dense = raw.first_k_dense_replace.unwrap_or(0);
    let freq = raw.moe_layer_freq.unwrap_or(1).max(1);
    let sparse =
        (0..layers).filter(|&i| i >= first_dense && i % freq == 0).fold(0u128, |m, i| m | 1 << i);
    let moe = MoeDims {
        experts,
        top_k,
        intermediate,
        // DeepSeek-V2's model never renormalises, whatever its config says.
        norm_topk_prob: v3 && raw.norm_topk_prob.unwrap_or(false),
        sparse,
        scoring,
        groups,
        topk_groups,
        group_score,
        score_bias,
        routed_scaling: raw.routed_scaling_factor.unwrap_or(1.0),
        shared_intermediate: intermediate * raw.n_shared_experts.unwrap_or(0),
    };

    let kv_lora_rank = need(raw.kv_lora_rank, "kv_lora_rank")?;
    let qk_nope = need(raw.qk_nope_head_dim, "qk_nope_head_dim")?;
    let qk_rope = need(raw.qk_rope_head_dim, "qk_rope_head_dim")?;
    let v_head = need(raw.v_head_dim, "v_head_dim")?;
    for (k, v) in [
        ("kv_lora_rank", kv_lora_rank),
        ("qk_rope_head_dim", qk_rope),
        ("v_head_dim", v_head),
        ("q_lora_rank", raw.q_lora_rank.unwrap_or(1)),
    ] {
        if v == 0 || v > MAX_DIM {
            return Err(format!("{k} {v} must be positive and at most {MAX_DIM}"));
        }
    }
    if qk_nope > MAX_DIM {
        return Err(format!("qk_nope_head_dim {qk_nope} is beyond any real model"));
    }
    // The softmax scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)² under YaRN.
    let mut softmax_scale = ((qk_nope + qk_rope) as f64).powf(-0.5);
    if let Some(p) = rope {
        let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str);
        let all_dim = p.get("mscale_all_dim").and_then(Value::as_f64).unwrap_or(0.0);
        if kind.is_some_and(|k| k != "default") && all_dim != 0.0 {
            let factor = p.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
            let m = yarn_mscale(factor, all_dim);
            softmax_scale *= m * m;
        }
    }
    let mla = MlaDims {
        q_lora_rank: raw.q_lora_rank,
        kv_lora_rank,
        qk_nope,
        qk_rope,
        v_head,
        // V2 rotates adjacent pairs (a complex multiply); V3 does unless `rope_interleave` is
        // false.
        interleave: !v3 || raw.rope_interleave.unwrap_or(true),
        softmax_scale,
    };
    Ok((moe, mla))
}

fn parse_scaling(p: &Value, max_pos: Option<usize>) -> std::result::Result<RopeScaling, String> {
    let kind =
        p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| p.get(k).and_then(Value::as_f64);
    let need = |k: &str| {
        num(k).ok_or_else(|| format!("rope scaling '{kind}': missing required key `{k}`"))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        "yarn" => RopeScaling::Yarn {
            factor: need("factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")
                .or(max_pos.map(|m| m as f64))
                .ok_or(
                    "rope scaling 'yarn': missing required key `original_max_position_embeddings`",
                )?,
            beta_fast: num("beta_fast").unwrap_or(32.0),
            beta_slow: num("beta_slow").unwrap_or(1.0),
            // As transformers: with both `mscale` and `mscale_all_dim` (DeepSeek), their ratio.
            attention_factor: num("attention_factor").or_else(|| {
                match (
                    num("mscale").filter(|m| *m != 0.0),
                    num("mscale_all_dim").filter(|m| *m != 0.0),
                ) {
                    (Some(m), Some(all)) => {
                        let f = num("factor").unwrap_or(1.0);
                        Some(yarn_mscale(f, m) / yarn_mscale(f, all))
                    }
                    _ => None,
                }
            }),
            mscale: num("mscale"),
            mscale_all_dim: num("mscale_all_dim"),
        },
        other => {
            return Err(format!(
                "unsupported rope scaling type '{other}' (supported: default, linear, llama3, yarn)"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"architectures": null, "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
        "head_dim": 64, "dtype": "float32", "some_future_key": {"x": 1}}"#;

    #[test]
    fn reads_transformers_5_rope_parameters_and_ignores_unknown_keys() {
        let c = ModelConfig::from_json(SMOL).unwrap();
        assert_eq!(
            (c.arch, c.rope_theta, c.num_key_value_heads, c.head_dim),
            (Arch::Llama, 100000.0, 3, 64)
        );
        assert!(c.tie_word_embeddings && !c.qkv_bias && !c.qk_norm);
        assert_eq!(c.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn reads_llama3_scaling_and_qwen_variants() {
        let llama31 = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "torch_dtype": "bfloat16",
            "eos_token_id": [128001, 128008, 128009]}"#;
        let c = ModelConfig::from_json(llama31).unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor: 8.0, .. }));
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
        let qwen2 = llama31.replace("LlamaForCausalLM", "Qwen2ForCausalLM");
        let c = ModelConfig::from_json(&qwen2).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        let qwen3 = llama31.replace("LlamaForCausalLM", "Qwen3ForCausalLM");
        assert!(ModelConfig::from_json(&qwen3).unwrap().qk_norm);
    }

    #[test]
    fn missing_keys_and_unknown_architectures_are_named() {
        let e = ModelConfig::from_json(&SMOL.replace("\"hidden_size\": 576,", "")).unwrap_err();
        assert!(e.0.contains("missing required key `hidden_size`"), "{e}");
        let e =
            ModelConfig::from_json(&SMOL.replace("\"model_type\": \"llama\",", "")).unwrap_err();
        assert!(e.0.contains("`architectures`"), "{e}");
        let e = ModelConfig::from_json(&SMOL.replace("\"llama\"", "\"mistral\"")).unwrap_err();
        assert!(e.0.contains("unsupported architecture 'mistral'"), "{e}");
        let bad = SMOL
            .replace("\"rope_type\": \"default\"", "\"rope_type\": \"llama3\", \"factor\": 8.0");
        let e = ModelConfig::from_json(&bad).unwrap_err();
        assert!(e.0.contains("missing required key `low_freq_factor`"), "{e}");
    }

    /// A hostile config cannot make the parameter spec allocate without limit, nor divide by 0.
    #[test]
    fn hostile_dimensions_are_refused() {
        let layers =
            SMOL.replace("\"num_hidden_layers\": 30", "\"num_hidden_layers\": 1099511627776");
        let e = ModelConfig::from_json(&layers).unwrap_err();
        assert!(e.0.contains("num_hidden_layers 1099511627776 is beyond any real model"), "{e}");
        let vocab = SMOL.replace("\"vocab_size\": 49152", "\"vocab_size\": 0");
        assert!(ModelConfig::from_json(&vocab).unwrap_err().0.contains("must be positive"));
        let kv = SMOL.replace("\"num_key_value_heads\": 3", "\"num_key_value_heads\": 0");
        assert!(ModelConfig::from_json(&kv).unwrap_err().0.contains("must be a multiple"));
        // Values that gave NaN logits with exit 0.
        for eps in ["-1", "0", "0.0", "2.5"] {
            let bad = SMOL.replace("\"rms_norm_eps\": 1e-5", &format!("\"rms_norm_eps\": {eps}"));
            assert_ne!(bad, SMOL);
            let e = ModelConfig::from_json(&bad).unwrap_err();
            assert!(e.0.contains("rms_norm_eps"), "{eps}: {e}");
        }
    }
}
