//! The memory planner: what one rank of a full fine-tune holds at its peak, component by
//! component, for each shard mode — so a run that cannot fit is refused before it loads anything,
//! and `distill plan` can say how many devices a recipe needs.
//!
//! Per rank, with P parameters, N ranks and the shard modes of [`super::parallel`]:
//!
//! | component | none | optimizer | gradients |
//! |---|---|---|---|
//! | f32 weights (they are the master copy) | 4P | 4P | 4P |
//! | compute copy (bf16 compute only) | 2P | 2P | 2P |
//! | gradients | 4P (8P with accumulation) | 4P (8P with accumulation) | 4P + 4P/N |
//! | AdamW moments | 8P | 8P/N | 8P/N |
//! | communication buffers | 2 buckets | 2 buckets | 2 buckets |
//!
//! `parameters` (FSDP / ZeRO-3, [`super::fsdp`]) keeps 16P/N of state and gathers one unit at a
//! time (a decoder layer, the embedding or the head): with activation checkpointing, two gathered
//! units in the compute dtype (the one running, and the embedding or head at the ends) plus one
//! unit's gradient transient (its compute-dtype gradient, the f32 cast and the all-reduce's f32
//! result); without it, the whole compute-dtype model, kept by the layers' graphs from the
//! forward to their backward.
//!
//! With `offload = "cpu"` (ZeRO-Offload) the 16P/N of state moves to the host: the device keeps
//! its slices in the compute dtype (2P/N in bf16) beside the gathered units and one unit's
//! gradient transient, and the host holds the f32 master, the moments and the accumulated
//! gradient slices of every rank it serves. Each step moves every rank's gradient slices to the
//! host once per round (4P/N bytes) and the updated slices back (2P/N in bf16): [`OffloadCost`].
//! With `prefetch`, one more unit is gathered while the current one computes.
//!
//! Gradients: burn's backward returns every parameter's gradient at once (4P); with gradient
//! accumulation the running sum is a second full copy, except under `gradients`, where each
//! micro-batch's gradient is reduce-scattered at once and only the owned 1/N is summed.
//! Activations and logits are per micro-batch and do not shrink with N.

use serde::Serialize;

use super::config::TrainConfig;
use super::parallel::ShardMode;
use distill_models::config::ModelConfig;

/// Exact parameter count of a config (weights, biases, norms; every expert of an MoE).
pub fn param_count(c: &ModelConfig) -> usize {
    distill_models::spec::param_count(c) as usize
}

/// The MLP width one token's activations span, averaged over layers: a dense layer's
/// `intermediate_size`; a sparse layer's `top_k` experts plus its shared experts.
pub fn token_intermediate(c: &ModelConfig) -> usize {
    match &c.moe {
        None => c.intermediate_size,
        Some(m) => {
            let layers = c.num_hidden_layers.max(1);
            let sparse = (0..layers).filter(|&i| m.is_sparse(i)).count();
            let width = m.top_k * m.intermediate + m.shared_intermediate;
            (sparse * width + (layers - sparse) * c.intermediate_size) / layers
        }
    }
}

/// Parameters of the largest unit FSDP gathers at once: one decoder layer, or the embedding (or
/// the LM head).
pub fn largest_unit(c: &ModelConfig) -> usize {
    let embed = c.vocab_size * c.hidden_size;
    let layer =
        (param_count(c) - embed * if c.tie_word_embeddings { 1 } else { 2 } - c.hidden_size)
            / c.num_hidden_layers.max(1);
    embed.max(layer)
}

