//! The decoder-only transformer of Llama, Qwen2, Qwen3 and Qwen3-MoE (HF
//! `modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`, `modeling_qwen3_moe.py`). They
//! differ only in switches read from the config: q/k/v bias (Qwen2), q/k RMSNorm over the head
//! dimension (Qwen3), tied embeddings, RoPE scaling (Llama 3), and sparse MLPs (Qwen3-MoE). Struct fields follow the Hugging Face module names; the tensor names and
//! shapes come from the parameter spec ([`crate::spec`]), which load, export and `params_mut`
//! walk in the same order.

//!
//! One file per architecture, and one per part they share: [`llama`] (dense: Llama, Qwen2,
//! Qwen3), [`moe`] (Qwen3-MoE and DeepSeek routing), [`deepseek`] (MLA); [`linear`], [`norm`] and
//! [`cache`] (mask, KV cache); the rotary tables are `crate::rope`. This file strings them into a
//! layer and the model.

use burn::module::{Module, Param};
use burn::prelude::*;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::rope::Rope;
use crate::spec::{Cursor, Dims, Kind, ParamSpec};
use crate::weights::{WeightSink, WeightSource};

pub mod cache;
pub mod deepseek;
pub mod linear;
pub mod llama;
pub mod moe;
pub mod norm;

pub use cache::{AttnMask, KV_BLOCK, KvCache, LayerKv};
pub use deepseek::MlaAttention;
pub use linear::{Linear, matmul_2d};
pub use llama::{Attention, Mlp};
pub use moe::{RoutingLoad, SparseMoe, add_routing};
pub use norm::RmsNorm;

/// A layer's attention: grouped-query (Llama, Qwen) or latent (DeepSeek).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum SelfAttention<B: Backend> {
    Gqa(Attention<B>),
    Mla(MlaAttention<B>),
}

impl<B: Backend> SelfAttention<B> {
    /// Query heads, and the heads the rotary key has (kv heads; MLA's one shared key).
    pub fn rope_heads(&self) -> (usize, usize) {
        match self {
            SelfAttention::Gqa(a) => (a.n_heads, a.n_kv_heads),
            SelfAttention::Mla(a) => (a.n_heads, 1),
        }
    }

    /// The grouped-query attention, if this layer has it.
    pub fn gqa(&self) -> Option<&Attention<B>> {
        match self {
            SelfAttention::Gqa(a) => Some(a),
            SelfAttention::Mla(_) => None,
        }
    }

    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        c: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        match &c.mla {
            Some(m) => Ok(SelfAttention::Mla(MlaAttention::load(src, at, c, m, device)?)),
            None => Ok(SelfAttention::Gqa(Attention::load(src, at, c, device)?)),
        }
    }

    fn from_flat(
        at: &mut Cursor,
        d: &Dims,
        eps: f64,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        match &d.mla {
            Some(m) => SelfAttention::Mla(MlaAttention::from_flat(at, d, m, next)),
            None => SelfAttention::Gqa(Attention::from_flat(at, d, eps, next)),
        }
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        match self {
            SelfAttention::Gqa(a) => a.export(at, sink),
            SelfAttention::Mla(a) => a.export(at, sink),
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope_q: &(Tensor<B, 2>, Tensor<B, 2>),
        rope_k: &(Tensor<B, 2>, Tensor<B, 2>),
        mask: &AttnMask<B>,
        cache: Option<(&mut LayerKv<B>, usize)>,
    ) -> Tensor<B, 3> {
        match self {
            SelfAttention::Gqa(a) => a.forward(x, rope_q, rope_k, mask, cache),
            SelfAttention::Mla(a) => a.forward(x, rope_q, rope_k, mask, cache),
        }
    }
}

/// A layer's feed-forward: dense SwiGLU, or a sparse Mixture of Experts. (The dense MLP is held
/// inline: layers are few and boxing it would cost every dense model an indirection.)
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Sparse(SparseMoe<B>),
}

