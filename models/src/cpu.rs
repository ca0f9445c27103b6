//! Which CPU this is, and which gemm kernel family the CPU backend runs on it.
//!
//! burn-flex multiplies every f32 matrix with `gemm`, whose x86 dispatch would take the AVX-512
//! kernels on any CPU that has `avx512f`. On CPUs that execute 512-bit operations on 256-bit units
//! (Zen 4; Zen 5's mobile parts) those kernels have the AVX2 kernels' peak with a 4× larger tile,
//! so distill chooses at run time (docs/backends.md, "Choosing the gemm kernel"):
//!
//! 1. an override (`--gemm-kernel` / `DISTILL_GEMM_KERNEL`), else
//! 2. a calibration measured on this machine and cached (`distill bench gemm --save`, or
//!    `--gemm-kernel calibrate`), else
//! 3. the table in [`table_choice`], from the CPU's vendor, family and model.
//!
//! The choice is applied through the patched gemm-common (vendor/gemm-common/PATCH.md) before the
//! first matmul, and can be changed later (the next gemm call re-dispatches).

use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A gemm kernel family on x86.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmKernel {
    /// 512-bit kernels (f32 tile 64×6 on zmm registers).
    Avx512,
    /// AVX2+FMA kernels (f32 tile 16×6 on ymm registers).
    Avx2,
    /// No SIMD kernel (a CPU without FMA).
    Scalar,
}

impl GemmKernel {
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Avx512 => "avx512",
            GemmKernel::Avx2 => "avx2",
            GemmKernel::Scalar => "scalar",
        }
    }
}

impl fmt::Display for GemmKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelRequest {
    /// Cached calibration for this CPU if there is one, else the table.
    Auto,
    /// Cached calibration, measuring (and caching) it first if there is none.
    Calibrate,
    /// This kernel, whatever the CPU.
    Force(GemmKernel),
}

impl std::str::FromStr for KernelRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(KernelRequest::Auto),
            "calibrate" => Ok(KernelRequest::Calibrate),
            "avx512" | "avx-512" => Ok(KernelRequest::Force(GemmKernel::Avx512)),
            "avx2" => Ok(KernelRequest::Force(GemmKernel::Avx2)),
            other => Err(format!(
                "unknown gemm kernel {other:?}: expected auto, calibrate, avx512 or avx2"
            )),
        }
    }
}

/// How wide the units that execute 512-bit vector instructions are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Avx512Width {
    /// No AVX-512.
    None,
    /// 512-bit operations run as two 256-bit halves: AVX-512's peak equals AVX2's.
    Half,
    /// 512-bit datapaths.
    Full,
    /// Has AVX-512; the width is not known from the identity (Intel: some parts have one 512-bit
    /// FMA unit, others two).
    Unknown,
}

/// The CPU's identity as CPUID reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuIdentity {
    /// `AuthenticAMD`, `GenuineIntel`, … (empty off x86).
    pub vendor: String,
    /// Display family (base + extended), e.g. 0x19 for Zen 3/4, 0x1a for Zen 5, 6 for Intel cores.
    pub family: u32,
    /// Display model (extended model included).
    pub model: u32,
    pub stepping: u32,
    /// The brand string, e.g. "AMD EPYC 9R14 96-Core Processor" (hypervisors may shorten it).
    pub brand: String,
    /// The vector features that matter for gemm, in a fixed order.
    pub flags: Vec<String>,
    /// Logical CPUs this process may use.
    pub logical_cpus: usize,
}

