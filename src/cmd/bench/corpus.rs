//! The corpus benchmark. Input: synthetic R1-like traces (`distill_data::synth`, see its docs)
//! until the raw JSONL reaches `--mb`. Everything is measured in one run on the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use distill_data::corpus::shard;
use distill_data::synth::{self, Rng};
use distill_data::{Corpus, CorpusWriter, Trace, WriterOptions};
use serde_json::{Value, json};

use crate::progress::mb_per_s;

#[derive(clap::Args)]
pub struct Args {
    /// Size of the synthetic corpus in MB of raw JSONL.
    #[arg(long, default_value_t = 64)]
    mb: u64,
    /// Scratch directory (default: a temp dir, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Random reads to time.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    eprintln!("generating ≥{} MB of synthetic R1-like traces…", a.mb);
    let mut traces = Vec::new();
    let mut raw_len = 0u64;
    for t in synth::traces(2025, u64::MAX, 1) {
        raw_len += t.to_json().len() as u64 + 1;
        traces.push(t);
        if raw_len >= a.mb * 1_000_000 {
            break;
        }
    }
    let raw_path = dir.join("raw.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw_path)?);
        for t in &traces {
            writeln!(f, "{}", t.to_json())?;
        }
    }
    let n = traces.len() as u64;
    let mut r = json!({ "machine": super::machine(), "records": n, "raw_bytes": raw_len });
    eprintln!("{n} records, {:.1} MB raw", raw_len as f64 / 1e6);

    r["gzip6_bytes"] = json!(gzip6(&raw_path).context("running gzip -6")?);
    r["parquet"] = parquet(&raw_path);

    // Writes at the default settings, with 1 and 2 threads; sizes at other levels.
    let mut write = serde_json::Map::new();
    for threads in [1usize, 2] {
        let out = dir.join(format!("c-t{threads}"));
        let secs = timed_write(&out, &traces, threads, WriterOptions::default())?;
        write.insert(format!("{threads}_threads_mb_s"), json!(mb_per_s(raw_len, secs)));
        write.insert("default_bytes".into(), json!(dir_bytes(&out)?));
    }
    r["write"] = Value::Object(write);
    let mut levels = Vec::new();
    for level in [1, 3, 9, 19] {
        let out = dir.join(format!("c-l{level}"));
        let opts = WriterOptions { level, ..Default::default() };
        let secs = timed_write(&out, &traces, 2, opts)?;
        levels.push(json!({"level": level, "bytes": dir_bytes(&out)?, "write_mb_s_2t": mb_per_s(raw_len, secs)}));
        std::fs::remove_dir_all(&out)?;
    }
    r["levels"] = Value::Array(levels);
    r["dictionary"] = dictionary(&traces);

    // Sequential read: parse every record, 1 thread.
    let c = Corpus::open(&dir.join("c-t2"))?;
    let t0 = Instant::now();
    let mut count = 0u64;
    for t in c.iter() {
        t?;
        count += 1;
    }
    anyhow::ensure!(count == n, "read back {count} of {n} records");
    let parse = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for loc in c.frames() {
        std::hint::black_box(c.read_frame_raw(loc)?);
    }
    let decompress = t0.elapsed().as_secs_f64();
    r["read"] = json!({
        "sequential_parsed_mb_s": mb_per_s(raw_len, parse),
        "sequential_decompress_only_mb_s": mb_per_s(raw_len, decompress),
    });

    // Random access: default frames in one big shard, and in many small shards.
    let small = dir.join("c-small-shards");
    timed_write(&small, &traces, 2, WriterOptions { shard_records: 200, ..Default::default() })?;
    r["random_access"] = json!({
        "one_shard": latency(&c, a.reads)?,
        "shards_of_200_records": latency(&Corpus::open(&small)?, a.reads)?,
    });

    print_markdown(&r);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn timed_write(
    out: &Path,
    traces: &[Trace],
    threads: usize,
    opts: WriterOptions,
) -> anyhow::Result<f64> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let traces = traces.to_vec(); // cloned outside the timed region
    pool.install(|| {
        let t0 = Instant::now();
        let mut w = CorpusWriter::open(out, opts)?;
        for t in traces {
            w.append(t)?;
        }
        w.commit()?;
        Ok(t0.elapsed().as_secs_f64())
    })
}

fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".zst") {
            total += e.metadata()?.len();
        }
    }
    Ok(total + std::fs::metadata(dir.join("manifest.json"))?.len())
}

fn gzip6(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("gzip").args(["-6", "-c"]).arg(path).output()?;
    anyhow::ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout.len() as u64)
}

fn parquet(path: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_parquet.py");
    match Command::new("python3").arg(&script).arg(path).output() {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
        Ok(o) => {
            json!({"skipped": String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string()})
        }
        Err(e) => json!({"skipped": e.to_string()}),
    }
}

