//! `distill run RECIPE.toml`: the stages a recipe names, in order —
//! prepare → generate → filter → train (with export) → agreement → eval → report — each
//! writing under the run directory and skipped when its output is complete, so re-running after a
//! crash resumes. `--from STAGE` redoes that stage and the ones after; `--only STAGE` runs one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use distill_data::fsutil::atomic_write;
use serde_json::json;

use crate::recipe::{Paths, Recipe, load_recipe};

pub const STAGES: [&str; 7] = ["prepare", "generate", "filter", "train", "agreement", "eval", "report"];

#[derive(clap::Args)]
pub struct Args {
    recipe: PathBuf,
    /// Override a recipe field (repeatable), e.g. `--set generate.limit=16`.
    #[arg(long = "set")]
    sets: Vec<String>,
    /// Redo this stage and every later one.
    #[arg(long, value_parser = STAGES)]
    from: Option<String>,
    /// Run only this stage.
    #[arg(long, value_parser = STAGES, conflicts_with = "from")]
    only: Option<String>,
}

fn present(r: &Recipe, stage: &str) -> bool {
    match stage {
        "prepare" => r.prepare.is_some(),
        "generate" => r.generate.is_some(),
        "filter" => r.filter.is_some(),
        "train" => r.train.is_some(),
        "agreement" => r.agreement.is_some() && r.train.is_some(),
        "eval" => r.eval.is_some(),
        _ => true,
    }
}