impl<B: Backend> FeedForward<B> {
    /// The dense MLP, if this layer has one.
    pub fn dense(&self) -> Option<&Mlp<B>> {
        match self {
            FeedForward::Dense(m) => Some(m),
            FeedForward::Sparse(_) => None,
        }
    }

    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        c: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        match c.moe.filter(|_| at.at_router()) {
            Some(m) => Ok(FeedForward::Sparse(SparseMoe::load(src, at, &m, device)?)),
            None => Ok(FeedForward::Dense(Mlp::load(src, at, device)?)),
        }
    }

    fn from_flat(
        at: &mut Cursor,
        d: &Dims,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        match d.moe.filter(|_| at.at_router()) {
            Some(m) => FeedForward::Sparse(SparseMoe::from_flat(at, &m, next)),
            None => FeedForward::Dense(Mlp::from_flat(at, next)),
        }
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        match self {
            FeedForward::Dense(m) => m.export(at, sink),
            FeedForward::Sparse(m) => m.export(at, sink),
        }
    }

    /// `[.., hidden]` → `[.., hidden]`; a sparse layer adds its routing to `load`.
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        load: Option<&std::cell::RefCell<RoutingLoad>>,
    ) -> Tensor<B, D> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Sparse(m) => m.forward(x, load),
        }
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: SelfAttention<B>,
    /// HF `mlp`: dense, or sparse in a Qwen3-MoE layer.
    pub mlp: FeedForward<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        c: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let eps = c.rms_norm_eps;
        Ok(DecoderLayer {
            self_attn: SelfAttention::load(src, at, c, device)?,
            mlp: FeedForward::load(src, at, c, device)?,
            input_layernorm: RmsNorm::load(src, at.next(Kind::Norm), eps, device)?,
            post_attention_layernorm: RmsNorm::load(src, at.next(Kind::Norm), eps, device)?,
        })
    }

    fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        self.self_attn.export(at, sink);
        self.mlp.export(at, sink);
        self.input_layernorm.export(at, sink);
        self.post_attention_layernorm.export(at, sink);
    }

    /// One layer from flat tensors in spec order (see [`Linear::from_flat`]): parameter sharding
    /// builds a layer this way from weights gathered just before its forward.
    pub fn from_flat(
        at: &mut Cursor,
        d: &Dims,
        eps: f64,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        DecoderLayer {
            self_attn: SelfAttention::from_flat(at, d, eps, next),
            mlp: FeedForward::from_flat(at, d, next),
            input_layernorm: RmsNorm::from_flat(at, eps, next),
            post_attention_layernorm: RmsNorm::from_flat(at, eps, next),
        }
    }

    /// `x` `[batch, seq, hidden]` → `[batch, seq, hidden]`: attention and MLP, each pre-normed
    /// and added to its residual. With a cache slot, this layer's keys and values go into it.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &LayerCtx<'_, B>,
        cache: Option<(&mut LayerKv<B>, usize)>,
    ) -> Tensor<B, 3> {
        let a = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            &ctx.rope_q,
            &ctx.rope_k,
            ctx.mask,
            cache,
        );
        let x = x + a;
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x), Some(&ctx.routing))
    }
}

/// What every layer of one forward pass shares: the rotary tables for the query and key heads at
/// the batch's positions, and the attention mask.
pub struct LayerCtx<'a, B: Backend> {
    pub rope_q: (Tensor<B, 2>, Tensor<B, 2>),
    pub rope_k: (Tensor<B, 2>, Tensor<B, 2>),
    pub mask: &'a AttnMask<B>,
    /// The tokens each expert of each sparse layer got in this pass.
    pub routing: std::cell::RefCell<RoutingLoad>,
}

impl<'a, B: Backend> LayerCtx<'a, B> {
    /// For `positions` `[batch, seq]` and layers of `heads` query and `kv_heads` key heads.
    pub fn new(
        rope: &Rope<B>,
        positions: &Tensor<B, 2, Int>,
        heads: usize,
        kv_heads: usize,
        mask: &'a AttnMask<B>,
    ) -> Self {
        let tables = rope.tables(positions);
        let rope_q = tables.for_heads(heads);
        let rope_k = if kv_heads == heads { rope_q.clone() } else { tables.for_heads(kv_heads) };
        LayerCtx { rope_q, rope_k, mask, routing: Default::default() }
    }
}

/// Token embeddings: `ids` `[batch, seq]` → `[batch, seq, hidden]` rows of `table` `[vocab, hidden]`.
pub fn embed<B: Backend>(table: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [b, t] = ids.dims();
    let d = table.dims()[1];
    table.select(0, ids.reshape([b * t])).reshape([b, t, d])
}

/// HF's `LlamaModel`: embeddings, layers, final norm (the `model.` prefix).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// `LlamaForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM`.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    pub model: Decoder<B>,
    /// `None` when the embeddings are tied (`lm_head.weight` = `model.embed_tokens.weight`).
    pub lm_head: Option<Linear<B>>,
}