const FLAG_NAMES: [&str; 8] =
    ["fma", "avx2", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16"];

impl CpuIdentity {
    /// This machine's CPU.
    pub fn detect() -> Self {
        let logical_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        #[cfg(target_arch = "x86_64")]
        {
            let (vendor, family, model, stepping, brand) = x86::identity();
            let mut flags = Vec::new();
            for name in FLAG_NAMES {
                let has = match name {
                    "fma" => std::arch::is_x86_feature_detected!("fma"),
                    "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                    "f16c" => std::arch::is_x86_feature_detected!("f16c"),
                    "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
                    "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
                    "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
                    "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
                    "avx512bf16" => std::arch::is_x86_feature_detected!("avx512bf16"),
                    _ => false,
                };
                if has {
                    flags.push(name.to_string());
                }
            }
            CpuIdentity { vendor, family, model, stepping, brand, flags, logical_cpus }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuIdentity {
                vendor: String::new(),
                family: 0,
                model: 0,
                stepping: 0,
                brand: std::env::consts::ARCH.to_string(),
                flags: Vec::new(),
                logical_cpus,
            }
        }
    }

    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Zen 4 etc. by family and model; `None` when the vendor/family is not one we know.
    pub fn microarchitecture(&self) -> Option<&'static str> {
        match (self.vendor.as_str(), self.family) {
            ("AuthenticAMD", 0x17) => Some("Zen / Zen 2"),
            ("AuthenticAMD", 0x19) if self.has("avx512f") => Some("Zen 4"),
            ("AuthenticAMD", 0x19) => Some("Zen 3"),
            ("AuthenticAMD", 0x1a) if zen5_half_width(self.model) => {
                Some("Zen 5 (mobile, 256-bit datapath)")
            }
            ("AuthenticAMD", 0x1a) => Some("Zen 5"),
            ("HygonGenuine", 0x18) => Some("Hygon Dhyana (Zen)"),
            ("GenuineIntel", 6) if self.has("avx512f") => Some("Intel core with AVX-512"),
            ("GenuineIntel", 6) => Some("Intel core"),
            _ => None,
        }
    }

    /// The AVX-512 datapath width, inferred from vendor, family and model.
    pub fn avx512_width(&self) -> Avx512Width {
        if !self.has("avx512f") {
            return Avx512Width::None;
        }
        match (self.vendor.as_str(), self.family) {
            // Zen 4 (Genoa, Bergamo, Siena, Raphael, Phoenix): 512-bit ops split over 256-bit units.
            ("AuthenticAMD", 0x19) => Avx512Width::Half,
            // Zen 5: full 512-bit datapaths on server and desktop parts, 256-bit on the mobile ones
            // (Strix Point, Krackan Point, Strix Halo).
            ("AuthenticAMD", 0x1a) if zen5_half_width(self.model) => Avx512Width::Half,
            ("AuthenticAMD", 0x1a) => Avx512Width::Full,
            _ => Avx512Width::Unknown,
        }
    }

    /// One line for logs and benchmark tables.
    pub fn describe(&self) -> String {
        let arch = self.microarchitecture().map(|a| format!(", {a}")).unwrap_or_default();
        format!(
            "{} family 0x{:x} model 0x{:x} stepping {} ({}{arch}), {} logical CPUs, flags: {}",
            if self.vendor.is_empty() { "unknown vendor" } else { &self.vendor },
            self.family,
            self.model,
            self.stepping,
            if self.brand.is_empty() { "no brand string" } else { &self.brand },
            self.logical_cpus,
            if self.flags.is_empty() { "none".to_string() } else { self.flags.join(" ") },
        )
    }

    /// What a calibration is cached under: the CPU and the thread count it ran with.
    pub fn calibration_key(&self, threads: usize) -> String {
        format!(
            "{}/{:x}/{:x}/{}/{}/{}/t{threads}",
            self.vendor,
            self.family,
            self.model,
            self.stepping,
            self.brand,
            self.flags.join(",")
        )
    }
}