/// The published architecture of the base models the shipped recipes name (their `config.json`),
/// so a plan needs no download.
pub fn known_config(base_model: &str) -> Option<ModelConfig> {
    // Mixture-of-Experts bases, as their config.json says.
    let moe = match base_model {
        "Qwen/Qwen3-30B-A3B" | "Qwen/Qwen3-30B-A3B-Base" => Some(serde_json::json!({
            "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048, "intermediate_size": 6144,
            "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
            "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
            "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
            "tie_word_embeddings": false, "rope_theta": 1e6, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
        })),
        "deepseek-ai/DeepSeek-V2-Lite" | "deepseek-ai/DeepSeek-V2-Lite-Chat" => {
            Some(serde_json::json!({
                "architectures": ["DeepseekV2ForCausalLM"], "hidden_size": 2048, "intermediate_size": 10944,
                "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
                "num_key_value_heads": 16, "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
                "first_k_dense_replace": 1, "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": null,
                "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 102400,
                "topk_method": "greedy", "routed_scaling_factor": 1.0, "norm_topk_prob": false,
                "tie_word_embeddings": false, "rope_theta": 10000, "max_position_embeddings": 163840, "rms_norm_eps": 1e-6,
                "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                    "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
            }))
        }
        _ => None,
    };
    if let Some(json) = moe {
        return ModelConfig::from_json(&json.to_string()).ok();
    }
    let (arch, h, i, layers, heads, kv, vocab, tied) = match base_model {
        "Qwen/Qwen2.5-Math-1.5B" | "Qwen/Qwen2.5-1.5B" => {
            ("Qwen2ForCausalLM", 1536, 8960, 28, 12, 2, 151936, true)
        }
        "Qwen/Qwen2.5-Math-7B" | "Qwen/Qwen2.5-7B" => {
            ("Qwen2ForCausalLM", 3584, 18944, 28, 28, 4, 152064, false)
        }
        "Qwen/Qwen2.5-14B" => ("Qwen2ForCausalLM", 5120, 13824, 48, 40, 8, 152064, false),
        "Qwen/Qwen2.5-32B" => ("Qwen2ForCausalLM", 5120, 27648, 64, 40, 8, 152064, false),
        "meta-llama/Llama-3.1-8B" => ("LlamaForCausalLM", 4096, 14336, 32, 32, 8, 128256, false),
        "meta-llama/Llama-3.3-70B-Instruct" => {
            ("LlamaForCausalLM", 8192, 28672, 80, 64, 8, 128256, false)
        }
        "Qwen/Qwen3-8B-Base" => ("Qwen3ForCausalLM", 4096, 12288, 36, 32, 8, 151936, false),
        "HuggingFaceTB/SmolLM2-135M" => ("LlamaForCausalLM", 576, 1536, 30, 9, 3, 49152, true),
        _ => return None,
    };
    let json = serde_json::json!({
        "architectures": [arch], "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab, "head_dim": h / heads,
        "tie_word_embeddings": tied, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 32768,
    });
    ModelConfig::from_json(&json.to_string()).ok()
}

/// One rank's estimated peak, bytes per component.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    pub world: usize,
    pub mode: ShardMode,
    pub params: usize,
    pub weights: f64,
    pub compute_copy: f64,
    pub gradients: f64,
    pub moments: f64,
    pub activations: f64,
    pub logits: f64,
    pub comm_buffers: f64,
    /// Whether the f32 master and the moments are offloaded to the host.
    pub offload: bool,
    /// Host memory per rank for offloaded state: f32 master, moments, accumulated gradients.
    pub host: f64,
    /// Rounds of micro-batches per optimizer step (each ends in a gradient copy to the host).
    pub rounds: usize,
    pub compute_bytes: f64,
}

/// The shape of a run, as far as memory is concerned.
#[derive(Debug, Clone, Copy)]
pub struct RunShape {
    pub micro_batch: usize,
    pub seq: usize,
    pub grad_accum: usize,
    pub checkpointing: bool,
    pub bf16: bool,
    pub bucket_mb: f64,
    /// Logit distillation (`kd_weight > 0`): the chunked LM head also gathers the student's
    /// logits at the teacher's top-k ids (`crate::lm_head_loss`).
    pub kd: bool,
    /// `offload = "cpu"` (applies to `parameters` only).
    pub offload: bool,
    /// `prefetch` (applies to the unit-by-unit schedule only).
    pub prefetch: bool,
}

