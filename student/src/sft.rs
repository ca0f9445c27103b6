//! SFT and offline logit distillation as a [`BatchSource`]: the corpus's traces → examples →
//! packed rows, walked in a seeded shuffled order per epoch; cross-entropy on the assistant's
//! tokens, plus `kd_weight` × KL to the teacher's top-k where the corpus carries it. The held-out
//! figure is the cross-entropy on the eval split (`eval_loss`).

use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;

use crate::error::Result;
use crate::train::checkpoint::RunState;
use crate::train::data::{self, DataReport, Example, check_template_tokens, pad_id};
use crate::train::pack::{self, Batch};
use crate::train::run::train as train_loop;
use crate::train::{BatchSource, Observer, StepBatch, StudentView, Summary, TrainConfig};
use distill_models::tokenizer::TextTokenizer;

/// A corpus loaded for training: its examples, packed rows and held-out split (loaded once, shared
/// by every rank).
pub struct SftData {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    /// Rows of example indices (several per row when packing).
    pub rows: Vec<Vec<usize>>,
    pub eval_rows: Vec<Vec<usize>>,
    pub pad: u32,
    pub report: DataReport,
}

impl SftData {
    /// `[train.data]` read with the student's tokenizer.
    pub fn load(cfg: &TrainConfig, tok: &TextTokenizer) -> Result<SftData> {
        let (mut train, mut eval, report) = data::load(&cfg.data, tok)?;
        if cfg.kd_weight == 0.0 {
            // No logit distillation: do not carry the teacher's top-k through the batches.
            train.iter_mut().chain(eval.iter_mut()).for_each(|e| e.kd = None);
        }
        let seq = cfg.data.max_seq_len;
        let rows: Vec<Vec<usize>> = if cfg.data.packing {
            pack::pack_bfd(&train.iter().map(|e| e.ids.len()).collect::<Vec<_>>(), seq)
        } else {
            (0..train.len()).map(|i| vec![i]).collect()
        };
        let eval_rows = pack::pack_bfd(&eval.iter().map(|e| e.ids.len()).collect::<Vec<_>>(), seq);
        Ok(SftData { train, eval, rows, eval_rows, pad: pad_id(tok), report })
    }

    /// Optimizer steps for `cfg`: `max_steps`, else `epochs` passes over the rows.
    pub fn total_steps(&self, cfg: &TrainConfig) -> u64 {
        let global_rows = cfg.micro_batch * cfg.grad_accum;
        let steps_per_epoch = self.rows.len().div_ceil(global_rows) as u64;
        cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs).max(1)
    }
}

/// The SFT source of one rank.
pub struct SftSource<'a> {
    cfg: &'a TrainConfig,
    data: Arc<SftData>,
    total: u64,
    /// This epoch's shuffled row order.
    order: Vec<usize>,
}

impl<'a> SftSource<'a> {
    pub fn new(cfg: &'a TrainConfig, data: Arc<SftData>, total: u64) -> Self {
        SftSource { cfg, data, total, order: vec![] }
    }

    /// The next global batch of rows, as [`next_global_batch`] builds it, and the epoch reached.
    pub fn next_batch(&mut self, state: &mut RunState) -> (Vec<Batch>, f64) {
        let d = &self.data;
        let micro = next_global_batch(self.cfg, state, &mut self.order, &d.rows, &d.train, d.pad);
        let epoch = state.epoch as f64 + state.epoch_row as f64 / d.rows.len().max(1) as f64;
        (micro, epoch)
    }

    /// Start walking from `state`'s epoch.
    pub fn seek(&mut self, state: &RunState) {
        self.order = pack::shuffled(self.data.rows.len(), self.cfg.data.seed, state.epoch);
    }

    pub fn data(&self) -> &SftData {
        &self.data
    }
}

impl<B: AutodiffBackend> BatchSource<B> for SftSource<'_> {
    fn total_steps(&self) -> u64 {
        self.total
    }

    fn report(&self) -> &DataReport {
        &self.data.report
    }

    fn eval_key(&self) -> &'static str {
        "eval_loss"
    }

    fn start(&mut self, state: &RunState, _: &StudentView<'_, B>) -> Result<()> {
        self.seek(state);
        Ok(())
    }

    fn next(&mut self, state: &mut RunState, _: &StudentView<'_, B>) -> Result<StepBatch> {
        let (micro, epoch) = self.next_batch(state);
        Ok(StepBatch {
            micro,
            kd_weight: self.cfg.kd_weight,
            objective: None,
            epoch,
            figures: Default::default(),
        })
    }

    fn eval(&mut self, student: &StudentView<'_, B>) -> Result<Option<f64>> {
        let d = &self.data;
        if d.eval_rows.is_empty() {
            return Ok(None);
        }
        // Eval rows are split over the ranks, the sums reduced.
        let seq = self.cfg.data.max_seq_len;
        let chunks: Vec<Batch> = d
            .eval_rows
            .chunks(self.cfg.micro_batch.max(1))
            .map(|chunk| pack::build(&d.eval, chunk, seq, d.pad))
            .collect();
        student.held_out_ce(&chunks)
    }
}

/// Train per the config on its corpus, one rank per device in `devices` (data parallel when
/// there are several). With `resume`, continue from the newest complete checkpoint.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    recipe: serde_json::Value,
    devices: Vec<B::Device>,
    resume: bool,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    cfg.validate()?;
    let tok = TextTokenizer::from_dir(&cfg.model)?;
    check_template_tokens(&tok)?;
    let data = Arc::new(SftData::load(cfg, &tok)?);
    let total = data.total_steps(cfg);
    train_loop::<B>(cfg, recipe, devices, resume, obs, &|_, _| {
        Ok(Box::new(SftSource::new(cfg, data.clone(), total)))
    })
}

/// The next global batch of SFT rows as `grad_accum` micro-batches, walking the epoch's shuffled
/// `order` (reshuffled at each new epoch) from `state`'s position.
pub fn next_global_batch(
    cfg: &TrainConfig,
    state: &mut RunState,
    order: &mut Vec<usize>,
    rows: &[Vec<usize>],
    examples: &[Example],
    pad: u32,
) -> Vec<Batch> {
    let seq = cfg.data.max_seq_len;
    let mut micro = Vec::with_capacity(cfg.grad_accum.min(1024));
    for _ in 0..cfg.grad_accum {
        let mut chosen = Vec::with_capacity(cfg.micro_batch.min(1024));
        while chosen.len() < cfg.micro_batch {
            if state.epoch_row as usize >= order.len() {
                state.epoch += 1;
                state.epoch_row = 0;
                *order = pack::shuffled(rows.len(), cfg.data.seed, state.epoch);
            }
            chosen.push(rows[order[state.epoch_row as usize]].clone());
            state.epoch_row += 1;
        }
        let len = if cfg.data.packing {
            seq
        } else {
            chosen.iter().map(|r| examples[r[0]].ids.len()).max().unwrap_or(1)
        };
        micro.push(pack::build(examples, &chosen, len, pad));
    }
    micro
}