/// Zen 5 (family 0x1a) models whose cores have 256-bit vector datapaths: Strix Point (0x20–0x2f),
/// Krackan Point (0x60–0x6f), Strix Halo (0x70–0x7f), as AMD describes them; not measured here.
fn zen5_half_width(model: u32) -> bool {
    matches!(model, 0x20..=0x2f | 0x60..=0x7f)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::__cpuid;

    #[allow(unused_unsafe)]
    fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
        // SAFETY: CPUID exists on every x86_64 CPU; leaves above the maximum return zeros or the
        // highest leaf's data, and callers check the maximum first.
        let r = unsafe { __cpuid(leaf) };
        (r.eax, r.ebx, r.ecx, r.edx)
    }

    pub fn identity() -> (String, u32, u32, u32, String) {
        let (max_leaf, b, c, d) = cpuid(0);
        let mut vendor = Vec::with_capacity(12);
        for r in [b, d, c] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        let vendor = String::from_utf8_lossy(&vendor).trim_matches(char::from(0)).to_string();
        let (family, model, stepping) =
            if max_leaf >= 1 { super::family_model(cpuid(1).0) } else { (0, 0, 0) };
        let (max_ext, ..) = cpuid(0x8000_0000);
        let mut brand = Vec::with_capacity(48);
        if max_ext >= 0x8000_0004 {
            for leaf in 0x8000_0002..=0x8000_0004 {
                let (a, b, c, d) = cpuid(leaf);
                for r in [a, b, c, d] {
                    brand.extend_from_slice(&r.to_le_bytes());
                }
            }
        }
        let brand = String::from_utf8_lossy(&brand).trim_matches(char::from(0)).trim().to_string();
        (vendor, family, model, stepping, brand)
    }
}

/// Display family, model and stepping from CPUID leaf 1's EAX (the rule both vendors document:
/// the extended family is added when the base family is 0xf; the extended model is prepended when
/// the base family is 6 or 0xf).
pub fn family_model(eax: u32) -> (u32, u32, u32) {
    let stepping = eax & 0xf;
    let base_model = (eax >> 4) & 0xf;
    let base_family = (eax >> 8) & 0xf;
    let ext_model = (eax >> 16) & 0xf;
    let ext_family = (eax >> 20) & 0xff;
    let family = if base_family == 0xf { base_family + ext_family } else { base_family };
    let model = if base_family == 0x6 || base_family == 0xf {
        (ext_model << 4) | base_model
    } else {
        base_model
    };
    (family, model, stepping)
}

/// The kernels this CPU can run, fastest-first by gemm's own rule.
pub fn available(id: &CpuIdentity) -> Vec<GemmKernel> {
    let mut k = Vec::new();
    if id.has("avx512f") {
        k.push(GemmKernel::Avx512);
    }
    if id.has("fma") {
        k.push(GemmKernel::Avx2);
    }
    if k.is_empty() {
        k.push(GemmKernel::Scalar);
    }
    k
}

/// The choice without a measurement: AVX-512 where its datapath is (or may be) full width, AVX2
/// where 512-bit operations run on 256-bit units, and why.
pub fn table_choice(id: &CpuIdentity) -> (GemmKernel, String) {
    let arch = id.microarchitecture().unwrap_or("unrecognised CPU");
    match id.avx512_width() {
        Avx512Width::Full => (GemmKernel::Avx512, format!("{arch}: 512-bit datapaths")),
        Avx512Width::Unknown => (
            GemmKernel::Avx512,
            format!(
                "{arch}: has AVX-512, datapath width unknown (gemm's own choice; `distill bench gemm --save` measures it)"
            ),
        ),
        Avx512Width::Half if id.has("fma") => (
            GemmKernel::Avx2,
            format!("{arch}: 512-bit operations run on 256-bit units, so AVX-512's peak is AVX2's"),
        ),
        Avx512Width::Half => (GemmKernel::Avx512, format!("{arch}: no FMA for the AVX2 kernels")),
        Avx512Width::None if id.has("fma") => (GemmKernel::Avx2, format!("{arch}: no AVX-512")),
        Avx512Width::None => (GemmKernel::Scalar, format!("{arch}: neither AVX-512 nor FMA")),
    }
}

/// Where a choice came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChoiceSource {
    Override,
    Calibration,
    Table,
}

