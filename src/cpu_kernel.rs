//! The gemm kernel the CPU backend runs, chosen once at start (`--gemm-kernel`,
//! `DISTILL_GEMM_KERNEL`, the calibration cache, or the CPU table; distill_models::cpu).

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use distill_models::cpu::{self, CalibrationCache, CpuIdentity, KernelChoice, KernelRequest};

static CHOICE: OnceLock<Mutex<Option<KernelChoice>>> = OnceLock::new();
static IDENTITY: OnceLock<CpuIdentity> = OnceLock::new();

/// The environment variable `--gemm-kernel` falls back to.
pub const ENV: &str = "DISTILL_GEMM_KERNEL";

/// Where calibrations are cached: `{cache}/gemm-kernel.json`.
pub fn cache_path() -> PathBuf {
    crate::models::cache_dir().join("gemm-kernel.json")
}

/// This machine's CPU (detected once).
pub fn identity() -> &'static CpuIdentity {
    IDENTITY.get_or_init(CpuIdentity::detect)
}

/// Decides and applies the kernel: the flag, else `DISTILL_GEMM_KERNEL`, else auto.
pub fn init(flag: Option<&str>) -> anyhow::Result<KernelChoice> {
    let request: KernelRequest = match flag.map(str::to_string).or_else(|| std::env::var(ENV).ok())
    {
        Some(s) => s.parse().map_err(|e: String| anyhow::anyhow!("--gemm-kernel / {ENV}: {e}"))?,
        None => KernelRequest::Auto,
    };
    let id = identity();
    let threads = rayon::current_num_threads();
    let path = cache_path();
    let mut cache = match request {
        KernelRequest::Force(_) => CalibrationCache::default(),
        _ => CalibrationCache::read(&path).unwrap_or_else(|e| {
            eprintln!("warning: {e}; choosing the gemm kernel without it");
            CalibrationCache::default()
        }),
    };
    if request == KernelRequest::Calibrate && cache.get(id, threads).is_none() {
        eprintln!("calibrating the gemm kernel on this CPU ({})…", id.describe());
        let c = cpu::calibrate(id, &cpu::CALIBRATION_SHAPES, 3);
        eprintln!("gemm kernel: {} ({})", c.chosen, c.summary());
        cache.insert(c);
        if let Err(e) = cache.write(&path) {
            eprintln!("warning: {e}");
        }
    }
    let choice = cpu::decide(id, request, cache.get(id, threads))?;
    cpu::apply(choice.kernel);
    set(choice.clone());
    Ok(choice)
}

/// Records a choice made elsewhere (`distill bench gemm` switches kernels while it measures).
pub fn set(choice: KernelChoice) {
    *CHOICE.get_or_init(|| Mutex::new(None)).lock().unwrap_or_else(|e| e.into_inner()) =
        Some(choice);
}

/// The kernel in use, for logs and benchmark outputs.
pub fn current() -> Option<KernelChoice> {
    CHOICE.get().and_then(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// `"avx2 (by CPU: Zen 4: …)"`, or "not chosen".
pub fn describe() -> String {
    current().map_or_else(|| "not chosen".to_string(), |c| c.to_string())
}

/// The CPU and kernel as a JSON object, for every benchmark's output.
pub fn json() -> serde_json::Value {
    let id = identity();
    serde_json::json!({
        "vendor": id.vendor, "family": format!("0x{:x}", id.family), "model": format!("0x{:x}", id.model),
        "stepping": id.stepping, "brand": id.brand, "microarchitecture": id.microarchitecture(),
        "avx512_width": id.avx512_width(), "flags": id.flags, "logical_cpus": id.logical_cpus,
        "rayon_threads": rayon::current_num_threads(),
        "gemm_kernel": current().map(|c| c.kernel.name()), "gemm_kernel_source": current().map(|c| c.source),
    })
}
