//! `distill report RUN_DIR`: one static HTML page — recipe, corpus statistics, training curves,
//! eval tables before/after, provenance — with its PNG plots embedded, so it can be mailed or
//! opened anywhere.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use distill_data::Corpus;
use distill_data::corpus::stats::{Histogram, stats};
use serde_json::Value;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn img(png: &Path, alt: &str) -> anyhow::Result<String> {
    let bytes = std::fs::read(png).with_context(|| format!("reading {}", png.display()))?;
    Ok(format!(
        "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
        esc(alt),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

fn hist_png(
    dir: &Path,
    name: &str,
    title: &str,
    unit: &str,
    h: &Histogram,
) -> anyhow::Result<String> {
    let buckets: Vec<(String, f64)> = h
        .buckets
        .iter()
        .map(|(lo, n)| (if *lo == 0 { "0".into() } else { format!("≥{lo}") }, *n as f64))
        .collect();
    let p = dir.join(format!("{name}.png"));
    crate::plot::bars(&p, title, unit, &buckets, plotters::style::RGBColor(70, 110, 180))?;
    img(&p, title)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The on-policy stage: its curves, and the equal-time comparison when it ran one.
fn on_policy_section(h: &mut String, run_dir: &Path, o: &Value) -> anyhow::Result<()> {
    h.push_str("<h2>On-policy distillation</h2>");
    let dir = o["on_policy_dir"].as_str().map(PathBuf::from);
    if let Some(c) = read_json(&run_dir.join("eval/on-policy-comparison.json")) {
        let arms = &c["arms"];
        let _ = write!(
            h,
            "<p>From the SFT export, two arms with the same time in optimizer steps: <b>on-policy</b> ({} loss), {} steps in {:.1} s (the student's sampling and the teacher's scoring included), and <b>more SFT</b> on the same corpus, {} steps in {:.1} s. Each student then samples the same {} held-out prompts (prompts neither arm trained on) with the same seeds, and the teacher scores every sampled token; agreement is teacher-forced on the SFT stage's held-out teacher traces.</p>",
            esc(c["loss"].as_str().unwrap_or("")),
            arms["on_policy"]["steps"],
            arms["on_policy"]["step_seconds"].as_f64().unwrap_or(0.0),
            arms["sft"]["steps"],
            arms["sft"]["step_seconds"].as_f64().unwrap_or(0.0),
            c["held_out_prompts"],
        );
        h.push_str("<table><tr><th>student</th><th>reverse KL of its samples, nats/token</th><th>teacher NLL of its samples</th><th>samples ending in EOS</th><th>mean sample tokens</th><th>pass rate (prompts with answers)</th><th>agreement: next-token accuracy</th><th>agreement: KL(teacher ‖ student)</th></tr>");
        let students: Vec<&Value> = c["students"].as_array().into_iter().flatten().collect();
        // The best figure in each column is marked (lower is better except accuracy, EOS, pass).
        let best = |key: &dyn Fn(&Value) -> Option<f64>, higher: bool| -> Option<usize> {
            let vals: Vec<(usize, f64)> =
                students.iter().enumerate().filter_map(|(i, s)| key(s).map(|v| (i, v))).collect();
            let pick = vals
                .iter()
                .copied()
                .reduce(|a, b| if (b.1 > a.1) == higher && b.1 != a.1 { b } else { a })?;
            // A tie for the best marks nothing.
            (vals.iter().filter(|v| v.1 == pick.1).count() == 1).then_some(pick.0)
        };
        type Col = (Box<dyn Fn(&Value) -> Option<f64>>, bool, fn(f64) -> String);
        let cols: Vec<Col> = vec![
            (Box::new(|s: &Value| s["held_out"]["reverse_kl"].as_f64()), false, |v| {
                format!("{v:.3}")
            }),
            (Box::new(|s: &Value| s["held_out"]["teacher_nll"].as_f64()), false, |v| {
                format!("{v:.3}")
            }),
            (Box::new(|s: &Value| s["held_out"]["eos_fraction"].as_f64()), true, pct),
            (Box::new(|s: &Value| s["held_out"]["sample_tokens"].as_f64()), false, |v| {
                format!("{v:.1}")
            }),
            (Box::new(|s: &Value| s["held_out"]["pass_rate"].as_f64()), true, pct),
            (Box::new(|s: &Value| s["agreement"]["next_token_accuracy"].as_f64()), true, pct),
            (Box::new(|s: &Value| s["agreement"]["kl"].as_f64()), false, |v| format!("{v:.4}")),
        ];
        let bests: Vec<Option<usize>> = cols
            .iter()
            .enumerate()
            .map(|(i, (k, hi, _))| if i == 3 { None } else { best(k.as_ref(), *hi) })
            .collect();
        for (i, s) in students.iter().enumerate() {
            let _ = write!(h, "<tr><td>{}</td>", esc(s["student"].as_str().unwrap_or("")));
            for ((k, _, f), b) in cols.iter().zip(&bests) {
                let cell = k(s).map_or("–".to_string(), *f);
                let class = if *b == Some(i) { " class=\"better\"" } else { "" };
                let _ = write!(h, "<td{class}>{cell}</td>");
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    if let Some(d) = dir
        && d.join("loss.png").exists()
    {
        h.push_str("<p>The on-policy run: loss, the reverse KL of each step's samples, their length and EOS share, and the held-out reverse KL.</p>");
        h.push_str(&img(&d.join("loss.png"), "on-policy curves")?);
    }
    Ok(())
}

/// `[train.grpo] compare`: GRPO against online RFT (SFT on its own passed samples) at equal time.
fn grpo_comparison(h: &mut String, c: &Value) {
    let _ = write!(
        h,
        "<p>Against more SFT at equal time: an <b>online RFT</b> arm (SFT on the samples the verifier passes, DeepSeekMath's Online RFT) from the same model, on the same prompts and rollout settings, for the seconds the GRPO run spent in optimizer steps (rollouts included). Both measure {} on the same {} held-out prompts, {} samples each, with the same seeds.</p>",
        esc(c["figure"].as_str().unwrap_or("")),
        c["held_out_prompts"],
        c["samples_per_prompt"]
    );
    h.push_str("<table><tr><th>arm</th><th>optimizer steps</th><th>seconds in steps</th><th>before</th><th>after</th></tr>");
    let arms: Vec<&Value> = c["arms"].as_array().into_iter().flatten().collect();
    let afters: Vec<f64> = arms.iter().filter_map(|a| a["after"].as_f64()).collect();
    let top = afters.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let unique = afters.iter().filter(|v| **v == top).count() == 1;
    for a in &arms {
        let after = a["after"].as_f64();
        let class = if unique && after == Some(top) { " class=\"better\"" } else { "" };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td{class}>{}</td></tr>",
            esc(a["arm"].as_str().unwrap_or("")),
            a["steps"],
            a["step_seconds"].as_f64().unwrap_or(0.0),
            a["before"].as_f64().map_or("–".into(), pct),
            after.map_or("–".into(), pct),
        );
    }
    h.push_str("</table>");
}

/// Write `RUN_DIR/report.html`; returns its path.
pub fn write(run_dir: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(run_dir.exists(), "run directory {} does not exist", run_dir.display());
    let assets = run_dir.join("report-assets");
    std::fs::create_dir_all(&assets)?;
    let mut h = String::new();
    let name = run_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>distill run {n}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1040px; margin: 2em auto; color: #222; line-height: 1.45; }}
h1 {{ font-size: 1.6em; }} h2 {{ border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: .6em 0; }} td, th {{ border: 1px solid #ccc; padding: .25em .7em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: .4em 0; }}
pre {{ background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; max-height: 28em; }}
.better {{ color: #176d2c; font-weight: 600; }} .worse {{ color: #a11; font-weight: 600; }} .muted {{ color: #777; }}
</style></head><body>
<h1>distill run <code>{n}</code></h1>
<p class="muted">{dir}</p>
"#,
        n = esc(&name),
        dir = esc(&run_dir.display().to_string())
    );

    // Headline: agreement before/after.
    if let Some(a) = read_json(&run_dir.join("eval/agreement.json")) {
        let row = |label: &str, key: &str, higher_better: bool, f: &dyn Fn(f64) -> String| {
            let (b, x) = (
                a["before"][key].as_f64().unwrap_or(f64::NAN),
                a["after"][key].as_f64().unwrap_or(f64::NAN),
            );
            let class = if (x > b) == higher_better { "better" } else { "worse" };
            format!("<tr><td>{label}</td><td>{}</td><td class=\"{class}\">{}</td></tr>", f(b), f(x))
        };
        let _ = write!(
            h,
            "<h2>Student vs teacher on held-out teacher traces</h2><p>Teacher-forced on {} held-out traces ({} assistant tokens): does the student predict what the teacher wrote?</p>\
             <table><tr><th></th><th>before SFT</th><th>after SFT</th></tr>{}{}{}</table>",
            a["traces"],
            a["tokens"],
            row("next-token accuracy", "next_token_accuracy", true, &pct),
            row("KL(teacher ‖ student), nats/token", "kl", false, &|v| format!("{v:.4}")),
            row("NLL of the teacher's tokens, nats/token", "nll", false, &|v| format!("{v:.4}")),
        );
    }

    // Benchmarks.
    if let Some(s) = read_json(&run_dir.join("eval/benchmarks/summary.json")) {
        let _ = write!(
            h,
            "<h2>Benchmarks</h2><p>k = {} samples per problem, {}.</p><table><tr><th>benchmark</th><th>problems</th><th>pass@1</th><th>cons@k</th><th>mean tokens</th><th>truncated</th></tr>",
            s["k"],
            esc(&s["sampling"].to_string())
        );
        for b in s["benchmarks"].as_array().into_iter().flatten() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
                esc(b["name"].as_str().unwrap_or("")),
                b["problems"],
                pct(b["pass_at_1"].as_f64().unwrap_or(0.0)),
                pct(b["cons_at_k"].as_f64().unwrap_or(0.0)),
                b["mean_completion_tokens"].as_f64().unwrap_or(0.0),
                pct(b["truncated_share"].as_f64().unwrap_or(0.0))
            );
        }
        h.push_str("</table>");
    }

    // Training.
    let train_dir = run_dir.join("train");
    if train_dir.join("loss.png").exists() {
        h.push_str("<h2>Training</h2>");
        if let Some(st) = read_json(&run_dir.join("stages/train.json"))
            && st["outputs"]["data"]["traces"].as_u64() == Some(0)
            && let Some(held_out) = st["outputs"]["held_out"].as_str()
        {
            // An objective that reads prompts, not traces (GRPO).
            let f = |k: &str| st["outputs"][k].as_f64().map_or("n/a".into(), |v| format!("{v:.4}"));
            let _ = write!(
                h,
                "<p>{} optimizer steps on the student's own samples; {held_out} {} → {}.</p>",
                st["outputs"]["steps"],
                f("first_eval_loss"),
                f("final_eval_loss")
            );
        } else if let Some(st) = read_json(&run_dir.join("stages/train.json")) {
            let d = &st["outputs"]["data"];
            let _ = write!(
                h,
                "<p>{} traces → {} training and {} held-out examples ({} dropped as failed, {} truncated, {} overlong); {} training tokens, {} on assistant turns. {} optimizer steps; held-out loss {} → {}.</p>",
                d["traces"],
                d["train_examples"],
                d["eval_examples"],
                d["dropped_failed"],
                d["dropped_truncated"],
                d["dropped_overlong"],
                d["train_tokens"],
                d["assistant_tokens"],
                st["outputs"]["steps"],
                st["outputs"]["first_eval_loss"]
                    .as_f64()
                    .map_or("n/a".into(), |v| format!("{v:.4}")),
                st["outputs"]["final_eval_loss"]
                    .as_f64()
                    .map_or("n/a".into(), |v| format!("{v:.4}")),
            );
        }
        h.push_str(&img(&train_dir.join("loss.png"), "training curves")?);
        if let Some(c) = read_json(&run_dir.join("eval/grpo-comparison.json")) {
            grpo_comparison(&mut h, &c);
        }
    }

    // On-policy distillation, and SFT against SFT + on-policy at equal time.
    if let Some(st) = read_json(&run_dir.join("stages/on-policy.json")) {
        on_policy_section(&mut h, run_dir, &st["outputs"])?;
    }

    // Corpus.
    let corpus_dir = run_dir.join("corpus");
    if corpus_dir.join("manifest.json").exists() {
        let c = Corpus::open(&corpus_dir)?;
        let s = stats(&c)?;
        let _ = write!(
            h,
            "<h2>Corpus</h2><p>{} traces in {} shards; {:.2} MB of JSONL stored in {:.2} MB ({:.1}×). {} passed every check ({}).</p>",
            s.records,
            s.shards,
            s.raw_bytes as f64 / 1e6,
            s.compressed_bytes as f64 / 1e6,
            s.compression_ratio,
            s.passed,
            pct(s.passed as f64 / s.records.max(1) as f64)
        );
        h.push_str("<table><tr><th>verifier</th><th>passed</th><th>ran</th><th>rate</th></tr>");
        for (v, (p, n)) in &s.verifiers {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{p}</td><td>{n}</td><td>{}</td></tr>",
                esc(v),
                pct(*p as f64 / (*n).max(1) as f64)
            );
        }
        h.push_str(
            "</table><table><tr><th>rejected by (first failing check)</th><th>traces</th></tr>",
        );
        for (v, n) in &s.rejected_by {
            let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(v));
        }
        h.push_str("</table><table><tr><th>finish_reason</th><th>traces</th></tr>");
        for (v, n) in &s.finish_reasons {
            let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(v));
        }
        h.push_str("</table>");
        h.push_str(&hist_png(
            &assets,
            "completion-tokens",
            "Completion tokens per trace",
            "tokens",
            &s.completion_tokens,
        )?);
        h.push_str(&hist_png(
            &assets,
            "answer-chars",
            "Answer length per trace",
            "characters",
            &s.answer_chars,
        )?);
        if s.reasoning_chars.max > 0 {
            h.push_str(&hist_png(
                &assets,
                "reasoning-chars",
                "Reasoning length per trace",
                "characters",
                &s.reasoning_chars,
            )?);
        }
        if let Some(g) = read_json(&corpus_dir.join("generate-report.json")) {
            let _ = write!(
                h,
                "<p>Generation: {} prompts done ({} failed), {} samples, pass rate {}, {} completion tokens at {:.1} tokens/s, {} requests ({} retries).</p>",
                g["prompts_done"],
                g["prompts_failed"].as_array().map_or(0, Vec::len),
                g["samples"],
                pct(g["passed"].as_f64().unwrap_or(0.0)
                    / g["samples"].as_f64().unwrap_or(1.0).max(1.0)),
                g["completion_tokens"],
                g["completion_tokens_per_s"].as_f64().unwrap_or(0.0),
                g["requests"],
                g["retries"]
            );
        }
    }

    // Provenance.
    h.push_str("<h2>Provenance</h2><table>");
    let prep = read_json(&run_dir.join("stages/prepare.json"));
    let export = train_dir.join("export");
    let dist = read_json(&export.join("distill.json"));
    let rows = [
        ("teacher", prep.as_ref().map(|p| p["outputs"]["teacher"].to_string()).unwrap_or_default()),
        ("student base", dist.as_ref().map(|d| d["base_model"].to_string()).unwrap_or_default()),
        (
            "corpus manifest (blake3)",
            dist.as_ref().map(|d| d["corpus_manifest_blake3"].to_string()).unwrap_or_default(),
        ),
        (
            "exported checkpoint",
            if export.exists() { export.display().to_string() } else { String::new() },
        ),
        ("distill", env!("CARGO_PKG_VERSION").to_string()),
    ];
    for (k, v) in rows {
        let _ = write!(
            h,
            "<tr><td>{k}</td><td style=\"text-align:left\"><code>{}</code></td></tr>",
            esc(v.trim_matches('"'))
        );
    }
    h.push_str("</table>");

    // Recipe.
    if let Ok(r) = std::fs::read_to_string(run_dir.join("recipe.toml")) {
        let _ = write!(h, "<h2>Recipe (resolved)</h2><pre>{}</pre>", esc(&r));
    }

    // Self-check for headless tests: every image decoded, no script errors.
    h.push_str(
        r#"<script>
window.__errors = 0;
window.addEventListener('error', function () { window.__errors++; document.body.dataset.errors = window.__errors; });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.images = ok + '/' + imgs.length;
  document.body.dataset.errors = window.__errors;
});
</script></body></html>
"#,
    );
    let out = run_dir.join("report.html");
    distill_data::fsutil::atomic_write(&out, h.as_bytes())?;
    Ok(out)
}
