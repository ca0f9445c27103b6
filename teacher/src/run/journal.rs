//! What is done already: prompts with committed traces, plus a journal of prompts that finished
//! with nothing written. A restart skips both, so no committed prompt is sent again.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use distill_data::CorpusWriter;

use crate::error::{Error, Result};

pub(super) const JOURNAL: &str = "generate.done";

/// Prompt ids finished earlier: those with committed traces, plus the journal of prompts that
/// finished with nothing written (all samples rejected and `keep_rejected = false`).
pub(super) fn done_prompts(writer: &CorpusWriter) -> HashSet<String> {
    let mut done: HashSet<String> = writer
        .committed_ids()
        .iter()
        .filter_map(|id| id.rsplit_once('#').map(|(p, _)| p.to_string()))
        .collect();
    if let Ok(text) = std::fs::read_to_string(writer.dir().join(JOURNAL)) {
        done.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    done
}

/// Commit the corpus, then record prompts that finished with nothing written.
pub(super) fn commit(
    writer: &mut CorpusWriter,
    journal: &Path,
    empty_done: &mut Vec<String>,
) -> Result<()> {
    writer.commit()?;
    if !empty_done.is_empty() {
        let io = |e| Error::Io { path: journal.to_path_buf(), err: e };
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(journal).map_err(io)?;
        for id in empty_done.drain(..) {
            writeln!(f, "{id}").map_err(io)?;
        }
        f.sync_all().map_err(io)?;
    }
    Ok(())
}
