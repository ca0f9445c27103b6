//! The rewards of a rollout: a weighted sum of components, each a [`Reward`]. The recipe's
//! `[train.grpo.rewards]` ([`RewardConfig`]) picks the weights of the built-in ones:
//!
//! - **accuracy** — the verifier's verdict on the answer against the prompt's reference (the
//!   judge rejection sampling and eval use), 1 or 0;
//! - **format** — R1's: a closed `<think>…</think>` block with reasoning in it, then a non-empty
//!   answer, 1 or 0;
//! - **language** — R1's language consistency: the share of the reasoning's words written in the
//!   target language's script (the whole completion when there is no think block);
//! - **overlong** — DAPO's soft overlong punishment (its eq. 13, TRL's
//!   `get_soft_overlong_punishment`): 0 up to `max_tokens − buffer` tokens, then falling
//!   linearly to −1 at `max_tokens`.
//!
//! Another verifier (code, say) plugs in as a [`Reward`].

use distill_data::Prompt;
use distill_data::think::{ThinkBlock, split_think};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::onpolicy::Judge;

/// One rollout, as a reward sees it.
pub struct Rollout<'a> {
    pub prompt: &'a Prompt,
    /// The decoded completion (special tokens removed).
    pub text: &'a str,
    /// Completion tokens.
    pub tokens: usize,
    /// Whether it ended with an end-of-sequence token.
    pub eos: bool,
}

/// A reward component.
pub trait Reward: Sync {
    /// Its key in metrics and traces.
    fn name(&self) -> &'static str;
    fn score(&self, r: &Rollout<'_>) -> f64;
}

/// The script a language is written in, for the language-consistency reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// English (Latin letters).
    En,
    /// Chinese (Han characters).
    Zh,
    /// Russian (Cyrillic letters).
    Ru,
}

/// `[train.grpo.rewards]`: each component's weight (0 leaves it out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    pub accuracy: f64,
    pub format: f64,
    pub language: f64,
    pub language_target: Language,
    pub overlong: f64,
    /// DAPO's L_cache: the punishment starts this many tokens before max_tokens (default: a
    /// quarter of max_tokens).
    pub overlong_buffer: Option<usize>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            accuracy: 1.0,
            format: 0.0,
            language: 0.0,
            language_target: Language::En,
            overlong: 0.0,
            overlong_buffer: None,
        }
    }
}

impl RewardConfig {
    pub fn validate(&self) -> Result<()> {
        let w = [self.accuracy, self.format, self.language, self.overlong];
        if w.iter().any(|x| !x.is_finite()) || w.iter().all(|x| *x == 0.0) {
            return Err(Error::Config {
                section: "train.grpo.rewards",
                msg: "weights must be finite numbers, and at least one must be non-zero".into(),
            });
        }
        Ok(())
    }
}

struct Accuracy<'a>(Judge<'a>);

impl Reward for Accuracy<'_> {
    fn name(&self) -> &'static str {
        "accuracy"
    }
    fn score(&self, r: &Rollout<'_>) -> f64 {
        match &r.prompt.reference {
            Some(gold) if (self.0)(gold, r.text).1 => 1.0,
            _ => 0.0,
        }
    }
}

struct Format;

impl Reward for Format {
    fn name(&self) -> &'static str {
        "format"
    }
    fn score(&self, r: &Rollout<'_>) -> f64 {
        let (reasoning, answer, block) = split_think(r.text);
        let ok = block == ThinkBlock::Closed && !reasoning.is_empty() && !answer.is_empty();
        if ok { 1.0 } else { 0.0 }
    }
}

struct LanguageConsistency(Language);

/// Whether `c` is a letter of `lang`'s script.
fn in_script(c: char, lang: Language) -> bool {
    match lang {
        Language::En => c.is_ascii_alphabetic(),
        Language::Zh => matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}'),
        Language::Ru => matches!(c, '\u{0400}'..='\u{04FF}'),
    }
}

/// The share of `text`'s words in `lang`'s script. A word is a run of letters; Han characters
/// count one word each (Chinese is not written with spaces). No words: 0.
pub fn language_share(text: &str, lang: Language) -> f64 {
    let (mut words, mut ours) = (0usize, 0usize);
    let mut current: Option<bool> = None; // inside a word: all letters so far in the script?
    let han = |c: char| in_script(c, Language::Zh);
    for c in text.chars() {
        if han(c) {
            if let Some(all) = current.take() {
                words += 1;
                ours += all as usize;
            }
            words += 1;
            ours += (lang == Language::Zh) as usize;
        } else if c.is_alphabetic() {
            let mine = in_script(c, lang);
            current = Some(current.map_or(mine, |all| all && mine));
        } else if let Some(all) = current.take() {
            words += 1;
            ours += all as usize;
        }
    }
    if let Some(all) = current {
        words += 1;
        ours += all as usize;
    }
    if words == 0 { 0.0 } else { ours as f64 / words as f64 }
}

