//! Hugging Face chat templates rendered the way transformers' `apply_chat_template` does:
//! Jinja with `trim_blocks` and `lstrip_blocks`, `bos_token`/`eos_token` and
//! `add_generation_prompt` in the context, `raise_exception`, `strftime_now`, Python's string
//! methods (`.strip()`, `.split()`, …), and a `tojson` that writes what Python's `json.dumps` writes.
//!
//! The renderer also reports which character spans of the text are assistant output, without
//! editing the template, so that SFT can put the loss on assistant tokens only.

use std::ops::Range;

use distill_data::{Message, Role};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind, context};

use crate::error::{Error, Result};

/// Instructions one render may execute (minijinja's fuel).
pub const TEMPLATE_FUEL: u64 = 20_000_000;

pub struct ChatTemplate {
    env: Environment<'static>,
    pub bos_token: String,
    pub eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        // A template is untrusted input (it comes with a downloaded model): bound the work one
        // render may do. Real templates use a few thousand instructions per message; minijinja
        // also limits recursion depth on its own.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(format!("does not parse: {e:#}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or("").to_string(),
            eos_token: eos_token.unwrap_or("").to_string(),
        })
    }

    /// Render `messages`; with `add_generation_prompt` the text ends where the assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_serialize(
                    serde_json::json!({"role": m.role.as_str(), "content": m.content}),
                )
            })
            .collect();
        let tmpl = self.env.get_template("chat").expect("added in new()");
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| Error::Template(format!("{e:#}")))
    }

    /// The prompt rendered with the generation prompt, then `completion` appended verbatim (and the
    /// EOS token unless the completion already ends with it). Returns the text and the span of the
    /// completion, which is what the model must learn to produce. Appending rather than
    /// re-rendering keeps `<think>` blocks that some templates (R1-Distill's) strip from assistant
    /// turns. If the generation prompt already ends with the completion's opening (a prefilled
    /// `<think>\n`), that part is not repeated.
    pub fn render_for_training(
        &self,
        prompt: &[Message],
        completion: &str,
    ) -> Result<(String, Range<usize>)> {
        let mut text = self.render(prompt, true)?;
        let mut completion = completion;
        for cut in (1..=completion.len().min(64)).rev() {
            if completion.is_char_boundary(cut)
                && text.ends_with(&completion[..cut])
                && completion[..cut].trim() == "<think>"
            {
                completion = &completion[cut..];
                break;
            }
        }
        let start = text.len();
        text.push_str(completion);
        if !self.eos_token.is_empty() && !completion.ends_with(&self.eos_token) {
            text.push_str(&self.eos_token);
        }
        Ok((text.clone(), start..text.len()))
    }

    /// Render a whole conversation and report the character span of every assistant turn (its
    /// content as the template renders it, and its end-of-turn marker), found by rendering
    /// growing prefixes: turn i is what `messages[..=i]` adds to `messages[..i]`, less the
    /// assistant header (the part it shares with the generation prompt). Templates that rewrite
    /// history (R1-Distill drops past `<think>` blocks) give the turn as rewritten, which is what
    /// a model sees in a later prompt. Fails if the template does not render prefixes as prefixes.
    pub fn render_with_spans(&self, messages: &[Message]) -> Result<(String, Vec<Range<usize>>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..i], false)?;
            let header = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(Error::Template(format!(
                    "assistant turn {i} cannot be located: the template does not render a conversation's prefix as a prefix \
                     (it may rewrite earlier turns); use render_for_training for the final turn"
                )));
            }
            // Skip the header the turn shares with the generation prompt (`<|im_start|>assistant\n`).
            let turn = &through[before.len()..];
            let prompt_tail = header.get(before.len()..).unwrap_or("");
            let shared: usize = turn
                .char_indices()
                .zip(prompt_tail.chars())
                .take_while(|((_, a), b)| a == b)
                .last()
                .map_or(0, |((i, c), _)| i + c.len_utf8());
            // The span ends after the end-of-turn marker, not after trailing newlines.
            let end = before.len() + turn.trim_end_matches(['\n', ' ']).len();
            spans.push(before.len() + shared..end);
        }
        Ok((full, spans))
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers' `tojson`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                write_py_json(x, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                out.push_str(&serde_json::to_string(k).expect("string"));
                out.push_str(": ");
                write_py_json(x, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        J::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"))
            } else {
                out.push_str(&n.to_string())
            }
        }
        other => out.push_str(&serde_json::to_string(other).expect("json")),
    }
}

/// `strftime_now(fmt)` with the directives chat templates use (`%d %b %Y %B %m %H %M %S %y %A %a`).
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] =
        ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mname = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&mname[..3]),
            Some('B') => out.push_str(mname),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}