impl RunShape {
    pub fn of(cfg: &TrainConfig) -> RunShape {
        RunShape {
            micro_batch: cfg.micro_batch,
            seq: cfg.data.max_seq_len,
            grad_accum: cfg.grad_accum,
            checkpointing: cfg.activation_checkpointing,
            bf16: cfg.compute() == burn::tensor::DType::BF16,
            bucket_mb: cfg.parallel.bucket_mb,
            kd: cfg.kd_weight > 0.0,
            offload: cfg.parallel.offload == super::parallel::Offload::Cpu,
            prefetch: cfg.parallel.prefetch,
        }
    }
}

impl MemoryPlan {
    pub fn new(c: &ModelConfig, s: RunShape, world: usize, mode: ShardMode) -> MemoryPlan {
        let p = param_count(c);
        let pf = p as f64;
        let n = world.max(1) as f64;
        let offload = s.offload && mode == ShardMode::Parameters;
        // World size 1 is the unsharded plan, except under offload (every unit owned whole).
        let mode = if world <= 1 && !offload { ShardMode::None } else { mode };
        let accumulates = s.grad_accum > 1;
        let unit = largest_unit(c) as f64;
        let compute_bytes = if s.bf16 { 2.0 } else { 4.0 };
        let bf16 = if s.bf16 { 1.0 } else { 0.0 };
        // The unit-by-unit schedule (`super::fsdp`): parameter sharding, activation checkpointing
        // on one device (there every unit is owned whole, n = 1), and offload.
        let units = mode == ShardMode::Parameters || (world <= 1 && s.checkpointing);
        // One unit's gradient transient: its gradient in the compute dtype, its f32 cast (bf16
        // only) and the all-reduce's f32 result.
        let transient = unit * (compute_bytes + 4.0 + 4.0 * bf16);
        let gradients = match mode {
            _ if offload => transient,
            // The owned f32 slices, plus the transient.
            _ if units => 4.0 * pf / n + transient,
            ShardMode::Gradients => 4.0 * pf + 4.0 * pf / n,
            _ => 4.0 * pf * if accumulates { 2.0 } else { 1.0 },
        };
        let moments = if offload {
            0.0
        } else if mode.sharded() {
            8.0 * pf / n
        } else {
            8.0 * pf
        };
        // Gathered weights: one unit at a time with checkpointing (the gather's zero-padded
        // buffer becomes its result), one more with prefetch; without checkpointing every
        // layer's graph keeps its weights from the forward to its backward.
        let gathered = if s.checkpointing { unit } else { pf } * compute_bytes
            + if s.prefetch { unit * compute_bytes } else { 0.0 };
        let (weights, compute_copy) = match mode {
            // The device keeps its slices in the compute dtype only.
            _ if offload => (0.0, pf / n * compute_bytes + gathered),
            _ if units => (4.0 * pf / n, gathered),
            _ => (4.0 * pf, if s.bf16 { 2.0 * pf } else { 0.0 }),
        };
        let host = if offload { 16.0 * pf / n } else { 0.0 };
        let tokens = (s.micro_batch * s.seq) as f64;
        // Per layer and token: ~ (hidden·10 + intermediate·3) floats kept for the backward pass.
        // Attention keeps no score matrix (`distill_models::attention` recomputes it per chunk).
        let per_layer = tokens * (c.hidden_size * 10 + token_intermediate(c) * 3) as f64 * 4.0;
        let layers = c.num_hidden_layers as f64;
        // Layer-level recomputation (each layer's input kept, the layer re-run in the backward)
        // is what the unit-by-unit schedule does: under `parameters`, and on one device. The
        // other modes run burn's op-level checkpointing of the whole graph, which keeps every
        // matmul output: measured, it saves about 7% (docs/benchmarks.md), so no credit is given.
        let layer_recompute = s.checkpointing && units;
        let activations = if layer_recompute {
            layers * tokens * c.hidden_size as f64 * 4.0 + per_layer
        } else {
            layers * per_layer
        };
        // Under bf16 compute the saved activations are bf16 (norms and attention statistics stay
        // f32, a small share): half the f32 figure. An assumption until measured on a GPU.
        let activations = activations * compute_bytes / 4.0;
        // Never the logits themselves: the chunked LM head's temporaries (logits, probabilities,
        // their gradient: one chunk each), and with KD the gathered top-k columns of the head
        // (two chunk-sized temporaries, `crate::lm_head_loss::gathered_logits`).
        let chunk = (crate::lm_head_loss::CHUNK_ELEMS as f64).min(tokens * c.vocab_size as f64);
        let logits = (3.0 + if s.kd { 2.0 } else { 0.0 }) * chunk * 4.0;
        let comm_buffers = if world > 1 { 2.0 * (s.bucket_mb * 1e6).min(4.0 * pf) } else { 0.0 };
        MemoryPlan {
            world: world.max(1),
            mode,
            params: p,
            weights,
            compute_copy,
            gradients,
            moments,
            activations,
            logits,
            comm_buffers,
            offload,
            host,
            rounds: s.grad_accum.div_ceil(world.max(1)),
            compute_bytes,
        }
    }

