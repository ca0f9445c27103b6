//! The fuzz targets: each takes one input, writes it where distill would read it, and runs the
//! code a user's command would run on it. `Err` is the error the user would see.

use std::path::Path;

use burn::backend::NdArray;
use distill_data::corpus::{self, Corpus};
use distill_data::prompts::{FieldMap, ReadOptions, read_prompts};
use distill_data::{Message, Role, Trace};
use distill_models::chat::ChatTemplate;
use distill_models::gguf::import;
use distill_models::hf::{self, ExportOptions};

pub struct Target {
    pub name: &'static str,
    /// Run on one input inside the empty scratch directory `dir`.
    pub run: fn(&[u8], &Path) -> Result<(), String>,
    /// An error must contain one of these (the file it is about); empty: any message.
    pub names: &'static [&'static str],
    /// Inputs longer than this are cut (the parsers' own limits are tested elsewhere).
    pub max_len: usize,
}

pub const TARGETS: &[Target] = &[
    Target { name: "gguf", run: gguf, names: &["model.gguf"], max_len: 1 << 20 },
    Target {
        name: "safetensors",
        run: safetensors,
        names: &["model.safetensors", "st"],
        max_len: 1 << 20,
    },
    // An error about a shard the manifest names carries its path inside the corpus directory.
    Target {
        name: "manifest",
        run: manifest,
        names: &["manifest.json", "corpus/", "shard-"],
        max_len: 1 << 16,
    },
    Target { name: "shard", run: shard, names: &["shard-00000.jsonl.zst"], max_len: 1 << 20 },
    Target { name: "trace", run: trace, names: &[], max_len: 1 << 16 },
    Target { name: "prompts", run: prompts, names: &["prompts.jsonl"], max_len: 1 << 16 },
    Target { name: "chat-template", run: chat_template, names: &[], max_len: 1 << 14 },
    Target { name: "math-verify", run: math_verify, names: &[], max_len: 1 << 14 },
    Target { name: "import-row", run: import_row, names: &[], max_len: 1 << 16 },
    Target { name: "parquet", run: parquet, names: &["prompts.parquet"], max_len: 1 << 16 },
    Target { name: "score-reply", run: score_reply, names: &[], max_len: 1 << 16 },
    // `distill fetch` against a fake Hub answering with the input (fuzz/src/hub.rs): a process
    // per input, so far fewer executions per second than the in-process targets.
    Target { name: "hub", run: crate::hub::run, names: &[], max_len: 1 << 14 },
];

/// An endpoint teacher's scoring reply (vLLM's `prompt_logprobs`), as the on-policy scorer reads
/// it for a 3-token prompt and a 2-token completion with top-2.
fn score_reply(data: &[u8], _: &Path) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(s)?;
    distill_teacher::backend::openai::parse_prompt_logprobs(&v, &[1, 2, 3], &[4, 5], 2).map(drop)
}

/// A Parquet prompt file (what `generate` and `corpus import` read): the footer and page
/// headers checked, then every row decoded, within a decoded-size limit the memory bound holds.
fn parquet(data: &[u8], dir: &Path) -> Result<(), String> {
    use distill_data::columnar::{Limits, ParquetRows};
    let path = dir.join("prompts.parquet");
    std::fs::write(&path, data).map_err(s)?;
    let limits = Limits { max_row_bytes: 1 << 20, min_decoded_bytes: 16 << 20 };
    for row in ParquetRows::open_with(&path, limits).map_err(s)? {
        row.map_err(s)?;
    }
    Ok(())
}

