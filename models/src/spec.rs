//! The parameter spec: every tensor of a model, by its Hugging Face name, with its HF shape and
//! kind, in checkpoint order — derived from the config alone. It is the one place that lists the
//! tensor names of Llama / Qwen2 / Qwen3: loading, export and the optimizer's view of the model
//! (`CausalLm::load`, `export`, `params_mut`) walk it; the GGUF import checks names and shapes
//! against it; the parameter count and the memory planner sum it.

use crate::config::{MlaDims, ModelConfig, MoeDims};

/// What a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `model.embed_tokens.weight`, `[vocab, hidden]`.
    Embedding,
    /// A linear layer's weight, HF layout `[out, in]`.
    Weight,
    /// A linear layer's bias, `[out]`.
    Bias,
    /// An RMSNorm's weight, `[dim]`.
    Norm,
    /// A vector that is loaded and exported but not trained: DeepSeek-V3's
    /// `mlp.gate.e_score_correction_bias` (a buffer in transformers, updated outside the loss).
    Buffer,
}

/// One parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The Hugging Face name, e.g. `model.layers.3.self_attn.q_proj.weight`.
    pub name: String,
    /// The shape as Hugging Face stores it (linear weights `[out, in]`).
    pub shape: Vec<usize>,
    pub kind: Kind,
}

impl ParamSpec {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// Names that stand for another parameter instead of being one: with tied embeddings,
/// `lm_head.weight` is `model.embed_tokens.weight` (and checkpoints usually omit it).
pub fn tied(cfg: &ModelConfig) -> Vec<(&'static str, &'static str)> {
    if cfg.tie_word_embeddings {
        vec![("lm_head.weight", "model.embed_tokens.weight")]
    } else {
        vec![]
    }
}

/// The part of a config that decides the parameters. A built model reports its own
/// (`CausalLm::dims`), so export and the optimizer walk the same spec the load did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: bool,
    pub tied: bool,
    /// Sparse MLPs (Qwen3-MoE, DeepSeek): which layers, how many experts of what width.
    pub moe: Option<MoeDims>,
    /// Multi-head Latent Attention (DeepSeek) instead of grouped-query attention.
    pub mla: Option<MlaDims>,
}

impl Dims {
    /// The heads the RoPE tables are repeated for, queries and keys, as
    /// [`crate::model::SelfAttention::rope_heads`] gives them: MLA rotates one shared key head.
    pub fn rope_heads(&self) -> (usize, usize) {
        if self.mla.is_some() { (self.heads, 1) } else { (self.heads, self.kv_heads) }
    }

    pub fn of(c: &ModelConfig) -> Dims {
        Dims {
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            qkv_bias: c.qkv_bias,
            o_bias: c.o_bias,
            mlp_bias: c.mlp_bias,
            qk_norm: c.qk_norm,
            tied: c.tie_word_embeddings,
            moe: c.moe,
            mla: c.mla,
        }
    }
}

/// Every parameter of a model with this config, in checkpoint order.
pub fn param_specs(c: &ModelConfig) -> Vec<ParamSpec> {
    specs(&Dims::of(c))
}

/// Every parameter of a model of these dimensions, in checkpoint order.
pub fn specs(c: &Dims) -> Vec<ParamSpec> {
    let mut v = Vec::new();
    let (d, f, hd, h, kv) = (c.hidden, c.intermediate, c.head_dim, c.heads, c.kv_heads);
    let mut push =
        |name: String, shape: Vec<usize>, kind: Kind| v.push(ParamSpec { name, shape, kind });
    let linear = |push: &mut dyn FnMut(String, Vec<usize>, Kind),
                  name: String,
                  d_in: usize,
                  d_out: usize,
                  bias: bool| {
        push(format!("{name}.weight"), vec![d_out, d_in], Kind::Weight);
        if bias {
            push(format!("{name}.bias"), vec![d_out], Kind::Bias);
        }
    };
    push("model.embed_tokens.weight".into(), vec![c.vocab, d], Kind::Embedding);
    for i in 0..c.layers {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        match &c.mla {
            // MLA: the query path (through the q_lora_rank bottleneck, or direct), the latent and
            // rotary key, the latent's up-projection to per-head keys and values, the output.
            Some(m) => {
                let q_out = h * m.qk_head();
                match m.q_lora_rank {
                    Some(r) => {
                        linear(&mut push, format!("{a}.q_a_proj"), d, r, false);
                        push(format!("{a}.q_a_layernorm.weight"), vec![r], Kind::Norm);
                        linear(&mut push, format!("{a}.q_b_proj"), r, q_out, false);
                    }
                    None => linear(&mut push, format!("{a}.q_proj"), d, q_out, false),
                }
                let r = m.kv_lora_rank;
                linear(&mut push, format!("{a}.kv_a_proj_with_mqa"), d, r + m.qk_rope, false);
                push(format!("{a}.kv_a_layernorm.weight"), vec![r], Kind::Norm);
                linear(&mut push, format!("{a}.kv_b_proj"), r, h * (m.qk_nope + m.v_head), false);
                linear(&mut push, format!("{a}.o_proj"), h * m.v_head, d, false);
            }
            None => {
                linear(&mut push, format!("{a}.q_proj"), d, h * hd, c.qkv_bias);
                linear(&mut push, format!("{a}.k_proj"), d, kv * hd, c.qkv_bias);
                linear(&mut push, format!("{a}.v_proj"), d, kv * hd, c.qkv_bias);
                linear(&mut push, format!("{a}.o_proj"), h * hd, d, c.o_bias);
                if c.qk_norm {
                    push(format!("{a}.q_norm.weight"), vec![hd], Kind::Norm);
                    push(format!("{a}.k_norm.weight"), vec![hd], Kind::Norm);
                }
            }
        }
        match c.moe.filter(|m| m.is_sparse(i)) {
            // The router, then each expert's SwiGLU (transformers' per-expert checkpoint names).
            Some(m) => {
                linear(&mut push, format!("{p}.mlp.gate"), d, m.experts, false);
                if m.score_bias {
                    push(
                        format!("{p}.mlp.gate.e_score_correction_bias"),
                        vec![m.experts],
                        Kind::Buffer,
                    );
                }
                let mut swiglu = |x: String, w: usize| {
                    linear(&mut push, format!("{x}.gate_proj"), d, w, false);
                    linear(&mut push, format!("{x}.up_proj"), d, w, false);
                    linear(&mut push, format!("{x}.down_proj"), w, d, false);
                };
                for e in 0..m.experts {
                    swiglu(format!("{p}.mlp.experts.{e}"), m.intermediate);
                }
                if m.shared_intermediate > 0 {
                    swiglu(format!("{p}.mlp.shared_experts"), m.shared_intermediate);
                }
            }
            None => {
                linear(&mut push, format!("{p}.mlp.gate_proj"), d, f, c.mlp_bias);
                linear(&mut push, format!("{p}.mlp.up_proj"), d, f, c.mlp_bias);
                linear(&mut push, format!("{p}.mlp.down_proj"), f, d, c.mlp_bias);
            }
        }
        push(format!("{p}.input_layernorm.weight"), vec![d], Kind::Norm);
        push(format!("{p}.post_attention_layernorm.weight"), vec![d], Kind::Norm);
    }
    push("model.norm.weight".into(), vec![d], Kind::Norm);
    if !c.tied {
        linear(&mut push, "lm_head".into(), d, c.vocab, false);
    }
    v
}

