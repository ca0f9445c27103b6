//! Prompt datasets: JSONL files read into [`Prompt`]s through a [`FieldMap`].
//!
//! Three shapes are covered by presets: `problem` + `answer` (MATH-500, AIME, AMC), `question` +
//! `answer` with GSM8K's `#### N` result line, and an OpenAI-style `messages` array. A prompt's id
//! is `{dataset}/{value of the id field}` when the map names one, else `{dataset}/{hash}` of its
//! messages, so ids survive reordering and editing other lines of the file.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::record::{Message, Role, Source};

/// A prompt ready for the teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: String,
    pub source: Source,
    pub messages: Vec<Message>,
    /// Reference answer (for GSM8K: the number after `####`).
    pub reference: Option<String>,
    /// Fields copied through `FieldMap::keep`, plus `solution` for GSM8K.
    pub metadata: Map<String, Value>,
}

/// How a JSONL row maps onto a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldMap {
    /// Field holding the user prompt text (e.g. `problem`, `question`). Exclusive with `messages`.
    pub prompt: Option<String>,
    /// Field holding an OpenAI-style `[{role, content}]` array.
    pub messages: Option<String>,
    /// Field holding the reference answer.
    pub answer: Option<String>,
    /// How to read the answer field.
    pub answer_style: AnswerStyle,
    /// A row without the answer field is an error (true) or a prompt without a reference (false).
    pub require_answer: bool,
    /// Field holding a stable id; otherwise the id is a hash of the messages.
    pub id: Option<String>,
    /// A system message put before the prompt.
    pub system: Option<String>,
    /// Template for the user turn; `{prompt}` is replaced by the prompt field.
    pub template: Option<String>,
    /// Extra fields copied into `metadata`.
    pub keep: Vec<String>,
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            prompt: None,
            messages: None,
            answer: None,
            answer_style: AnswerStyle::Plain,
            require_answer: true,
            id: None,
            system: None,
            template: None,
            keep: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerStyle {
    /// The field is the answer.
    Plain,
    /// GSM8K: a solution whose last line is `#### N`; N is the answer, the rest the solution.
    Gsm8k,
}

impl FieldMap {
    /// `problem` + `answer` (MATH-500, AIME, AMC).
    pub fn math() -> Self {
        FieldMap {
            prompt: Some("problem".into()),
            answer: Some("answer".into()),
            ..Default::default()
        }
    }

    /// `question` + `answer` with `#### N`.
    pub fn gsm8k() -> Self {
        FieldMap {
            prompt: Some("question".into()),
            answer: Some("answer".into()),
            answer_style: AnswerStyle::Gsm8k,
            ..Default::default()
        }
    }

    /// An OpenAI-style `messages` array.
    pub fn chat() -> Self {
        FieldMap { messages: Some("messages".into()), ..Default::default() }
    }

