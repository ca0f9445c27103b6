//! What a run reports: the per-step metrics line, the observer the caller hears through, the
//! run's summary, and the machine figures (peak RSS, RAM, a nominal CPU peak) they use.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::data::DataReport;
use crate::error::{IoContext, Result};

/// What the caller hears about while the run goes.
pub trait Observer {
    fn started(&mut self, _total_steps: u64, _start_step: u64, _data: &DataReport) {}
    fn step(&mut self, _m: &StepMetrics) {}
    fn eval(&mut self, _step: u64, _loss: f64) {}
    fn saved(&mut self, _dir: &Path) {}
}

#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub loss: f64,
    pub ce: f64,
    pub kd: Option<f64>,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Loss tokens in the step.
    pub tokens: u64,
    /// All (non-padding) tokens per second.
    pub tokens_per_s: f64,
    pub mfu: f64,
    pub elapsed_s: f64,
    /// Wall-clock seconds of this step (for an on-policy step: sampling and scoring included).
    pub step_s: f64,
    /// Ranks (devices) in the run.
    pub world: usize,
    /// Seconds of the step spent in collectives (gradient reduction, weight gathering).
    pub comm_s: f64,
    /// Under offload: seconds spent moving slices between device and host and in the host's
    /// AdamW.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload_s: Option<f64>,
    /// Mixture of Experts: how evenly the step's tokens spread over the experts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moe_load: Option<MoeLoad>,
    /// The process's peak resident memory so far (Linux VmHWM), MB: host memory on CPU, the
    /// host's share under CUDA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_peak_rss_mb: Option<f64>,
}

/// The process's peak resident memory so far (`VmHWM` in /proc/self/status), MB; None off Linux.
pub fn host_peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Expert load balance of one step, over every sparse layer (all ranks' tokens).
#[derive(Debug, Clone, Serialize)]
pub struct MoeLoad {
    /// The busiest expert's tokens over the mean, worst layer (1 = perfectly even).
    pub max_over_mean: f64,
    /// The coefficient of variation of tokens per expert, averaged over layers.
    pub cv: f64,
    /// Experts that got no token, summed over layers.
    pub idle_experts: usize,
}

impl MoeLoad {
    /// From the tokens per expert of each sparse layer.
    pub fn of(layers: &[Vec<f64>]) -> MoeLoad {
        let (mut max_over_mean, mut cv, mut idle) = (0.0f64, 0.0, 0);
        for l in layers {
            let n = l.len().max(1) as f64;
            let mean = l.iter().sum::<f64>() / n;
            if mean > 0.0 {
                let max = l.iter().copied().fold(0.0, f64::max);
                max_over_mean = max_over_mean.max(max / mean);
                let var = l.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                cv += var.sqrt() / mean;
            }
            idle += l.iter().filter(|&&x| x == 0.0).count();
        }
        MoeLoad { max_over_mean, cv: cv / layers.len().max(1) as f64, idle_experts: idle }
    }
}

pub struct Summary {
    pub steps: u64,
    pub final_eval_loss: Option<f64>,
    pub first_eval_loss: Option<f64>,
    pub export_dir: PathBuf,
    pub data: DataReport,
}

/// metrics.jsonl reopened with exactly its lines up to `step`, so a resumed run's file equals
/// an uninterrupted one's.
pub fn reopen_metrics(path: &Path, step: u64) -> Result<std::fs::File> {
    let kept: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(str::to_string)
        .collect();
    let mut f = std::fs::File::create(path).at(path)?;
    for l in &kept {
        writeln!(f, "{l}").at(path)?;
    }
    Ok(f)
}

/// This machine's RAM, GB.
pub fn machine_memory_gb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::INFINITY, |kb| kb * 1024.0 / 1e9)
}

/// A nominal f32 peak for this CPU with the gemm kernel in use: threads × the clock /proc/cpuinfo
/// reports × the kernel's FLOP/cycle (64 for AVX-512 on 512-bit datapaths, 32 for AVX2 and for
/// AVX-512 on 256-bit units; `distill_models::cpu::nominal_peak_gflops`). Boost clocks run above
/// the reported clock, so MFU against it can exceed what the hardware's true peak would give.
pub fn cpu_peak_tflops() -> f64 {
    use distill_models::cpu;
    let id = cpu::CpuIdentity::detect();
    cpu::nominal_peak_gflops(&id, rayon::current_num_threads()) / 1e3
}
