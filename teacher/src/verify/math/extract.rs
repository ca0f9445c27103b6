//! Finding the final answer in a completion (or in a gold that is itself a solution), in the
//! order math-verify documents: the last `\boxed{}`, then LaTeX right after an "answer is" cue,
//! then the last LaTeX span, then a plain expression, and the last bare number only when nothing
//! else is found (never inside a word).

use serde::{Deserialize, Serialize};

/// `[verify.math]`: what extraction looks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MathConfig {
    /// LaTeX answers: `\boxed{}`, `$…$`, `\[…\]`, `\(…\)`.
    pub latex: bool,
    /// Plain expressions and numbers (`The answer is 3/4`, `#### 18`).
    pub expr: bool,
    /// A multiple-choice letter (`(C)`, `Answer: B`).
    pub choice: bool,
    /// Accept only a `\boxed{}` answer (what a prompt that asks for one can demand).
    pub boxed_only: bool,
}

impl MathConfig {
    /// The targets math-verify's `match_types` name (`"latex"`, `"expr"`), the rest as default.
    pub fn with_match_types(types: &[&str]) -> MathConfig {
        MathConfig {
            latex: types.contains(&"latex"),
            expr: types.contains(&"expr"),
            ..MathConfig::default()
        }
    }
}

impl Default for MathConfig {
    fn default() -> Self {
        MathConfig { latex: true, expr: true, choice: true, boxed_only: false }
    }
}

/// Longest completion text searched, bytes (the tail is kept: the answer comes last).
const MAX_TEXT: usize = 1 << 20;
/// Longest `\\boxed{…}` content, bytes.
const MAX_BOX: usize = 4096;

