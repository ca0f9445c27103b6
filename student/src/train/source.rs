//! Where a step's batches come from. The loop (`train/run.rs`) is one for every objective; an
//! objective is a [`BatchSource`]: the batches of each step and the loss to take on them, and its
//! held-out figure. SFT and offline KD read packed corpus rows (`sft.rs`); on-policy
//! distillation samples, scores and batches (`onpolicy/`).
//!
//! A source sees the student through a [`StudentView`]: the current weights as an inference model
//! (to sample from), the held-out cross-entropy, and the collectives a source needs to split its
//! own work over the ranks (sums, and an all-gather of bytes).

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use serde_json::{Map, Value};

use super::checkpoint::RunState;
use super::data::DataReport;
use super::fsdp::Fsdp;
use super::loss::losses;
use super::objective::Objective;
use super::pack::Batch;
use super::parallel::Parallel;
use crate::error::{Error, Result};
use distill_models::ModelConfig;
use distill_models::model::CausalLm;
use distill_models::rope::Rope;
use distill_models::weights::MapSource;

/// One step's training data.
pub struct StepBatch {
    /// The micro-batches of the global batch. Every rank holds the same list and computes
    /// micro-batch i when i mod world is its rank.
    pub micro: Vec<Batch>,
    /// SFT's weight on the teacher's top-k (0: cross-entropy only).
    pub kd_weight: f64,
    /// `None`: SFT's loss; else an on-policy divergence or the RL policy loss.
    pub objective: Option<Objective>,
    /// Passes over the source's data so far (fractional), for the metrics line.
    pub epoch: f64,
    /// The source's own figures, added to the step's metrics line.
    pub figures: Map<String, Value>,
}

/// An objective's data, for the one training loop.
pub trait BatchSource<B: AutodiffBackend> {
    /// Optimizer steps in the run.
    fn total_steps(&self) -> u64;
    /// What was read (corpora, checksums, counts), for the summary and the export's provenance.
    fn report(&self) -> &DataReport;
    /// The key of the held-out figure in metrics.jsonl.
    fn eval_key(&self) -> &'static str;
    /// Called once, with the state the run starts from (fresh or resumed), before any batch.
    fn start(&mut self, state: &RunState, student: &StudentView<'_, B>) -> Result<()>;
    /// The batch of step `state.step + 1`; moves the state's data position on.
    fn next(&mut self, state: &mut RunState, student: &StudentView<'_, B>) -> Result<StepBatch>;
    /// The held-out figure of the current weights (every rank calls it, with the same result).
    fn eval(&mut self, student: &StudentView<'_, B>) -> Result<Option<f64>>;
}

/// The student as a rank holds it: the whole model, or its shards under `parameters`.
pub(crate) enum Student<B: AutodiffBackend> {
    Whole(Box<CausalLm<B>>),
    Sharded(Box<Fsdp<B::InnerBackend>>),
}

/// What a source may ask of the student and of the other ranks.
pub struct StudentView<'a, B: AutodiffBackend> {
    pub(crate) student: &'a Student<B>,
    pub(crate) par: &'a Parallel<B::InnerBackend>,
    pub device: &'a B::Device,
    pub config: &'a ModelConfig,
}

impl<B: AutodiffBackend> StudentView<'_, B> {
    pub fn rank(&self) -> usize {
        self.par.rank()
    }

    pub fn world(&self) -> usize {
        self.par.world()
    }

    /// The current weights as an inference model on this rank's device. Under `parameters`
    /// sharding every rank gathers the whole model (one unit at a time) and builds it.
    pub fn inference_model(&self) -> Result<CausalLm<B::InnerBackend>> {
        match self.student {
            Student::Whole(model) => Ok(model.valid()),
            Student::Sharded(f) => {
                let mut src = MapSource {
                    tensors: f
                        .whole_on_every_rank(self.par, self.device)?
                        .into_iter()
                        .map(|(name, shape, data)| (name, (shape, data)))
                        .collect(),
                    origin: "the gathered student".into(),
                };
                Ok(CausalLm::load(self.config, &mut src, self.device)?)
            }
        }
    }

    /// Mean cross-entropy over the loss tokens of `chunks` (every rank passes the same list;
    /// chunk c runs on rank c mod world), or `None` when they hold no loss token.
    pub fn held_out_ce(&self, chunks: &[Batch]) -> Result<Option<f64>> {
        if chunks.is_empty() {
            return Ok(None);
        }
        let (rank, world) = (self.rank(), self.world());
        let rope = Rope::<B::InnerBackend>::new(self.config, self.device);
        let (mut sum, mut n) = (0.0, 0usize);
        match self.student {
            Student::Whole(model) => {
                let inner = model.valid();
                for (c, b) in chunks.iter().enumerate() {
                    if c % world != rank {
                        continue;
                    }
                    let l = losses(&inner, &rope, b, self.device);
                    sum += l.ce.into_scalar().elem::<f64>();
                    n += l.tokens;
                }
            }
            // Every rank joins every gather: each runs its own chunks.
            Student::Sharded(f) => {
                (sum, n) = super::fsdp::eval_sums(f, &rope, chunks, self.device, self.par)?;
            }
        }
        let r = self.sum(&[sum, n as f64])?;
        Ok((r[1] > 0.0).then(|| r[0] / r[1]))
    }

    /// Element-wise sum over the ranks.
    pub fn sum(&self, v: &[f64]) -> Result<Vec<f64>> {
        self.par.comm.sum(v, self.device)
    }

    /// Every rank's `mine`, in rank order, on every rank. The bytes travel two to an f32 (exact
    /// below 2^24) in a sum where each rank fills only its own range, which makes the sum a
    /// gather.
    pub fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (rank, world) = (self.rank(), self.world());
        if world == 1 {
            return Ok(vec![mine.to_vec()]);
        }
        let mut lens = vec![0.0; world];
        lens[rank] = mine.len() as f64;
        let lens: Vec<usize> = self.sum(&lens)?.into_iter().map(|l| l as usize).collect();
        let slots: Vec<usize> = lens.iter().map(|l| l.div_ceil(2)).collect();
        let total: usize = slots.iter().sum();
        let at: usize = slots[..rank].iter().sum();
        let mut v = vec![0f32; total.max(1)];
        for (i, pair) in mine.chunks(2).enumerate() {
            v[at + i] = (pair[0] as u32 | (*pair.get(1).unwrap_or(&0) as u32) << 8) as f32;
        }
        let n = v.len();
        let t = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(v, [n]), self.device);
        let got: Vec<f32> = self
            .par
            .comm
            .all_reduce(t)?
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::Readback(format!("{e:?}")))?;
        let mut out = Vec::with_capacity(world);
        let mut from = 0;
        for (len, slot) in lens.iter().zip(&slots) {
            let mut b = Vec::with_capacity(slot * 2);
            for &x in &got[from..from + slot] {
                let x = x as u32;
                b.push((x & 0xff) as u8);
                b.push((x >> 8) as u8);
            }
            b.truncate(*len);
            out.push(b);
            from += slot;
        }
        Ok(out)
    }
}
