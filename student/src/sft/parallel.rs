//! Data parallelism as a layer around the model and the optimizer: ranks, the flat parameter
//! layout that shards it, and the collectives that keep the ranks in step — all on
//! burn-collective (`burn::collective`), never a transport of our own.
//!
//! One rank is one device. Ranks of a node are threads of one process and meet in burn's local
//! collective server. Every rank derives the same global batch order from the seed; micro-batch
//! `i` of a global batch goes to rank `i mod world`, so the optimizer step is the same for any
//! world size (up to the order of float additions in the reductions).
//!
//! Shard modes (`[train.parallel] shard`), ZeRO's stages 0–2:
//! - `none`: every rank holds the f32 weights, the full gradient and AdamW's moments; gradients
//!   are all-reduced in buckets once per optimizer step and every rank runs the whole update.
//! - `optimizer`: the parameters, flattened end to end, are cut into `world` contiguous ranges;
//!   rank r keeps AdamW's moments for its range only and updates only it. The updated ranges then
//!   reach every rank through an all-gather (an all-reduce of zero-padded buckets: x + 0 is x, so
//!   the gathered weights are bit-identical to the owner's).
//! - `gradients`: as `optimizer`, and each micro-batch's gradient is reduce-scattered at once
//!   (all-reduce of a bucket, then a slice), so a rank accumulates only its own range.
//!
//! The layout is by parameter order and element offset (`Layout`), the same for every rank; the
//! parameter-sharding mode (FSDP) can shard storage along the same ranges.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Mutex;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::prelude::*;
use burn::tensor::{TensorData, TensorPrimitive};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How optimizer state and gradients are split across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardMode {
    /// Replicated (plain DDP).
    #[default]
    None,
    /// ZeRO-1: AdamW moments (and the update) sharded.
    Optimizer,
    /// ZeRO-2: moments and the accumulated gradient sharded.
    Gradients,
    /// ZeRO-3 / FSDP: the parameters too. Planned (`distill plan` estimates it); the trainer does
    /// not run it yet.
    Parameters,
}

impl ShardMode {
    pub const ALL: [ShardMode; 4] = [ShardMode::None, ShardMode::Optimizer, ShardMode::Gradients, ShardMode::Parameters];

    pub fn name(self) -> &'static str {
        match self {
            ShardMode::None => "none",
            ShardMode::Optimizer => "optimizer",
            ShardMode::Gradients => "gradients",
            ShardMode::Parameters => "parameters",
        }
    }

    pub fn sharded(self) -> bool {
        self != ShardMode::None
    }
}

/// `[train.parallel]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    /// This node's devices, one rank each: `cpu:4` (four CPU peers), `cuda:0,cuda:1,…`. Unset:
    /// one rank on `[train] device`. `distill train --devices` overrides it.
    pub devices: Option<String>,
    pub shard: ShardMode,
    /// Gradients are reduced in buckets of about this many MB (few large calls, not one per tensor).
    pub bucket_mb: f64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig { devices: None, shard: ShardMode::None, bucket_mb: 25.0 }
    }
}

impl ParallelConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.bucket_mb.is_finite() && self.bucket_mb > 0.0) {
            return Err(Error::Invalid(format!("[train.parallel] bucket_mb must be a positive number of MB, not {}", self.bucket_mb)));
        }
        if self.shard == ShardMode::Parameters {
            return Err(Error::Invalid(
                "[train.parallel] shard = \"parameters\" (FSDP / ZeRO-3) is planned but not in the trainer yet; `distill plan` shows what it would need. Use \"gradients\" or \"optimizer\"".into(),
            ));
        }
        if let Some(d) = &self.devices {
            crate::device::parse_devices(d).map_err(|e| Error::Invalid(format!("[train.parallel] devices: {e}")))?;
        }
        Ok(())
    }
}

/// One parameter in the flat layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub name: String,
    pub numel: usize,
    /// Offset of its first element in the flattened parameters.
    pub offset: usize,
}

/// The parameters flattened end to end (in `params_mut` order), their split into `world`
/// contiguous ranges, and the reduction buckets (runs of whole parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub slots: Vec<Slot>,
    pub total: usize,
    pub world: usize,
    /// Parameter index ranges, each about `bucket_bytes` of f32.
    pub buckets: Vec<Range<usize>>,
}

impl Layout {
    pub fn new(params: &[(String, usize)], world: usize, bucket_bytes: usize) -> Layout {
        let mut slots = Vec::with_capacity(params.len());
        let mut offset = 0;
        for (name, numel) in params {
            slots.push(Slot { name: name.clone(), numel: *numel, offset });
            offset += numel;
        }
        let mut buckets = Vec::new();
        let (mut start, mut bytes) = (0, 0usize);
        for (i, s) in slots.iter().enumerate() {
            bytes += s.numel * 4;
            if bytes >= bucket_bytes {
                buckets.push(start..i + 1);
                start = i + 1;
                bytes = 0;
            }
        }
        if start < slots.len() {
            buckets.push(start..slots.len());
        }
        Layout { slots, total: offset, world: world.max(1), buckets }
    }

