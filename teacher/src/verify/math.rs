//! Math answer checking: extract the final answer, decide equivalence with the reference.
//!
//! Equivalence is decided on meaning, not spelling: LaTeX is normalised (`\dfrac`→`\frac`,
//! `\left`/`\right`, `\text{}`, spacing, `^\circ`, `\%`, units, thousands separators, trailing
//! `.0`), then both sides are parsed into small expressions and compared — exactly as rationals
//! when both are rational, numerically (relative 1e-6) when radicals, π or i are involved, and at
//! random points when they contain variables. Tuples and intervals compare element-wise (bracket
//! kinds must match), bare lists as multisets, `±` as the pair it stands for, multiple-choice
//! letters by letter.

/// The content of the last `\boxed{…}` (or `\fbox{…}`), with nested braces.
pub fn last_boxed(text: &str) -> Option<String> {
    let mut best = None;
    for pat in ["\\boxed", "\\fbox"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(pat) {
            let start = from + i + pat.len();
            from = start;
            let rest = &text[start..];
            let rest_trim = rest.trim_start();
            let got = if let Some(inner) = rest_trim.strip_prefix('{') {
                matching_brace(inner).map(|end| inner[..end].to_string())
            } else if rest.starts_with(' ') {
                // `\boxed 5`
                rest_trim
                    .split(['$', '\n'])
                    .next()
                    .map(|s| s.trim().trim_end_matches('.').to_string())
            } else {
                None
            };
            if let Some(g) = got
                && best.as_ref().is_none_or(|(p, _)| start > *p)
            {
                best = Some((start, g));
            }
        }
    }
    best.map(|(_, s)| s)
}

/// Byte index of the `}` closing an already-opened brace in `s`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 1;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// GSM8K's `#### N` answer line.
pub fn gsm8k_answer(text: &str) -> Option<String> {
    let (_, after) = text.rsplit_once("####")?;
    let a = after.lines().next().unwrap_or("").trim();
    (!a.is_empty()).then(|| a.to_string())
}

/// Extract both answers under `cfg` and compare them: `(gold's answer, the completion's answer,
/// equivalent?)`. A gold that is itself a solution gives its boxed answer; a gold with no
/// recognisable answer is compared whole.
pub fn verify_answer(
    gold: &str,
    completion: &str,
    cfg: &MathConfig,
) -> (Option<String>, Option<String>, bool) {
    let g = gold_answer(gold, cfg);
    let p = extract::extract(completion, cfg);
    let ok = match (&g, &p) {
        (Some(g), Some(p)) => equivalent(g, p),
        _ => false,
    };
    (g, p, ok)
}

/// The math verdict of a completion split into its reasoning and its final answer, as
/// rejection sampling and `distill eval` both judge: the answer part first, the reasoning when
/// the answer part has none (a model that boxed its answer inside the reasoning still counts).
/// Returns the extracted answer and whether it is the gold's.
pub fn judge(
    gold: &str,
    reasoning: &str,
    answer: &str,
    cfg: &MathConfig,
) -> (Option<String>, bool) {
    let g = gold_answer(gold, cfg);
    let extracted = extract::extract(answer, cfg).or_else(|| extract::extract(reasoning, cfg));
    let ok = match (&g, &extracted) {
        (Some(g), Some(e)) => equivalent(g, e),
        _ => false,
    };
    (extracted, ok)
}

/// The gold's answer: a gold that is a solution gives its boxed (or cued) answer, one that is
/// only an answer gives itself.
pub fn gold_answer(gold: &str, cfg: &MathConfig) -> Option<String> {
    let t = gold.trim();
    let solution = ["\\boxed", "\\fbox", "$", "\\(", "\\[", "####"].iter().any(|m| t.contains(m))
        || t.lines().count() > 1;
    if solution && let Some(a) = extract::extract(t, cfg) {
        return Some(a);
    }
    (!t.is_empty()).then(|| t.to_string())
}

/// The final answer of a completion under the default [`MathConfig`] (see [`extract::extract`]).
pub fn extract_answer(text: &str) -> Option<String> {
    extract::extract(text, &MathConfig::default())
}