impl Reward for LanguageConsistency {
    fn name(&self) -> &'static str {
        "language"
    }
    fn score(&self, r: &Rollout<'_>) -> f64 {
        let (reasoning, _, block) = split_think(r.text);
        let text = if block == ThinkBlock::Absent { r.text } else { reasoning.as_str() };
        language_share(text, self.0)
    }
}

struct Overlong {
    max_tokens: usize,
    buffer: usize,
}

impl Reward for Overlong {
    fn name(&self) -> &'static str {
        "overlong"
    }
    fn score(&self, r: &Rollout<'_>) -> f64 {
        let expected = self.max_tokens.saturating_sub(self.buffer);
        if r.tokens <= expected || self.buffer == 0 {
            if r.tokens > self.max_tokens { -1.0 } else { 0.0 }
        } else if r.tokens <= self.max_tokens {
            (expected as f64 - r.tokens as f64) / self.buffer as f64
        } else {
            -1.0
        }
    }
}

/// The weighted components of the recipe.
pub struct Rewards<'a> {
    parts: Vec<(Box<dyn Reward + 'a>, f64)>,
}

impl<'a> Rewards<'a> {
    /// The built-in components with non-zero weight. `judge` is needed for `accuracy`.
    pub fn new(cfg: &RewardConfig, max_tokens: usize, judge: Option<Judge<'a>>) -> Result<Self> {
        let mut parts: Vec<(Box<dyn Reward + 'a>, f64)> = vec![];
        if cfg.accuracy != 0.0 {
            let judge = judge.ok_or_else(|| Error::Config {
                section: "train.grpo.rewards",
                msg: "accuracy needs a verifier, and none was given".into(),
            })?;
            parts.push((Box::new(Accuracy(judge)), cfg.accuracy));
        }
        if cfg.format != 0.0 {
            parts.push((Box::new(Format), cfg.format));
        }
        if cfg.language != 0.0 {
            parts.push((Box::new(LanguageConsistency(cfg.language_target)), cfg.language));
        }
        if cfg.overlong != 0.0 {
            let buffer = cfg.overlong_buffer.unwrap_or(max_tokens / 4);
            parts.push((Box::new(Overlong { max_tokens, buffer }), cfg.overlong));
        }
        Ok(Rewards { parts })
    }

    /// Another component (a code verifier, say).
    pub fn with(mut self, reward: Box<dyn Reward + 'a>, weight: f64) -> Self {
        self.parts.push((reward, weight));
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.parts.iter().map(|(r, _)| r.name()).collect()
    }

    /// Whether the accuracy component is in (prompts then need reference answers).
    pub fn needs_references(&self) -> bool {
        self.names().contains(&"accuracy")
    }

    /// `(Σ weight · component, the components)`.
    pub fn score(&self, r: &Rollout<'_>) -> (f64, Vec<f64>) {
        let parts: Vec<f64> = self.parts.iter().map(|(c, _)| c.score(r)).collect();
        let total = parts.iter().zip(&self.parts).map(|(x, (_, w))| x * w).sum();
        (total, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(reference: Option<&str>) -> Prompt {
        Prompt {
            id: "p".into(),
            source: distill_data::Source { dataset: "d".into(), row: 0 },
            messages: vec![],
            reference: reference.map(str::to_string),
            metadata: Default::default(),
        }
    }

    #[test]
    fn components_score_as_documented() {
        let p = prompt(Some("7"));
        let judge = |gold: &str, text: &str| (None, text.trim().ends_with(gold));
        let cfg = RewardConfig {
            accuracy: 1.0,
            format: 0.5,
            language: 0.25,
            overlong: 1.0,
            overlong_buffer: Some(4),
            ..Default::default()
        };
        let r = Rewards::new(&cfg, 16, Some(&judge)).unwrap();
        assert_eq!(r.names(), ["accuracy", "format", "language", "overlong"]);
        let roll = |text: &'static str, tokens| Rollout { prompt: &p, text, tokens, eos: true };
        let (total, parts) = r.score(&roll("<think>three and four</think> 7", 10));
        assert_eq!(parts, vec![1.0, 1.0, 1.0, 0.0]);
        assert!((total - 1.75).abs() < 1e-12);
        // 14 tokens: two into the 4-token buffer before 16.
        let (_, parts) = r.score(&roll("8", 14));
        assert_eq!(parts, vec![0.0, 0.0, 0.0, -0.5]);
        let (_, parts) = r.score(&roll("<think>три and four</think> 7", 16));
        assert_eq!(parts[2], 2.0 / 3.0);
        assert_eq!(parts[3], -1.0);
    }

    #[test]
    fn language_share_counts_words_by_script() {
        assert_eq!(language_share("the answer is 7", Language::En), 1.0);
        assert_eq!(language_share("the 答案 is", Language::En), 0.5);
        assert_eq!(language_share("the 答案 is", Language::Zh), 0.5);
        assert_eq!(language_share("12 + 3", Language::En), 0.0);
    }
}