/// The kernel in use and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelChoice {
    pub kernel: GemmKernel,
    pub source: ChoiceSource,
    pub reason: String,
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            ChoiceSource::Override => "override",
            ChoiceSource::Calibration => "calibrated",
            ChoiceSource::Table => "by CPU",
        };
        write!(f, "{} ({source}: {})", self.kernel, self.reason)
    }
}

/// Errors from choosing a kernel.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("gemm kernel {kernel} is not available on this CPU ({cpu}); available: {available}")]
    Unavailable { kernel: GemmKernel, cpu: String, available: String },
    #[error("calibration cache {path}: {message}")]
    Cache { path: String, message: String },
}

/// Decides the kernel for `request` on `id` (pure: no measurement, no side effects). `cached` is a
/// calibration read from the cache for this CPU, if any.
pub fn decide(
    id: &CpuIdentity,
    request: KernelRequest,
    cached: Option<&Calibration>,
) -> Result<KernelChoice, CpuError> {
    let avail = available(id);
    match request {
        KernelRequest::Force(kernel) => {
            if !avail.contains(&kernel) {
                return Err(CpuError::Unavailable {
                    kernel,
                    cpu: id.describe(),
                    available: avail.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
                });
            }
            Ok(KernelChoice { kernel, source: ChoiceSource::Override, reason: "asked for".into() })
        }
        KernelRequest::Auto | KernelRequest::Calibrate => {
            if let Some(c) = cached.filter(|c| avail.contains(&c.chosen)) {
                return Ok(KernelChoice {
                    kernel: c.chosen,
                    source: ChoiceSource::Calibration,
                    reason: c.summary(),
                });
            }
            let (kernel, reason) = table_choice(id);
            Ok(KernelChoice { kernel, source: ChoiceSource::Table, reason })
        }
    }
}

/// Makes gemm use `kernel` from its next call on. Scalar is what gemm takes by itself on a CPU
/// without FMA; it cannot be forced on one that has FMA.
pub fn apply(kernel: GemmKernel) {
    let preference = match kernel {
        GemmKernel::Avx2 => gemm_common::x86_kernel::AVX2,
        GemmKernel::Avx512 | GemmKernel::Scalar => gemm_common::x86_kernel::AUTO,
    };
    gemm_common::x86_kernel::set_preference(preference);
}

/// The kernel family gemm's dispatch took when it last chose (None before the first f32 matmul
/// after a change).
pub fn last_taken() -> Option<GemmKernel> {
    match gemm_common::x86_kernel::last_taken() {
        gemm_common::x86_kernel::TOOK_AVX512 => Some(GemmKernel::Avx512),
        gemm_common::x86_kernel::TOOK_AVX2 => Some(GemmKernel::Avx2),
        gemm_common::x86_kernel::TOOK_SCALAR => Some(GemmKernel::Scalar),
        _ => None,
    }
}

/// The kernel gemm's dispatch takes now: the preference set by [`apply`] on this CPU.
pub fn active_kernel(id: &CpuIdentity) -> GemmKernel {
    let avail = available(id);
    if gemm_common::x86_kernel::preference() == gemm_common::x86_kernel::AVX2
        && avail.contains(&GemmKernel::Avx2)
    {
        GemmKernel::Avx2
    } else {
        avail[0]
    }
}

/// f32 FLOP per cycle per core of a kernel family on a CPU of this AVX-512 width: two FMA pipes ×
/// lanes × 2 (a Zen 4's 512-bit ops have the 256-bit peak).
pub fn flop_per_cycle(kernel: GemmKernel, width: Avx512Width) -> f64 {
    match (kernel, width) {
        (GemmKernel::Avx512, Avx512Width::Full | Avx512Width::Unknown) => 64.0,
        (GemmKernel::Avx512, _) | (GemmKernel::Avx2, _) => 32.0,
        (GemmKernel::Scalar, _) => 4.0,
    }
}

/// The clock /proc/cpuinfo reports, MHz (in a VM often the nominal clock; boost runs above it).
pub fn reported_mhz() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let l = s.lines().find(|l| l.starts_with("cpu MHz"))?;
    l.split(':').nth(1)?.trim().parse().ok()
}

