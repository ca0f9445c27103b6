//! Prompt dedup and decontamination.
//!
//! - Exact dedup after normalisation: case folded, whitespace collapsed, outer punctuation trimmed.
//! - Decontamination (Open-R1's rule): a prompt is dropped if it shares a word n-gram (n = 8 by
//!   default) with any problem of an eval set. Words are lowercase alphanumeric runs, so LaTeX and
//!   punctuation do not hide a copy. What is compared is the problem: the user turns
//!   ([`problem_text`]), never the teacher's answer. Prompt selection before generation, the
//!   `filter` stage and `distill corpus decontaminate` all use [`Decontaminator`] this way and
//!   report with one schema ([`Contaminated`]).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use distill_data::prompts::JsonlLines;
use distill_data::{Corpus, CorpusWriter, Message, Role};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The n-gram length Open-R1 decontaminates with.
pub const DEFAULT_NGRAM: usize = 8;

/// The text compared with the eval sets: the user turns, joined.
pub fn problem_text(messages: &[Message]) -> String {
    messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One item dropped as contaminated, as every report writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contaminated {
    /// The trace id (or, before generation, the prompt id).
    pub id: String,
    pub prompt_id: String,
    pub eval_file: PathBuf,
    /// 1-based line in the eval file.
    pub eval_line: u64,
    /// The shared words.
    pub shared_ngram: String,
}

impl Contaminated {
    pub fn new(id: &str, prompt_id: &str, hit: Hit) -> Self {
        Contaminated {
            id: id.into(),
            prompt_id: prompt_id.into(),
            eval_file: hit.file,
            eval_line: hit.line,
            shared_ngram: hit.ngram,
        }
    }
}

/// What decontaminating a corpus did.
#[derive(Debug, Clone, Serialize)]
pub struct CorpusDecontamination {
    pub against: Vec<PathBuf>,
    pub eval_problems: usize,
    pub ngram: usize,
    pub kept: u64,
    /// Already in the destination (a resumed run).
    pub already_present: u64,
    pub dropped: Vec<Contaminated>,
}

/// Copy `src` into `out`, leaving out every trace whose problem shares an n-gram with an eval
/// problem. Resumable: traces already in `out` are skipped. Commits `out`.
pub fn decontaminate_corpus(
    src: &Corpus,
    out: &mut CorpusWriter,
    against: &[PathBuf],
    n: usize,
) -> Result<CorpusDecontamination> {
    let d = Decontaminator::from_files(against, n)?;
    let mut rep = CorpusDecontamination {
        against: against.to_vec(),
        eval_problems: d.problems,
        ngram: n,
        kept: 0,
        already_present: 0,
        dropped: vec![],
    };
    for t in src.iter() {
        let t = t?;
        if out.contains(&t.id) {
            rep.already_present += 1;
            continue;
        }
        match d.check(&problem_text(&t.messages)) {
            Some(hit) => rep.dropped.push(Contaminated::new(&t.id, &t.prompt_id, hit)),
            None => {
                out.append(t)?;
                rep.kept += 1;
            }
        }
    }
    out.commit()?;
    Ok(rep)
}

/// The key under which two prompts count as the same.
pub fn normalize_prompt(text: &str) -> String {
    let folded = text.to_lowercase();
    let collapsed = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace()).to_string()
}

/// Lowercase alphanumeric words.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn hash_gram(g: &[String]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    g.hash(&mut h);
    h.finish()
}

/// Where an n-gram was seen in the eval sets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub file: PathBuf,
    /// 1-based line in the eval file.
    pub line: u64,
    /// The shared words.
    pub ngram: String,
}

pub struct Decontaminator {
    n: usize,
    grams: HashMap<u64, (usize, u64)>,
    files: Vec<PathBuf>,
    pub problems: usize,
}

impl Decontaminator {
    /// Index every string field that looks like a problem (`problem`, `question`, `prompt`, or a
    /// `messages` array's user turns) of each JSONL eval file.
    pub fn from_files(files: &[PathBuf], n: usize) -> Result<Decontaminator> {
        let mut d = Decontaminator { n, grams: HashMap::new(), files: files.to_vec(), problems: 0 };
        for (fi, path) in files.iter().enumerate() {
            let f =
                std::fs::File::open(path).map_err(|e| Error::Io { path: path.clone(), err: e })?;
            for item in JsonlLines::new(std::io::BufReader::new(f), path, 16 << 20) {
                let (line, text) = item?;
                let text =
                    text.map_err(|m| Error::Config(format!("{}:{line}: {m}", path.display())))?;
                if text.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&text).map_err(|e| {
                    Error::Config(format!("{}:{line}: invalid JSON: {e}", path.display()))
                })?;
                let problem = eval_problem_text(&v);
                if problem.is_empty() {
                    return Err(Error::Config(format!(
                        "{}:{line}: no problem/question/prompt/messages field",
                        path.display()
                    )));
                }
                d.problems += 1;
                let w = words(&problem);
                for g in w.windows(n) {
                    d.grams.entry(hash_gram(g)).or_insert((fi, line));
                }
            }
        }
        Ok(d)
    }

    /// The first eval-set n-gram `text` shares, if any.
    pub fn check(&self, text: &str) -> Option<Hit> {
        let w = words(text);
        w.windows(self.n).find_map(|g| {
            self.grams.get(&hash_gram(g)).map(|&(fi, line)| Hit {
                file: self.files[fi].clone(),
                line,
                ngram: g.join(" "),
            })
        })
    }
}

fn eval_problem_text(v: &Value) -> String {
    for k in ["problem", "question", "prompt", "instruction"] {
        if let Some(s) = v.get(k).and_then(Value::as_str) {
            return s.to_string();
        }
    }
    v.get("messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter(|x| x.get("role").and_then(Value::as_str) == Some("user"))
                .filter_map(|x| x.get("content")?.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Exact dedup: keeps the first of each normalised text; returns the indices kept.
pub fn dedup<'a>(texts: impl Iterator<Item = &'a str>) -> (Vec<usize>, usize) {
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    let mut dropped = 0;
    for (i, t) in texts.enumerate() {
        if seen.insert(normalize_prompt(t)) {
            kept.push(i);
        } else {
            dropped += 1;
        }
    }
    (kept, dropped)
}

/// Absolute or relative path display helper for reports.
pub fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_copies_share_an_8_gram_and_clean_text_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("eval.jsonl");
        std::fs::write(&f, "{\"problem\": \"How many vertical asymptotes does the graph of $y=\\\\frac{2}{x^2+x-6}$ have?\", \"answer\": \"2\"}\n").unwrap();
        let d = Decontaminator::from_files(&[f], 8).unwrap();
        let planted = "Question: how many vertical asymptotes does the graph of y = 2/(x^2+x-6) have? Explain.";
        let hit = d.check(planted).expect("a near-copy is caught");
        assert_eq!(hit.line, 1);
        assert!(
            d.check("Tom has 3 apples and buys 4 more. How many apples does he have now?")
                .is_none()
        );
        assert_eq!(dedup(["A b", "a  B.", "c"].into_iter()), (vec![0, 2], 1));
    }
}