/// The parameter count: the spec's elements summed.
pub fn param_count(c: &ModelConfig) -> u64 {
    param_specs(c).iter().map(ParamSpec::numel).sum()
}

/// The parameters one token runs through: the count less the experts a token is not routed to
/// (`experts − top_k` per sparse layer). Equal to [`param_count`] for dense models.
pub fn active_param_count(c: &ModelConfig) -> u64 {
    let total = param_count(c);
    match c.moe {
        None => total,
        Some(m) => {
            let per_expert = 3 * (c.hidden_size * m.intermediate) as u64;
            let sparse = (0..c.num_hidden_layers).filter(|&i| m.is_sparse(i)).count() as u64;
            total - sparse * (m.experts - m.top_k) as u64 * per_expert
        }
    }
}

/// Walks a spec in order while a model is built, exported or enumerated: each step takes the next
/// parameter and checks it is of the kind the walker expects. A mismatch is a bug in the walk, not
/// bad input, so it panics.
pub struct Cursor<'a> {
    specs: &'a [ParamSpec],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(specs: &'a [ParamSpec]) -> Self {
        Cursor { specs, at: 0 }
    }

    /// The next parameter, which must be of `kind`.
    pub fn next(&mut self, kind: Kind) -> &'a ParamSpec {
        match self.next_if(kind) {
            Some(s) => s,
            None => panic!(
                "parameter walk: expected a {kind:?} at position {}, found {:?}",
                self.at,
                self.specs.get(self.at)
            ),
        }
    }

    /// The next parameter if it is of `kind` (optional parameters: biases, q/k norms, the LM head).
    pub fn next_if(&mut self, kind: Kind) -> Option<&'a ParamSpec> {
        let s = self.specs.get(self.at).filter(|s| s.kind == kind)?;
        self.at += 1;
        Some(s)
    }

    /// The next parameter, without taking it.
    pub fn peek(&self) -> Option<&'a ParamSpec> {
        self.specs.get(self.at)
    }

    /// Whether the next parameter is a sparse MLP's router (`….mlp.gate.weight`).
    pub fn at_router(&self) -> bool {
        self.peek().is_some_and(|s| s.name.ends_with(".mlp.gate.weight"))
    }

    /// Every parameter was walked.
    pub fn finish(self) {
        assert_eq!(
            self.at,
            self.specs.len(),
            "parameter walk stopped at {:?}",
            self.specs.get(self.at)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ModelConfig {
        ModelConfig::from_json(&format!(
            r#"{{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 50, "rms_norm_eps": 1e-6, "rope_theta": 10000.0{extra}}}"#
        ))
        .unwrap()
    }

    /// The count by hand: Qwen2 (q/k/v biases), GQA 2:1, head_dim 4, untied.
    #[test]
    fn the_spec_counts_what_qwen2_has() {
        let c = cfg(r#", "tie_word_embeddings": false"#);
        let per_layer = (8 * 8 + 8) + 2 * (8 * 4 + 4) + 8 * 8 + 3 * 8 * 12 + 2 * 8;
        assert_eq!(param_count(&c), (50 * 8 + 2 * per_layer + 8 + 50 * 8) as u64);
        let s = param_specs(&c);
        assert_eq!(s[1].name, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(s[1].shape, vec![8, 8]);
        assert_eq!(s[2].name, "model.layers.0.self_attn.q_proj.bias");
        assert_eq!(s.last().unwrap().name, "lm_head.weight");
        assert!(tied(&c).is_empty());
        let t = cfg(r#", "tie_word_embeddings": true"#);
        assert_eq!(param_count(&t), param_count(&c) - 50 * 8);
        assert_eq!(tied(&t), vec![("lm_head.weight", "model.embed_tokens.weight")]);
    }
}
