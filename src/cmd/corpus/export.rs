use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use arrow_schema::{DataType, Field, Schema};
use distill_data::columnar::{ParquetSink, chat_type};
use distill_data::{Role, fsutil};
use serde_json::json;

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Format {
    /// distill's own records, one per line (re-importable with `--format native`).
    Jsonl,
    /// `{"messages": [..prompt, {"role": "assistant", "content": "<think>\n…\n</think>\n\nanswer"}]}`,
    /// the shape TRL, torchtune and Axolotl SFT loaders read.
    Chat,
    /// The chat rows as a Parquet file (zstd) that `datasets.load_dataset("parquet", …)` and TRL
    /// read: `id`, `messages` (list of {role, content}) and `reference`; or, with
    /// `--columns prompt-completion`, `prompt` and `completion` instead of `messages`.
    Parquet,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Columns {
    /// One `messages` column: the prompt turns, then the assistant's reply.
    Messages,
    /// TRL's conversational prompt-completion layout: `prompt` turns and a `completion` turn.
    PromptCompletion,
}

#[derive(clap::Args)]
pub struct Args {
    /// Corpus directory.
    dir: PathBuf,
    /// Output file (written to a temp name, then renamed). An existing file is refused unless
    /// `--force`; a path inside a corpus always is.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Parquet only: the chat columns to write.
    #[arg(long, value_enum, default_value = "messages")]
    columns: Columns,
    #[command(flatten)]
    damage: super::DamageArgs,
}

/// A trace as the chat export's row: `id`, `messages` (the prompt, then the assistant's
/// `<think>…</think>` reply) and `reference`.
fn chat_row(t: &distill_data::Trace) -> serde_json::Value {
    let content = if t.reasoning.is_empty() {
        t.answer.clone()
    } else {
        format!("<think>\n{}\n</think>\n\n{}", t.reasoning, t.answer)
    };
    let mut messages: Vec<serde_json::Value> =
        t.messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect();
    messages.push(json!({"role": Role::Assistant.as_str(), "content": content}));
    json!({"id": t.id, "messages": messages, "reference": t.reference})
}

fn parquet_schema(columns: Columns) -> Schema {
    let utf8 = |n: &str, nullable| Field::new(n, DataType::Utf8, nullable);
    let mut fields = vec![utf8("id", false)];
    match columns {
        Columns::Messages => fields.push(Field::new("messages", chat_type(), false)),
        Columns::PromptCompletion => {
            fields.push(Field::new("prompt", chat_type(), false));
            fields.push(Field::new("completion", chat_type(), false));
        }
    }
    fields.push(utf8("reference", true));
    Schema::new(fields)
}

/// The output never lands inside a corpus (it would replace a shard or the manifest, or sit
/// among the shards) and never replaces a file unless `--force` says so.
fn check_out(a: &Args) -> anyhow::Result<()> {
    let folder = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if folder.join(distill_data::corpus::manifest::MANIFEST_FILE).exists() {
        anyhow::bail!(
            "--out {}: that folder is a corpus ({}); write the export outside it",
            a.out.display(),
            folder.display()
        );
    }
    if a.out.is_dir() {
        anyhow::bail!("--out {} is a directory; name a file", a.out.display());
    }
    let tmp = fsutil::tmp_path(&a.out);
    for p in [&a.out, &tmp] {
        if p.exists() && !a.force {
            anyhow::bail!("--out: {} exists; pass --force to replace it", p.display());
        }
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    check_out(&a)?;
    if a.format == Format::Parquet {
        return run_parquet(a);
    }
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
            Format::Chat => serde_json::to_writer(&mut out, &chat_row(&t))?,
            Format::Parquet => unreachable!("written by run_parquet"),
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

fn run_parquet(a: Args) -> anyhow::Result<ExitCode> {
    let c = a.damage.open(&a.dir)?;
    let mut sink = ParquetSink::create(&a.out, parquet_schema(a.columns))?;
    let pb = crate::progress::bar(Some(c.len()), "records");
    for t in c.iter() {
        let mut row = chat_row(&t?);
        if a.columns == Columns::PromptCompletion {
            let mut m = row["messages"].take();
            let completion = m.as_array_mut().and_then(|m| m.pop()).expect("an assistant turn");
            row["prompt"] = m;
            row["completion"] = json!([completion]);
            row.as_object_mut().expect("object").remove("messages");
        }
        sink.push(row)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let written = sink.finish()?;
    println!("wrote {written} records to {}", a.out.display());
    super::report_damage(&c);
    Ok(ExitCode::SUCCESS)
}
