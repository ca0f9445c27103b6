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
    /// ZeRO-3 / FSDP: the parameters too, gathered unit by unit for the step (see `fsdp.rs`).
    Parameters,
}

impl ShardMode {
    pub const ALL: [ShardMode; 4] =
        [ShardMode::None, ShardMode::Optimizer, ShardMode::Gradients, ShardMode::Parameters];

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

/// `[train.parallel] offload`: where parameter sharding keeps the f32 master and AdamW's moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    /// On the device, with everything else.
    #[default]
    None,
    /// In host memory (ZeRO-Offload): the device keeps only its slices in the compute dtype; each
    /// gradient slice is copied to the host as it is reduce-scattered, and AdamW runs on the host.
    Cpu,
}

/// `[train.parallel]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    /// This node's devices, one rank each: `cpu:4` (four CPU peers), `cuda:0,cuda:1,…`. Unset:
    /// one rank on `[train] device`. `distill train --devices` overrides it.
    pub devices: Option<String>,
    pub shard: ShardMode,
    /// `cpu`: keep the f32 master weights and AdamW's moments in host memory and run the
    /// optimizer there (needs `shard = "parameters"`; the planner checks the host's memory).
    pub offload: Offload,
    /// Host memory of this node available to offloaded state, GB (default: this machine's RAM).
    pub host_memory_gb: Option<f64>,
    /// Under `parameters`, gather the next unit on a helper thread while the current one
    /// computes (one more gathered unit in memory). docs/benchmarks.md has what it bought.
    pub prefetch: bool,
    /// Gradients are reduced in buckets of about this many MB (few large calls, not one per tensor).
    pub bucket_mb: f64,
    /// Nodes (processes, usually machines) in the run, each with the same number of devices.
    pub nodes: usize,
    /// This node's place among them, 0-based. Node 0 runs the coordinator.
    pub node_rank: usize,
    /// `HOST:PORT` of the coordinator (burn-collective's global orchestrator) on node 0.
    pub coordinator: Option<String>,
    /// The address other nodes reach this one at (default: 127.0.0.1 when the coordinator is on
    /// loopback, else this machine's hostname).
    pub node_host: Option<String>,
    /// The port of this node's tensor data service (default: the coordinator's port + 1 + node_rank).
    pub data_port: Option<u16>,
    /// Seconds to wait for every node to join before giving up.
    pub join_timeout_s: f64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            devices: None,
            shard: ShardMode::None,
            offload: Offload::None,
            host_memory_gb: None,
            prefetch: false,
            bucket_mb: 25.0,
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            node_host: None,
            data_port: None,
            join_timeout_s: 60.0,
        }
    }
}

/// Set to try multi-node training despite tracel-ai/burn#4549 (with a burn that fixes it).
pub const MULTINODE_ENV: &str = "DISTILL_EXPERIMENTAL_MULTINODE";

/// Where this process sits among the nodes of a multi-node run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub count: usize,
    pub rank: usize,
    pub coordinator_host: String,
    pub coordinator_port: u16,
    pub host: String,
    pub data_port: u16,
    pub join_timeout: std::time::Duration,
}

fn host_port(s: &str) -> std::result::Result<(String, u16), String> {
    let (h, p) = s.rsplit_once(':').ok_or_else(|| format!("'{s}' is not HOST:PORT"))?;
    let port: u16 = p.parse().map_err(|_| format!("'{s}': '{p}' is not a port"))?;
    if h.is_empty() || port == 0 {
        return Err(format!("'{s}' is not HOST:PORT"));
    }
    Ok((h.trim_matches(|c| c == '[' || c == ']').to_string(), port))
}

