//! `distill-fuzz`: bounded mutation fuzzing of every parser of untrusted input, on stable Rust.
//!
//! cargo-fuzz needs a nightly toolchain and an instrumented build of everything the targets link
//! (burn included), which does not fit the CI budget; this driver runs the same kind of
//! targets without coverage feedback: AFL-style havoc mutations of valid seeds, plus inputs
//! that parsed, for a fixed time per target. Each execution checks three invariants:
//! no panic, no allocation above a bound proportional to the input, and an error that names
//! the file it is about. Failing inputs are saved under `fuzz/crashers/<target>/` and replayed
//! on every later run.

mod hub;
mod mutate;
mod seeds;
mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use targets::{TARGETS, Target};

struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = NOW.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            let now = NOW.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            NOW.fetch_sub(l.size() - new, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The most one execution may allocate at once: 64 bytes per input byte, plus 64 MiB.
fn alloc_bound(input_len: usize) -> usize {
    64 * input_len + (64 << 20)
}

#[derive(Parser)]
#[command(about = "Bounded mutation fuzzing of distill's parsers of untrusted input")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fuzz each target for a fixed time; exit 1 if any input broke an invariant.
    Run {
        /// Seconds per target.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Only these targets (comma-separated).
        #[arg(long, value_delimiter = ',')]
        targets: Vec<String>,
        #[arg(long, default_value = "fuzz/seeds")]
        seeds: PathBuf,
        #[arg(long, default_value = "fuzz/crashers")]
        crashers: PathBuf,
        /// Random seed (fixed by default: runs are reproducible).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the per-target figures here as JSON.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Run one input through one target and print what happened.
    Replay {
        target: String,
        input: PathBuf,
        #[arg(long, default_value = "fuzz/seeds")]
        seeds: PathBuf,
    },
    /// Write the seed inputs from distill's own writers.
    MakeSeeds {
        #[arg(long, default_value = "fuzz/seeds")]
        seeds: PathBuf,
        #[arg(long, default_value = "models/tests/fixtures/templates")]
        templates: PathBuf,
    },
}

static PANIC: Mutex<Option<String>> = Mutex::new(None);

/// The input being executed and when it started, for the watchdog: an execution that takes
/// longer than [`HANG`] is saved as a crasher and the run fails.
static CURRENT: Mutex<Option<(&'static str, Vec<u8>, Instant)>> = Mutex::new(None);
const HANG: Duration = Duration::from_secs(20);

fn watchdog(crashers: PathBuf) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let cur = CURRENT.lock().unwrap();
            if let Some((target, input, since)) = cur.as_ref()
                && since.elapsed() > HANG
            {
                let dir = crashers.join(target);
                let _ = std::fs::create_dir_all(&dir);
                let name = blake3::hash(input).to_hex()[..16].to_string();
                let _ = std::fs::write(dir.join(&name), input);
                eprintln!("{target}: BROKEN {name}: one execution ran longer than {HANG:?}");
                std::process::exit(1);
            }
        }
    });
}

enum Verdict {
    Ok,
    Err,
    Broken(String),
}

fn exec(t: &Target, input: &[u8], scratch: &Path) -> Verdict {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).expect("scratch directory");
    *CURRENT.lock().unwrap() = Some((t.name, input.to_vec(), Instant::now()));
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = std::panic::catch_unwind(|| (t.run)(input, scratch));
    *CURRENT.lock().unwrap() = None;
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    if peak > alloc_bound(input.len()) {
        return Verdict::Broken(format!(
            "allocated {peak} bytes for a {}-byte input (bound {})",
            input.len(),
            alloc_bound(input.len())
        ));
    }
    match r {
        Err(_) => {
            let msg = PANIC.lock().unwrap().take().unwrap_or_default();
            Verdict::Broken(format!("panicked: {msg}"))
        }
        Ok(Ok(())) => Verdict::Ok,
        Ok(Err(e)) if e.contains("ROUNDTRIP") => Verdict::Broken(e),
        Ok(Err(e)) if e.trim().is_empty() => Verdict::Broken("an empty error message".into()),
        Ok(Err(e)) if !t.names.is_empty() && !t.names.iter().any(|n| e.contains(n)) => {
            Verdict::Broken(format!("the error does not name the file: {e}"))
        }
        Ok(Err(_)) => Verdict::Err,
    }
}

fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn main() -> anyhow::Result<ExitCode> {
    std::panic::set_hook(Box::new(|info| {
        let loc = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *PANIC.lock().unwrap() = Some(format!("{msg}{loc}"));
    }));
    let scratch = std::env::temp_dir().join(format!("distill-fuzz-{}", std::process::id()));
    let code = match Cli::parse().cmd {
        Cmd::MakeSeeds { seeds, templates } => {
            seeds::make(&seeds, &templates)?;
            println!("wrote seeds under {}", seeds.display());
            ExitCode::SUCCESS
        }
        Cmd::Replay { target, input, seeds } => {
            seeds::load_pair(&seeds)?;
            let t = find(&target)?;
            let bytes = std::fs::read(&input)?;
            match exec(t, &bytes, &scratch) {
                Verdict::Ok => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Verdict::Err => {
                    println!(
                        "error (clean): {}",
                        (t.run)(&bytes, &scratch).err().unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Verdict::Broken(why) => {
                    println!("BROKEN: {why}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Run { seconds, targets, seeds, crashers, seed, report } => {
            seeds::load_pair(&seeds)?;
            watchdog(crashers.clone());
            let chosen: Vec<&Target> = if targets.is_empty() {
                TARGETS.iter().collect()
            } else {
                targets.iter().map(|n| find(n)).collect::<anyhow::Result<_>>()?
            };
            let mut rows = Vec::new();
            let mut broken_total = 0;
            for t in chosen {
                let row = fuzz(t, &seeds, &crashers, seconds, seed, &scratch)?;
                broken_total += row["broken"].as_u64().unwrap_or(0);
                rows.push(row);
            }
            if let Some(p) = report {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&p, serde_json::to_vec_pretty(&json!({"targets": rows}))?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            }
            if broken_total > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(code)
}

fn find(name: &str) -> anyhow::Result<&'static Target> {
    TARGETS.iter().find(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        anyhow::anyhow!("no fuzz target '{name}' (targets: {})", names.join(", "))
    })
}

fn fuzz(
    t: &Target,
    seeds: &Path,
    crashers: &Path,
    seconds: f64,
    seed: u64,
    scratch: &Path,
) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    let mut pool = read_dir_files(&seeds.join(t.name));
    anyhow::ensure!(!pool.is_empty(), "no seeds in {}", seeds.join(t.name).display());
    let known = read_dir_files(&crashers.join(t.name));
    let (mut execs, mut ok, mut err, mut broken) = (0u64, 0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    let record = |input: &[u8], why: String, failures: &mut Vec<String>| {
        let dir = crashers.join(t.name);
        let _ = std::fs::create_dir_all(&dir);
        let name = blake3::hash(input).to_hex()[..16].to_string();
        let _ = std::fs::write(dir.join(&name), input);
        eprintln!("  {}: BROKEN {name}: {why}", t.name);
        failures.push(format!("{name}: {why}"));
    };
    // Seeds must pass; earlier crashers must not break any more.
    for (i, s) in pool.clone().iter().enumerate() {
        execs += 1;
        match exec(t, s, scratch) {
            Verdict::Ok => ok += 1,
            Verdict::Err if i == 0 => anyhow::bail!("{}: the first seed does not parse", t.name),
            Verdict::Err => err += 1,
            Verdict::Broken(why) => {
                broken += 1;
                record(s, why, &mut failures)
            }
        }
    }
    for c in &known {
        execs += 1;
        match exec(t, c, scratch) {
            Verdict::Broken(why) => {
                broken += 1;
                record(c, why, &mut failures)
            }
            Verdict::Ok => ok += 1,
            Verdict::Err => err += 1,
        }
    }
    let mut rng =
        SmallRng::seed_from_u64(seed ^ blake3::hash(t.name.as_bytes()).as_bytes()[0] as u64);
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        let a = &pool[rng.random_range(0..pool.len())];
        let b = &pool[rng.random_range(0..pool.len())];
        let input = mutate::mutate(&mut rng, a, b, t.max_len);
        execs += 1;
        match exec(t, &input, scratch) {
            Verdict::Ok => {
                ok += 1;
                // Inputs that still parse keep the structure valid: mutate them further.
                if pool.len() < 256 && rng.random_range(0..8) == 0 {
                    pool.push(input);
                }
            }
            Verdict::Err => err += 1,
            Verdict::Broken(why) => {
                broken += 1;
                if failures.len() < 20 {
                    record(&input, why, &mut failures);
                }
            }
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {}: {execs} executions, {broken} broken, {:.0}s",
                t.name,
                start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<14} {execs:>8} executions in {secs:>5.1} s ({:>6.0}/s): {ok} parsed, {err} clean errors, {broken} broken",
        t.name,
        execs as f64 / secs
    );
    Ok(json!({
        "target": t.name, "executions": execs, "seconds": secs, "parsed": ok,
        "clean_errors": err, "broken": broken, "failures": failures,
    }))
}
