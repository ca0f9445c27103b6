use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use distill_data::{Role, fsutil};
use serde_json::json;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    /// distill's own records, one per line (re-importable with `--format native`).
    Jsonl,
    /// `{"messages": [..prompt, {"role": "assistant", "content": "<think>\n…\n</think>\n\nanswer"}]}`,
    /// the shape TRL, torchtune and Axolotl SFT loaders read.
    Chat,
}

#[derive(clap::Args)]
pub struct Args {
    /// Corpus directory.
    dir: PathBuf,
    /// Output file (written to a temp name, then renamed).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    #[command(flatten)]
    damage: super::DamageArgs,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let c = a.damage.open(&a.dir)?;
    let mut written = 0u64;
    let tmp = fsutil::tmp_path(&a.out);
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let pb = crate::progress::bar(Some(c.len()), "records");
    for t in c.iter() {
        let t = t?;
        match a.format {
            Format::Jsonl => serde_json::to_writer(&mut out, &t)?,
            Format::Chat => {
                let content = if t.reasoning.is_empty() {
                    t.answer.clone()
                } else {
                    format!("<think>\n{}\n</think>\n\n{}", t.reasoning, t.answer)
                };
                let mut messages: Vec<serde_json::Value> = t
                    .messages
                    .iter()
                    .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
                    .collect();
                messages.push(json!({"role": Role::Assistant.as_str(), "content": content}));
                serde_json::to_writer(
                    &mut out,
                    &json!({"id": t.id, "messages": messages, "reference": t.reference}),
                )?;
            }
        }
        out.write_all(b"\n")?;
        written += 1;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fsutil::commit_rename(&tmp, &a.out)?;
    println!("wrote {written} records to {}", a.out.display());
    super::report_damage(&c);
    Ok(ExitCode::SUCCESS)
}