/// Every `\boxed{…}`/`\fbox{…}` (and `\boxed 5`), as (start, end, content), in order.
pub fn boxes(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for pat in ["\\boxed", "\\fbox"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(pat) {
            let at = from + i;
            let start = at + pat.len();
            from = start;
            let rest = &text[start..];
            let rest_trim = rest.trim_start();
            if let Some(inner) = rest_trim.strip_prefix('{') {
                let open = start + (rest.len() - rest_trim.len()) + 1;
                // A box holds an answer, not a document: its closing brace is looked for within
                // MAX_BOX bytes, so a text of unclosed boxes costs linear time.
                let mut cap = inner.len().min(MAX_BOX);
                while !inner.is_char_boundary(cap) {
                    cap -= 1;
                }
                if let Some(end) = super::matching_brace(&inner[..cap]) {
                    out.push((at, open + end + 1, inner[..end].to_string()));
                }
            } else if rest.starts_with(' ') {
                // `\boxed 5`
                // Up to the end of the math, the line, or the next command (`\boxed 7 \quad`).
                let v: String = rest_trim
                    .split(['$', '\n', '\\'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_end_matches('.')
                    .to_string();
                if !v.is_empty() {
                    // Ends where `v` ends in `text` (however many spaces came first).
                    out.push((at, start + (rest.len() - rest_trim.len()) + v.len(), v));
                }
            }
        }
    }
    out.sort_by_key(|b| b.0);
    out
}

/// The last box, and where it ends. Boxes written one after another (`\boxed{2}, \boxed{3}`,
/// `\boxed{2} and \boxed{3}`) or inside the same math span count together, as a list.
fn boxed_answer(text: &str) -> Option<(String, usize)> {
    let bs = boxes(text);
    let (mut first, last) = (bs.len().checked_sub(1)?, bs.len() - 1);
    let spans = latex_spans(text);
    let span_of = |at: usize| spans.iter().position(|&(s, e, _)| s <= at && at < e);
    while first > 0 {
        // Boxes do not overlap; should one ever run into the next, they count as adjacent.
        let between = text.get(bs[first - 1].1..bs[first].0).unwrap_or("");
        let joiner = between
            .replace("\\text{and}", "")
            .replace("\\text{ and }", "")
            .replace("\\quad", "")
            .replace("and", "")
            .replace("or", "");
        let adjacent = joiner.chars().all(|c| c.is_whitespace() || ",;$\\()".contains(c))
            && between.len() < 40;
        // `y_1 = \boxed{…} \) and \( y_2 = \boxed{…}`: a label between the boxes.
        let labelled = between.len() < 40
            && joiner
                .trim_matches(|c: char| c.is_whitespace() || "$\\()".contains(c))
                .strip_suffix('=')
                .is_some_and(|l| {
                    let l = l.trim();
                    !l.is_empty()
                        && l.len() <= 8
                        && l.chars().all(|c| c.is_alphanumeric() || "_{}".contains(c))
                });
        // `\boxed{1} papers and \boxed{2} bins`: a few words and an "and".
        let worded = between.len() < 30
            && between.contains(" and ")
            && between.chars().all(|c| c.is_alphabetic() || c == ' ');
        let same_span =
            span_of(bs[first - 1].0).is_some() && span_of(bs[first - 1].0) == span_of(bs[last].0);
        if adjacent || labelled || worded || same_span {
            first -= 1;
        } else {
            break;
        }
    }
    let end = bs[last].1;
    if first == last {
        return Some((bs[last].2.clone(), end));
    }
    Some((bs[first..=last].iter().map(|b| b.2.trim()).collect::<Vec<_>>().join(", "), end))
}

/// LaTeX math spans `$…$`, `$$…$$`, `\[…\]`, `\(…\)` as (start, end, content), in order.
pub fn latex_spans(text: &str) -> Vec<(usize, usize, String)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && (b[i + 1] == b'[' || b[i + 1] == b'(') {
            let close = if b[i + 1] == b'[' { "\\]" } else { "\\)" };
            if let Some(e) = text[i + 2..].find(close)
                && (close == "\\]" || !text[i + 2..i + 2 + e].contains('\n'))
            {
                out.push((i, i + 2 + e + 2, text[i + 2..i + 2 + e].to_string()));
                i = i + 2 + e + 2;
                continue;
            }
            i += 2;
            continue;
        }
        if b[i] == b'\\' {
            // An escaped `\$` is a dollar sign, not a delimiter.
            i += 2;
            continue;
        }
        if b[i] == b'$' {
            let double = i + 1 < b.len() && b[i + 1] == b'$';
            let open = if double { 2 } else { 1 };
            let close = if double { "$$" } else { "$" };
            let mut j = i + open;
            let mut found = None;
            while j < b.len() {
                if b[j] == b'\\' {
                    j += 2;
                    continue;
                }
                if b[j..].starts_with(close.as_bytes()) {
                    found = Some(j);
                    break;
                }
                j += 1;
            }
            match found {
                // Inline math does not run across lines.
                Some(e) if !double && text[i + open..e].contains('\n') => i += open,
                Some(e) if e > i + open => {
                    out.push((i, e + close.len(), text[i + open..e].to_string()));
                    i = e + close.len();
                }
                Some(e) => i = e + close.len(),
                None => i += open,
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Cues after which the answer follows, lowercase, the more specific first.
const CUES: [&str; 8] = [
    "final answer is",
    "final answer:",
    "the answer is",
    "answer is",
    "answer:",
    "answer :",
    "solution is",
    "result is",
];

/// The sentence of a plain answer tail, without "I hope it is correct", emphasis, chat-template
/// tokens or a closing period.
fn trim_tail(tail: &str) -> String {
    let t = tail.trim_start_matches([' ', ':', '*', '\t']).trim_start();
    let line = t.split('\n').next().unwrap_or("");
    let line = line.split("<|").next().unwrap_or("");
    // The sentence ends at a period followed by a space (not a decimal point).
    let end = line.match_indices(". ").map(|(i, _)| i).next().unwrap_or(line.len());
    let s = &line[..end];
    s.trim().trim_end_matches(['.', '*', ' ']).trim_matches(['*', ' ']).trim().to_string()
}

/// The answer inside a cue's sentence: all of it when it reads as math, else what follows its
/// last "is"/"are"/"=", as LaTeX or a number.
fn answer_in_sentence(t: &str, cfg: &MathConfig) -> Option<String> {
    let bare = t.trim_matches('$').trim();
    if !bare.contains('$') && looks_mathy(bare) && !bare.is_empty() {
        return Some(bare.to_string());
    }
    let lower = t.to_ascii_lowercase();
    let after = [" is ", " are ", " equals ", " be "]
        .iter()
        .filter_map(|k| lower.rfind(k).map(|i| i + k.len()))
        .max()
        .map_or(t, |i| &t[i..]);
    let after = after.trim();
    if cfg.latex
        && let Some((_, _, c)) = latex_spans(after).pop()
    {
        return Some(c.trim().to_string());
    }
    let plain = after.trim_matches('$').trim();
    if !plain.is_empty() && looks_mathy(plain) && !plain.contains('$') {
        return Some(plain.to_string());
    }
    if cfg.latex
        && let Some((_, _, c)) = latex_spans(t).pop()
    {
        return Some(c.trim().to_string());
    }
    if cfg.expr { last_number(t) } else { None }
}

/// The answer after the last cue, and where the cue is: a LaTeX span right after it, else the
/// answer in the rest of its sentence.
fn cued_answer(text: &str, cfg: &MathConfig) -> Option<(String, usize)> {
    let lower = text.to_ascii_lowercase();
    // The last cue in the text (any kind), the longest where two end at the same place.
    let (at, cue) = CUES
        .iter()
        .filter_map(|c| lower.rfind(c).map(|i| (i, *c)))
        .max_by_key(|&(i, c)| (i + c.len(), c.len()))?;
    let tail = &text[at + cue.len()..];
    if cfg.latex {
        // A span that starts within the first few characters of the tail.
        // A span that starts within the first few characters of the tail, with the spans
        // listed right after it (`$12$ and $13$`).
        let spans = latex_spans(tail);
        if let Some((s, _, _)) = spans.first()
            && tail[..*s].trim_matches([' ', ':', '*', '\n', '"', '\\']).len() <= 3
        {
            let mut last = 0;
            while last + 1 < spans.len() {
                let between = &tail[spans[last].1..spans[last + 1].0];
                let joiner = between.replace("and", "").replace("or", "");
                if joiner.chars().all(|c| c.is_whitespace() || c == ',') && between.len() < 12 {
                    last += 1;
                } else {
                    break;
                }
            }
            let parts: Vec<&str> = spans[..=last].iter().map(|(_, _, c)| c.trim()).collect();
            return Some((parts.join(", "), at));
        }
    }
    let t = trim_tail(tail);
    if t.is_empty() {
        return None;
    }
    if cfg.choice
        && let Some(c) = choice(&t)
    {
        return Some((c.to_string(), at));
    }
    if !(cfg.expr || cfg.latex) {
        return None;
    }
    answer_in_sentence(&t, cfg).map(|a| (a, at))
}

/// A multiple-choice letter standing alone: `C`, `(C)`, `C)`, `**C**`.
fn choice(s: &str) -> Option<char> {
    let t = s.trim_matches(['(', ')', '*', ' ', '.', '[', ']']);
    let mut cs = t.chars();
    let c = cs.next()?;
    (cs.next().is_none() && ('A'..='E').contains(&c)).then_some(c)
}

/// The last number in `text` that is not part of a word: `-12`, `3.5`, `.4`, `1,000`, `3/4`.
fn last_number(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut end = b.len();
    while end > 0 {
        if b[end - 1].is_ascii_digit() {
            let stop = end;
            let mut start = end;
            while start > 0
                && (b[start - 1].is_ascii_digit()
                    || (matches!(b[start - 1], b'.' | b',' | b'/')
                        && start >= 2
                        && b[start - 2].is_ascii_digit())
                    || (b[start - 1] == b'.' && start >= 1))
            {
                start -= 1;
            }
            // Inside a word (`AZYUK2A`, `x2`): skip it. A letter right before counts (the
            // character ending there, however many bytes it has); units after (`1,000.99m²`)
            // are fine.
            if text[..start].chars().next_back().is_some_and(|c| c.is_alphabetic()) {
                end = start;
                continue;
            }
            if start > 0 && b[start - 1] == b'-' {
                start -= 1;
            }
            let n = text[start..stop].trim_start_matches([',']).trim_end_matches(['.', ',']);
            return Some(n.to_string());
        }
        end -= 1;
    }
    None
}

/// No run of three or more letters outside a LaTeX command: `x+1`, `\\frac{a}{b}`, `(1, 2)`, not
/// `AZYUK2A` or `hello`.
fn looks_mathy(t: &str) -> bool {
    let mut run = 0;
    let mut cmd = false;
    for c in t.chars() {
        if c == '\\' {
            cmd = true;
            run = 0;
        } else if c.is_alphabetic() {
            if !cmd {
                run += 1;
                if run >= 3 {
                    return false;
                }
            }
        } else {
            cmd = false;
            run = 0;
        }
    }
    true
}

/// The final answer of `text` under `cfg`, or `None`.
pub fn extract(text: &str, cfg: &MathConfig) -> Option<String> {
    let text = if text.len() > MAX_TEXT {
        let mut cut = text.len() - MAX_TEXT;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        &text[cut..]
    } else {
        text
    };
    let boxed = if cfg.latex { boxed_answer(text) } else { None };
    if cfg.boxed_only {
        return boxed.map(|(b, _)| b);
    }
    let cued = cued_answer(text, cfg);
    match (boxed, &cued) {
        // A cue after the last box ("… \boxed{255} … The final answer is $10,455$") wins.
        (Some((_, end)), Some((c, at))) if *at >= end => return Some(c.clone()),
        (Some((b, _)), _) => return Some(b),
        _ => {}
    }
    if cfg.expr
        && let Some(g) = super::gsm8k_answer(text)
    {
        return Some(g);
    }
    if let Some((c, _)) = cued {
        return Some(c);
    }
    // The last LaTeX span (with the spans listed just before it: `$1$, $2$ and $3$`), unless a
    // bare number comes after it.
    let spans = if cfg.latex { latex_spans(text) } else { vec![] };
    if let Some(last) = spans.iter().rposition(|(_, _, c)| !c.trim().is_empty()) {
        let mut first = last;
        while first > 0 {
            let between = &text[spans[first - 1].1..spans[first].0];
            let joiner = between.replace("and", "").replace("or", "");
            if joiner.chars().all(|c| c.is_whitespace() || c == ',') && between.len() < 12 {
                first -= 1;
            } else {
                break;
            }
        }
        let after = &text[spans[last].1..];
        if cfg.expr
            && let Some(n) = last_number(after)
        {
            return Some(n);
        }
        let parts: Vec<&str> = spans[first..=last].iter().map(|(_, _, c)| c.trim()).collect();
        return Some(parts.join(", "));
    }
    if cfg.expr {
        // A whole answer written plainly (`3/4`, `x + 1`, `(1, 2)`): short, one line.
        let t = text.trim();
        if !t.is_empty() && t.len() <= 400 && !t.contains('\n') && looks_mathy(t) {
            return Some(t.trim_end_matches('.').to_string());
        }
        if let Some(n) = last_number(text) {
            return Some(n);
        }
    }
    if cfg.choice {
        return choice(text.trim()).map(|c| c.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    /// Found by the on-policy comparison: a student's garbled sample with a backslash before a
    /// two-byte character inside `$…$` sliced the text mid-character.
    #[test]
    fn escapes_before_multibyte_characters_do_not_panic() {
        let cfg = MathConfig::default();
        for t in [
            "$\\akes zymopocr\u{627} uff",
            "$\\\u{627}$ x",
            "\\boxed  \u{e9}",
            "\\boxed   7 and \\boxed{8}",
        ] {
            let _ = latex_spans(t);
            let _ = boxes(t);
            let _ = extract(t, &cfg);
        }
        // `\boxed   7`: the box ends where the 7 does.
        assert_eq!(boxes("\\boxed   7"), vec![(0, 10, "7".to_string())]);
    }

    use super::*;

    fn x(s: &str) -> Option<String> {
        extract(s, &MathConfig::default())
    }

    #[test]
    fn the_documented_order() {
        assert_eq!(x("so $x=2$ and \\boxed{5}. Then $7$").as_deref(), Some("5"));
        assert_eq!(x("\\boxed{2} and \\boxed{3}").as_deref(), Some("2, 3"));
        assert_eq!(
            x("first \\boxed{1}. Much later, the real one: \\boxed{4}").as_deref(),
            Some("4")
        );
        assert_eq!(
            x("Final Answer: The final answer is 7.78. I hope it is correct.").as_deref(),
            Some("7.78")
        );
        assert_eq!(x("The answer is $\\frac{1}{3}$.").as_deref(), Some("\\frac{1}{3}"));
        assert_eq!(x("so we get $[0,1)$").as_deref(), Some("[0,1)"));
        assert_eq!(x("It is $\\dfrac{1}{3}$").as_deref(), Some("\\dfrac{1}{3}"));
        assert_eq!(x("the parity is $\\text{odd}$").as_deref(), Some("\\text{odd}"));
        assert_eq!(x(".4").as_deref(), Some(".4"));
        assert_eq!(x("AZYUK2A"), None);
        assert_eq!(x("We count 12 of them, then 30 more: 42 in all").as_deref(), Some("42"));
        assert_eq!(x("costs \\$5 and \\$7 in all").as_deref(), Some("7"));
    }
}
