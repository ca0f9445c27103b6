//! Traces from elsewhere, one JSONL line at a time, into [`Trace`]s.
//!
//! - `native`: distill's own records (`corpus export`).
//! - `chat`: `{"messages": [..., {"role": "assistant", "content": "<think>…</think>answer"}]}`;
//!   the reasoning comes from the assistant's `reasoning_content` if present, else from the
//!   inline `<think>` block. Optional `id`, `answer` (reference) and `model` fields are used.
//! - `openr1`: Open-R1 style rows, `{"problem", "answer", "generations": [..],
//!   "correctness_math_verify": [..], "finish_reasons": [..], "uuid"}`; each generation is one
//!   sample.

use serde_json::{Map, Value};

use crate::record::{
    EndpointKind, FinishReason, Message, Role, SCHEMA_VERSION, Sampling, Source, Teacher, Trace,
    Usage, Verdict,
};
use crate::think::split_think;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Native,
    Chat,
    OpenR1,
}

/// Why a line could not be imported (the caller adds the file and line).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(pub String);

impl From<String> for ImportError {
    fn from(s: String) -> Self {
        ImportError(s)
    }
}

impl From<&str> for ImportError {
    fn from(s: &str) -> Self {
        ImportError(s.to_string())
    }
}

impl std::str::FromStr for ImportFormat {
    type Err = ImportError;
    fn from_str(s: &str) -> Result<Self, ImportError> {
        match s {
            "native" => Ok(Self::Native),
            "chat" | "messages" => Ok(Self::Chat),
            "openr1" => Ok(Self::OpenR1),
            _ => {
                Err(format!("unknown import format '{s}' (expected native, chat or openr1)").into())
            }
        }
    }
}