/// A nominal f32 peak of this CPU with the kernel in use, GFLOP/s: `threads` × the reported clock
/// (2.5 GHz when unknown) × [`flop_per_cycle`]. Boost clocks run above it.
pub fn nominal_peak_gflops(id: &CpuIdentity, threads: usize) -> f64 {
    let mhz = reported_mhz().unwrap_or(2500.0);
    threads as f64 * mhz * 1e-3 * flop_per_cycle(active_kernel(id), id.avx512_width())
}

/// One timed product.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShapeTiming {
    /// `[m, k] × [k, n]`.
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Best of the repetitions.
    pub seconds: f64,
    pub gflops: f64,
}

/// One kernel's timings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelTimings {
    pub kernel: GemmKernel,
    pub shapes: Vec<ShapeTiming>,
    /// Sum of the best times over the shapes.
    pub total_seconds: f64,
}

/// A measurement of every available kernel on this machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub cpu: CpuIdentity,
    pub threads: usize,
    pub kernels: Vec<KernelTimings>,
    pub chosen: GemmKernel,
    /// When it was measured (seconds since the Unix epoch).
    pub measured_at: u64,
}

impl Calibration {
    /// A calibration from measured timings: the fastest kernel, unless the table's choice is
    /// within [`CALIBRATION_MARGIN`] of it (timing noise must not flip the kernel).
    pub fn from_timings(id: &CpuIdentity, threads: usize, kernels: Vec<KernelTimings>) -> Self {
        let (table, _) = table_choice(id);
        let table_time =
            kernels.iter().find(|k| k.kernel == table).map_or(f64::INFINITY, |k| k.total_seconds);
        let chosen = match kernels.iter().min_by(|a, b| a.total_seconds.total_cmp(&b.total_seconds))
        {
            Some(f) if f.total_seconds < table_time * (1.0 - CALIBRATION_MARGIN) => f.kernel,
            _ => table,
        };
        let measured_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Calibration { cpu: id.clone(), threads, kernels, chosen, measured_at }
    }

    pub fn summary(&self) -> String {
        let times: Vec<String> = self
            .kernels
            .iter()
            .map(|k| format!("{} {:.0} ms", k.kernel, k.total_seconds * 1e3))
            .collect();
        format!("measured on this machine: {}", times.join(", "))
    }
}

/// The products a calibration times: a 1,024-token training step's projections at SmolLM2-135M's
/// width (576 → 1,536), forward and the weight-gradient form. About 5.5 GFLOP per kernel and
/// repetition.
pub const CALIBRATION_SHAPES: [(usize, usize, usize); 4] =
    [(1024, 576, 1536), (1024, 1536, 576), (576, 1024, 1536), (1024, 576, 576)];

/// A kernel must be this much faster than the table's choice to replace it (timing noise).
pub const CALIBRATION_MARGIN: f64 = 0.03;

/// Times every available kernel at `shapes` through burn-flex's matmul (best of `reps`), and picks
/// the fastest, keeping the table's choice unless another beats it by [`CALIBRATION_MARGIN`].
/// Leaves gemm on the chosen kernel.
pub fn calibrate(id: &CpuIdentity, shapes: &[(usize, usize, usize)], reps: usize) -> Calibration {
    let threads = rayon::current_num_threads();
    let mut kernels = Vec::new();
    for kernel in available(id) {
        apply(kernel);
        let shapes: Vec<ShapeTiming> =
            shapes.iter().map(|&(m, k, n)| time_matmul(m, k, n, reps.max(1))).collect();
        let total_seconds = shapes.iter().map(|s| s.seconds).sum();
        kernels.push(KernelTimings { kernel, shapes, total_seconds });
    }
    let c = Calibration::from_timings(id, threads, kernels);
    apply(c.chosen);
    c
}