impl ParallelConfig {
    /// The node layout of a multi-node run (`None` for one node).
    pub fn node_spec(&self) -> Result<Option<NodeSpec>> {
        let bad = |msg: String| Error::Config { section: "train.parallel", msg };
        if self.nodes == 0 {
            return Err(bad("nodes must be at least 1".into()));
        }
        if self.node_rank >= self.nodes {
            return Err(bad(format!(
                "node_rank {} is not below nodes = {}",
                self.node_rank, self.nodes
            )));
        }
        if self.nodes == 1 {
            return Ok(None);
        }
        if std::env::var_os(MULTINODE_ENV).is_none() {
            return Err(bad(format!(
                "nodes = {}: training across nodes is held back: burn-collective 0.21's global all-reduce reuses its transfer ids across consecutive calls (tracel-ai/burn#4549, open), so a real run hangs after its first few reductions. Use one node (all its devices); set {MULTINODE_ENV}=1 to try it anyway with a fixed burn",
                self.nodes
            )));
        }
        let c = self.coordinator.as_deref().ok_or_else(|| {
            bad(format!(
                "{} nodes need a coordinator (HOST:PORT of node 0, --coordinator)",
                self.nodes
            ))
        })?;
        let (coordinator_host, coordinator_port) =
            host_port(c).map_err(|e| bad(format!("coordinator: {e}")))?;
        let loopback = coordinator_host == "localhost"
            || coordinator_host.starts_with("127.")
            || coordinator_host == "::1";
        let host = match &self.node_host {
            Some(h) => h.clone(),
            None if loopback => "127.0.0.1".into(),
            None => std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| {
                    bad("node_host is not set and this machine has no hostname".into())
                })?,
        };
        let data_port = match self.data_port {
            Some(p) => p,
            None => {
                u16::try_from(coordinator_port as usize + 1 + self.node_rank).map_err(|_| {
                    bad("data_port: the coordinator's port leaves no room; set data_port".into())
                })?
            }
        };
        if !(self.join_timeout_s.is_finite() && self.join_timeout_s > 0.0) {
            return Err(bad(format!(
                "join_timeout_s must be a positive number of seconds, not {}",
                self.join_timeout_s
            )));
        }
        Ok(Some(NodeSpec {
            count: self.nodes,
            rank: self.node_rank,
            coordinator_host,
            coordinator_port,
            host,
            data_port,
            join_timeout: std::time::Duration::from_secs_f64(self.join_timeout_s),
        }))
    }
}

