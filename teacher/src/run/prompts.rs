//! Prompt selection: read, dedup, decontaminate, limit — before any request.

use std::collections::HashSet;

use distill_data::Prompt;
use distill_data::prompts::{ReadOptions, dataset_name, read_prompts};

use super::config::GenerateConfig;
use crate::decontam::{Decontaminator, Hit, dedup};
use crate::error::{Error, Result};

/// Prompts after reading, dedup, decontamination and the limit.
pub struct PromptSet {
    pub prompts: Vec<Prompt>,
    pub read: u64,
    pub bad_lines: Vec<(u64, String)>,
    pub duplicates: u64,
    pub contaminated: Vec<(String, Hit)>,
}

/// Read and clean the prompts. Fails early (before any request) on a missing or empty file.
pub fn load_prompts(cfg: &GenerateConfig) -> Result<PromptSet> {
    let dataset = cfg.dataset.clone().unwrap_or_else(|| dataset_name(&cfg.prompts));
    let opts = ReadOptions { skip_bad: cfg.skip_bad_lines, ..Default::default() };
    let (prompts, rep) = read_prompts(&cfg.prompts, &dataset, &cfg.fields, &opts)?;
    if prompts.is_empty() {
        return Err(Error::Config(format!(
            "{}: no prompts ({} lines, {} skipped as bad)",
            cfg.prompts.display(),
            rep.lines,
            rep.skipped.len()
        )));
    }
    let read = prompts.len() as u64 + rep.duplicates;
    let user_text = |p: &Prompt| crate::decontam::problem_text(&p.messages);
    let mut prompts = prompts;
    let mut duplicates = rep.duplicates;
    if cfg.dedup {
        let texts: Vec<String> = prompts.iter().map(user_text).collect();
        let (kept, dropped) = dedup(texts.iter().map(String::as_str));
        duplicates += dropped as u64;
        let keep: HashSet<usize> = kept.into_iter().collect();
        prompts = prompts
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, p)| p)
            .collect();
    }
    let mut contaminated = Vec::new();
    if !cfg.decontaminate_against.is_empty() {
        let d = Decontaminator::from_files(&cfg.decontaminate_against, cfg.decontaminate_ngram)?;
        prompts.retain(|p| match d.check(&user_text(p)) {
            Some(hit) => {
                contaminated.push((p.id.clone(), hit));
                false
            }
            None => true,
        });
    }
    if let Some(l) = cfg.limit {
        prompts.truncate(l);
    }
    Ok(PromptSet { prompts, read, bad_lines: rep.skipped, duplicates, contaminated })
}
