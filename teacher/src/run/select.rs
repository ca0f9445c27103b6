//! Keep / reject: the traces of a finished prompt, in sample order, the first K that pass kept.

use std::collections::BTreeMap;

use distill_data::{Trace, Verdict};

/// What selection decided for one prompt.
pub(super) struct Selected {
    /// Traces to write: the kept ones, and the rejected ones when `keep_rejected`.
    pub write: Vec<Trace>,
    pub samples: u64,
    pub passed: u64,
    pub kept: u32,
    /// Samples by the first verdict they failed.
    pub rejected_by: BTreeMap<String, u64>,
}

/// Keep the first `keep` passing samples (by sample index); a passing sample beyond them is
/// marked rejected by "rejection". Rejected samples are written only when `keep_rejected`.
pub(super) fn select(
    mut samples: Vec<(u32, Trace, bool)>,
    keep: u32,
    keep_rejected: bool,
) -> Selected {
    samples.sort_by_key(|s| s.0);
    let mut out =
        Selected { write: vec![], samples: 0, passed: 0, kept: 0, rejected_by: BTreeMap::new() };
    for (_, mut trace, passed) in samples {
        out.samples += 1;
        out.passed += passed as u64;
        let keep_it = passed && out.kept < keep;
        if keep_it {
            out.kept += 1;
        } else if passed {
            trace.verdicts.push(Verdict {
                verifier: "rejection".into(),
                passed: false,
                extracted: None,
                reason: Some(format!("{keep} passing samples already kept")),
            });
        }
        if let Some(f) = trace.first_failure() {
            *out.rejected_by.entry(f.verifier.clone()).or_default() += 1;
        }
        if keep_it || keep_rejected {
            out.write.push(trace);
        }
    }
    out
}