    pub fn host_gb(&self) -> f64 {
        self.host / 1e9
    }

    /// The host's share per rank under offload, `(name, bytes)`: 4P/N + 8P/N + 4P/N.
    pub fn host_parts(&self) -> [(&'static str, f64); 3] {
        let q = self.host / 16.0;
        [("f32 master", 4.0 * q), ("AdamW moments", 8.0 * q), ("gradients", 4.0 * q)]
    }

    /// What offload costs a rank each optimizer step (zero without offload).
    pub fn offload_cost(&self) -> OffloadCost {
        if !self.offload {
            return OffloadCost::default();
        }
        let slice = self.params as f64 / self.world as f64;
        OffloadCost {
            to_host: self.rounds as f64 * 4.0 * slice,
            to_device: self.compute_bytes * slice,
            // AdamW reads master, gradient and both moments and writes master and moments (28
            // bytes per element), then casts the master for the device (4 + 2).
            host_optimizer: slice * 34.0,
        }
    }
}

/// What offload's figures assume: a PCIe 5.0 x16 link moves about 50 GB/s each way in practice.
pub const PCIE_GBS: f64 = 50.0;
/// A two-socket host's memory bandwidth, GB/s, shared by the node's ranks.
pub const HOST_BANDWIDTH_GBS: f64 = 400.0;

/// Bytes one rank moves per optimizer step under offload.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OffloadCost {
    /// Gradient slices, device → host: 4P/N per round of micro-batches.
    pub to_host: f64,
    /// Updated slices in the compute dtype, host → device.
    pub to_device: f64,
    /// Host memory traffic of the AdamW update.
    pub host_optimizer: f64,
}

impl OffloadCost {
    /// Seconds at `pcie_gbs` GB/s per device link and `host_gbs` GB/s of host memory bandwidth
    /// shared by `ranks` ranks.
    pub fn seconds(&self, pcie_gbs: f64, host_gbs: f64, ranks: usize) -> f64 {
        (self.to_host + self.to_device) / (pcie_gbs * 1e9)
            + self.host_optimizer * ranks as f64 / (host_gbs * 1e9)
    }
}

impl MemoryPlan {
    pub fn for_run(c: &ModelConfig, cfg: &TrainConfig, world: usize) -> MemoryPlan {
        MemoryPlan::new(c, RunShape::of(cfg), world, cfg.parallel.shard)
    }

    pub fn total(&self) -> f64 {
        self.weights
            + self.compute_copy
            + self.gradients
            + self.moments
            + self.activations
            + self.logits
            + self.comm_buffers
    }

    pub fn total_gb(&self) -> f64 {
        self.total() / 1e9
    }

