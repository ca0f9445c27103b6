//! The sparse Mixture-of-Experts layer of Qwen3-MoE (HF `modeling_qwen3_moe.py`) and DeepSeek-V2/V3
//! (group-limited routing, shared experts, the score-correction bias), and the routing load
//! training reads.

use super::linear::Linear;
use super::llama::Mlp;
use crate::error::Result;
use crate::spec::{Cursor, Kind, ParamSpec};
use crate::weights::{WeightSink, WeightSource};
use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::TensorData;

/// A sparse MLP: Qwen3-MoE's `Qwen3MoeSparseMoeBlock`, DeepSeek-V2/V3's `DeepseekV{2,3}MoE`.
/// The router `gate` scores the experts in f32 (softmax, or V3's sigmoid), each token goes to its
/// `top_k` best (V3: chosen by score + `e_score_correction_bias`, within its best `topk_group`
/// groups), the chosen scores are optionally renormalised and scaled by `routed_scaling_factor`,
/// the experts' outputs are summed with those weights, and the shared experts (DeepSeek) are added.
///
/// Experts run batched: the routing is read back to the host once per layer, the tokens are
/// grouped per expert, and each expert with tokens runs one SwiGLU over its rows (a gather, three
/// matmuls, a weighted scatter-add), so the work is `top_k` experts' worth per token whatever
/// the expert count, at the cost of one device→host read per layer (the `[tokens, top_k]` ids;
/// with group-limited routing the `[tokens, experts]` scores, grouped on the host) and a loop over
/// the experts that have tokens. Gradients reach the router through the gathered weights and the
/// experts through their rows; unrouted experts get none.
#[derive(Module, Debug)]
pub struct SparseMoe<B: Backend> {
    /// The router: `[hidden, experts]` (HF `mlp.gate.weight` `[experts, hidden]`).
    pub gate: Linear<B>,
    /// V3's `mlp.gate.e_score_correction_bias` `[experts]`: for choosing only, never trained.
    pub e_score_correction_bias: Option<Param<Tensor<B, 1>>>,
    pub experts: Vec<Mlp<B>>,
    /// DeepSeek's `mlp.shared_experts`: one SwiGLU every token runs.
    pub shared_experts: Option<Mlp<B>>,
    #[module(skip)]
    pub routing: crate::config::MoeDims,
    /// The decoder layer this block belongs to (for [`RoutingLoad`]).
    pub layer: usize,
}

/// The layer index in a parameter name `model.layers.{i}.…`.
pub(crate) fn layer_of(name: &str) -> usize {
    name.strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse().ok())
        .unwrap_or(0)
}

/// Tokens routed to each expert, per sparse layer (by layer index), over one forward pass:
/// training reads it from [`super::CausalLm::forward_hidden_routed`] to report expert load balance
/// and to update DeepSeek-V3's score-correction bias.
pub type RoutingLoad = std::collections::BTreeMap<usize, Vec<u64>>;

/// Add one layer's counts to `load` (a forward pass's, or a step's over its micro-batches).
pub fn add_routing(load: &mut RoutingLoad, layer: usize, counts: &[u64]) {
    let v = load.entry(layer).or_insert_with(|| vec![0; counts.len()]);
    v.iter_mut().zip(counts).for_each(|(a, b)| *a += b);
}

fn record(load: &std::cell::RefCell<RoutingLoad>, layer: usize, counts: &[u64]) {
    add_routing(&mut load.borrow_mut(), layer, counts);
}