/// Does a trained zstd dictionary help? The same frames at level 3, with and without one
/// (112 KiB, trained on the first 2,000 records; its own size is counted).
fn dictionary(traces: &[Trace]) -> Value {
    let samples: Vec<Vec<u8>> =
        traces.iter().take(2000).map(|t| t.to_json().into_bytes()).collect();
    let Ok(dict) = zstd::dict::from_samples(&samples, 112 << 10) else {
        return json!({"skipped": "training failed"});
    };
    let mut c = zstd::bulk::Compressor::with_dictionary(3, &dict).expect("dict compressor");
    let mut out = serde_json::Map::new();
    let default = WriterOptions::default();
    for (name, max_records, max_bytes) in [
        ("frames_of_16_records", 16, usize::MAX),
        ("default_frames", default.frame_records, default.frame_bytes),
    ] {
        let mut frames: Vec<Vec<u8>> = vec![vec![]];
        let mut in_frame = 0;
        for t in traces {
            let f = frames.last_mut().unwrap();
            f.extend(t.to_json().into_bytes());
            f.push(b'\n');
            in_frame += 1;
            if in_frame >= max_records || f.len() >= max_bytes {
                frames.push(vec![]);
                in_frame = 0;
            }
        }
        frames.retain(|f| !f.is_empty());
        let plain: usize = frames.iter().map(|f| shard::compress_frame(f, 3).len()).sum();
        let with_dict: usize =
            frames.iter().map(|f| c.compress(f).expect("compress").len()).sum::<usize>()
                + dict.len();
        out.insert(name.into(), json!({"frames": frames.len(), "plain_bytes": plain, "dict_bytes_incl_dict": with_dict}));
    }
    Value::Object(out)
}

fn latency(c: &Corpus, reads: usize) -> anyhow::Result<Value> {
    let mut rng = Rng::new(9);
    let mut us = Vec::with_capacity(reads);
    for _ in 0..reads {
        let i = rng.below(c.len());
        let t0 = Instant::now();
        std::hint::black_box(c.get(i)?);
        us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    let q = |p: f64| us[((us.len() - 1) as f64 * p) as usize];
    Ok(
        json!({"mean_us": us.iter().sum::<f64>() / us.len() as f64, "p50_us": q(0.5), "p99_us": q(0.99), "max_us": q(1.0)}),
    )
}

fn print_markdown(r: &Value) {
    let raw = r["raw_bytes"].as_f64().unwrap_or(1.0);
    let mb = |v: &Value| v.as_f64().map_or("n/a".into(), |b| format!("{:.1} MB", b / 1e6));
    let ratio = |v: &Value| v.as_f64().map_or("n/a".into(), |b| format!("{:.3}", b / raw));
    println!("machine: {}", r["machine"].as_str().unwrap_or(""));
    println!(
        "input: {} synthetic R1-like records, {} raw JSONL\n",
        r["records"],
        mb(&r["raw_bytes"])
    );
    println!("| format | bytes | of raw |\n|---|---|---|");
    println!("| raw JSONL | {} | 1.000 |", mb(&r["raw_bytes"]));
    println!("| gzip -6 JSONL | {} | {} |", mb(&r["gzip6_bytes"]), ratio(&r["gzip6_bytes"]));
    for codec in ["snappy", "zstd", "zstd-3"] {
        println!(
            "| Parquet ({codec}) | {} | {} |",
            mb(&r["parquet"][codec]),
            ratio(&r["parquet"][codec])
        );
    }
    for v in r["levels"].as_array().into_iter().flatten() {
        println!(
            "| distill corpus, zstd {} | {} | {} |",
            v["level"],
            mb(&v["bytes"]),
            ratio(&v["bytes"])
        );
    }
    if let (Some(d), Some(s)) =
        (r["write"]["default_bytes"].as_f64(), r["parquet"]["snappy"].as_f64())
    {
        println!("\ndistill default / Parquet snappy = {:.3}", d / s);
    }
    println!(
        "\nwrite (default level): {:.0} MB/s raw at 1 thread, {:.0} MB/s at 2 threads",
        r["write"]["1_threads_mb_s"].as_f64().unwrap_or(0.0),
        r["write"]["2_threads_mb_s"].as_f64().unwrap_or(0.0)
    );
    for v in r["levels"].as_array().into_iter().flatten() {
        println!(
            "  level {}: {:.0} MB/s at 2 threads",
            v["level"],
            v["write_mb_s_2t"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "read: {:.0} MB/s parsed into records, {:.0} MB/s decompressed only (1 thread)",
        r["read"]["sequential_parsed_mb_s"].as_f64().unwrap_or(0.0),
        r["read"]["sequential_decompress_only_mb_s"].as_f64().unwrap_or(0.0)
    );
    for (k, v) in r["random_access"].as_object().into_iter().flatten() {
        println!(
            "random read ({k}): mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
            v["mean_us"].as_f64().unwrap_or(0.0),
            v["p50_us"].as_f64().unwrap_or(0.0),
            v["p99_us"].as_f64().unwrap_or(0.0)
        );
    }
    for (k, v) in r["dictionary"].as_object().into_iter().flatten() {
        println!(
            "dictionary ({k}): plain {} vs with dictionary {}",
            mb(&v["plain_bytes"]),
            mb(&v["dict_bytes_incl_dict"])
        );
    }
}
