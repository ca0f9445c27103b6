//! Corpus-to-corpus operations: filter and merge. Both append into a destination corpus through
//! the writer and skip ids it already holds, so re-running after a crash simply continues.

use std::collections::BTreeMap;

use serde::Serialize;

use super::reader::Corpus;
use super::writer::CorpusWriter;
use crate::error::Result;
use crate::record::{FinishReason, Trace};

/// Which records to keep. Every set condition must hold.
#[derive(Debug, Clone, Default)]
pub struct FilterSpec {
    /// Keep only records whose verdicts all passed (`Some(true)`) or that failed one (`Some(false)`).
    pub passed: Option<bool>,
    /// Drop records with these finish reasons (e.g. `length`).
    pub drop_finish: Vec<FinishReason>,
    /// Bounds on reasoning + answer length in characters.
    pub min_chars: Option<u64>,
    pub max_chars: Option<u64>,
    /// Bounds on completion tokens as the teacher reported them.
    pub min_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
}

impl FilterSpec {
    /// `None` if the record is kept, else the reason it is dropped.
    pub fn reject_reason(&self, t: &Trace) -> Option<&'static str> {
        if let Some(p) = self.passed
            && t.passed() != p
        {
            return Some(if p { "verdict failed" } else { "verdict passed" });
        }
        if self.drop_finish.contains(&t.finish_reason) {
            return Some("finish_reason");
        }
        let chars = (t.reasoning.chars().count() + t.answer.chars().count()) as u64;
        if self.min_chars.is_some_and(|m| chars < m) {
            return Some("too short (chars)");
        }
        if self.max_chars.is_some_and(|m| chars > m) {
            return Some("too long (chars)");
        }
        let tok = t.usage.completion_tokens;
        if self.min_tokens.is_some_and(|m| tok < m) {
            return Some("too short (tokens)");
        }
        if self.max_tokens.is_some_and(|m| tok > m) {
            return Some("too long (tokens)");
        }
        None
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    pub read: u64,
    pub written: u64,
    /// Records whose id the destination already held with the same content (from an earlier
    /// run or another input).
    pub already_present: u64,
    /// Records whose id the destination already held with *different* content: not written (the
    /// first copy wins), counted and named here.
    pub conflicting: u64,
    /// The first 100 conflicting ids.
    pub conflicting_ids: Vec<String>,
    pub dropped: BTreeMap<String, u64>,
}

/// Copy the records of `src` that pass `spec` into `dst`.
pub fn filter(src: &Corpus, dst: &mut CorpusWriter, spec: &FilterSpec) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    copy_into(src, dst, &mut report, |t| spec.reject_reason(t))?;
    dst.commit()?;
    Ok(report)
}

/// Append every record of every input into `dst`; the first copy of an id wins.
pub fn merge(srcs: &[Corpus], dst: &mut CorpusWriter) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    for src in srcs {
        copy_into(src, dst, &mut report, |_| None)?;
    }
    dst.commit()?;
    Ok(report)
}

fn copy_into(
    src: &Corpus,
    dst: &mut CorpusWriter,
    report: &mut CopyReport,
    reject: impl Fn(&Trace) -> Option<&'static str>,
) -> Result<()> {
    for t in src.iter() {
        let t = t?;
        report.read += 1;
        if let Some(same) = dst.same_content(&t)? {
            if same {
                report.already_present += 1;
            } else {
                report.conflicting += 1;
                if report.conflicting_ids.len() < 100 {
                    report.conflicting_ids.push(t.id.clone());
                }
            }
        } else if let Some(why) = reject(&t) {
            *report.dropped.entry(why.to_string()).or_default() += 1;
        } else {
            dst.append(t)?;
            report.written += 1;
        }
    }
    Ok(())
}