    /// The components as `(name, bytes)`.
    pub fn parts(&self) -> [(&'static str, f64); 7] {
        [
            ("f32 weights (master)", self.weights),
            ("compute copy / gathered", self.compute_copy),
            ("gradients", self.gradients),
            ("AdamW moments", self.moments),
            ("activations", self.activations),
            ("logits (chunked LM head)", self.logits),
            ("communication buffers", self.comm_buffers),
        ]
    }

    /// A plain-text table of the components, GB per rank.
    pub fn table(&self) -> String {
        let mut out =
            format!("  per rank, {} rank(s), shard = {}:\n", self.world, self.mode.name());
        for (name, b) in self.parts() {
            out.push_str(&format!("    {name:<24} {:>9.2} GB\n", b / 1e9));
        }
        out.push_str(&format!("    {:<24} {:>9.2} GB", "total", self.total_gb()));
        out
    }
}

/// The smallest number of ranks (up to `max`) at which `mode` fits `gb` per device.
pub fn min_ranks(
    c: &ModelConfig,
    s: RunShape,
    mode: ShardMode,
    gb: f64,
    max: usize,
) -> Option<usize> {
    (1..=max).find(|&n| MemoryPlan::new(c, s, n, mode).total_gb() <= gb)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec counts what the MoE model cards publish: Qwen3-30B-A3B "30.5B total, 3.3B
    /// activated" (counting every weight a token touches, its embedding row's matrix included),
    /// DeepSeek-V2-Lite "15.7B total, 2.4B activated" (DeepSeek does not count the input
    /// embedding, a lookup).
    #[test]
    fn moe_counts_match_the_model_cards() {
        for (name, total, active, embed_counted) in [
            ("Qwen/Qwen3-30B-A3B", 30.5, 3.3, true),
            ("deepseek-ai/DeepSeek-V2-Lite", 15.7, 2.4, false),
        ] {
            let c = known_config(name).unwrap();
            let t = distill_models::spec::param_count(&c) as f64 / 1e9;
            let mut a = distill_models::spec::active_param_count(&c) as f64 / 1e9;
            if !embed_counted {
                a -= (c.vocab_size * c.hidden_size) as f64 / 1e9;
            }
            eprintln!("{name}: {t:.3}B total, {a:.3}B active");
            assert!((t - total).abs() < 0.05, "{name}: {t:.3}B total");
            // The cards truncate: 3.35B is "3.3B", 2.45B is "2.4B".
            assert!(a >= active && a < active + 0.06, "{name}: {a:.3}B active");
        }
    }

    fn qwen25_1_5b() -> ModelConfig {
        let json = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":151936,"hidden_size":1536,
            "intermediate_size":8960,"num_hidden_layers":28,"num_attention_heads":12,"num_key_value_heads":2,
            "max_position_embeddings":32768,"rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true}"#;
        ModelConfig::from_json(json).unwrap()
    }

    #[test]
    fn the_parameter_count_is_the_published_one() {
        // Qwen2.5-1.5B: 1,543,714,304 parameters (transformers' num_parameters()).
        assert_eq!(param_count(&qwen25_1_5b()), 1_543_714_304);
    }

    #[test]
    fn sharding_shrinks_moments_and_gradients_as_the_table_says() {
        let c = qwen25_1_5b();
        let s = RunShape {
            micro_batch: 1,
            seq: 1024,
            grad_accum: 4,
            checkpointing: true,
            bf16: false,
            bucket_mb: 25.0,
            kd: true,
            offload: false,
            prefetch: false,
        };
        let p = param_count(&c) as f64;
        let none = MemoryPlan::new(&c, s, 4, ShardMode::None);
        let opt = MemoryPlan::new(&c, s, 4, ShardMode::Optimizer);
        let grads = MemoryPlan::new(&c, s, 4, ShardMode::Gradients);
        assert_eq!(none.moments, 8.0 * p);
        assert_eq!(opt.moments, 2.0 * p);
        assert_eq!(opt.gradients, 8.0 * p);
        assert_eq!(grads.gradients, 5.0 * p);
        assert!(grads.total() < opt.total() && opt.total() < none.total());
        // World size 1 is always the unsharded plan.
        assert_eq!(
            MemoryPlan::new(&c, s, 1, ShardMode::Gradients).total(),
            MemoryPlan::new(&c, s, 1, ShardMode::None).total()
        );
        assert_eq!(min_ranks(&c, s, ShardMode::Gradients, grads.total_gb(), 8), Some(4));
    }
}
