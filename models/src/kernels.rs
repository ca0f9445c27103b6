//! What a cubecl device (CUDA, wgpu) pays for beyond the arithmetic: kernels compiled at run time
//! and kernels launched, counted for every run; and where cubecl keeps what it learns between
//! processes (autotune results, and compiled kernels where the runtime can cache them).
//!
//! cubecl 0.10 has no counter API. Its server logger writes one line per real compilation
//! (`[Compiling kernel] …`, at compilation log level `basic`; a cache hit writes nothing) and one
//! per launch (`Executing …`, at profiling level `minimal`, which adds no synchronisation). They
//! go to the `log` crate, where [`install`] puts a logger that counts them and forwards nothing.
//! The lines are sent from a background thread, so [`settle`] waits until the counts stop moving
//! after the device was synchronised.
//!
//! [`install`] must run before the first cubecl device is touched (cubecl reads its configuration
//! once); the `distill` binary calls it first thing. A `cubecl.toml` and the `CUBECL_*` variables
//! are still read; distill then sets the two logger levels and, unless the file named one, the
//! caches' directory (`~/.cache/distill/cubecl`, or `$DISTILL_CUBECL_CACHE`).
//! `DISTILL_KERNELS_LOG=1` prints each compilation's kernel name on stderr.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Kernels compiled and launched since [`install`], in this process, on every cubecl device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounts {
    pub compiled: u64,
    pub launched: u64,
}

impl std::ops::Sub for KernelCounts {
    type Output = KernelCounts;
    fn sub(self, o: KernelCounts) -> KernelCounts {
        KernelCounts {
            compiled: self.compiled.saturating_sub(o.compiled),
            launched: self.launched.saturating_sub(o.launched),
        }
    }
}

static COMPILED: AtomicU64 = AtomicU64::new(0);
static LAUNCHED: AtomicU64 = AtomicU64::new(0);
/// `Some(cache dir)` once installed with counting on; `None` inside when counting could not be set
/// up (another logger was installed first, or cubecl's configuration was already read).
static INSTALLED: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Counts cubecl's kernel compilations and launches from its log (builds with a cubecl backend).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
struct Counter;

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl log::Log for Counter {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.target().starts_with("cubecl")
    }

    fn log(&self, record: &log::Record) {
        if !record.target().starts_with("cubecl") {
            return;
        }
        let line = match record.args().as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(record.args().to_string()),
        };
        if line.starts_with("[Compiling kernel]") || line.starts_with("[START_KERNEL_COMPILATION]")
        {
            COMPILED.fetch_add(1, Ordering::Relaxed);
            // `DISTILL_KERNELS_LOG=1`: name each compilation, to find what recompiles.
            static TRACE: OnceLock<bool> = OnceLock::new();
            if *TRACE
                .get_or_init(|| std::env::var_os("DISTILL_KERNELS_LOG").is_some_and(|v| v != "0"))
            {
                eprintln!("[kernels] {line}");
            }
        } else if line.starts_with("Executing ") {
            LAUNCHED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

/// Whether `B` runs cubecl kernels (CUDA, wgpu; under autodiff or fusion or not): the backends
/// whose kernels [`counts`] counts.
pub fn is_cubecl<B: 'static>() -> bool {
    let name = std::any::type_name::<B>();
    name.contains("burn_cubecl::") || name.contains("burn_fusion::")
}

/// The directory for cubecl's caches: `$DISTILL_CUBECL_CACHE`, else `~/.cache/distill/cubecl`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DISTILL_CUBECL_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/distill/cubecl")
}

/// Sets cubecl's configuration (loggers, caches) and the counting logger. Idempotent; a no-op in
/// a build without a cubecl backend. Returns whether counting is on.
pub fn install() -> bool {
    INSTALLED.get_or_init(install_).is_some()
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn install_() -> Option<PathBuf> {
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::compilation::CompilationLogLevel;
    use burn::cubecl::config::profiling::ProfilingLogLevel;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

    if log::set_logger(&Counter).is_err() {
        return None;
    }
    log::set_max_level(log::LevelFilter::Info);
    let mut c = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if matches!(c.compilation.logger.level, CompilationLogLevel::Disabled) {
        c.compilation.logger.level = CompilationLogLevel::Basic;
    }
    c.compilation.logger.log = Some(Default::default());
    if matches!(c.profiling.logger.level, ProfilingLogLevel::Disabled) {
        c.profiling.logger.level = ProfilingLogLevel::Minimal;
    }
    c.profiling.logger.log = Some(Default::default());
    let dir = cache_dir();
    // Only where no cubecl.toml chose otherwise (the defaults are `target` and none).
    if matches!(c.autotune.cache, CacheConfig::Target) {
        c.autotune.cache = CacheConfig::File(dir.clone());
    }
    if c.compilation.cache.is_none() {
        c.compilation.cache = Some(CacheConfig::File(dir.clone()));
    }
    // Panics when the configuration was read already: catch that and report counting off.
    std::panic::catch_unwind(|| CubeClRuntimeConfig::set(c)).ok()?;
    Some(dir)
}

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
fn install_() -> Option<PathBuf> {
    None
}

/// The counts so far, or `None` when counting is off (see [`install`]).
pub fn counts() -> Option<KernelCounts> {
    INSTALLED.get()?.as_ref()?;
    Some(KernelCounts {
        compiled: COMPILED.load(Ordering::Relaxed),
        launched: LAUNCHED.load(Ordering::Relaxed),
    })
}

/// The counts once the logger's thread has caught up: call after synchronising the device. Waits
/// until they have not moved for 50 ms (at most 2 s).
pub fn settle() -> Option<KernelCounts> {
    let mut last = counts()?;
    let (t0, mut still) = (Instant::now(), Instant::now());
    while t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
        let now = counts()?;
        if now != last {
            (last, still) = (now, Instant::now());
        } else if still.elapsed() >= Duration::from_millis(50) {
            break;
        }
    }
    Some(last)
}
