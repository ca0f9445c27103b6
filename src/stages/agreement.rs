//! The `agreement` stage: how much closer to the teacher the student got, measured on the
//! teacher's held-out traces (teacher-forced next-token accuracy, KL, NLL), before and after SFT.

use anyhow::{Context, ensure};
use distill_models::device::{Cpu, CpuDevice};
use distill_models::hf;
use distill_models::rope::Rope;
use distill_models::tokenizer::TextTokenizer;
use distill_student::agreement::{Agreement, agreement};
use serde_json::json;

use std::path::Path;

use distill_student::train::TrainConfig;

use crate::recipe::{Paths, Recipe};

pub fn run(r: &Recipe, p: &Paths) -> anyhow::Result<serde_json::Value> {
    let cfg = r.agreement.as_ref().context("[agreement] is missing")?;
    let train = r.train.as_ref().context("[agreement] needs [train]")?;
    let export = train.output.join("export");
    let m = measure(train, &p.teacher, &[&train.model, &export], cfg.max_traces)?;
    let (before, after) = (&m.students[0], &m.students[1]);
    println!("  {:<28} {:>12} {:>12}", "held-out teacher traces", "before SFT", "after SFT");
    println!(
        "  {:<28} {:>11.1}% {:>11.1}%",
        "next-token accuracy",
        100.0 * before.next_token_accuracy,
        100.0 * after.next_token_accuracy
    );
    println!("  {:<28} {:>12.4} {:>12.4}", "KL(teacher ‖ student), nats", before.kl, after.kl);
    println!("  {:<28} {:>12.4} {:>12.4}", "NLL of teacher tokens", before.nll, after.nll);
    let out = json!({"traces": before.traces, "tokens": before.tokens, "before": before, "after": after, "teacher": p.teacher, "student_before": train.model, "student_after": export});
    let path = p.run_dir.join("eval/agreement.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    distill_data::fsutil::atomic_write(&path, &serde_json::to_vec_pretty(&out)?)?;
    Ok(out)
}

/// Agreement of each student with the teacher, on the same held-out traces.
pub struct Measured {
    pub students: Vec<Agreement>,
}

/// Teacher-forced agreement of each of `students` with `teacher` on (at most `max_traces` of) the
/// held-out split of `train`'s data: every teacher reply there counts, passed or not — the
/// question is how well the student imitates the teacher, not whether the teacher was right.
pub fn measure(
    train: &TrainConfig,
    teacher_dir: &Path,
    students: &[&Path],
    max_traces: usize,
) -> anyhow::Result<Measured> {
    let dev = CpuDevice::default();
    let tok = TextTokenizer::from_dir(teacher_dir)?;
    let student_tok = TextTokenizer::from_dir(&train.model)?;
    ensure!(
        tok.vocab_size() == student_tok.vocab_size(),
        "teacher and student vocabularies differ ({} vs {}); agreement needs the same tokenizer",
        tok.vocab_size(),
        student_tok.vocab_size()
    );
    let data = distill_student::train::data::DataConfig {
        only_passed: false,
        drop_truncated: false,
        ..train.data.clone()
    };
    let (train_ex, mut held_out, _) = distill_student::train::data::load(&data, &student_tok)?;
    ensure!(
        !held_out.is_empty(),
        "the held-out split is empty ({} training examples, train.data.eval_fraction = {}); add prompts or raise eval_fraction",
        train_ex.len(),
        train.data.eval_fraction
    );
    held_out.truncate(max_traces);
    let teacher = hf::load_model::<Cpu>(teacher_dir, &dev)?;
    let t_rope = Rope::<Cpu>::new(&teacher.config, &dev);
    let pb = crate::progress::bar(Some((students.len() * held_out.len()) as u64), "traces");
    let mut out = Vec::with_capacity(students.len());
    for dir in students {
        let m = hf::load_model::<Cpu>(dir, &dev)?;
        let rope = Rope::<Cpu>::new(&m.config, &dev);
        out.push(agreement(
            (&teacher.model, &t_rope),
            (&m.model, &rope),
            &held_out,
            &dev,
            &mut || pb.inc(1),
        ));
    }
    pb.finish_and_clear();
    Ok(Measured { students: out })
}