impl<B: Backend> CausalLm<B> {
    /// Build the model by pulling every tensor of its parameter spec ([`crate::spec`]) from `src`.
    pub fn load(cfg: &ModelConfig, src: &mut dyn WeightSource, device: &B::Device) -> Result<Self> {
        let specs = crate::spec::param_specs(cfg);
        let mut at = Cursor::new(&specs);
        let e = at.next(Kind::Embedding);
        let embed = src.take(&e.name, &[e.shape[0], e.shape[1]], device)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| DecoderLayer::load(src, &mut at, cfg, device))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(src, at.next(Kind::Norm), cfg.rms_norm_eps, device)?;
        let lm_head =
            if cfg.tie_word_embeddings { None } else { Some(Linear::load(src, &mut at, device)?) };
        at.finish();
        Ok(CausalLm {
            model: Decoder { embed_tokens: Param::from_tensor(embed), layers, norm },
            lm_head,
        })
    }

    /// The dimensions that decide this model's parameters (its spec).
    pub fn dims(&self) -> Dims {
        let [vocab, hidden] = self.model.embed_tokens.dims();
        let first = self.model.layers.first().map(|l| &l.self_attn);
        let attn = first.and_then(SelfAttention::gqa);
        let mla = match first {
            Some(SelfAttention::Mla(a)) => Some(a),
            _ => None,
        };
        let mlp = self.model.layers.iter().find_map(|l| l.mlp.dense());
        let moe = self.model.layers.iter().enumerate().fold(None, |acc, (i, l)| match &l.mlp {
            FeedForward::Sparse(m) => {
                let mut d = acc.unwrap_or(crate::config::MoeDims { sparse: 0, ..m.routing });
                d.sparse |= 1 << i;
                Some(d)
            }
            FeedForward::Dense(_) => acc,
        });
        Dims {
            vocab,
            hidden,
            intermediate: mlp.map_or(0, |m| m.gate_proj.weight.dims()[1]),
            layers: self.model.layers.len(),
            heads: attn.map_or(mla.map_or(0, |a| a.n_heads), |a| a.n_heads),
            kv_heads: attn.map_or(mla.map_or(0, |a| a.n_heads), |a| a.n_kv_heads),
            head_dim: attn.map_or(mla.map_or(0, |a| a.dims.qk_rope), |a| a.head_dim),
            qkv_bias: attn.is_some_and(|a| a.q_proj.bias.is_some()),
            o_bias: attn.is_some_and(|a| a.o_proj.bias.is_some()),
            mlp_bias: mlp.is_some_and(|m| m.gate_proj.bias.is_some()),
            qk_norm: attn.is_some_and(|a| a.q_norm.is_some()),
            tied: self.lm_head.is_none(),
            moe,
            mla: mla.map(|a| a.dims),
        }
    }

    /// Hand every tensor to `sink` under its HF name, in checkpoint order (the spec's).
    pub fn export(&self, sink: &mut dyn WeightSink) {
        let specs = crate::spec::specs(&self.dims());
        let mut at = Cursor::new(&specs);
        sink.put(&at.next(Kind::Embedding).name, self.model.embed_tokens.val());
        for l in &self.model.layers {
            l.export(&mut at, sink);
        }
        self.model.norm.export(&mut at, sink);
        if let Some(h) = &self.lm_head {
            h.export(&mut at, sink);
        }
        at.finish();
    }

    /// Final hidden states `[batch, seq, hidden]` for `input_ids` `[batch, seq]` at `positions`
    /// `[batch, seq]`. With a cache, keys/values are appended to it; after the first call the mask
    /// must cover the cache's whole capacity (see [`crate::masks::decode`]).
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        rope: &Rope<B>,
        mask: &AttnMask<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        self.forward_hidden_routed(input_ids, positions, rope, mask, cache).0
    }

    /// [`Self::forward_hidden`], and the tokens each expert of each sparse layer got.
    pub fn forward_hidden_routed(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        rope: &Rope<B>,
        mask: &AttnMask<B>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> (Tensor<B, 3>, RoutingLoad) {
        let t = input_ids.dims()[1];
        let mut x = embed(self.model.embed_tokens.val(), input_ids);
        let (h, kv) = self.model.layers.first().map_or((1, 1), |l| l.self_attn.rope_heads());
        let ctx = LayerCtx::new(rope, &positions, h, kv, mask);
        let start = cache.as_deref().map_or(0, KvCache::len);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| (&mut c.layers[i], start));
            x = layer.forward(x, &ctx, slot);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        (self.model.norm.forward(x), ctx.routing.into_inner())
    }

    /// Logits `[.., vocab]` from hidden states `[.., hidden]`.
    pub fn logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lm_head {
            Some(h) => h.forward(hidden),
            // Tied: the embedding `[vocab, hidden]` read through a transposed view.
            None => matmul_2d(hidden, self.model.embed_tokens.val().transpose()),
        }
    }

    /// The LM head as one `[hidden, vocab]` matrix (a transposed view of the embedding when
    /// tied), or `None` when it has a bias.
    pub fn lm_head_weight(&self) -> Option<Tensor<B, 2>> {
        match &self.lm_head {
            Some(h) if h.bias.is_none() => Some(h.weight.val()),
            Some(_) => None,
            None => Some(self.model.embed_tokens.val().transpose()),
        }
    }

    /// Logits `[batch, seq, vocab]` for every position (no cache).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        rope: &Rope<B>,
        mask: &AttnMask<B>,
    ) -> Tensor<B, 3> {
        self.logits(self.forward_hidden(input_ids, positions, rope, mask, None))
    }
}