    /// A preset by name: `math`, `gsm8k` or `chat`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "math" => Some(Self::math()),
            "gsm8k" => Some(Self::gsm8k()),
            "chat" | "messages" => Some(Self::chat()),
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match (&self.prompt, &self.messages) {
            (Some(_), Some(_)) => {
                Err(Error::Invalid("field map: set either `prompt` or `messages`, not both".into()))
            }
            (None, None) => Err(Error::Invalid(
                "field map: set `prompt` (a text field) or `messages` (a chat array)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Turn one parsed JSON row into a prompt. Errors are plain messages; the caller adds file:line.
    pub(crate) fn apply(
        &self,
        dataset: &str,
        row: u64,
        obj: &Map<String, Value>,
    ) -> std::result::Result<Prompt, String> {
        let mut messages = Vec::new();
        if let Some(sys) = &self.system {
            messages.push(Message::new(Role::System, sys.clone()));
        }
        if let Some(field) = &self.prompt {
            let text = str_field(obj, field)?;
            let content = match &self.template {
                Some(t) => t.replace("{prompt}", text),
                None => text.to_string(),
            };
            messages.push(Message::new(Role::User, content));
        } else if let Some(field) = &self.messages {
            let v = obj.get(field).ok_or_else(|| format!("missing field '{field}'"))?;
            let msgs: Vec<Message> = serde_json::from_value(v.clone())
                .map_err(|e| format!("field '{field}' is not a [{{role, content}}] array: {e}"))?;
            if msgs.is_empty() {
                return Err(format!("field '{field}' is an empty array"));
            }
            // A trailing assistant turn is the dataset's own reply, not part of the prompt.
            let keep = if msgs.last().is_some_and(|m| m.role == Role::Assistant) {
                msgs.len() - 1
            } else {
                msgs.len()
            };
            messages.extend(msgs.into_iter().take(keep));
        }
        if !messages.iter().any(|m| m.role == Role::User) {
            return Err("prompt has no user message".into());
        }

        let mut metadata = Map::new();
        let reference = match &self.answer {
            None => None,
            Some(field) => {
                let raw = match obj.get(field) {
                    None if !self.require_answer => {
                        return self.finish(dataset, row, obj, messages, None, metadata);
                    }
                    None => return Err(format!("missing field '{field}'")),
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Number(_)) => v.to_string(),
                    Some(_) => return Err(format!("field '{field}' is not a string or number")),
                };
                match self.answer_style {
                    AnswerStyle::Plain => Some(raw),
                    AnswerStyle::Gsm8k => {
                        let (solution, answer) = raw.rsplit_once("####").ok_or_else(|| {
                            format!("field '{field}' has no '#### N' answer line")
                        })?;
                        metadata
                            .insert("solution".into(), Value::String(solution.trim().to_string()));
                        Some(answer.trim().to_string())
                    }
                }
            }
        };
        self.finish(dataset, row, obj, messages, reference, metadata)
    }

    fn finish(
        &self,
        dataset: &str,
        row: u64,
        obj: &Map<String, Value>,
        messages: Vec<Message>,
        reference: Option<String>,
        mut metadata: Map<String, Value>,
    ) -> std::result::Result<Prompt, String> {
        for k in &self.keep {
            if let Some(v) = obj.get(k) {
                metadata.insert(k.clone(), v.clone());
            }
        }

        let id = match &self.id {
            Some(field) => match obj.get(field) {
                Some(Value::String(s)) => format!("{dataset}/{s}"),
                Some(v @ Value::Number(_)) => format!("{dataset}/{v}"),
                _ => return Err(format!("missing or non-scalar id field '{field}'")),
            },
            None => {
                let canon = serde_json::to_vec(&messages).expect("messages serialize");
                let hash = blake3::hash(&canon).to_hex();
                format!("{dataset}/{}", &hash[..16])
            }
        };
        Ok(Prompt {
            id,
            source: Source { dataset: dataset.to_string(), row },
            messages,
            reference,
            metadata,
        })
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, field: &str) -> std::result::Result<&'a str, String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("field '{field}' is empty")),
        Some(_) => Err(format!("field '{field}' is not a string")),
        None => Err(format!("missing field '{field}'")),
    }
}

/// Options for [`read_prompts`].
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Skip bad lines and count them in the report instead of failing on the first one.
    pub skip_bad: bool,
    /// Lines longer than this are bad input (a prompt file is not a blob store).
    pub max_line_bytes: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { skip_bad: false, max_line_bytes: 1 << 20 }
    }
}

/// What reading a prompt file saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PromptReport {
    pub file: PathBuf,
    pub lines: u64,
    pub prompts: u64,
    pub blank: u64,
    /// Prompts whose id was already seen in this file (dropped).
    pub duplicates: u64,
    /// `(line, reason)` for each skipped bad line (only with `skip_bad`).
    pub skipped: Vec<(u64, String)>,
}

/// The dataset name of a file: its stem (`gsm8k-train.jsonl` → `gsm8k-train`).
pub fn dataset_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "prompts".into());
    name.trim_end_matches(".jsonl")
        .trim_end_matches(".json")
        .trim_end_matches(".parquet")
        .to_string()
}