impl ParallelConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.bucket_mb.is_finite() && self.bucket_mb > 0.0) {
            return Err(Error::Config {
                section: "train.parallel",
                msg: format!("bucket_mb must be a positive number of MB, not {}", self.bucket_mb),
            });
        }
        if self.offload == Offload::Cpu && self.shard != ShardMode::Parameters {
            return Err(Error::Config {
                section: "train.parallel",
                msg: format!(
                    "offload = \"cpu\" needs shard = \"parameters\" (it is \"{}\"): the offloaded \
                     state is the parameter shards' f32 master and moments",
                    self.shard.name()
                ),
            });
        }
        if let Some(gb) = self.host_memory_gb
            && !(gb.is_finite() && gb > 0.0)
        {
            return Err(Error::Config {
                section: "train.parallel",
                msg: format!("host_memory_gb must be a positive number of GB, not {gb}"),
            });
        }
        if let Some(d) = &self.devices {
            distill_models::device::parse_devices(d).map_err(|e| Error::Config {
                section: "train.parallel",
                msg: format!("devices: {e}"),
            })?;
        }
        self.node_spec()?;
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

    /// Join the collective as global `rank` of `world` (blocks until every rank has joined, or
    /// until the node's join timeout). `local` is the number of ranks in this process.
    pub fn join(
        rank: usize,
        world: usize,
        local: usize,
        nodes: Option<&NodeSpec>,
        device: &B::Device,
    ) -> Result<Self> {
        if world == 1 {
            return Ok(Comm { rank, world, _b: PhantomData });
        }
        let mut config = CollectiveConfig::default().with_num_devices(local);
        if let Some(n) = nodes {
            config = config
                .with_num_nodes(n.count as u32)
                .with_global_address(
                    format!("ws://{}:{}", n.coordinator_host, n.coordinator_port)
                        .parse()
                        .expect("an address"),
                )
                .with_node_address(
                    format!("ws://{}:{}", n.host, n.data_port).parse().expect("an address"),
                )
                .with_data_service_port(n.data_port);
        }
        let err = |msg: String| Error::Collective { rank, msg };
        match nodes {
            None => collective::register::<B>(PeerId(rank as u32), device.clone(), config)
                .map_err(|e| err(format!("joining the collective: {e:?}")))?,
            Some(n) => {
                // burn-collective retries the coordinator forever: wait in a helper thread, with a deadline.
                let (tx, rx) = std::sync::mpsc::channel();
                let device = device.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(collective::register::<B>(PeerId(rank as u32), device, config));
                });
                match rx.recv_timeout(n.join_timeout) {
                    Ok(r) => r.map_err(|e| err(format!("joining the collective: {e:?}")))?,
                    Err(_) => {
                        return Err(err(format!(
                            "not every node joined within {:.0} s: check that the coordinator {}:{} is node 0's and reachable, that every node runs with nodes = {} and its own node_rank, and that this node is reachable at {}:{}",
                            n.join_timeout.as_secs_f64(),
                            n.coordinator_host,
                            n.coordinator_port,
                            n.count,
                            n.host,
                            n.data_port
                        )));
                    }
                }
            }
        }
        let comm = Comm { rank, world, _b: PhantomData };
        // Every rank must agree on the world: per-node rank counts and the world size each believes.
        if let Some(n) = nodes {
            let mut v = vec![0.0; n.count + 2];
            v[n.rank] = 1.0;
            v[n.count] = 1.0;
            v[n.count + 1] = world as f64;
            let s = comm.sum(&v, device)?;
            let per_node: Vec<usize> = s[..n.count].iter().map(|&x| x as usize).collect();
            if s[n.count] as usize != world
                || per_node.iter().any(|&c| c != local)
                || s[n.count + 1] != (world * world) as f64
            {
                return Err(err(format!(
                    "the nodes disagree about the world: ranks per node {per_node:?} (this node expects {local} on each of {} nodes, {world} in all); check --nodes, --node-rank (each node its own) and --devices on every node",
                    n.count
                )));
            }
        }
        Ok(comm)
    }

    /// Leave cleanly (every rank, at the end of a run; [`launch`] does it).
    fn finish(rank: usize, world: usize) -> Result<()> {
        if world > 1 {
            collective::finish_collective::<B>(PeerId(rank as u32)).map_err(|e| {
                Error::Collective { rank, msg: format!("leaving the collective: {e:?}") }
            })?;
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
            .map_err(|e| Error::Collective {
                rank: self.rank,
                msg: format!("all-reduce: {e:?} (another rank failed or left)"),
            })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(r)))
    }

    /// Sum of small host values over ranks (f64 on the wire).
    pub fn sum(&self, v: &[f64], device: &B::Device) -> Result<Vec<f64>> {
        if self.world == 1 {
            return Ok(v.to_vec());
        }
        let t = Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let r = self.all_reduce(t)?;
        r.into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .map_err(|e| Error::Readback(format!("{e:?}")))
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
        if self.replicated() {
            Some(0..self.layout.slots[i].numel)
        } else {
            self.layout.owned(i, self.rank())
        }
    }

    fn concat(
        &self,
        bucket: &Range<usize>,
        grads: &[Option<Tensor<B, 1>>],
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let parts: Vec<Tensor<B, 1>> = bucket
            .clone()
            .map(|i| {
                grads[i]
                    .clone()
                    .unwrap_or_else(|| Tensor::zeros([self.layout.slots[i].numel], device))
            })
            .collect();
        if parts.len() == 1 {
            parts.into_iter().next().expect("one")
        } else {
            Tensor::cat(parts, 0)
        }
    }

    /// Sum full gradients over ranks, bucket by bucket (in place).
    pub fn all_reduce_grads(
        &self,
        grads: &mut [Option<Tensor<B, 1>>],
        device: &B::Device,
    ) -> Result<()> {
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
    pub fn reduce_scatter_grads(
        &self,
        grads: Vec<Option<Tensor<B, 1>>>,
        device: &B::Device,
    ) -> Result<Vec<Option<Tensor<B, 1>>>> {
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
    pub fn all_gather_params(
        &self,
        own: &[Option<Tensor<B, 1>>],
        device: &B::Device,
    ) -> Result<Vec<Tensor<B, 1>>> {
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

impl<B: Backend> Parallel<B> {
    /// All-gather of the parameters `params` (a range of slots, e.g. one layer) in `dtype`: each
    /// rank contributes its owned slices of `own` (f32 masters, indexed by slot) cast to `dtype`,
    /// and every rank receives each parameter whole, flat. One all-reduce of a zero-padded buffer
    /// (x + 0 is x: the result is bit-identical to the owners' values). At world size 1 it is
    /// the cast alone.
    pub fn gather(
        &self,
        params: Range<usize>,
        own: &[Option<Tensor<B, 1>>],
        dtype: burn::tensor::DType,
        device: &B::Device,
    ) -> Result<Vec<Tensor<B, 1>>> {
        if self.world() == 1 {
            return params
                .map(|i| {
                    own[i].clone().map(|t| t.cast(dtype)).ok_or_else(|| {
                        Error::Invalid(format!(
                            "parameter {} has no master",
                            self.layout.slots[i].name
                        ))
                    })
                })
                .collect();
        }
        let len = self.layout.len_of(&params);
        let mut flat = Tensor::<B, 1>::zeros([len], device).cast(dtype);
        let mut at = 0;
        for i in params.clone() {
            if let (Some(r), Some(t)) = (self.owned(i), own[i].as_ref()) {
                flat = flat.slice_assign(at + r.start..at + r.end, t.clone().cast(dtype));
            }
            at += self.layout.slots[i].numel;
        }
        let flat = self.comm.all_reduce(flat)?;
        let mut out = Vec::with_capacity(params.len());
        let mut at = 0;
        for i in params {
            let n = self.layout.slots[i].numel;
            out.push(flat.clone().slice(at..at + n));
            at += n;
        }
        Ok(out)
    }

    /// Reduce-scatter of the full gradients `grads` of the parameters `params` (`grads[k]` is
    /// slot `params.start + k`; `None` counts as zeros): summed over ranks, each rank keeps its
    /// owned slices (f32). At world size 1 it is the identity.
    pub fn reduce_scatter(
        &self,
        params: Range<usize>,
        grads: Vec<Option<Tensor<B, 1>>>,
        device: &B::Device,
    ) -> Result<Vec<Option<Tensor<B, 1>>>> {
        if self.world() == 1 {
            return Ok(grads);
        }
        let mut full: Vec<Option<Tensor<B, 1>>> = vec![None; self.layout.slots.len()];
        for (i, g) in params.clone().zip(grads) {
            full[i] = g;
        }
        let flat = self.comm.all_reduce(self.concat(&params, &full, device))?;
        let mut out = Vec::with_capacity(params.len());
        let mut at = 0;
        for i in params {
            out.push(self.owned(i).map(|r| own_copy(flat.clone().slice(at + r.start..at + r.end))));
            at += self.layout.slots[i].numel;
        }
        Ok(out)
    }
}

/// Aborts the collective if a rank leaves without finishing (error or panic), so that no other
/// rank waits forever.
struct AbortOnDrop<B: Backend> {
    armed: bool,
    _b: PhantomData<B>,
}

impl<B: Backend> Drop for AbortOnDrop<B> {
    fn drop(&mut self) {
        if self.armed {
            Comm::<B>::abort();
        }
    }
}

fn rank_main<B: Backend, T>(
    rank: usize,
    world: usize,
    local: usize,
    nodes: Option<&NodeSpec>,
    device: B::Device,
    f: impl FnOnce(Comm<B>, B::Device) -> Result<T>,
) -> Result<T> {
    let mut guard = AbortOnDrop::<B> { armed: true, _b: PhantomData };
    let comm = Comm::<B>::join(rank, world, local, nodes, &device)?;
    let out = f(comm, device)?;
    Comm::<B>::finish(rank, world)?;
    guard.armed = false;
    Ok(out)
}

/// Run one rank per device, each on a thread of its own (rank 0 on the caller's, with `lead`;
/// the others with `rest`), joined in one collective. A rank that fails or panics aborts the
/// collective, so the others stop at their next collective call, and the error names the rank
/// that failed first. World size 1 runs `lead` alone, with no collective at all.
pub fn launch<B: Backend, T: Send>(
    devices: Vec<B::Device>,
    nodes: Option<&NodeSpec>,
    lead: impl FnOnce(Comm<B>, B::Device) -> Result<T>,
    rest: impl Fn(Comm<B>, B::Device) -> Result<T> + Sync,
) -> Result<T> {
    let local = devices.len();
    let (count, node) = nodes.map_or((1, 0), |n| (n.count, n.rank));
    let world = local * count;
    let base = node * local;
    let mut devices = devices.into_iter();
    let Some(first) = devices.next() else {
        return Err(Error::Invalid("no device to run on".into()));
    };
    if world == 1 {
        return lead(Comm::single(), first);
    }
    let _world = world_lock();
    if let Some(n) = nodes.filter(|n| n.rank == 0) {
        start_coordinator(n.coordinator_port)?;
    }
    let rest = &rest;
    std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .enumerate()
            .map(|(k, device)| {
                std::thread::Builder::new()
                    .name(format!("rank-{}", base + k + 1))
                    .spawn_scoped(s, move || {
                        rank_main::<B, T>(base + k + 1, world, local, nodes, device, rest)
                    })
                    .expect("spawning a rank thread")
            })
            .collect();
        let mut errors: Vec<(usize, Error)> = Vec::new();
        let out = rank_main::<B, T>(base, world, local, nodes, first, lead);
        for (k, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => errors.push((base + k + 1, e)),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    errors.push((base + k + 1, Error::Invalid(format!("panicked: {msg}"))));
                }
            }
        }
        match out {
            Ok(v) if errors.is_empty() => Ok(v),
            Ok(_) => Err(rank_error_summary(&errors)),
            Err(e) => {
                errors.insert(0, (base, e));
                Err(rank_error_summary(&errors))
            }
        }
    })
}

