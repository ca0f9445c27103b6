//! `distill bench gemm`: f32 matrix products at the model's shapes on every gemm path this build
//! has — burn-flex's gemm with its AVX-512 and AVX2 kernels, burn-ndarray's matrixmultiply — and,
//! with `--python`, PyTorch (oneDNN/MKL) and NumPy (OpenBLAS), in GFLOP/s beside an estimate of
//! the machine's peak. `--save` caches the result as this CPU's calibration (what
//! `--gemm-kernel auto` then uses).

use std::process::{Command, ExitCode};

use distill_models::cpu;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// Products MxKxN ([m, k] × [k, n]). Default: a SmolLM2-135M training step at 2,048 tokens —
    /// q/o, k/v, gate/up, down projections; three weight-gradient products; the LM head.
    #[arg(
        long,
        default_value = "2048x576x576,2048x576x192,2048x576x1536,2048x1536x576,576x2048x1536,1536x2048x576,576x2048x576,2048x576x49152"
    )]
    shapes: String,
    /// Repetitions per product (the best is kept, after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// A Python with torch and numpy: adds their figures on the same shapes and threads.
    #[arg(long)]
    python: Option<String>,
    /// Skip burn-ndarray's matrixmultiply.
    #[arg(long)]
    no_ndarray: bool,
    /// Save the flex kernels' timings as this CPU's calibration ({cache}/gemm-kernel.json).
    #[arg(long)]
    save: bool,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn parse(s: &str) -> anyhow::Result<Vec<(usize, usize, usize)>> {
    s.split(',')
        .map(|p| {
            let v: Vec<usize> = p
                .trim()
                .split('x')
                .map(|x| x.parse())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("--shapes: {p:?} is not MxKxN: {e}"))?;
            anyhow::ensure!(
                v.len() == 3 && v.iter().all(|&x| x > 0),
                "--shapes: {p:?} is not MxKxN"
            );
            Ok((v[0], v[1], v[2]))
        })
        .collect()
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let shapes = parse(&a.shapes)?;
    let id = crate::cpu_kernel::identity().clone();
    let threads = rayon::current_num_threads();
    let before = crate::cpu_kernel::current();
    println!("machine: {}", super::machine());
    let clock = cpu::reported_mhz();
    let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
    let mut kernels = Vec::new();
    for kernel in cpu::available(&id) {
        cpu::apply(kernel);
        let timings: Vec<_> = shapes
            .iter()
            .map(|&(m, k, n)| {
                let t = cpu::time_matmul(m, k, n, a.reps);
                eprintln!("flex {kernel} {m}x{k}x{n}: {:.1} GFLOP/s", t.gflops);
                t
            })
            .collect();
        #[cfg(target_arch = "x86_64")]
        anyhow::ensure!(
            cpu::last_taken() == Some(kernel),
            "gemm ran {:?}, not {kernel}",
            cpu::last_taken()
        );
        columns.push((format!("flex {kernel}"), timings.iter().map(|t| t.gflops).collect()));
        let total_seconds = timings.iter().map(|t| t.seconds).sum();
        kernels.push(cpu::KernelTimings { kernel, shapes: timings, total_seconds });
    }
    if !a.no_ndarray {
        let device = distill_models::device::NdArrayDevice::default();
        let g = shapes
            .iter()
            .map(|&(m, k, n)| {
                cpu::time_matmul_on::<distill_models::device::NdArray>(&device, m, k, n, a.reps)
                    .gflops
            })
            .collect();
        columns.push(("ndarray (matrixmultiply)".into(), g));
    }
    let mut python = Value::Null;
    if let Some(py) = &a.python {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("scripts/bench/gemm_bench.py");
        let out = Command::new(py)
            .arg(&script)
            .arg(
                shapes.iter().map(|(m, k, n)| format!("{m}x{k}x{n}")).collect::<Vec<_>>().join(","),
            )
            .arg(a.reps.to_string())
            .arg(threads.to_string())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{py} {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        python = super::model::last_json_line(&out.stdout);
        for (lib, label) in [("torch", "PyTorch"), ("numpy", "NumPy (OpenBLAS)")] {
            let g = shapes
                .iter()
                .map(|(m, k, n)| python[lib][format!("{m}x{k}x{n}")].as_f64().unwrap_or(f64::NAN))
                .collect();
            columns.push((label.into(), g));
        }
    }

    // The table.
    print!("| product m×k×n | GFLOP |");
    for (c, _) in &columns {
        print!(" {c} |");
    }
    println!();
    println!("|---|---|{}", "---|".repeat(columns.len()));
    let flops: Vec<f64> = shapes.iter().map(|&(m, k, n)| 2.0 * (m * k * n) as f64 / 1e9).collect();
    for (i, (m, k, n)) in shapes.iter().enumerate() {
        print!("| {m}×{k}×{n} | {:.2} |", flops[i]);
        for (_, g) in &columns {
            print!(" {:.0} |", g[i]);
        }
        println!();
    }
    // Time-weighted: total FLOP over total time, as a step would see it.
    print!("| all (total FLOP / total time) | {:.1} |", flops.iter().sum::<f64>());
    for (_, g) in &columns {
        let secs: f64 = flops.iter().zip(g).map(|(f, g)| f / g).sum();
        print!(" **{:.0}** |", flops.iter().sum::<f64>() / secs);
    }
    println!();
    let width = id.avx512_width();
    let peaks: Vec<Value> = cpu::available(&id)
        .into_iter()
        .map(|k| {
            let p = clock.map(|c| c * 1e-3 * threads as f64 * cpu::flop_per_cycle(k, width));
            json!({"kernel": k.name(), "flop_per_cycle": cpu::flop_per_cycle(k, width), "peak_gflops": p})
        })
        .collect();
    if let Some(c) = clock {
        println!(
            "peak estimate at {c:.0} MHz × {threads} threads: {} (2 FMA pipes; AVX-512 datapath {:?}; turbo and VM clocks make it approximate)",
            peaks
                .iter()
                .map(|p| format!(
                    "{} {:.0} GFLOP/s",
                    p["kernel"].as_str().unwrap_or("?"),
                    p["peak_gflops"].as_f64().unwrap_or(f64::NAN)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            width
        );
    }

    // Leave gemm as the process found it, or on the new calibration.
    let (table, _) = cpu::table_choice(&id);
    let calibration = cpu::Calibration::from_timings(&id, threads, kernels);
    let chosen = calibration.chosen;
    println!(
        "fastest flex kernel here: {chosen} (the CPU table says {table}; a kernel replaces the table's when {:.0}% faster)",
        100.0 * cpu::CALIBRATION_MARGIN
    );
    if a.save {
        let path = crate::cpu_kernel::cache_path();
        let mut cache = cpu::CalibrationCache::read(&path).unwrap_or_default();
        cache.insert(calibration.clone());
        cache.write(&path)?;
        println!("saved as this CPU's calibration in {}", path.display());
        cpu::apply(chosen);
        crate::cpu_kernel::set(cpu::KernelChoice {
            kernel: chosen,
            source: cpu::ChoiceSource::Calibration,
            reason: calibration.summary(),
        });
    } else if let Some(b) = before {
        cpu::apply(b.kernel);
    }
    if let Some(p) = &a.json {
        let r = json!({
            "machine": super::machine(), "cpu": crate::cpu_kernel::json(), "threads": threads, "mhz": clock,
            "shapes": shapes.iter().map(|(m, k, n)| format!("{m}x{k}x{n}")).collect::<Vec<_>>(),
            "gflops": columns.iter().map(|(c, g)| (c.clone(), json!(g))).collect::<serde_json::Map<_, _>>(),
            "peaks": peaks, "calibration": calibration, "python": python,
        });
        super::append_json_line(p, &r)?;
    }
    Ok(ExitCode::SUCCESS)
}
