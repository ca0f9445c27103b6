//! Verifiers: is a sampled trace correct, well-formed and clean? Used by rejection sampling and by
//! eval, so both judge answers the same way. Each check yields a [`Verdict`] recorded on the trace.

pub mod filters;
pub mod math;

use distill_data::think::ThinkBlock;
use distill_data::{FinishReason, Verdict};
use serde::{Deserialize, Serialize};

/// Which checks run, each a switch with its threshold (recipe section `[verify]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Compare the extracted final answer with the prompt's reference (skipped when a prompt has
    /// none): `math = true` (default settings), `math = false`, or a `[verify.math]` table of
    /// [`math::MathConfig`] settings. `distill eval` in the same recipe judges with the same ones.
    #[serde(with = "math_setting")]
    pub math: Option<math::MathConfig>,
    /// Reasoning present, `<think>` closed, a non-empty final answer.
    pub format: bool,
    /// Require a reasoning block (R1-style teachers); off for plain chat teachers.
    pub require_reasoning: bool,
    /// Reject chains of thought mixing scripts: the share of letters outside the dominant script
    /// (Latin, CJK, Hangul, Cyrillic, Arabic…; Greek math letters do not count) above this.
    pub max_script_mix: Option<f64>,
    /// Reject code blocks (```) inside the reasoning.
    pub no_code_in_reasoning: bool,
    /// Reject reasoning with a paragraph longer than this many characters.
    pub max_paragraph_chars: Option<usize>,
    /// Reject traces cut off by the token limit (`finish_reason == length`).
    pub reject_truncated: bool,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            math: Some(math::MathConfig::default()),
            format: true,
            require_reasoning: true,
            max_script_mix: Some(0.05),
            no_code_in_reasoning: false,
            max_paragraph_chars: None,
            reject_truncated: true,
        }
    }
}

/// `math = true | false | { … }` in a recipe.
mod math_setting {
    use super::math::MathConfig;
    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<MathConfig>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(c) => c.serialize(s),
            None => s.serialize_bool(false),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MathConfig>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<MathConfig>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a table of [verify.math] settings")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(b.then(MathConfig::default))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                MathConfig::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
            }
        }
        d.deserialize_any(V)
    }
}

/// What the checks look at.
pub struct Sample<'a> {
    pub reasoning: &'a str,
    pub answer: &'a str,
    pub think: ThinkBlock,
    pub finish_reason: &'a FinishReason,
    pub reference: Option<&'a str>,
}

fn verdict(
    verifier: &str,
    passed: bool,
    extracted: Option<String>,
    reason: impl Into<String>,
) -> Verdict {
    Verdict { verifier: verifier.into(), passed, extracted, reason: Some(reason.into()) }
}

/// Run the configured checks, in a fixed order.
pub fn verify(s: &Sample, cfg: &VerifyConfig) -> Vec<Verdict> {
    let mut out = Vec::new();
    if cfg.reject_truncated {
        let cut = *s.finish_reason == FinishReason::Length;
        out.push(verdict(
            "filter.truncated",
            !cut,
            None,
            if cut { "finish_reason is length" } else { "complete" },
        ));
    }
    if cfg.format {
        let problem = if s.think == ThinkBlock::Unclosed {
            Some("<think> is never closed")
        } else if cfg.require_reasoning && s.reasoning.trim().is_empty() {
            Some("no reasoning")
        } else if s.answer.trim().is_empty() {
            Some("empty final answer")
        } else {
            None
        };
        out.push(verdict("format", problem.is_none(), None, problem.unwrap_or("ok")));
    }
    if let (Some(mcfg), Some(gold)) = (cfg.math.as_ref(), s.reference) {
        let (extracted, ok) = math::judge(gold, s.reasoning, s.answer, mcfg);
        let reason = match &extracted {
            None => "no answer found".to_string(),
            Some(e) if ok => format!("{e} ≡ {gold}"),
            Some(e) => format!("{e} ≠ {gold}"),
        };
        out.push(verdict("math", ok, extracted, reason));
    }
    if let Some(max) = cfg.max_script_mix {
        let mix = filters::script_mix(s.reasoning);
        out.push(verdict(
            "filter.language_mix",
            mix <= max,
            None,
            format!("{:.1}% of letters outside the main script", mix * 100.0),
        ));
    }
    if cfg.no_code_in_reasoning {
        let code = s.reasoning.contains("```");
        out.push(verdict(
            "filter.code_in_reasoning",
            !code,
            None,
            if code { "code block in reasoning" } else { "none" },
        ));
    }
    if let Some(max) = cfg.max_paragraph_chars {
        let longest = filters::longest_paragraph(s.reasoning);
        out.push(verdict(
            "filter.long_paragraph",
            longest <= max,
            None,
            format!("longest paragraph {longest} chars"),
        ));
    }
    out
}