    /// Rank `rank`'s range of the flattened parameters: ⌈total / world⌉ elements (the last may be
    /// shorter or empty).
    pub fn shard(&self, rank: usize) -> Range<usize> {
        let per = self.total.div_ceil(self.world);
        let a = (rank * per).min(self.total);
        a..(a + per).min(self.total)
    }

    /// The part of parameter `i` that `rank` owns, as a range within the parameter.
    pub fn owned(&self, i: usize, rank: usize) -> Option<Range<usize>> {
        let s = &self.slots[i];
        let r = self.shard(rank);
        let a = r.start.max(s.offset);
        let b = r.end.min(s.offset + s.numel);
        (a < b).then(|| a - s.offset..b - s.offset)
    }

    /// Elements of parameter range `params` (a bucket).
    pub fn len_of(&self, params: &Range<usize>) -> usize {
        self.slots[params.clone()].iter().map(|s| s.numel).sum()
    }
}

/// One rank's handle on the collective: identity at world size 1.
pub struct Comm<B: Backend> {
    pub rank: usize,
    pub world: usize,
    _b: PhantomData<B>,
}

/// Only one collective world per process at a time: burn's local server is per backend type.
static WORLD: Mutex<()> = Mutex::new(());

/// Holds the process's collective for the length of a run.
pub fn world_lock() -> std::sync::MutexGuard<'static, ()> {
    WORLD.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: Backend> Comm<B> {
    /// World size 1: every collective is the identity.
    pub fn single() -> Self {
        Comm { rank: 0, world: 1, _b: PhantomData }
    }

    /// Join the node's collective as `rank` of `world` (blocks until every rank has joined).
    pub fn join(rank: usize, world: usize, device: &B::Device) -> Result<Self> {
        if world > 1 {
            let config = CollectiveConfig::default().with_num_devices(world);
            collective::register::<B>(PeerId(rank as u32), device.clone(), config).map_err(|e| Error::Collective { rank, msg: format!("joining the collective: {e:?}") })?;
        }
        Ok(Comm { rank, world, _b: PhantomData })
    }

    /// Leave cleanly (every rank, at the end of a run).
    pub fn finish(&self) -> Result<()> {
        if self.world > 1 {
            collective::finish_collective::<B>(PeerId(self.rank as u32)).map_err(|e| Error::Collective { rank: self.rank, msg: format!("leaving the collective: {e:?}") })?;
        }
        Ok(())
    }

    /// Make every rank's pending and future collective call fail at once (a rank died).
    pub fn abort() {
        collective::reset_collective::<B>();
    }

    /// Element-wise sum over ranks; every rank gets the same tensor.
    pub fn all_reduce(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        if self.world == 1 {
            return Ok(t);
        }
        let p = t.into_primitive().tensor();
        let r = collective::all_reduce::<B>(PeerId(self.rank as u32), p, ReduceOperation::Sum)
            .map_err(|e| Error::Collective { rank: self.rank, msg: format!("all-reduce: {e:?} (another rank failed or left)") })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(r)))
    }

    /// Sum of small host values over ranks (f64 on the wire).
    pub fn sum(&self, v: &[f64], device: &B::Device) -> Result<Vec<f64>> {
        if self.world == 1 {
            return Ok(v.to_vec());
        }
        let t = Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let r = self.all_reduce(t)?;
        r.into_data().convert::<f64>().into_vec::<f64>().map_err(|e| Error::Invalid(format!("{e:?}")))
    }

    /// True on every rank when `ok` is true on every rank: a barrier that carries failure.
    pub fn agree(&self, ok: bool, device: &B::Device) -> Result<bool> {
        Ok(self.sum(&[if ok { 0.0 } else { 1.0 }], device)?[0] == 0.0)
    }
}

/// The data-parallel layer the trainer sees: who this rank is, how state is sharded, and the
/// gradient and weight exchanges.
pub struct Parallel<B: Backend> {
    pub comm: Comm<B>,
    pub mode: ShardMode,
    pub layout: Layout,
}

impl<B: Backend> Parallel<B> {
    pub fn rank(&self) -> usize {
        self.comm.rank
    }
    pub fn world(&self) -> usize {
        self.comm.world
    }

    /// Whether this rank keeps the full gradient and updates every parameter.
    pub fn replicated(&self) -> bool {
        self.mode == ShardMode::None || self.world() == 1
    }

    /// The range of parameter `i` this rank updates.
    pub fn owned(&self, i: usize) -> Option<Range<usize>> {
        if self.replicated() { Some(0..self.layout.slots[i].numel) } else { self.layout.owned(i, self.rank()) }
    }

    fn concat(&self, bucket: &Range<usize>, grads: &[Option<Tensor<B, 1>>], device: &B::Device) -> Tensor<B, 1> {
        let parts: Vec<Tensor<B, 1>> = bucket.clone().map(|i| grads[i].clone().unwrap_or_else(|| Tensor::zeros([self.layout.slots[i].numel], device))).collect();
        if parts.len() == 1 { parts.into_iter().next().expect("one") } else { Tensor::cat(parts, 0) }
    }