/// Parse one line. `row` is the 0-based line number, used for ids when the row has none.
pub fn parse_line(
    format: ImportFormat,
    dataset: &str,
    model: &str,
    row: u64,
    line: &str,
) -> Result<Vec<Trace>, ImportError> {
    if format == ImportFormat::Native {
        return Trace::from_json(line).map(|t| vec![t]).map_err(|e| ImportError(e.to_string()));
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = v else { return Err("line is not a JSON object".into()) };
    parse_row(format, dataset, model, row, obj)
}

/// [`parse_line`] for a row already parsed (a Parquet row, say). Null cells count as absent.
pub fn parse_row(
    format: ImportFormat,
    dataset: &str,
    model: &str,
    row: u64,
    mut obj: Map<String, Value>,
) -> Result<Vec<Trace>, ImportError> {
    obj.retain(|_, v| !v.is_null());
    if format == ImportFormat::Native {
        return Trace::from_json(&Value::Object(obj).to_string())
            .map(|t| vec![t])
            .map_err(|e| ImportError(e.to_string()));
    }
    let id_of = |field: &str| match obj.get(field) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(v @ Value::Number(_)) => Some(v.to_string()),
        _ => None,
    };
    let prompt_id = format!(
        "{dataset}/{}",
        id_of("id").or_else(|| id_of("uuid")).unwrap_or_else(|| format!("{row:08}"))
    );
    let reference = id_of("answer");
    let model = obj.get("model").and_then(Value::as_str).unwrap_or(model).to_string();
    let base = |sample: u32, messages: Vec<Message>, text: &str, reasoning_field: Option<&str>| {
        let (reasoning, answer) = match reasoning_field {
            Some(r) => (r.trim().to_string(), split_think(text).1),
            None => {
                let (r, a, _) = split_think(text);
                (r, a)
            }
        };
        Trace {
            schema: SCHEMA_VERSION,
            id: Trace::make_id(&prompt_id, sample),
            prompt_id: prompt_id.clone(),
            sample,
            source: Source { dataset: dataset.to_string(), row },
            messages,
            reasoning,
            answer,
            finish_reason: FinishReason::Stop,
            teacher: Teacher {
                model: model.clone(),
                endpoint: EndpointKind::Import,
                sampling: Sampling {
                    temperature: None,
                    top_p: None,
                    top_k: None,
                    max_tokens: None,
                    seed: None,
                },
            },
            usage: Usage::default(),
            verdicts: vec![],
            reference: reference.clone(),
            logprobs: None,
            metadata: Map::new(),
        }
    };
    match format {
        ImportFormat::Native => unreachable!(),
        ImportFormat::Chat => {
            let msgs =
                obj.get("messages").and_then(Value::as_array).ok_or("missing 'messages' array")?;
            let (last, prompt) = msgs.split_last().ok_or("'messages' is empty")?;
            if last.get("role").and_then(Value::as_str) != Some("assistant") {
                return Err("the last message is not the assistant's reply".into());
            }
            let text = last
                .get("content")
                .and_then(Value::as_str)
                .ok_or("assistant message has no string 'content'")?;
            let reasoning = last.get("reasoning_content").and_then(Value::as_str);
            let messages: Vec<Message> = serde_json::from_value(Value::Array(prompt.to_vec()))
                .map_err(|e| format!("'messages' is not a [{{role, content}}] array: {e}"))?;
            Ok(vec![base(0, messages, text, reasoning)])
        }
        ImportFormat::OpenR1 => {
            let problem = obj
                .get("problem")
                .and_then(Value::as_str)
                .ok_or("missing string field 'problem'")?;
            let gens = obj
                .get("generations")
                .and_then(Value::as_array)
                .ok_or("missing 'generations' array")?;
            let correct = obj.get("correctness_math_verify").and_then(Value::as_array);
            let finishes = obj.get("finish_reasons").and_then(Value::as_array);
            // One verdict (and finish reason) per generation: with fewer, a generation would
            // import with no verdict and count as passed.
            for (key, list) in [("correctness_math_verify", correct), ("finish_reasons", finishes)]
            {
                if let Some(l) = list
                    && l.len() != gens.len()
                {
                    return Err(format!(
                        "'{key}' has {} entries for {} generations",
                        l.len(),
                        gens.len()
                    )
                    .into());
                }
            }
            if let Some(c) = correct
                && let Some(k) = c.iter().position(|v| !v.is_boolean())
            {
                return Err(format!("correctness_math_verify[{k}] is not true or false").into());
            }
            let mut out = Vec::with_capacity(gens.len());
            for (k, g) in gens.iter().enumerate() {
                let text = g.as_str().ok_or_else(|| format!("generations[{k}] is not a string"))?;
                let mut t = base(k as u32, vec![Message::new(Role::User, problem)], text, None);
                if let Some(Value::Bool(ok)) = correct.and_then(|c| c.get(k)) {
                    t.verdicts.push(Verdict {
                        verifier: "math_verify (imported)".into(),
                        passed: *ok,
                        extracted: None,
                        reason: None,
                    });
                }
                if let Some(Value::String(f)) = finishes.and_then(|f| f.get(k)) {
                    t.finish_reason = FinishReason::from(f.clone());
                }
                // OpenR1-Math's reference solution (NuminaMath's), kept beside the answer.
                if let Some(Value::String(sol)) = obj.get("solution") {
                    t.metadata.insert("solution".into(), Value::String(sol.clone()));
                }
                out.push(t);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openr1(correct: &str, finishes: &str) -> Result<Vec<Trace>, ImportError> {
        let row = format!(
            r#"{{"problem": "1+1?", "answer": "2", "uuid": "u1", "generations": ["<think>a</think>2", "<think>b</think>3"], "correctness_math_verify": {correct}, "finish_reasons": {finishes}}}"#
        );
        parse_line(ImportFormat::OpenR1, "openr1", "m", 0, &row)
    }

    /// A generation without its verdict imported as passed; now each list must match the
    /// generations one for one.
    #[test]
    fn openr1_verdicts_and_finish_reasons_match_the_generations_one_for_one() {
        let ts = openr1("[true, false]", r#"["stop", "length"]"#).unwrap();
        assert_eq!(ts.iter().map(|t| t.passed()).collect::<Vec<_>>(), [true, false]);
        for (c, f, want) in [
            ("[true]", r#"["stop", "stop"]"#, "'correctness_math_verify' has 1 entries for 2"),
            ("[true, false]", r#"["stop"]"#, "'finish_reasons' has 1 entries for 2"),
            (
                "[true, \"no\"]",
                r#"["stop", "stop"]"#,
                "correctness_math_verify[1] is not true or false",
            ),
        ] {
            let e = openr1(c, f).unwrap_err().0;
            assert!(e.contains(want), "{c} {f}: {e}");
        }
    }
}
