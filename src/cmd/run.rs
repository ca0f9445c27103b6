//! `distill run RECIPE.toml`: the stages a recipe names, in order —
//! prepare → generate → filter → train (with export) → on-policy → agreement → eval → report — each
//! writing under the run directory and skipped when its output is complete, so re-running after a
//! crash resumes. `--from STAGE` redoes that stage and the ones after; `--only STAGE` runs one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use distill_data::fsutil::atomic_write;
use serde_json::json;

use crate::recipe::{Loaded, Stage};

#[derive(clap::Args)]
pub struct Args {
    /// The recipe (TOML); `--recipe R.toml` works too.
    #[arg(
        required_unless_present = "recipe_flag",
        conflicts_with = "recipe_flag",
        value_name = "RECIPE"
    )]
    recipe: Option<PathBuf>,
    #[arg(long = "recipe", value_name = "RECIPE")]
    recipe_flag: Option<PathBuf>,
    /// Override a recipe field (repeatable), e.g. `--set generate.limit=16`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Redo this stage and every later one.
    #[arg(long, value_enum)]
    from: Option<Stage>,
    /// Run only this stage.
    #[arg(long, value_enum, conflicts_with = "from")]
    only: Option<Stage>,
}

fn marker(run_dir: &Path, stage: Stage) -> PathBuf {
    run_dir.join("stages").join(format!("{stage}.json"))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let path = a.recipe.as_ref().or(a.recipe_flag.as_ref()).expect("clap requires one");
    let loaded = Loaded::read(path, &a.sets)?;
    loaded.recipe.validate()?;
    let stages = loaded.plan();
    if let Some(s) = a.only.or(a.from)
        && !stages.contains(&s)
    {
        bail!(
            "stage {s} is not in this recipe (it has: {})",
            stages.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        );
    }
    let to_run: Vec<Stage> =
        stages.iter().copied().filter(|s| a.only.is_none_or(|o| o == *s)).collect();
    crate::recipe::claim_run_dir(&loaded.paths.run_dir, false)?;
    loaded.preflight(&to_run, true, true)?;
    let (recipe, paths) = (&loaded.recipe, &loaded.paths);
    crate::recipe::claim_run_dir(&paths.run_dir, true)?;
    std::fs::create_dir_all(paths.run_dir.join("stages"))?;
    atomic_write(
        &paths.run_dir.join("recipe.toml"),
        toml::to_string_pretty(&crate::recipe::redacted(&loaded.resolved))?.as_bytes(),
    )?;
    println!("run {} → {}", recipe.recipe.name, paths.run_dir.display());
    for &stage in &to_run {
        let m = marker(&paths.run_dir, stage);
        let forced = a.only.is_some() || a.from.is_some_and(|f| stage >= f);
        if m.exists() && !forced {
            println!("[{stage}] done earlier, skipped");
            continue;
        }
        let ts = Instant::now();
        println!("[{stage}] …");
        let outputs = run_stage(stage, &loaded).with_context(|| format!("stage {stage}"))?;
        atomic_write(
            &m,
            serde_json::to_vec_pretty(
                &json!({"stage": stage, "seconds": ts.elapsed().as_secs_f64(), "outputs": outputs}),
            )?
            .as_slice(),
        )?;
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

/// Before `distill generate` / `train` / `eval` run one stage alone: when that stage reads a
/// model the recipe's prepare stage makes (the imported teacher, the pruned student) and it is not
/// there yet, run prepare first — it is short and needs nothing earlier. Longer stages (a corpus
/// from generate) are left to `distill run`; preflight then names them.
pub fn ensure_prepared(l: &Loaded, stage: Stage) -> anyhow::Result<()> {
    let needed = l.inputs(stage).into_iter().any(|i| {
        i.path().and_then(|p| l.made_by(p)) == Some(Stage::Prepare) && i.check(false).is_err()
    });
    if !needed {
        return Ok(());
    }
    crate::recipe::claim_run_dir(&l.paths.run_dir, true)?;
    eprintln!(
        "[prepare] this recipe's prepare stage makes a model [{stage}] reads; running it first"
    );
    let ts = Instant::now();
    let outputs = run_stage(Stage::Prepare, l).context("stage prepare")?;
    let m = marker(&l.paths.run_dir, Stage::Prepare);
    std::fs::create_dir_all(m.parent().expect("has a parent"))?;
    atomic_write(
        &m,
        serde_json::to_vec_pretty(
            &json!({"stage": "prepare", "seconds": ts.elapsed().as_secs_f64(), "outputs": outputs}),
        )?
        .as_slice(),
    )?;
    Ok(())
}

fn run_stage(stage: Stage, l: &Loaded) -> anyhow::Result<serde_json::Value> {
    let (r, p) = (&l.recipe, &l.paths);
    let provenance =
        json!({"command": std::env::args().collect::<Vec<_>>().join(" "), "recipe": r.recipe.name});
    match stage {
        Stage::Prepare => {
            let pr = l.prepare()?;
            let teacher = if pr.teacher == "smollm2" {
                crate::models::smollm2_hf()?
            } else {
                PathBuf::from(&pr.teacher)
            };
            let mut out = json!({"teacher": teacher});
            if let Some(layers) = &pr.student_layers {
                let cfg = distill_models::prune::prune_layers(
                    &teacher,
                    layers,
                    &p.student,
                    distill_models::checkpoint::SaveDtype::F32,
                )?;
                println!(
                    "  student: {} of the teacher's layers {:?} → {}",
                    cfg.num_hidden_layers,
                    layers,
                    p.student.display()
                );
                out["student"] = json!(p.student);
            }
            Ok(out)
        }
        Stage::Generate => {
            let g = l.generate()?;
            let rep = crate::cmd::generate::generate(g, provenance)?;
            print!("{}", indent(&rep.text()));
            Ok(json!({"corpus": g.output, "report": rep}))
        }
        Stage::Filter => {
            let f = l.filter()?;
            let src = r
                .generate
                .as_ref()
                .map(|g| g.output.clone())
                .unwrap_or_else(|| p.run_dir.join("corpus"));
            let corpus = distill_data::Corpus::open(&src)?;
            let mut w = distill_data::CorpusWriter::open(
                &p.corpus,
                distill_data::WriterOptions { provenance, ..Default::default() },
            )?;
            let rep = distill_teacher::decontam::decontaminate_corpus(
                &corpus,
                &mut w,
                &f.decontaminate_against,
                f.ngram,
            )?;
            println!("  {} traces dropped as contaminated", rep.dropped.len());
            Ok(json!({"corpus": p.corpus, "decontamination": rep}))
        }
        Stage::Train => {
            let t = l.train()?;
            let resume =
                !distill_student::train::checkpoint::list(&t.output.join("checkpoints"))?.is_empty();
            let s = crate::cmd::train::run_train(t, serde_json::to_value(&l.resolved)?, resume)?;
            println!(
                "  {} steps; held-out loss {}; export {}",
                s.steps,
                crate::cmd::train::eval_losses(s.first_eval_loss, s.final_eval_loss),
                s.export_dir.display()
            );
            Ok(
                json!({"export": s.export_dir, "steps": s.steps, "first_eval_loss": s.first_eval_loss, "final_eval_loss": s.final_eval_loss, "data": s.data}),
            )
        }
        Stage::OnPolicy => crate::onpolicy_stage::run(l),
        Stage::Agreement => {
            let a = crate::agreement::run(r, p)?;
            Ok(a)
        }
        Stage::Eval => {
            let e = l.eval()?;
            let s = crate::cmd::eval::run_eval(e)?;
            crate::cmd::eval::print_table(&s);
            Ok(json!({"benchmarks": s}))
        }
        Stage::Report => {
            let path = crate::report::write(&p.run_dir)?;
            Ok(json!({"report": path}))
        }
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