/// Read a JSONL prompt file. Bad lines are `file:line` errors, or skipped and reported.
pub fn read_prompts(
    path: &Path,
    dataset: &str,
    map: &FieldMap,
    opts: &ReadOptions,
) -> Result<(Vec<Prompt>, PromptReport)> {
    map.validate()?;
    if crate::columnar::is_parquet(path) {
        return read_parquet_prompts(path, dataset, map, opts);
    }
    let file = File::open(path).at(path)?;
    let mut report = PromptReport { file: path.to_path_buf(), ..Default::default() };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in JsonlLines::new(BufReader::new(file), path, opts.max_line_bytes) {
        let (lineno, line) = item?;
        report.lines = lineno;
        let parsed = line.and_then(|text| {
            if text.trim().is_empty() {
                return Ok(None);
            }
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
            let Value::Object(obj) = v else { return Err("line is not a JSON object".to_string()) };
            map.apply(dataset, lineno - 1, &obj).map(Some)
        });
        match parsed {
            Ok(None) => report.blank += 1,
            Ok(Some(p)) => {
                if seen.insert(p.id.clone()) {
                    out.push(p);
                    report.prompts += 1;
                } else {
                    report.duplicates += 1;
                }
            }
            Err(msg) if opts.skip_bad => report.skipped.push((lineno, msg)),
            Err(msg) => return Err(Error::Line { path: path.to_path_buf(), line: lineno, msg }),
        }
    }
    Ok((out, report))
}

/// [`read_prompts`] for a Parquet file: each row is mapped as a JSONL line would be; `lines` in
/// the report counts rows, and a bad row is `file: row N` (0-based).
fn read_parquet_prompts(
    path: &Path,
    dataset: &str,
    map: &FieldMap,
    opts: &ReadOptions,
) -> Result<(Vec<Prompt>, PromptReport)> {
    let mut report = PromptReport { file: path.to_path_buf(), ..Default::default() };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let limits =
        crate::columnar::Limits { max_row_bytes: opts.max_line_bytes, ..Default::default() };
    for item in crate::columnar::ParquetRows::open_with(path, limits)? {
        let (row, mut obj) = item?;
        report.lines = row + 1;
        // A null cell is a missing field, as an absent key is in JSONL.
        obj.retain(|_, v| !v.is_null());
        match map.apply(dataset, row, &obj) {
            Ok(p) => {
                if seen.insert(p.id.clone()) {
                    out.push(p);
                    report.prompts += 1;
                } else {
                    report.duplicates += 1;
                }
            }
            Err(msg) if opts.skip_bad => report.skipped.push((row, msg)),
            Err(msg) => return Err(Error::Row { path: path.to_path_buf(), row, msg }),
        }
    }
    Ok((out, report))
}

/// Lines of a JSONL file as `(1-based line number, Ok(text) | Err(why the line is bad))`.
/// The outer `Result` is an I/O error; a line that is too long or not UTF-8 is a bad line, and
/// an over-long line is skipped without being held in memory.
pub struct JsonlLines<R> {
    reader: R,
    path: PathBuf,
    max: usize,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> JsonlLines<R> {
    pub fn new(reader: R, path: &Path, max_line_bytes: usize) -> Self {
        JsonlLines {
            reader,
            path: path.to_path_buf(),
            max: max_line_bytes,
            line: 0,
            buf: Vec::new(),
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for JsonlLines<R> {
    type Item = Result<(u64, std::result::Result<String, String>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.buf.clear();
        let limit = self.max as u64 + 1;
        let n = match (&mut self.reader).take(limit).read_until(b'\n', &mut self.buf) {
            Ok(n) => n,
            Err(e) => {
                self.done = true;
                return Some(Err(Error::io(&self.path, e)));
            }
        };
        if n == 0 {
            self.done = true;
            return None;
        }
        self.line += 1;
        let ended = self.buf.last() == Some(&b'\n');
        if !ended && n as u64 == limit {
            // Over-long: drain the rest of the line without keeping it.
            let mut total = n as u64;
            loop {
                let chunk = match self.reader.fill_buf() {
                    Ok(c) => c,
                    Err(e) => return Some(Err(Error::io(&self.path, e))),
                };
                if chunk.is_empty() {
                    break;
                }
                let (used, found) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (chunk.len(), false),
                };
                self.reader.consume(used);
                total += used as u64;
                if found {
                    break;
                }
            }
            let msg = format!("line is {total} bytes, over the limit of {} bytes", self.max);
            return Some(Ok((self.line, Err(msg))));
        }
        if ended {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        // A UTF-8 byte-order mark (Windows editors write one) starts the file, not the JSON.
        let body: &[u8] = match (self.line, self.buf.strip_prefix(b"\xEF\xBB\xBF")) {
            (1, Some(rest)) => rest,
            _ => &self.buf,
        };
        let text = match std::str::from_utf8(body) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
        };
        Some(Ok((self.line, text)))
    }
}
