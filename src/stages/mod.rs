//! The stages of a recipe, run by `distill run` in order and by `distill generate`, `train` and
//! `eval` alone: what each stage reads and writes, and the wiring it needs (scorers, judges,
//! vocabulary checks). The command files (`crate::cmd`) only parse arguments and print; they call
//! in here, and nothing here calls back into them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use distill_data::fsutil::atomic_write;
use serde_json::json;

use crate::recipe::{Loaded, Stage};

pub mod agreement;
pub mod eval;
pub mod generate;
pub mod grpo_compare;
pub mod onpolicy;
pub mod train;

/// What a corpus written by this process records as its provenance: the command line.
pub fn provenance() -> serde_json::Value {
    json!({ "command": std::env::args().collect::<Vec<_>>().join(" ") })
}

/// Where a finished stage records itself.
pub fn marker(run_dir: &Path, stage: Stage) -> PathBuf {
    run_dir.join("stages").join(format!("{stage}.json"))
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

/// Run one stage of the recipe; its outputs, for `stages/<stage>.json`.
pub fn run_stage(stage: Stage, l: &Loaded) -> anyhow::Result<serde_json::Value> {
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
            let rep = generate::generate(g, provenance)?;
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
            let resume = !distill_student::train::checkpoint::list(&t.output.join("checkpoints"))?
                .is_empty();
            let s = train::run_train(t, serde_json::to_value(&l.resolved)?, resume)?;
            let held_out = train::held_out_name(t);
            println!(
                "  {} steps; {held_out} {}; export {}",
                s.steps,
                train::eval_losses(s.first_eval_loss, s.final_eval_loss),
                s.export_dir.display()
            );
            let comparison = match &t.grpo {
                Some(g) if g.compare => Some(grpo_compare::run(l, t, &s)?),
                _ => None,
            };
            Ok(
                json!({"export": s.export_dir, "steps": s.steps, "first_eval_loss": s.first_eval_loss, "final_eval_loss": s.final_eval_loss, "held_out": held_out, "data": s.data, "comparison": comparison}),
            )
        }
        Stage::OnPolicy => onpolicy::run(l),
        Stage::Agreement => {
            let a = agreement::run(r, p)?;
            Ok(a)
        }
        Stage::Eval => {
            let e = l.eval()?;
            let s = eval::run_eval(e)?;
            eval::print_table(&s);
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