/// A mutable model parameter, for optimizers.
pub enum ParamMut<'a, B: Backend> {
    Vector(&'a mut Param<Tensor<B, 1>>),
    Matrix(&'a mut Param<Tensor<B, 2>>),
}

impl<B: Backend> CausalLm<B> {
    /// Every parameter with its HF name, in checkpoint order. (Linear weights are held `[in, out]`;
    /// the name is the HF one.)
    pub fn params_mut(&mut self) -> Vec<(String, ParamMut<'_, B>)> {
        let specs = crate::spec::specs(&self.dims());
        let mut at = Cursor::new(&specs);
        let mut out: Vec<(String, ParamMut<'_, B>)> = Vec::new();
        fn lin<'a, B: Backend>(
            out: &mut Vec<(String, ParamMut<'a, B>)>,
            at: &mut Cursor,
            l: &'a mut Linear<B>,
        ) {
            out.push((at.next(Kind::Weight).name.clone(), ParamMut::Matrix(&mut l.weight)));
            if let Some(b) = l.bias.as_mut() {
                out.push((at.next(Kind::Bias).name.clone(), ParamMut::Vector(b)));
            }
        }
        fn norm<'a, B: Backend>(
            out: &mut Vec<(String, ParamMut<'a, B>)>,
            at: &mut Cursor,
            n: &'a mut RmsNorm<B>,
        ) {
            out.push((at.next(Kind::Norm).name.clone(), ParamMut::Vector(&mut n.weight)));
        }
        out.push((
            at.next(Kind::Embedding).name.clone(),
            ParamMut::Matrix(&mut self.model.embed_tokens),
        ));
        for l in self.model.layers.iter_mut() {
            match &mut l.self_attn {
                SelfAttention::Gqa(a) => {
                    for p in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                        lin(&mut out, &mut at, p);
                    }
                    for n in [a.q_norm.as_mut(), a.k_norm.as_mut()].into_iter().flatten() {
                        norm(&mut out, &mut at, n);
                    }
                }
                SelfAttention::Mla(a) => {
                    if let (Some(qa), Some(n), Some(qb)) =
                        (a.q_a_proj.as_mut(), a.q_a_layernorm.as_mut(), a.q_b_proj.as_mut())
                    {
                        lin(&mut out, &mut at, qa);
                        norm(&mut out, &mut at, n);
                        lin(&mut out, &mut at, qb);
                    }
                    if let Some(q) = a.q_proj.as_mut() {
                        lin(&mut out, &mut at, q);
                    }
                    lin(&mut out, &mut at, &mut a.kv_a_proj_with_mqa);
                    norm(&mut out, &mut at, &mut a.kv_a_layernorm);
                    lin(&mut out, &mut at, &mut a.kv_b_proj);
                    lin(&mut out, &mut at, &mut a.o_proj);
                }
            }
            let mlps: Vec<&mut Mlp<B>> = match &mut l.mlp {
                FeedForward::Dense(m) => vec![m],
                FeedForward::Sparse(m) => {
                    lin(&mut out, &mut at, &mut m.gate);
                    if m.e_score_correction_bias.is_some() {
                        // A buffer: exported, never trained.
                        at.next(Kind::Buffer);
                    }
                    m.experts.iter_mut().chain(m.shared_experts.as_mut()).collect()
                }
            };
            for m in mlps {
                for p in [&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj] {
                    lin(&mut out, &mut at, p);
                }
            }
            norm(&mut out, &mut at, &mut l.input_layernorm);
            norm(&mut out, &mut at, &mut l.post_attention_layernorm);
        }
        norm(&mut out, &mut at, &mut self.model.norm);
        if let Some(h) = self.lm_head.as_mut() {
            lin(&mut out, &mut at, h);
        }
        at.finish();
        out
    }
}