/// Best-of-`reps` time of one `[m, k] × [k, n]` f32 product on the CPU backend, after one warm-up.
pub fn time_matmul(m: usize, k: usize, n: usize, reps: usize) -> ShapeTiming {
    time_matmul_on::<crate::device::Cpu>(&Default::default(), m, k, n, reps)
}

/// [`time_matmul`] on any backend (`distill bench gemm` also times burn-ndarray's matrixmultiply).
pub fn time_matmul_on<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    m: usize,
    k: usize,
    n: usize,
    reps: usize,
) -> ShapeTiming {
    use burn::tensor::{Distribution, Tensor};
    let a = Tensor::<B, 2>::random([m, k], Distribution::Uniform(-1.0, 1.0), device);
    let b = Tensor::<B, 2>::random([k, n], Distribution::Uniform(-1.0, 1.0), device);
    // The CPU backends run eagerly: the product is done when `matmul` returns (`sync` is for
    // the others); its buffer is dropped outside the timed region.
    drop(a.clone().matmul(b.clone()));
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let c = a.clone().matmul(b.clone());
        let _ = B::sync(device);
        best = best.min(t.elapsed().as_secs_f64());
        drop(c);
    }
    ShapeTiming { m, k, n, seconds: best, gflops: 2.0 * (m * k * n) as f64 / best / 1e9 }
}

/// The calibration cache: one JSON file of calibrations keyed by [`CpuIdentity::calibration_key`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationCache {
    pub version: u32,
    pub entries: std::collections::BTreeMap<String, Calibration>,
}

pub const CALIBRATION_CACHE_VERSION: u32 = 1;

impl Default for CalibrationCache {
    fn default() -> Self {
        CalibrationCache { version: CALIBRATION_CACHE_VERSION, entries: Default::default() }
    }
}