fn marker(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join("stages").join(format!("{stage}.json"))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let (recipe, paths, resolved) = load_recipe(&a.recipe, &a.sets)?;
    recipe.validate()?;
    let stages: Vec<&str> = STAGES.iter().copied().filter(|s| present(&recipe, s)).collect();
    if let Some(s) = a.only.as_deref().or(a.from.as_deref())
        && !stages.contains(&s)
    {
        bail!("stage {s} is not in this recipe (it has: {})", stages.join(", "));
    }
    preflight(&recipe, &paths)?;
    std::fs::create_dir_all(paths.run_dir.join("stages"))?;
    atomic_write(&paths.run_dir.join("recipe.toml"), toml::to_string_pretty(&resolved)?.as_bytes())?;
    println!("run {} → {}", recipe.recipe.name, paths.run_dir.display());
    let from = a.from.as_deref().and_then(|f| stages.iter().position(|s| *s == f));
    for (i, stage) in stages.iter().enumerate() {
        if a.only.as_deref().is_some_and(|o| o != *stage) {
            continue;
        }
        let m = marker(&paths.run_dir, stage);
        let forced = a.only.is_some() || from.is_some_and(|f| i >= f);
        if m.exists() && !forced {
            println!("[{stage}] done earlier, skipped");
            continue;
        }
        let ts = Instant::now();
        println!("[{stage}] …");
        let outputs = run_stage(stage, &recipe, &paths, &resolved).with_context(|| format!("stage {stage}"))?;
        atomic_write(&m, serde_json::to_vec_pretty(&json!({"stage": stage, "seconds": ts.elapsed().as_secs_f64(), "outputs": outputs}))?.as_slice())?;
        println!("[{stage}] done in {:.0}s", ts.elapsed().as_secs_f64());
    }
    println!("\nfinished in {:.0}s", t0.elapsed().as_secs_f64());
    let report = paths.run_dir.join("report.html");
    if report.exists() {
        println!("report:  {}", report.display());
    }
    println!("results: {}", paths.run_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Everything that can be checked before any long work: inputs exist, endpoints answer.
fn preflight(r: &Recipe, p: &Paths) -> anyhow::Result<()> {
    let made_by_prepare = |dir: &Path| r.prepare.is_some() && (dir == p.teacher || dir == p.student);
    if let Some(pr) = &r.prepare
        && pr.teacher != "smollm2"
    {
        crate::teachers::check_model_dir(Path::new(&pr.teacher))?;
    }
    if let Some(g) = &r.generate {
        distill_teacher::run::load_prompts(g).with_context(|| "[generate] prompts")?;
        match g.backend.kind {
            distill_teacher::run::BackendKind::Openai => {
                for e in &g.backend.endpoints {
                    crate::teachers::preflight(&e.base_url)?;
                }
            }
            distill_teacher::run::BackendKind::Local => {
                let dir = &g.backend.local.as_ref().context("[generate.backend.local] is missing")?.model_dir;
                if !made_by_prepare(dir) {
                    crate::teachers::check_model_dir(dir).context("[generate.backend.local]")?;
                }
            }
        }
    }
    if let Some(t) = &r.train
        && !made_by_prepare(&t.model)
    {
        crate::teachers::check_model_dir(&t.model).context("[train] model")?;
    }
    if let Some(e) = &r.eval {
        for b in &e.benchmarks {
            anyhow::ensure!(b.file.exists(), "[eval] benchmark {}: {} does not exist", b.name, b.file.display());
        }
        if e.backend.kind == distill_teacher::run::BackendKind::Openai {
            for ep in &e.backend.endpoints {
                crate::teachers::preflight(&ep.base_url)?;
            }
        }
    }
    Ok(())
}

fn run_stage(stage: &str, r: &Recipe, p: &Paths, resolved: &toml::Value) -> anyhow::Result<serde_json::Value> {
    let provenance = json!({"command": std::env::args().collect::<Vec<_>>().join(" "), "recipe": r.recipe.name});
    match stage {
        "prepare" => {
            let pr = r.prepare.as_ref().expect("present");
            let teacher = if pr.teacher == "smollm2" { crate::models::smollm2_hf()? } else { PathBuf::from(&pr.teacher) };
            let mut out = json!({"teacher": teacher});
            if let Some(layers) = &pr.student_layers {
                let cfg = distill_student::prune::prune_layers(&teacher, layers, &p.student, distill_student::checkpoint::SaveDtype::F32)?;
                println!("  student: {} of the teacher's layers {:?} → {}", cfg.num_hidden_layers, layers, p.student.display());
                out["student"] = json!(p.student);
            }
            Ok(out)
        }
        "generate" => {
            let g = r.generate.as_ref().expect("present");
            let rep = crate::cmd::generate::generate(g, provenance)?;
            print!("{}", indent(&rep.text()));
            Ok(json!({"corpus": g.output, "report": rep}))
        }
        "filter" => {
            let f = r.filter.as_ref().expect("present");
            let src = r.generate.as_ref().map(|g| g.output.clone()).unwrap_or_else(|| p.run_dir.join("corpus"));
            let d = distill_teacher::decontam::Decontaminator::from_files(&f.decontaminate_against, f.ngram)?;
            let corpus = distill_data::Corpus::open(&src)?;
            let mut w = distill_data::CorpusWriter::open(&p.corpus, distill_data::WriterOptions { provenance, ..Default::default() })?;
            let mut dropped = vec![];
            for t in corpus.iter() {
                let t = t?;
                let text: String = t.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
                match d.check(&text) {
                    Some(hit) => dropped.push(json!({"id": t.id, "eval_file": hit.file, "eval_line": hit.line, "ngram": hit.ngram})),
                    None if !w.contains(&t.id) => w.append(t)?,
                    None => {}
                }
            }
            w.commit()?;
            println!("  {} traces dropped as contaminated", dropped.len());
            Ok(json!({"corpus": p.corpus, "dropped": dropped}))
        }
        "train" => {
            let t = r.train.as_ref().expect("present");
            let resume = !distill_student::sft::checkpoint::list(&t.output.join("checkpoints"))?.is_empty();
            let s = crate::cmd::train::run_train(t, serde_json::to_value(resolved)?, resume)?;
            println!("  {} steps; held-out loss {:?} → {:?}; export {}", s.steps, s.first_eval_loss, s.final_eval_loss, s.export_dir.display());
            Ok(json!({"export": s.export_dir, "steps": s.steps, "first_eval_loss": s.first_eval_loss, "final_eval_loss": s.final_eval_loss, "data": s.data}))
        }
        "agreement" => {
            let a = crate::agreement::run(r, p)?;
            Ok(a)
        }
        "eval" => {
            let e = r.eval.as_ref().expect("present");
            let s = crate::cmd::eval::run_eval(e)?;
            crate::cmd::eval::print_table(&s);
            Ok(json!({"benchmarks": s}))
        }
        "report" => {
            let path = crate::report::write(&p.run_dir)?;
            Ok(json!({"report": path}))
        }
        other => bail!("unknown stage {other}"),
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