/// `distill corpus import`'s row parsers (chat and Open-R1 rows, as JSONL lines): every row
/// either becomes traces the corpus can hold or is a clean error.
fn import_row(data: &[u8], _: &Path) -> Result<(), String> {
    use distill_data::import::{ImportFormat, parse_line};
    let line = String::from_utf8_lossy(data);
    // Parsed if any layout takes it; a clean error (the last) if none does.
    let (mut parsed, mut last) = (false, Ok(()));
    for f in [ImportFormat::Chat, ImportFormat::OpenR1, ImportFormat::Native] {
        match parse_line(f, "fz", "m", 0, &line) {
            Ok(traces) => {
                parsed = true;
                for t in traces {
                    // What the importer then checks before the writer sees it.
                    if distill_data::record::check_id(&t.id).is_ok() {
                        let _ = t.to_json();
                    }
                }
            }
            Err(e) => last = Err(e.0),
        }
    }
    if parsed { Ok(()) } else { last }
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// `distill import model.gguf`: header, metadata, tensor table, dequantization, tokenizer, export.
fn gguf(data: &[u8], dir: &Path) -> Result<(), String> {
    let path = dir.join("model.gguf");
    std::fs::write(&path, data).map_err(s)?;
    let opts = ExportOptions { overwrite: true, ..Default::default() };
    import::import(&path, &dir.join("out"), &opts).map(drop).map_err(s)
}

/// Loading a model directory: safetensors header, tensor table, dtypes, shapes against the config.
fn safetensors(data: &[u8], dir: &Path) -> Result<(), String> {
    let st = dir.join("st");
    std::fs::create_dir_all(&st).map_err(s)?;
    std::fs::write(st.join("config.json"), crate::seeds::TINY_CONFIG).map_err(s)?;
    std::fs::write(st.join("model.safetensors"), data).map_err(s)?;
    hf::load_model::<NdArray>(&st, &Default::default()).map(drop).map_err(s)
}

/// A corpus whose `manifest.json` is the input (the shards it names are missing or real).
fn manifest(data: &[u8], dir: &Path) -> Result<(), String> {
    let c = dir.join("corpus");
    std::fs::create_dir_all(&c).map_err(s)?;
    std::fs::write(c.join("manifest.json"), data).map_err(s)?;
    std::fs::write(c.join("shard-00000.jsonl.zst"), crate::seeds::SHARD.get().unwrap())
        .map_err(s)?;
    let _ = corpus::verify(&c);
    let _ = Corpus::open_skipping_damage(&c).map(|c| c.iter().count());
    Corpus::open(&c).map(|c| c.iter().count()).map(drop).map_err(s)
}

/// A corpus whose one shard is the input: strict readers, salvage, verify.
fn shard(data: &[u8], dir: &Path) -> Result<(), String> {
    let c = dir.join("corpus");
    std::fs::create_dir_all(&c).map_err(s)?;
    std::fs::write(c.join("manifest.json"), crate::seeds::MANIFEST.get().unwrap()).map_err(s)?;
    std::fs::write(c.join("shard-00000.jsonl.zst"), data).map_err(s)?;
    let _ = corpus::verify(&c).map_err(s)?;
    if let Ok(salvaged) = Corpus::open_skipping_damage(&c) {
        for t in salvaged.iter() {
            t.map_err(|e| format!("a salvaging reader returned an error: {e}"))?;
        }
    }
    let strict = Corpus::open(&c).map_err(s)?;
    for t in strict.iter() {
        t.map_err(s)?;
    }
    Ok(())
}

/// One trace record: parse, and what parses must serialize and parse back to the same record.
fn trace(data: &[u8], _: &Path) -> Result<(), String> {
    let line = std::str::from_utf8(data).map_err(|_| "not UTF-8".to_string())?;
    let t = Trace::from_json(line).map_err(s)?;
    let again = Trace::from_json(&t.to_json()).map_err(|e| format!("ROUNDTRIP: {e}"))?;
    if again != t {
        return Err(format!("ROUNDTRIP: record {} changed when written and read back", t.id));
    }
    Ok(())
}

/// `generate`'s prompt reader, strict and skipping bad lines.
fn prompts(data: &[u8], dir: &Path) -> Result<(), String> {
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, data).map_err(s)?;
    let skip = ReadOptions { skip_bad: true, ..Default::default() };
    read_prompts(&path, "fz", &FieldMap::chat(), &skip).map_err(s)?;
    read_prompts(&path, "fz", &FieldMap::gsm8k(), &ReadOptions::default()).map(drop).map_err(s)
}

/// A hostile chat template, parsed and rendered for generation and for training.
fn chat_template(data: &[u8], _: &Path) -> Result<(), String> {
    let src = String::from_utf8_lossy(data);
    let t = ChatTemplate::new(&src, Some("<s>"), Some("</s>")).map_err(s)?;
    let msgs = [
        Message { role: Role::System, content: "Be brief.".into() },
        Message { role: Role::User, content: "What is 2+2?".into() },
    ];
    t.render(&msgs, true).map_err(s)?;
    t.render_for_training(&msgs, "<think>\n2+2=4\n</think>\n\n4").map(drop).map_err(s)
}

/// The math verifier on a model's reply: untrusted text (a teacher's or a student's sample). The
/// first line is the gold answer, the rest the reply; judged with every extraction target on, then
/// with boxed answers only, and the gold read as a solution. A verdict, never a panic.
fn math_verify(data: &[u8], _: &Path) -> Result<(), String> {
    use distill_teacher::verify::math::{MathConfig, judge};
    let text = String::from_utf8_lossy(data);
    let (gold, reply) = text.split_once('\n').unwrap_or((&text, ""));
    let (reasoning, answer) = reply.split_once("</think>").unwrap_or(("", reply));
    for cfg in [MathConfig::default(), MathConfig { boxed_only: true, ..MathConfig::default() }] {
        judge(gold, reasoning, answer, &cfg);
        judge(reply, "", gold, &cfg);
    }
    Ok(())
}