impl CalibrationCache {
    /// Reads the cache; a missing file is an empty cache. A file of another version is ignored
    /// (and replaced on the next save), a corrupt one is an error naming it.
    pub fn read(path: &Path) -> Result<Self, CpuError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(CpuError::Cache {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| CpuError::Cache {
            path: path.display().to_string(),
            message: format!("not JSON: {e}"),
        })?;
        if v.get("version").and_then(|x| x.as_u64()) != Some(CALIBRATION_CACHE_VERSION as u64) {
            return Ok(Self::default());
        }
        serde_json::from_value(v).map_err(|e| CpuError::Cache {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn get(&self, id: &CpuIdentity, threads: usize) -> Option<&Calibration> {
        self.entries.get(&id.calibration_key(threads))
    }

    pub fn insert(&mut self, c: Calibration) {
        self.entries.insert(c.cpu.calibration_key(c.threads), c);
    }

    /// Writes the cache through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> Result<(), CpuError> {
        let err = |message: String| CpuError::Cache { path: path.display().to_string(), message };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(vendor: &str, family: u32, model: u32, flags: &[&str]) -> CpuIdentity {
        CpuIdentity {
            vendor: vendor.into(),
            family,
            model,
            stepping: 1,
            brand: "test".into(),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            logical_cpus: 2,
        }
    }

    const AVX512: &[&str] = &["fma", "avx2", "avx512f", "avx512bw", "avx512vl"];
    const AVX2: &[&str] = &["fma", "avx2"];

    #[test]
    fn family_and_model_from_cpuid() {
        // Zen 4 Genoa (EPYC 9004): family 0x19 model 0x11, as `lscpu` prints 25 / 17.
        assert_eq!(family_model(0x00A1_0F11), (0x19, 0x11, 1));
        // Zen 5 Turin: family 0x1a (26) model 0x02.
        assert_eq!(family_model(0x00B0_0F21), (0x1a, 0x02, 1));
        // Intel Sapphire Rapids: family 6 model 0x8f.
        assert_eq!(family_model(0x0008_06F8), (6, 0x8f, 8));
    }

    #[test]
    fn table_per_cpu() {
        use Avx512Width::{Full, Half, None as No, Unknown};
        use GemmKernel::{Avx2, Avx512, Scalar};
        // (name, vendor, family, model, flags, AVX-512 width, the table's kernel)
        type Case = (
            &'static str,
            &'static str,
            u32,
            u32,
            &'static [&'static str],
            Avx512Width,
            GemmKernel,
        );
        let cases: [Case; 8] = [
            ("Zen 4 Genoa", "AuthenticAMD", 0x19, 0x11, AVX512, Half, Avx2),
            ("Zen 4 Raphael", "AuthenticAMD", 0x19, 0x61, AVX512, Half, Avx2),
            ("Zen 3", "AuthenticAMD", 0x19, 0x01, AVX2, No, Avx2),
            ("Zen 5 Turin", "AuthenticAMD", 0x1a, 0x02, AVX512, Full, Avx512),
            ("Zen 5 Strix Point", "AuthenticAMD", 0x1a, 0x24, AVX512, Half, Avx2),
            ("Sapphire Rapids", "GenuineIntel", 6, 0x8f, AVX512, Unknown, Avx512),
            ("Skylake client", "GenuineIntel", 6, 0x5e, AVX2, No, Avx2),
            ("Sandy Bridge", "GenuineIntel", 6, 0x2a, &["avx"], No, Scalar),
        ];
        for (name, vendor, family, model, flags, width, kernel) in cases {
            let id = cpu(vendor, family, model, flags);
            assert_eq!(id.avx512_width(), width, "{name}");
            assert_eq!(table_choice(&id).0, kernel, "{name}");
            assert!(available(&id).contains(&kernel), "{name}");
        }
        assert_eq!(cpu("AuthenticAMD", 0x19, 0x01, AVX2).microarchitecture(), Some("Zen 3"));
        assert_eq!(cpu("AuthenticAMD", 0x19, 0x11, AVX512).microarchitecture(), Some("Zen 4"));
    }

    #[test]
    fn override_and_calibration_take_precedence() {
        let zen4 = cpu("AuthenticAMD", 0x19, 0x11, AVX512);
        let forced = decide(&zen4, KernelRequest::Force(GemmKernel::Avx512), None).unwrap();
        assert_eq!((forced.kernel, forced.source), (GemmKernel::Avx512, ChoiceSource::Override));
        let auto = decide(&zen4, KernelRequest::Auto, None).unwrap();
        assert_eq!((auto.kernel, auto.source), (GemmKernel::Avx2, ChoiceSource::Table));
        let cal = Calibration {
            cpu: zen4.clone(),
            threads: 2,
            kernels: vec![],
            chosen: GemmKernel::Avx512,
            measured_at: 0,
        };
        let calibrated = decide(&zen4, KernelRequest::Auto, Some(&cal)).unwrap();
        assert_eq!(
            (calibrated.kernel, calibrated.source),
            (GemmKernel::Avx512, ChoiceSource::Calibration)
        );
        // An AVX2-only CPU cannot be forced onto AVX-512, and the error names the CPU.
        let zen3 = cpu("AuthenticAMD", 0x19, 0x01, AVX2);
        let e =
            decide(&zen3, KernelRequest::Force(GemmKernel::Avx512), None).unwrap_err().to_string();
        assert!(
            e.contains("avx512") && e.contains("family 0x19") && e.contains("available: avx2"),
            "{e}"
        );
    }

    #[test]
    fn requests_parse() {
        assert_eq!(
            "AVX2".parse::<KernelRequest>().unwrap(),
            KernelRequest::Force(GemmKernel::Avx2)
        );
        assert_eq!(
            "avx512".parse::<KernelRequest>().unwrap(),
            KernelRequest::Force(GemmKernel::Avx512)
        );
        assert_eq!("auto".parse::<KernelRequest>().unwrap(), KernelRequest::Auto);
        assert_eq!("calibrate".parse::<KernelRequest>().unwrap(), KernelRequest::Calibrate);
        assert!("sse".parse::<KernelRequest>().unwrap_err().contains("expected auto"));
    }
}