    /// Sum full gradients over ranks, bucket by bucket (in place).
    pub fn all_reduce_grads(&self, grads: &mut [Option<Tensor<B, 1>>], device: &B::Device) -> Result<()> {
        if self.world() == 1 {
            return Ok(());
        }
        for bucket in &self.layout.buckets {
            let flat = self.comm.all_reduce(self.concat(bucket, grads, device))?;
            let mut at = 0;
            for i in bucket.clone() {
                let n = self.layout.slots[i].numel;
                grads[i] = Some(flat.clone().slice(at..at + n));
                at += n;
            }
        }
        Ok(())
    }

    /// Reduce-scatter: sum full gradients over ranks and keep only this rank's ranges.
    /// `grads[i]` is the full local gradient (or none); the result holds owned slices.
    pub fn reduce_scatter_grads(&self, grads: Vec<Option<Tensor<B, 1>>>, device: &B::Device) -> Result<Vec<Option<Tensor<B, 1>>>> {
        let mut out: Vec<Option<Tensor<B, 1>>> = vec![None; grads.len()];
        for bucket in &self.layout.buckets {
            let flat = self.comm.all_reduce(self.concat(bucket, &grads, device))?;
            let mut at = 0;
            for i in bucket.clone() {
                if let Some(r) = self.owned(i) {
                    out[i] = Some(own_copy(flat.clone().slice(at + r.start..at + r.end)));
                }
                at += self.layout.slots[i].numel;
            }
        }
        Ok(out)
    }

    /// All-gather: every rank contributes its updated ranges (`own[i]`, the owned slice of
    /// parameter i) and receives every parameter whole, bucket by bucket.
    pub fn all_gather_params(&self, own: &[Option<Tensor<B, 1>>], device: &B::Device) -> Result<Vec<Tensor<B, 1>>> {
        let mut out = Vec::with_capacity(own.len());
        for bucket in &self.layout.buckets {
            let len = self.layout.len_of(bucket);
            let mut flat = Tensor::<B, 1>::zeros([len], device);
            let mut at = 0;
            for i in bucket.clone() {
                if let (Some(r), Some(t)) = (self.owned(i), own[i].as_ref()) {
                    flat = flat.slice_assign(at + r.start..at + r.end, t.clone());
                }
                at += self.layout.slots[i].numel;
            }
            let flat = self.comm.all_reduce(flat)?;
            let mut at = 0;
            for i in bucket.clone() {
                let n = self.layout.slots[i].numel;
                out.push(flat.clone().slice(at..at + n));
                at += n;
            }
        }
        Ok(out)
    }
}

/// A slice kept past the step must not keep its whole source buffer alive (a slice may be a
/// view): add it to fresh zeros, which is exact and allocates just its size on any backend.
pub fn own_copy<B: Backend>(t: Tensor<B, 1>) -> Tensor<B, 1> {
    Tensor::zeros([t.dims()[0]], &t.device()).add(t)
}

/// The error a multi-rank run reports: the first rank's own failure, with the others named.
pub fn rank_error_summary(errors: &[(usize, Error)]) -> Error {
    // The first error that is not a consequence of another rank's failure is the cause.
    let cause = errors.iter().find(|(_, e)| !matches!(e, Error::Collective { .. })).or_else(|| errors.first());
    match cause {
        Some((rank, e)) => {
            let others: Vec<String> = errors.iter().filter(|(r, _)| r != rank).map(|(r, _)| r.to_string()).collect();
            let tail = if others.is_empty() { String::new() } else { format!(" (ranks {} stopped with it)", others.join(", ")) };
            Error::Invalid(format!("rank {rank} failed: {e}{tail}"))
        }
        None => Error::Invalid("a rank failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_parameters_once() {
        let params: Vec<(String, usize)> = [7, 3, 11, 1, 5].iter().enumerate().map(|(i, &n)| (format!("p{i}"), n)).collect();
        for world in 1..=5 {
            let l = Layout::new(&params, world, 16);
            let mut seen = vec![0u8; l.total];
            for r in 0..world {
                for i in 0..l.slots.len() {
                    if let Some(o) = l.owned(i, r) {
                        for e in o {
                            seen[l.slots[i].offset + e] += 1;
                        }
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "world {world}: {seen:?}");
            let in_buckets: usize = l.buckets.iter().map(|b| b.len()).sum();
            assert_eq!(in_buckets, l.slots.len());
        }
    }

    #[test]
    fn buckets_are_runs_of_whole_parameters_of_about_the_size() {
        let params: Vec<(String, usize)> = (0..10).map(|i| (format!("p{i}"), 4)).collect();
        let l = Layout::new(&params, 2, 32); // 2 parameters per bucket
        assert_eq!(l.buckets, vec![0..2, 2..4, 4..6, 6..8, 8..10]);
        let l = Layout::new(&params, 2, 1 << 30);
        assert_eq!(l.buckets, vec![0..10]);
    }
}
