//! Corpus statistics: sizes, verdict pass rates, finish reasons and length distributions.

use std::collections::BTreeMap;

use serde::Serialize;

use super::reader::Corpus;
use crate::error::Result;
use crate::record::Trace;

#[derive(Debug, Clone, Default, Serialize)]
pub struct CorpusStats {
    pub records: u64,
    pub shards: u64,
    pub frames: u64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    /// raw / compressed.
    pub compression_ratio: f64,
    /// Records whose verdicts all passed (including never-verified ones).
    pub passed: u64,
    /// Records with no verdict at all.
    pub unverified: u64,
    /// Per verifier: (passed, ran).
    pub verifiers: BTreeMap<String, (u64, u64)>,
    /// Rejections by their first failing verifier.
    pub rejected_by: BTreeMap<String, u64>,
    pub finish_reasons: BTreeMap<String, u64>,
    pub teachers: BTreeMap<String, u64>,
    pub completion_tokens: Histogram,
    pub reasoning_chars: Histogram,
    pub answer_chars: Histogram,
    /// What was skipped as damaged (a corpus opened with `Corpus::open_skipping_damage`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<super::Damage>,
    /// Records lost to that damage, where known.
    #[serde(skip_serializing_if = "is_zero")]
    pub lost_records: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Log2-bucketed histogram with exact quantiles.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Histogram {
    /// `(lower bound, count)`; bucket `b` holds values in `[2^(b-1), 2^b)`, bucket 0 holds 0.
    pub buckets: Vec<(u64, u64)>,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
}

impl Histogram {
    pub fn from_values(mut v: Vec<u64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        for &x in &v {
            *counts.entry(64 - x.leading_zeros()).or_default() += 1;
        }
        Histogram {
            buckets: counts
                .into_iter()
                .map(|(b, c)| (if b == 0 { 0 } else { 1u64 << (b - 1) }, c))
                .collect(),
            min: v[0],
            max: v[v.len() - 1],
            mean: v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
        }
    }
}

#[derive(Default)]
struct Partial {
    stats: CorpusStats,
    tokens: Vec<u64>,
    reasoning: Vec<u64>,
    answer: Vec<u64>,
    errors: Vec<crate::Error>,
}

impl Partial {
    fn add(&mut self, t: &Trace) {
        let s = &mut self.stats;
        s.records += 1;
        if t.verdicts.is_empty() {
            s.unverified += 1;
        }
        if t.passed() {
            s.passed += 1;
        }
        for v in &t.verdicts {
            let e = s.verifiers.entry(v.verifier.clone()).or_default();
            e.1 += 1;
            e.0 += v.passed as u64;
        }
        if let Some(f) = t.first_failure() {
            *s.rejected_by.entry(f.verifier.clone()).or_default() += 1;
        }
        *s.finish_reasons.entry(t.finish_reason.as_str().to_string()).or_default() += 1;
        *s.teachers.entry(t.teacher.model.clone()).or_default() += 1;
        self.tokens.push(t.usage.completion_tokens);
        self.reasoning.push(t.reasoning.chars().count() as u64);
        self.answer.push(t.answer.chars().count() as u64);
    }

    fn merge(mut self, o: Partial) -> Partial {
        let (a, b) = (&mut self.stats, o.stats);
        a.records += b.records;
        a.passed += b.passed;
        a.unverified += b.unverified;
        for (k, (p, n)) in b.verifiers {
            let e = a.verifiers.entry(k).or_default();
            e.0 += p;
            e.1 += n;
        }
        for (dst, src) in [
            (&mut a.rejected_by, b.rejected_by),
            (&mut a.finish_reasons, b.finish_reasons),
            (&mut a.teachers, b.teachers),
        ] {
            for (k, n) in src {
                *dst.entry(k).or_default() += n;
            }
        }
        self.tokens.extend(o.tokens);
        self.reasoning.extend(o.reasoning);
        self.answer.extend(o.answer);
        self.errors.extend(o.errors);
        self
    }
}

/// Compute statistics with a parallel scan. The first unreadable frame is an error (run
/// `corpus verify` for a full damage report), unless the corpus was opened skipping damage: then
/// the statistics cover what is readable and list what was skipped.
pub fn stats(corpus: &Corpus) -> Result<CorpusStats> {
    let parts = corpus.par_map_frames(|_, records| {
        let mut p = Partial::default();
        match records {
            Ok(rs) => rs.iter().for_each(|t| p.add(t)),
            Err(e) => p.errors.push(e),
        }
        p
    });
    let mut all = parts.into_iter().fold(Partial::default(), Partial::merge);
    if let Some(e) = all.errors.drain(..).next() {
        return Err(e);
    }
    let mut s = all.stats;
    let m = corpus.manifest();
    s.shards = m.shards.len() as u64;
    s.frames = m.shards.iter().map(|x| x.frames).sum();
    s.raw_bytes = m.shards.iter().map(|x| x.raw_bytes).sum();
    s.compressed_bytes = m.shards.iter().map(|x| x.compressed_bytes).sum();
    s.compression_ratio =
        if s.compressed_bytes > 0 { s.raw_bytes as f64 / s.compressed_bytes as f64 } else { 0.0 };
    s.completion_tokens = Histogram::from_values(all.tokens);
    s.reasoning_chars = Histogram::from_values(all.reasoning);
    s.answer_chars = Histogram::from_values(all.answer);
    s.damage = corpus.damage();
    s.lost_records = corpus.lost_records();
    Ok(s)
}