/// LaTeX and formatting normalisation (spelling only; meaning is compared later).
pub fn normalize(s: &str) -> String {
    // Protect LaTeX row breaks (`\\`) from the single-backslash rewrites below.
    let mut s = s.trim().replace("\\\\", "\u{1}");
    for (a, b) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\displaystyle", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("~", ""),
        ("\\$", ""),
        ("\\%", ""),
        ("%", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("°", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("\\le", "≤"),
        ("\\ge", "≥"),
    ] {
        s = s.replace(a, b);
    }
    // `\text{…}` and friends: keep the content.
    for cmd in [
        "\\textbf",
        "\\textrm",
        "\\textit",
        "\\mathrm",
        "\\mathbf",
        "\\mbox",
        "\\text",
        "\\operatorname",
    ] {
        while let Some(i) = s.find(&format!("{cmd}{{")) {
            let inner_start = i + cmd.len() + 1;
            let Some(end) = matching_brace(&s[inner_start..]) else { break };
            let inner = s[inner_start..inner_start + end].to_string();
            s.replace_range(i..inner_start + end + 1, &inner);
        }
    }
    s = s.trim_matches(|c: char| c == '$' || c.is_whitespace()).trim_end_matches('.').to_string();
    // Units and words after a number: "5.4 cents", "864 inches^2", "270/7 degrees".
    if let Some(cut) = strip_units(&s) {
        s = cut;
    }
    s.retain(|c| !c.is_whitespace());
    // `^{2}` → `^2`, `_{5}` → `_5` for a single token.
    for op in ['^', '_'] {
        let mut out = String::with_capacity(s.len());
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == op
                && i + 3 < chars.len() + 1
                && chars.get(i + 1) == Some(&'{')
                && let Some(close) = chars[i + 2..].iter().position(|&c| c == '}')
            {
                let inner: String = chars[i + 2..i + 2 + close].iter().collect();
                if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric()) {
                    out.push(op);
                    if inner.len() > 1 {
                        out.push('{');
                        out.push_str(&inner);
                        out.push('}');
                    } else {
                        out.push_str(&inner);
                    }
                    i += close + 3;
                    continue;
                }
            }
            out.push(chars[i]);
            i += 1;
        }
        s = out;
    }
    s = strip_thousands(&s).replace('\u{1}', "\\\\");
    // A lone variable assignment: "x=5" → "5".
    if let Some((lhs, rhs)) = s.split_once('=')
        && lhs.len() == 1
        && lhs.chars().all(|c| c.is_ascii_alphabetic())
        && !rhs.contains('=')
        && !rhs.is_empty()
    {
        s = rhs.to_string();
    }
    s
}

fn strip_units(s: &str) -> Option<String> {
    let words_start = s
        .char_indices()
        .find(|&(i, c)| c.is_ascii_alphabetic() && i > 0 && s[..i].ends_with(' '))?
        .0;
    let (head, tail) = s.split_at(words_start);
    let tail_ok =
        tail.chars().all(|c| c.is_ascii_alphabetic() || c == ' ' || c == '^' || c.is_ascii_digit());
    // Letters in the head may only be LaTeX command names (`\frac`) or the imaginary unit.
    let mut bare = String::new();
    let mut in_cmd = false;
    for c in head.chars() {
        in_cmd = if c == '\\' { true } else { in_cmd && c.is_ascii_alphabetic() };
        if !in_cmd {
            bare.push(c);
        }
    }
    let head_numeric = bare.chars().any(|c| c.is_ascii_digit())
        && !bare.chars().any(|c| c.is_ascii_alphabetic() && c != 'i');
    (tail_ok && head_numeric).then(|| head.trim().to_string())
}

/// "1,000,000" → "1000000" when the commas are exactly thousands separators.
fn strip_thousands(s: &str) -> String {
    let t = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = t.split_once('.').map_or((t, None), |(a, b)| (a, Some(b)));
    let groups: Vec<&str> = int.split(',').collect();
    let ok = groups.len() > 1
        && !groups[0].is_empty()
        && groups[0].len() <= 3
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
        && frac.is_none_or(|f| f.chars().all(|c| c.is_ascii_digit()));
    if ok { s.replace(',', "") } else { s.to_string() }
}

