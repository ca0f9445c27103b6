//! `distill bench logprobs`: what teacher top-k log-probs cost in a corpus, per encoding, on real
//! teacher output (the local engine's own samples and log-probs), and how far `packed1`'s
//! quantisation moves the KD loss.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use distill_data::logprobs::Encoding;
use distill_data::prompts::{ReadOptions, read_prompts};
use distill_data::{CorpusWriter, FieldMap, TokenLogprobs, Trace, WriterOptions};
use distill_models::device::{Cpu, CpuDevice};
use distill_models::generate::{Engine, SamplingParams};
use distill_models::tokenizer::TextTokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// The teacher (default: SmolLM2-135M-Instruct, fetched once).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompts (JSONL with a `question` field).
    #[arg(long, default_value = "recipes/data/quickstart-prompts.jsonl")]
    prompts: PathBuf,
    /// Prompts to sample.
    #[arg(long, default_value_t = 32)]
    n: usize,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Top-k sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "8,20,50")]
    k: Vec<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Corpus bytes of `traces` (every shard file), written with default options.
fn corpus_bytes(traces: &[Trace]) -> anyhow::Result<u64> {
    let d = tempfile::tempdir()?;
    let dir = d.path().join("c");
    let mut w = CorpusWriter::open(&dir, WriterOptions::default())?;
    for t in traces {
        w.append(t.clone())?;
    }
    w.commit()?;
    let mut total = 0;
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "zst") {
            total += std::fs::metadata(&p)?.len();
        }
    }
    Ok(total)
}

/// The first `k` alternatives of `lp`.
fn truncate(lp: &TokenLogprobs, k: u32, enc: Encoding) -> TokenLogprobs {
    let mut out = TokenLogprobs::new(k);
    out.encoding = enc;
    for j in 0..lp.len() {
        let top: Vec<(u32, f32)> = lp.top(j).take(k as usize).collect();
        out.push(lp.tokens[j], lp.token_logprobs[j], &top);
    }
    out
}

/// Forward KL over the teacher's top-k, both renormalised there (SFT's KD term), against a
/// student that disagrees: its log-odds are half the teacher's plus a fixed perturbation.
fn kd(lp: &TokenLogprobs) -> Vec<f64> {
    (0..lp.len())
        .map(|j| {
            let top: Vec<(u32, f64)> = lp.top(j).map(|(i, l)| (i, l as f64)).collect();
            let lse = |v: &[f64]| {
                let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
            };
            let t: Vec<f64> = top.iter().map(|x| x.1).collect();
            let s: Vec<f64> = top
                .iter()
                .map(|&(i, l)| 0.5 * l + ((i as f64 * 0.618).fract() - 0.5) * 2.0)
                .collect();
            let (zt, zs) = (lse(&t), lse(&s));
            t.iter().zip(&s).map(|(a, b)| (a - zt).exp() * ((a - zt) - (b - zs))).sum()
        })
        .collect()
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let model = match a.model {
        Some(m) => m,
        None => crate::models::smollm2_hf()?,
    };
    let dev = CpuDevice::default();
    let loaded = distill_models::hf::load_model::<Cpu>(&model, &dev)?;
    let tok = TextTokenizer::from_dir(&model)?;
    let chat = tok.chat.as_ref().context("the model has no chat template")?;
    let fields =
        FieldMap { prompt: Some("question".into()), require_answer: false, ..Default::default() };
    let (prompts, _) = read_prompts(&a.prompts, "bench", &fields, &ReadOptions::default())?;
    let prompts: Vec<_> = prompts.into_iter().take(a.n).collect();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| Ok(tok.encode(&chat.render(&p.messages, true)?)?))
        .collect::<anyhow::Result<_>>()?;
    let kmax = a.k.iter().copied().max().unwrap_or(20);
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        max_tokens: a.max_tokens,
        seed: 1,
        stop_ids: tok.eos_ids(&loaded.config.eos_token_ids),
        logprobs: kmax as usize,
        ..Default::default()
    };
    let engine = Engine::new(&loaded.model, &loaded.config, Some(&tok), dev);
    let pb = crate::progress::bar(Some(ids.len() as u64), "prompts");
    let mut samples = Vec::new();
    for chunk in ids.chunks(8) {
        samples.extend(engine.generate(chunk, &params, |_| {})?);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let tokens: u64 = samples.iter().map(|c| c.ids.len() as u64).sum();
    let base: Vec<Trace> = prompts
        .iter()
        .zip(&samples)
        .enumerate()
        .map(|(i, (p, c))| {
            let mut t = distill_data::synth::traces(i as u64, 1, 1).next().expect("one");
            t.id = Trace::make_id(&p.id, 0);
            t.prompt_id = p.id.clone();
            t.messages = p.messages.clone();
            t.answer = c.text.clone();
            t.reasoning = String::new();
            t.logprobs = None;
            t
        })
        .collect();
    let without = corpus_bytes(&base)?;
    let mut rows = Vec::new();
    for &k in &a.k {
        let mut row = serde_json::json!({"k": k});
        let mut losses = Vec::new();
        for enc in [Encoding::B64le, Encoding::Packed1] {
            let traces: Vec<Trace> = base
                .iter()
                .zip(&samples)
                .map(|(t, c)| {
                    let mut t = t.clone();
                    t.logprobs = Some(truncate(c.logprobs.as_ref().expect("asked"), k, enc));
                    t
                })
                .collect();
            let bytes = corpus_bytes(&traces)?;
            let name = if enc == Encoding::B64le { "b64le" } else { "packed1" };
            row[name] = serde_json::json!((bytes - without) as f64 / tokens as f64);
            // What a reader gets back.
            let back: Vec<TokenLogprobs> = traces
                .iter()
                .map(|t| Trace::from_json(&t.to_json()).map(|t| t.logprobs.expect("kept")))
                .collect::<Result<_, _>>()?;
            losses.push(back.iter().flat_map(kd).collect::<Vec<f64>>());
        }
        let (exact, packed) = (&losses[0], &losses[1]);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let max_pos = exact.iter().zip(packed).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        row["kd_loss_exact"] = serde_json::json!(mean(exact));
        row["kd_loss_packed1"] = serde_json::json!(mean(packed));
        row["kd_loss_abs_diff"] = serde_json::json!((mean(exact) - mean(packed)).abs());
        row["kd_max_position_diff"] = serde_json::json!(max_pos);
        rows.push(row);
    }
    let out = serde_json::json!({
        "machine": super::machine(), "model": model, "prompts": prompts.len(),
        "tokens": tokens, "rows": rows,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{} completion tokens from {} prompts ({})",
            tokens,
            prompts.len(),
            model.display()
        );
        println!(
            "{:>4} {:>16} {:>16} {:>14} {:>14}",
            "k", "b64le B/token", "packed1 B/token", "KD loss diff", "max per pos"
        );
        for r in &rows {
            println!(
                "{:>4} {:>16.1} {:>16.1} {:>14.2e} {:>14.2e}",
                r["k"],
                r["b64le"].as_f64().unwrap_or(0.0),
                r["packed1"].as_f64().unwrap_or(0.0),
                r["kd_loss_abs_diff"].as_f64().unwrap_or(0.0),
                r["kd_max_position_diff"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