/// Start burn-collective's global orchestrator on `port` (node 0), once per process, on a thread
/// of its own. The port is checked first, so a busy port is a clear error rather than a hang.
fn start_coordinator(port: u16) -> Result<()> {
    static STARTED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if started.contains(&port) {
        return Ok(());
    }
    std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        Error::Invalid(format!("the coordinator cannot listen on port {port}: {e}"))
    })?;
    std::thread::Builder::new()
        .name("coordinator".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
            {
                Ok(rt) => rt.block_on(burn_collective::start_global_orchestrator(port)),
                Err(e) => log::error!("coordinator runtime: {e}"),
            }
        })
        .map_err(|e| Error::Invalid(format!("starting the coordinator: {e}")))?;
    started.push(port);
    Ok(())
}

/// A slice kept past the step must not keep its whole source buffer alive (a slice may be a
/// view): add it to fresh zeros, which is exact and allocates just its size on any backend.
pub fn own_copy<B: Backend>(t: Tensor<B, 1>) -> Tensor<B, 1> {
    Tensor::zeros([t.dims()[0]], &t.device()).add(t)
}

/// The error a multi-rank run reports: the first rank's own failure, with the others named.
pub fn rank_error_summary(errors: &[(usize, Error)]) -> Error {
    // The first error that is not a consequence of another rank's failure is the cause.
    let cause = errors
        .iter()
        .find(|(_, e)| !matches!(e, Error::Collective { .. }))
        .or_else(|| errors.first());
    match cause {
        Some((rank, e)) => {
            let others: Vec<String> =
                errors.iter().filter(|(r, _)| r != rank).map(|(r, _)| r.to_string()).collect();
            let tail = if others.is_empty() {
                String::new()
            } else {
                format!(" (ranks {} stopped with it)", others.join(", "))
            };
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
        let params: Vec<(String, usize)> =
            [7, 3, 11, 1, 5].iter().enumerate().map(|(i, &n)| (format!("p{i}"), n)).collect();
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