/// Is `pred` the same answer as `gold`? Both are extracted answers; the comparison is
/// structural ([`answer`]) and bounded in time ([`answer::BUDGET`]).
pub fn equivalent(gold: &str, pred: &str) -> bool {
    let dl = answer::Deadline::after(answer::BUDGET);
    // An answer is short; a megabyte "answer" is compared as written, in linear time.
    if gold.len() > answer::MAX_LEN || pred.len() > answer::MAX_LEN {
        return gold.trim() == pred.trim();
    }
    let (g, p) = (normalize(gold), normalize(pred));
    if g.is_empty() || p.is_empty() {
        return false;
    }
    if gold.trim() == pred.trim() {
        return true;
    }
    // Multiple choice: "(C)" vs "C".
    if let (Some(a), Some(b)) = (choice_letter(&g), choice_letter(&p)) {
        return a == b;
    }
    // "(C) 12" answers both a letter and a value: the value counts against a value.
    if choice_letter(&g).is_none()
        && let Some(rest) = after_choice(&p)
        && equivalent(gold, rest)
    {
        return true;
    }
    answer::equivalent(gold, pred, &dl)
}

/// The value after a leading choice label: `(C)12` → `12`.
fn after_choice(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('(')?;
    let mut cs = rest.chars();
    let c = cs.next()?;
    let rest = cs.as_str().strip_prefix(')')?;
    (('A'..='E').contains(&c) && !rest.is_empty()).then_some(rest)
}

fn choice_letter(s: &str) -> Option<char> {
    let t = s.trim_start_matches('(').trim_end_matches(')');
    let mut cs = t.chars();
    let c = cs.next()?;
    (cs.next().is_none()
        && c.is_ascii_alphabetic()
        && "ABCDEabcde".contains(c)
        && (s.starts_with('(') || c.is_ascii_uppercase()))
    .then(|| c.to_ascii_uppercase())
}

/// Two single expressions: exact rational, numeric, or at random points for variables.
pub(crate) fn value_equal(a: &str, b: &str) -> bool {
    let (a, b) = (normalize(a), normalize(b));
    if a == b || a.eq_ignore_ascii_case(&b) {
        return true;
    }
    let (Ok(ea), Ok(eb)) = (expr::parse(&a), expr::parse(&b)) else { return false };
    let mut vars = ea.vars();
    vars.extend(eb.vars());
    if vars.is_empty() {
        // A decimal of six or more places stands for the value it rounds (`0.0833333333333333`
        // for 1/12), unless both sides are decimals: then they are compared as written.
        let places = |s: &str| {
            let t = s.trim_start_matches('-');
            let (i, f) = t.split_once('.')?;
            (i.chars().all(|c| c.is_ascii_digit()) && f.chars().all(|c| c.is_ascii_digit()))
                .then_some(f.len())
        };
        let rounded = match (places(&a), places(&b)) {
            (Some(_), Some(_)) => None,
            (Some(d), None) | (None, Some(d)) => Some(d),
            _ => None,
        };
        return match (ea.exact(), eb.exact()) {
            (Some(x), Some(y)) if x == y => true,
            (Some(_), Some(_)) if rounded.is_none_or(|d| d < 6) => false,
            // A short decimal is not the irrational it approximates (`3.14159` is not π).
            _ if rounded.is_some_and(|d| d < 6) => false,
            _ => match (ea.eval(&[]), eb.eval(&[])) {
                (Some(x), Some(y)) => match rounded {
                    Some(d) => {
                        (x.re - y.re).abs() <= 0.51 * 10f64.powi(-(d as i32)) && x.im == y.im
                    }
                    None => x.close(y),
                },
                _ => false,
            },
        };
    }
    // Same function of the same variables: agree at several points.
    let points = [0.37, 1.91, -2.63, 0.83];
    (0..3).all(|k| {
        let env: Vec<(char, f64)> = vars
            .iter()
            .enumerate()
            .map(|(j, &v)| (v, points[(j + k) % points.len()] + k as f64 * 0.5))
            .collect();
        matches!((ea.eval(&env), eb.eval(&env)), (Some(x), Some(y)) if x.close(y))
    })
}

mod answer;
mod expr;
pub mod extract;
pub use expr::Rational;
pub use extract::MathConfig;
