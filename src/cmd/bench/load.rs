//! `distill bench load`: host memory while each rank loads a Hugging Face checkpoint — whole
//! (`none`, every rank the full model) or only its slices (`parameters`, FSDP).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use distill_models::ModelConfig;
use distill_models::checkpoint::Checkpoint;
use distill_models::device::{Cpu, CpuDevice};
use distill_models::weights::CheckpointSource;
use distill_student::train::fsdp::{Fsdp, FsdpOptions};
use distill_student::train::parallel::{Comm, Layout, Parallel, ShardMode, launch};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// CPU peers: `cpu:4`.
    #[arg(long, default_value = "cpu:4")]
    devices: String,
    /// `none` (every rank loads the whole model) or `parameters` (each rank its slices).
    #[arg(long, default_value = "parameters", value_parser = ["none", "parameters"])]
    shard: String,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A line of /proc/self/status (`VmRSS:`, `RssAnon:`, `RssFile:`), MB.
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let kinds = distill_models::device::parse_devices(&a.devices)?;
    anyhow::ensure!(
        kinds.iter().all(|k| *k == distill_models::device::DeviceKind::Cpu),
        "bench load measures host memory on CPU peers"
    );
    let world = kinds.len();
    let config = ModelConfig::from_file(&a.model.join("config.json"))?;
    let specs = distill_models::spec::param_specs(&config);
    let sizes: Vec<(String, usize)> =
        specs.iter().map(|s| (s.name.clone(), s.shape.iter().product())).collect();
    let f32_mb = sizes.iter().map(|(_, n)| n).sum::<usize>() as f64 * 4.0 / 1048576.0;
    let baseline = rss_mb();
    let anon0 = status_mb("RssAnon:");
    // Anonymous and file-backed resident memory with every rank's model loaded (rank 0 reads
    // it between two barriers, while every rank still holds what it loaded).
    let loaded = std::sync::Mutex::new((0.0, 0.0));
    let t0 = Instant::now();
    let sharded = a.shard == "parameters";
    let rank = |comm: Comm<Cpu>, device: CpuDevice| -> distill_student::Result<f64> {
        let layout = Layout::new(&sizes, comm.world, 25_000_000);
        let par = Parallel { comm, mode: ShardMode::Parameters, layout };
        if sharded {
            let ckpt = Checkpoint::open(&a.model)?;
            let opts = FsdpOptions {
                recompute: true,
                prefetch: false,
                offload: false,
                compute: burn::tensor::DType::F32,
            };
            let mut src = CheckpointSource::new(&ckpt);
            let f = Fsdp::<Cpu>::load(&config, &mut src, &par, &device, opts)?;
            // Hold the shards until every rank has loaded.
            par.comm.agree(true, &device)?;
            if par.rank() == 0 {
                *loaded.lock().unwrap() = (status_mb("RssAnon:"), status_mb("RssFile:"));
            }
            par.comm.agree(true, &device)?;
            drop(f);
        } else {
            let m = distill_models::hf::load_model::<Cpu>(&a.model, &device)?;
            par.comm.agree(true, &device)?;
            if par.rank() == 0 {
                *loaded.lock().unwrap() = (status_mb("RssAnon:"), status_mb("RssFile:"));
            }
            par.comm.agree(true, &device)?;
            drop(m);
        }
        Ok(0.0)
    };
    launch::<Cpu, f64>(vec![CpuDevice::default(); world], None, rank, rank)?;
    let secs = t0.elapsed().as_secs_f64();
    let peak = super::peak_rss_mb();
    let per_rank = (peak - baseline) / world as f64;
    let (anon, file) = *loaded.lock().unwrap();
    let anon_per_rank = (anon - anon0) / world as f64;
    let r = json!({
        "model": a.model.display().to_string(), "devices": a.devices, "shard": a.shard,
        "f32_model_mb": f32_mb, "baseline_rss_mb": baseline, "peak_rss_mb": peak,
        "per_rank_above_baseline_mb": per_rank, "per_rank_fraction_of_f32_model": per_rank / f32_mb,
        "loaded_anon_per_rank_mb": anon_per_rank, "loaded_file_mapped_mb": file,
        "seconds": secs, "machine": super::machine(),
    });
    println!(
        "{} on {}: peak {:.0} MB, baseline {:.0} MB: {:.0} MB per rank above it = {:.2} of the {:.0} MB f32 model ({:.1} s); loaded: {:.0} MB anonymous per rank ({:.2} of the model), {:.0} MB of mapped checkpoint pages (shared)",
        a.shard,
        a.devices,
        peak,
        baseline,
        per_rank,
        per_rank / f32_mb,
        f32_mb,
        secs,
        anon_per_rank,
        anon_per_rank / f32_mb,
        file
    );
    if let Some(p) = &a.json {
        super::append_json_line(p, &r)?;
    }
    Ok(ExitCode::SUCCESS)
}