impl<B: Backend> SparseMoe<B> {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        at: &mut Cursor,
        m: &crate::config::MoeDims,
        device: &B::Device,
    ) -> Result<Self> {
        let layer = at.peek().map_or(0, |p| layer_of(&p.name));
        let gate = Linear::load(src, at, device)?;
        let bias = match at.next_if(Kind::Buffer) {
            Some(b) => Some(Param::from_tensor(src.take(&b.name, &[b.shape[0]], device)?)),
            None => None,
        };
        let experts = (0..m.experts).map(|_| Mlp::load(src, at, device)).collect::<Result<_>>()?;
        let shared_experts =
            if m.shared_intermediate > 0 { Some(Mlp::load(src, at, device)?) } else { None };
        Ok(SparseMoe {
            gate,
            e_score_correction_bias: bias,
            experts,
            shared_experts,
            routing: *m,
            layer,
        })
    }

    pub(crate) fn from_flat(
        at: &mut Cursor,
        m: &crate::config::MoeDims,
        next: &mut dyn FnMut(&ParamSpec) -> Tensor<B, 1>,
    ) -> Self {
        let layer = at.peek().map_or(0, |p| layer_of(&p.name));
        let gate = Linear::from_flat(at, next);
        let bias = at.next_if(Kind::Buffer).map(|b| Param::initialized(ParamId::new(), next(b)));
        SparseMoe {
            layer,
            gate,
            e_score_correction_bias: bias,
            experts: (0..m.experts).map(|_| Mlp::from_flat(at, next)).collect(),
            shared_experts: (m.shared_intermediate > 0).then(|| Mlp::from_flat(at, next)),
            routing: *m,
        }
    }

    pub(crate) fn export(&self, at: &mut Cursor, sink: &mut dyn WeightSink) {
        self.gate.export(at, sink);
        if let Some(b) = &self.e_score_correction_bias {
            sink.put(&at.next(Kind::Buffer).name, b.val());
        }
        for e in self.experts.iter().chain(&self.shared_experts) {
            e.export(at, sink);
        }
    }

    /// The routing of `x` `[tokens, hidden]`: each token's experts `[tokens · top_k]` (host,
    /// token-major) and their weights `[tokens, top_k]` (on the device, in `x`'s dtype,
    /// differentiable).
    pub fn route(&self, x: Tensor<B, 2>) -> (Vec<usize>, Tensor<B, 2>) {
        use crate::config::{GroupScore, Scoring};
        let r = &self.routing;
        let dtype = x.dtype();
        let device = x.device();
        let n = x.dims()[0];
        let logits = self.gate.forward(x).cast(DType::F32); // [n, E]
        let scores = match r.scoring {
            Scoring::Softmax => burn::tensor::activation::softmax(logits, 1),
            Scoring::Sigmoid => burn::tensor::activation::sigmoid(logits),
        };
        // What chooses the experts: the scores, plus V3's correction bias.
        let choice = match &self.e_score_correction_bias {
            Some(b) => scores.clone() + b.val().cast(DType::F32).unsqueeze_dim(0),
            None => scores.clone(),
        };
        let ids: Vec<usize> = if r.groups <= 1 {
            let (_, idx) = choice.topk_with_indices(r.top_k, 1); // [n, k]
            idx.into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .expect("ids")
                .into_iter()
                .map(|e| e as usize)
                .collect()
        } else {
            // Group-limited: each token keeps its `topk_groups` best groups, then its top_k
            // experts among them (on the host: the choice is not differentiable).
            let c: Vec<f32> = choice.into_data().convert::<f32>().to_vec().expect("scores");
            let (e, g) = (r.experts, r.groups);
            let per = e / g;
            let desc = |v: &[f32], i: usize, j: usize| v[j].total_cmp(&v[i]).then(i.cmp(&j));
            let mut out = Vec::with_capacity(n * r.top_k);
            for row in c.chunks_exact(e) {
                let group_score: Vec<f32> = row
                    .chunks_exact(per)
                    .map(|grp| match r.group_score {
                        GroupScore::Max => grp.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                        GroupScore::Top2Sum => {
                            let mut v = grp.to_vec();
                            v.sort_by(|a, b| b.total_cmp(a));
                            v[0] + v[1]
                        }
                    })
                    .collect();
                let mut groups: Vec<usize> = (0..g).collect();
                groups.sort_by(|&a, &b| desc(&group_score, a, b));
                let mut allowed: Vec<usize> = groups[..r.topk_groups]
                    .iter()
                    .flat_map(|&gi| gi * per..(gi + 1) * per)
                    .collect();
                allowed.sort_by(|&a, &b| desc(row, a, b));
                out.extend_from_slice(&allowed[..r.top_k]);
            }
            out
        };
        let idx = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&e| e as i64).collect::<Vec<_>>(), [n, r.top_k]),
            &device,
        );
        // The weights come from the unbiased scores.
        let mut w = scores.gather(1, idx);
        if r.norm_topk_prob {
            w = w.clone() / (w.sum_dim(1) + 1e-20);
        }
        if r.routed_scaling != 1.0 {
            w = w.mul_scalar(r.routed_scaling);
        }
        (ids, w.cast(dtype))
    }

    /// DeepSeek-V3's auxiliary-loss-free balancing: each expert's score-correction bias moves by
    /// `rate` toward balance, `b_e += rate · sign(mean load − load_e)`. No-op without a bias.
    pub fn update_bias(&mut self, load: &[f64], rate: f64) {
        let Some(b) = self.e_score_correction_bias.as_mut() else { return };
        let mean = load.iter().sum::<f64>() / load.len().max(1) as f64;
        let step: Vec<f32> = load
            .iter()
            .map(|&l| (rate * (mean - l).signum() * f64::from(u8::from(l != mean))) as f32)
            .collect();
        let device = b.val().device();
        let delta = Tensor::<B, 1>::from_data(TensorData::new(step, [load.len()]), &device);
        let new = (b.val() + delta.cast(b.val().dtype())).detach();
        *b = Param::initialized(b.id, new);
    }

    /// `[.., hidden]` → `[.., hidden]`; the tokens each expert got are added to `load`.
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        load: Option<&std::cell::RefCell<RoutingLoad>>,
    ) -> Tensor<B, D> {
        let dims = x.dims();
        let d = dims[D - 1];
        let n = dims[..D - 1].iter().product::<usize>();
        let device = x.device();
        let x = x.reshape([n, d]);
        let (ids, w) = self.route(x.clone());
        let k = self.routing.top_k;
        // Per expert: the tokens routed to it and the (token, slot) of each routing weight.
        let mut rows: Vec<(Vec<i64>, Vec<i64>)> = vec![(vec![], vec![]); self.experts.len()];
        for (j, &e) in ids.iter().enumerate() {
            rows[e].0.push((j / k) as i64);
            rows[e].1.push(j as i64);
        }
        if let Some(load) = load {
            record(load, self.layer, &rows.iter().map(|r| r.0.len() as u64).collect::<Vec<_>>());
        }
        let w = w.reshape([n * k, 1]);
        let int = |v: &[i64]| {
            Tensor::<B, 1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device)
        };
        let mut out = Tensor::<B, 2>::zeros([n, d], &device).cast(x.dtype());
        for (expert, (tokens, slots)) in self.experts.iter().zip(&rows) {
            if tokens.is_empty() {
                continue;
            }
            let tok = int(tokens);
            let y = expert.forward(x.clone().select(0, tok.clone())); // [m, d]
            let y = y * w.clone().select(0, int(slots)); // weighted by its routing weight
            out = out.select_assign(0, tok, y, burn::tensor::IndexingUpdateOp::Add);
        }
        if let Some(s) = &self.shared_experts {
            out = out + s.forward(x);
        }
        out.reshape(dims)
    }
}
