//! Answers as structures, compared on meaning: sets (unordered) and tuples (ordered), intervals
//! and the inequalities that describe them, relations up to the side they are written on,
//! equations up to a non-zero factor, labels (`(p,q)=(3,2)`, `f(x)=1`, `a_3=2`) stripped where
//! they agree, matrices from any environment, ratios, `±` as the pair it stands for. The leaves
//! are compared by [`super::value_equal`]: exact rationals, numbers, expressions at sample points.
//!
//! Every comparison runs against a [`Deadline`]: a hostile answer (a thousand-element set, a
//! deeply nested expression) gives up as "not equivalent" instead of stalling a run.

use std::time::{Duration, Instant};

/// Answers longer than this (bytes, after extraction) are compared as text only.
pub const MAX_LEN: usize = 4000;
/// Elements of a set or tuple compared at most.
const MAX_ITEMS: usize = 128;
/// The time one verdict may take.
pub const BUDGET: Duration = Duration::from_millis(200);

/// When a comparison gives up.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline(Instant::now() + d)
    }
    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// A relation, as `lhs op rhs` with `op` one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Ne,
}

impl Op {
    fn flip(self) -> Op {
        match self {
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            Op::Ne => Op::Ne,
        }
    }
}

#[derive(Debug, Clone)]
enum Item {
    /// An expression, number or word (compared by `value_equal`).
    Value(String),
    /// `label = value`: a variable, `f(x)`, `(p,q)`, `a_3`, `A:B`, `|AB|`.
    Labeled(String, Box<Item>),
    /// `lhs = rhs` with variables on both sides.
    Equation(String, String),
    Rel(String, Op, String),
    /// Lower and upper bound, each closed or not.
    Interval(String, String, bool, bool),
    /// `(a, b, …)` or `[a, b, …]` with the brackets written.
    Tuple(Vec<Item>, char, char),
    /// Unordered: `\{…\}`, a bare list, `A \cup B`, `a \pm b`.
    Set(Vec<Item>),
    Ratio(Vec<String>),
    Matrix(Vec<Vec<String>>),
}

/// Spelling that differs between writers but not in meaning, before any structure is read.
pub fn prep(s: &str) -> String {
    let mut s = s.trim().to_string();
    // `\\frac` (a doubly escaped command) is `\frac`; a row break `\\` followed by a letter is
    // rare enough in an answer to read it so.
    let mut out = String::with_capacity(s.len());
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '\\' && b.get(i + 1) == Some(&'\\') {
            if b.get(i + 2).is_some_and(|c| c.is_ascii_alphabetic()) {
                out.push('\\');
            } else {
                out.push_str("\\\\");
            }
            i += 2;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    s = out;
    // `\ ` (a LaTeX space), but not the row break `\\` before a space.
    let mut out = String::with_capacity(s.len());
    let mut prev = ' ';
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' && prev != '\\' && it.peek() == Some(&' ') {
            prev = ' ';
            continue;
        }
        prev = if c == '\\' && prev == '\\' { ' ' } else { c };
        out.push(c);
    }
    s = out;
    for (a, b) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\bigl", ""),
        ("\\bigr", ""),
        ("\\Big", ""),
        ("\\big", ""),
        ("\\$", ""),
        ("$", ""),
        (",\\! ", ","),
        (",\\!", ","),
        (" {, }", ","),
        ("{, }", ","),
        (" {,}", ","),
        ("{,}", ","),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("~", " "),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("\\textnormal", "\\text"),
        ("\\mathrm{e}", "e"),
        ("\\geqslant", "≥"),
        ("\\leqslant", "≤"),
        ("\\geq", "≥"),
        ("\\leq", "≤"),
        ("\\neq", "≠"),
        ("\\ne ", "≠"),
        ("\\lt", "<"),
        ("\\gt", ">"),
        (">=", "≥"),
        ("<=", "≤"),
        ("=<", "≤"),
        ("!=", "≠"),
        ("\\approx", "≈"),
        ("\\sim", "≈"),
        ("\\qquad", ","),
        ("\\quad", ","),
        ("\\text{ and }", ","),
        ("\\text{and}", ","),
        ("\\text{ or }", ","),
        ("\\text{or}", ","),
        ("\\text{ }", " "),
        ("\\{", "{"),
        ("\\}", "}"),
        ("\\lbrace", "{"),
        ("\\rbrace", "}"),
        ("\\ldots", ""),
        ("\\cdots", ""),
        ("\\dots", ""),
        ("\\varnothing", "∅"),
        ("\\emptyset", "∅"),
        ("\\infty", "∞"),
        ("\\cup", "∪"),
        ("\\in ", "∈"),
        ("\\in{", "∈{"),
        ("\\in(", "∈("),
        ("\\in[", "∈["),
        ("\\in\\", "∈\\"),
    ] {
        s = s.replace(a, b);
    }
    // Words that join list items.
    for w in [" and ", " or ", ")or(", "}or{"] {
        let rep = match w {
            ")or(" => "),(",
            "}or{" => "},{",
            _ => ",",
        };
        s = s.replace(w, rep);
    }
    // `14{,}916` and `10,\!080`: thousands separators written as LaTeX.
    s = s.replace("{,}", ",").replace(",\\!", ",");
    // Bare `\\le`, `\\ge`, `\\ne` (not the start of a longer command).
    for (cmd, rep) in [("\\le", "≤"), ("\\ge", "≥"), ("\\ne", "≠")] {
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find(cmd) {
            let after = &rest[i + cmd.len()..];
            out.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_alphabetic()) {
                out.push_str(cmd);
            } else {
                out.push_str(rep);
            }
            rest = after;
        }
        out.push_str(rest);
        s = out;
    }
    // A whole answer that is one number with thousands groups (`7,425,000`) is that number,
    // not a list.
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let groups: Vec<&str> = int.trim_start_matches('-').split(',').collect();
    if groups.len() > 1
        && (1..=3).contains(&groups[0].len())
        && !groups[0].starts_with('0')
        && groups.iter().all(|g| !g.is_empty() && g.chars().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
        && frac.chars().all(|c| c.is_ascii_digit())
    {
        s = t.replace(',', "");
    }
    s
}

/// Split at top-level occurrences of any of `seps` (outside brackets and braces).
fn split_top(s: &str, seps: &[char]) -> Vec<String> {
    let mut parts = vec![];
    let mut depth = 0i32;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            c if depth == 0 && seps.contains(&c) => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    parts.push(cur);
    parts
}

fn has_top(s: &str, c: char) -> bool {
    split_top(s, &[c]).len() > 1
}

/// Are the brackets of `inner` balanced, never closing more than they opened?
fn balanced(inner: &str) -> bool {
    let mut depth = 0i32;
    for ch in inner.chars() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// Does the outer pair of brackets of `s` enclose all of it?
fn enclosed(s: &str, open: char, close: char) -> Option<&str> {
    let inner = s.strip_prefix(open)?.strip_suffix(close)?;
    balanced(inner).then_some(inner)
}

/// `(`, `[` … `)`, `]` around the whole of `s`, in any combination (intervals).
fn bracketed(s: &str) -> Option<(char, &str, char)> {
    let o = s.chars().next()?;
    let c = s.chars().last()?;
    if !"([".contains(o) || !")]".contains(c) || s.len() < 2 {
        return None;
    }
    let inner = &s[o.len_utf8()..s.len() - c.len_utf8()];
    balanced(inner).then_some((o, inner, c))
}

/// A name rather than a value: `x`, `a_3`, `x_{1}`, `f(x)`, `(p,q)`, `A:B`, `|AB|`,
/// `\frac{NO}{BO}`, `S_{MBCN}:S`, `\alpha`.
fn label_like(s: &str) -> bool {
    let s = s.trim();
    if s.is_empty() || s.len() > 40 {
        return false;
    }
    // Drop subscripts.
    let mut t = String::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        if cs[i] == '_' {
            i += 1;
            if cs.get(i) == Some(&'{') {
                while i < cs.len() && cs[i] != '}' {
                    i += 1;
                }
            }
            i += 1;
            continue;
        }
        t.push(cs[i]);
        i += 1;
    }
    let t = t.replace("\\frac", "").replace("\\left", "").replace("\\right", "");
    let t = t.replace("\\mathrm", "").replace("\\text", "").replace("\\overline", "");
    let letters = t.chars().filter(|c| c.is_alphabetic()).count();
    letters > 0
        && t.chars().all(|c| c.is_alphabetic() || "(){}|:, \\'".contains(c))
        && !t.contains("\\pi")
}

thread_local! {
    /// Nesting of [`parse`] and [`item`] on this thread.
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Deepest structure read (`{{{…}}}`); below it an answer is an opaque value.
const MAX_NESTING: usize = 32;

/// Runs `f` one level deeper, or gives `s` back whole past [`MAX_NESTING`].
fn nested(s: &str, f: impl FnOnce() -> Item) -> Item {
    let d = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    let r = if d > MAX_NESTING { Item::Value(s.to_string()) } else { f() };
    DEPTH.with(|d| d.set(d.get() - 1));
    r
}

/// Read an answer (already extracted) into items.
fn parse(s: &str) -> Item {
    nested(s, || parse_at(s))
}

fn parse_at(s: &str) -> Item {
    let s = s.trim().trim_end_matches('.').trim();
    // A set written with braces.
    if let Some(inner) = enclosed(s, '{', '}')
        && !inner.is_empty()
    {
        return Item::Set(split_items(inner));
    }
    let items = split_items(s);
    if items.len() > 1 {
        return Item::Set(items);
    }
    items.into_iter().next().unwrap_or(Item::Value(String::new()))
}

/// A list's items: `;` separates items when both `;` and `,` appear at the top level (`p=5,q=2;
/// p=7,q=2` is two pairs).
fn split_items(s: &str) -> Vec<Item> {
    let semi = has_top(s, ';');
    let parts = if semi { split_top(s, &[';']) } else { split_top(s, &[',']) };
    let parts: Vec<String> =
        parts.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 && semi {
        return parts
            .iter()
            .take(MAX_ITEMS)
            .map(|p| {
                let inner = split_top(p, &[',']);
                if inner.len() > 1 {
                    Item::Tuple(inner.iter().map(|x| item(x)).collect(), '(', ')')
                } else {
                    item(p)
                }
            })
            .collect();
    }
    // `∪` joins intervals into a set.
    if parts.len() == 1 && has_top(&parts[0], '∪') {
        return vec![Item::Set(split_top(&parts[0], &['∪']).iter().map(|x| item(x)).collect())];
    }
    parts.iter().take(MAX_ITEMS).map(|p| item(p)).collect()
}

/// One item of an answer.
fn item(s: &str) -> Item {
    nested(s, || item_at(s))
}

fn item_at(s: &str) -> Item {
    let s = s.trim().trim_end_matches('.').trim();
    // `x ∈ I`: the set.
    if let Some((lhs, rhs)) = s.split_once('∈')
        && label_like(lhs)
    {
        return parse(rhs);
    }
    if s.contains("\\begin{") {
        if let Some(m) = matrix_expression(s) {
            return Item::Matrix(m);
        }
        if let Some(m) = matrix(s) {
            return Item::Matrix(m);
        }
    }
    // `≈`: what comes before an approximation is the exact answer, else the approximation.
    if has_top(s, '≈') {
        let parts = split_top(s, &['≈']);
        let first = parts[0].trim();
        if has_top(first, '=') {
            return item(first);
        }
        return item(parts[parts.len() - 1].trim());
    }
    // Relations: one, or a chain `a < x < b` (an interval).
    let rel = relations(s);
    if !rel.is_empty() {
        return relation_item(s, &rel);
    }
    if has_top(s, '=') {
        let parts = split_top(s, &['=']);
        let (lhs, last) = (parts[0].trim(), parts[parts.len() - 1].trim());
        if lhs.is_empty() || last.is_empty() {
            return Item::Value(s.to_string());
        }
        if label_like(lhs) {
            return Item::Labeled(lhs.to_string(), Box::new(item(last)));
        }
        if parts.len() == 2 && (has_variable(lhs) || has_variable(last)) {
            return Item::Equation(lhs.to_string(), last.to_string());
        }
        return item(last);
    }
    if has_top(s, ':') && !s.contains("\\frac") {
        return Item::Ratio(
            split_top(s, &[':']).into_iter().map(|x| x.trim().to_string()).collect(),
        );
    }
    if let Some((o, inner, c)) = bracketed(s) {
        let parts = split_top(inner, &[',', ';']);
        if parts.len() > 1 {
            return Item::Tuple(parts.iter().take(MAX_ITEMS).map(|x| item(x)).collect(), o, c);
        }
    }
    if let Some(inner) = enclosed(s, '{', '}')
        && has_top(inner, ',')
    {
        return parse(inner);
    }
    // `a \pm b` (or `\pm b`): the pair.
    if let Some((a, b)) = s.split_once("\\pm") {
        let a = a.trim();
        let (p, m) = if a.is_empty() {
            (b.trim().to_string(), format!("-({})", b.trim()))
        } else {
            (format!("{a}+({})", b.trim()), format!("{a}-({})", b.trim()))
        };
        return Item::Set(vec![Item::Value(p), Item::Value(m)]);
    }
    Item::Value(s.to_string())
}

/// Does `s` (an expression) mention a variable?
fn has_variable(s: &str) -> bool {
    match super::expr::parse(&super::normalize(s)) {
        Ok(e) => !e.vars().is_empty(),
        Err(_) => s.chars().any(|c| c.is_alphabetic()),
    }
}

/// Top-level relation operators of `s` with their byte positions.
fn relations(s: &str) -> Vec<(usize, Op, usize)> {
    let mut out = vec![];
    let mut depth = 0i32;
    for (i, ch) in s.char_indices() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if depth == 0 => {
                let op = match ch {
                    '<' => Some(Op::Lt),
                    '>' => Some(Op::Gt),
                    '≤' => Some(Op::Le),
                    '≥' => Some(Op::Ge),
                    '≠' => Some(Op::Ne),
                    _ => None,
                };
                if let Some(op) = op {
                    out.push((i, op, ch.len_utf8()));
                }
            }
            _ => {}
        }
    }
    out
}

fn relation_item(s: &str, rel: &[(usize, Op, usize)]) -> Item {
    let part = |a: usize, b: usize| s[a..b].trim().to_string();
    if rel.len() == 1 {
        let (i, op, n) = rel[0];
        let (l, r) = (part(0, i), part(i + n, s.len()));
        // `x ≥ 5` with a bare variable on one side is also the interval it describes.
        return Item::Rel(l, op, r);
    }
    if rel.len() == 2 {
        let ((i, a, n), (j, b, m)) = (rel[0], rel[1]);
        let (lo, mid, hi) = (part(0, i), part(i + n, j), part(j + m, s.len()));
        let closed = |o: Op| matches!(o, Op::Le | Op::Ge);
        // `1 ≤ |z| ≤ 3/2`: two intervals, `[-3/2, -1] ∪ [1, 3/2]`.
        if let Some(inner) = mid.strip_prefix('|').and_then(|m| m.strip_suffix('|'))
            && label_like(inner)
            && matches!(a, Op::Lt | Op::Le)
            && matches!(b, Op::Lt | Op::Le)
            && super::expr::parse(&super::normalize(&lo))
                .ok()
                .and_then(|e| e.eval(&[]))
                .is_some_and(|v| v.im == 0.0 && v.re > 0.0)
        {
            let neg = |x: &str| format!("-({x})");
            return Item::Set(vec![
                Item::Interval(neg(&hi), neg(&lo), closed(b), closed(a)),
                Item::Interval(lo, hi, closed(a), closed(b)),
            ]);
        }
        if label_like(&mid) {
            if matches!(a, Op::Lt | Op::Le) && matches!(b, Op::Lt | Op::Le) {
                return Item::Interval(lo, hi, closed(a), closed(b));
            }
            if matches!(a, Op::Gt | Op::Ge) && matches!(b, Op::Gt | Op::Ge) {
                return Item::Interval(hi, lo, closed(b), closed(a));
            }
        }
    }
    Item::Value(s.to_string())
}

/// The rows of a matrix in any environment (`pmatrix`, `bmatrix`, `array{cc}` …).
fn matrix(s: &str) -> Option<Vec<Vec<String>>> {
    let begin = s.find("\\begin{")?;
    let mut start = s[begin..].find('}')? + begin + 1;
    // `array` and friends take a column spec.
    if s[start..].starts_with('{') {
        start += s[start..].find('}')? + 1;
    }
    let end = s.rfind("\\end{")?;
    if end < start || s[..begin].contains("\\begin{") && s.matches("\\begin{").count() > 1 {
        return None;
    }
    let rows: Vec<Vec<String>> = s[start..end]
        .split("\\\\")
        .map(|row| row.split('&').map(|x| x.trim().to_string()).collect::<Vec<_>>())
        .filter(|r: &Vec<String>| !(r.len() == 1 && r[0].is_empty()))
        .collect();
    (!rows.is_empty()).then_some(rows)
}

/// Matrices combined by `+`, `-` or a product (`A B`, `A \\cdot B`), evaluated when every
/// element is a number: the result, its elements written as decimals.
fn matrix_expression(s: &str) -> Option<Vec<Vec<String>>> {
    // The literals, and what stands between them.
    let mut mats: Vec<Vec<Vec<f64>>> = vec![];
    let mut ops: Vec<String> = vec![];
    let mut rest = s.trim();
    loop {
        let begin = rest.find("\\begin{")?;
        let lead = rest[..begin].trim();
        if mats.is_empty() {
            if !lead.is_empty() {
                return None;
            }
        } else {
            ops.push(lead.to_string());
        }
        let name_end = rest[begin + 7..].find('}')? + begin + 7;
        let name = &rest[begin + 7..name_end];
        let close = format!("\\end{{{name}}}");
        let end = rest[name_end..].find(&close)? + name_end + close.len();
        let rows = matrix(&rest[begin..end])?;
        let num: Option<Vec<Vec<f64>>> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|x| {
                        let e = super::expr::parse(&super::normalize(x)).ok()?;
                        let v = e.eval(&[])?;
                        (v.im == 0.0).then_some(v.re)
                    })
                    .collect()
            })
            .collect();
        mats.push(num?);
        rest = rest[end..].trim();
        if rest.is_empty() {
            break;
        }
    }
    if mats.len() < 2 || mats.len() > 8 {
        return None;
    }
    let mut acc = mats[0].clone();
    for (m, op) in mats[1..].iter().zip(&ops) {
        acc = match op.as_str() {
            "+" | "-" => {
                if acc.len() != m.len() || acc.iter().zip(m).any(|(a, b)| a.len() != b.len()) {
                    return None;
                }
                let sign = if op == "+" { 1.0 } else { -1.0 };
                acc.iter()
                    .zip(m)
                    .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + sign * y).collect())
                    .collect()
            }
            "" | "\\cdot" | "\\times" | "*" => {
                let (n, k, p) = (acc.len(), m.len(), m.first()?.len());
                if acc.iter().any(|r| r.len() != k) || m.iter().any(|r| r.len() != p) {
                    return None;
                }
                (0..n)
                    .map(|i| (0..p).map(|j| (0..k).map(|t| acc[i][t] * m[t][j]).sum()).collect())
                    .collect()
            }
            _ => return None,
        };
    }
    Some(acc.iter().map(|r| r.iter().map(|x| format!("{x:.12}")).collect()).collect())
}

/// `pred` against `gold`, item structure first, leaves by value.
pub fn equivalent(gold: &str, pred: &str, dl: &Deadline) -> bool {
    let (g, p) = (prep(gold), prep(pred));
    if g.len() > MAX_LEN || p.len() > MAX_LEN {
        return g == p;
    }
    // Decimal commas: `1,22` against `1.22`.
    let (g, p) = decimal_commas(&g, &p);
    let (gi, pi) = (parse(&g), parse(&p));
    same(&gi, &pi, dl)
}

/// One side a decimal number, the other `d,dd` (not a thousands group): the comma is a decimal
/// point.
fn decimal_commas(g: &str, p: &str) -> (String, String) {
    let comma = |s: &str| {
        let t = s.trim().trim_matches('$').trim();
        let (a, b) = t.split_once(',')?;
        let ok = !a.is_empty()
            && a.trim_start_matches('-').chars().all(|c| c.is_ascii_digit())
            && !b.is_empty()
            && b.chars().all(|c| c.is_ascii_digit())
            && (b.len() != 3 || a.trim_start_matches('-') == "0");
        ok.then(|| format!("{a}.{b}"))
    };
    let decimal = |s: &str| {
        let t = s.trim().trim_matches('$').trim();
        t.contains('.')
            && t.trim_start_matches('-').chars().all(|c| c.is_ascii_digit() || c == '.' || c == ',')
    };
    match (comma(g), comma(p)) {
        (Some(gc), None) if decimal(p) => (gc, p.replace(',', "")),
        (None, Some(pc)) if decimal(g) => (g.replace(',', ""), pc),
        _ => (g.to_string(), p.to_string()),
    }
}

fn value(a: &str, b: &str, dl: &Deadline) -> bool {
    !dl.passed() && super::value_equal(a, b)
}

/// The value of an item as one expression, labels dropped.
fn strip(i: &Item) -> &Item {
    match i {
        Item::Labeled(_, v) => strip(v),
        other => other,
    }
}

/// An answer as assignments `name → value`: `x = 1, y = 2`, `(x, y) = (1, 2)`, `a_3 = 2`.
fn assignments(i: &Item) -> Option<Vec<(String, &Item)>> {
    match i {
        Item::Labeled(l, v) => {
            let names = bracketed(l.trim()).map(|(_, inner, _)| split_top(inner, &[',']));
            match (names, v.as_ref()) {
                (Some(ns), Item::Tuple(vs, _, _)) if ns.len() == vs.len() && ns.len() > 1 => {
                    Some(ns.iter().map(|n| super::normalize(n)).zip(vs.iter()).collect())
                }
                (None, v) => Some(vec![(super::normalize(l), v)]),
                _ => None,
            }
        }
        Item::Set(items) => {
            let mut out = vec![];
            for x in items {
                match x {
                    Item::Labeled(..) => out.extend(assignments(x)?),
                    _ => return None,
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// The same names given the same values, in any order.
fn same_assignments(g: &[(String, &Item)], p: &[(String, &Item)], dl: &Deadline) -> Option<bool> {
    if g.len() != p.len() || g.len() < 2 {
        return None;
    }
    let mut names: Vec<&String> = g.iter().map(|x| &x.0).collect();
    names.sort();
    let mut pn: Vec<&String> = p.iter().map(|x| &x.0).collect();
    pn.sort();
    if names != pn {
        return None;
    }
    Some(g.iter().all(|(n, v)| p.iter().any(|(m, w)| m == n && same(v, w, dl))))
}

/// `f(x)` and `f(y)`: the same function of a renamed variable. The prediction's value with its
/// variable renamed to the gold's.
fn renamed(lg: &str, lp: &str, vp: &Item) -> Option<Item> {
    let arg = |l: &str| -> Option<(String, char)> {
        let (f, rest) = l.trim().split_once('(')?;
        let v = rest.strip_suffix(')')?.trim();
        let mut cs = v.chars();
        let c = cs.next()?;
        (cs.next().is_none() && c.is_ascii_alphabetic() && !f.is_empty())
            .then(|| (f.trim().to_string(), c))
    };
    let ((fg, xg), (fp, xp)) = (arg(lg)?, arg(lp)?);
    let Item::Value(v) = vp else { return None };
    (fg == fp && xg != xp && !v.contains(xg)).then(|| Item::Value(v.replace(xp, &xg.to_string())))
}

fn same(g: &Item, p: &Item, dl: &Deadline) -> bool {
    if dl.passed() {
        return false;
    }
    if let (Some(ga), Some(pa)) = (assignments(g), assignments(p))
        && let Some(r) = same_assignments(&ga, &pa, dl)
    {
        return r;
    }
    match (g, p) {
        (Item::Labeled(lg, vg), Item::Labeled(lp, vp)) => {
            if super::normalize(lg) == super::normalize(lp) {
                same(vg, vp, dl)
            } else if let Some(v) = renamed(lg, lp, vp) {
                same(vg, &v, dl)
            } else {
                // Different labels: equal only as equations (`y = 2x` and `x = y/2`).
                equations(lg, &flat(vg), lp, &flat(vp), dl)
            }
        }
        (Item::Labeled(l, v), Item::Equation(a, b))
        | (Item::Equation(a, b), Item::Labeled(l, v)) => {
            equations(l, &flat(v), a, b, dl) || same_unlabeled(v, p, g, dl)
        }
        (Item::Labeled(_, v), other) => same(v, other, dl),
        (other, Item::Labeled(_, v)) => same(other, v, dl),
        (Item::Equation(a, b), Item::Equation(c, d)) => equations(a, b, c, d, dl),
        (Item::Set(a), Item::Set(b)) => same_set(a, b, dl),
        (Item::Set(a), single) | (single, Item::Set(a)) if a.len() == 1 => same(&a[0], single, dl),
        (Item::Tuple(a, go, gc), Item::Tuple(b, po, pc)) => {
            go == po
                && gc == pc
                && a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| same(x, y, dl))
        }
        // An inequality in the gold is answered by its interval, but an interval in the gold is
        // not answered by an inequality (math-verify's rule: the form was asked for).
        (Item::Tuple(..), Item::Interval(..)) => false,
        (Item::Interval(lo, hi, lc, hc), Item::Tuple(b, o, c)) => {
            b.len() == 2
                && (*o == '[') == *lc
                && (*c == ']') == *hc
                && same(&Item::Value(lo.clone()), &b[0], dl)
                && same(&Item::Value(hi.clone()), &b[1], dl)
        }
        (Item::Interval(a, b, c, d), Item::Interval(e, f, g2, h)) => {
            c == g2 && d == h && value(a, e, dl) && value(b, f, dl)
        }
        (Item::Rel(..), Item::Tuple(..)) => match (interval_of(g), interval_of(p)) {
            (Some(a), Some(b)) => same(&a, &b, dl),
            _ => false,
        },
        (Item::Rel(..), Item::Interval(..)) => match (interval_of(g), interval_of(p)) {
            (Some(a), Some(b)) => same(&a, &b, dl),
            _ => false,
        },
        (Item::Rel(a, o1, b), Item::Rel(c, o2, d)) => relations_equal(a, *o1, b, c, *o2, d, dl),
        (Item::Ratio(a), Item::Ratio(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| value(x, y, dl))
        }
        (Item::Matrix(a), Item::Matrix(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(r, s)| {
                    r.len() == s.len() && r.iter().zip(s).all(|(x, y)| value(x, y, dl))
                })
        }
        (Item::Value(a), Item::Value(b)) => value(a, b, dl),
        _ => false,
    }
}

/// A labelled value against an equation that is really a value (`x = 5` against `5 = x`).
fn same_unlabeled(v: &Item, other: &Item, _labeled: &Item, dl: &Deadline) -> bool {
    match other {
        Item::Equation(_, b) => same(v, &Item::Value(b.clone()), dl),
        _ => false,
    }
}

/// An item as one flat expression string (for equations).
fn flat(i: &Item) -> String {
    match strip(i) {
        Item::Value(v) => v.clone(),
        Item::Equation(a, b) => format!("({a})-({b})"),
        _ => String::new(),
    }
}

/// The interval a one-variable relation describes: `x ≥ 5` → `[5, ∞)`.
fn interval_of(i: &Item) -> Option<Item> {
    match i {
        Item::Rel(l, op, r) => {
            let (var_left, var_right) = (label_like(l), label_like(r));
            let (op, bound) = match (var_left, var_right) {
                (true, false) => (*op, r.clone()),
                (false, true) => (op.flip(), l.clone()),
                _ => return None,
            };
            Some(match op {
                Op::Lt => Item::Interval("-∞".into(), bound, false, false),
                Op::Le => Item::Interval("-∞".into(), bound, false, true),
                Op::Gt => Item::Interval(bound, "∞".into(), false, false),
                Op::Ge => Item::Interval(bound, "∞".into(), true, false),
                Op::Ne => return None,
            })
        }
        Item::Tuple(..) | Item::Interval(..) => Some(i.clone()),
        _ => None,
    }
}

/// The distinct items of a set (`{1, 1, 2}` is `{1, 2}`).
fn distinct<'a>(a: &'a [Item], dl: &Deadline) -> Vec<&'a Item> {
    let mut out: Vec<&Item> = Vec::with_capacity(a.len());
    for x in a {
        if !out.iter().any(|y| same(x, y, dl)) {
            out.push(x);
        }
    }
    out
}

/// Unordered, each gold item matched by a distinct prediction item (duplicates counted once).
fn same_set(a: &[Item], b: &[Item], dl: &Deadline) -> bool {
    if a.len() > MAX_ITEMS || b.len() > MAX_ITEMS {
        return false;
    }
    let (a, b) = (distinct(a, dl), distinct(b, dl));
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        (0..b.len()).any(|j| {
            if !used[j] && same(x, b[j], dl) {
                used[j] = true;
                true
            } else {
                false
            }
        })
    })
}

/// Sample points for the variables of an expression pair.
const POINTS: [f64; 6] = [0.37, 1.91, -2.63, 0.83, 3.17, -0.59];

/// `f = lhs - rhs` at several points, for every variable of both sides.
fn samples(l: &str, r: &str, vars: &[char], dl: &Deadline) -> Option<Vec<f64>> {
    let e = super::expr::parse(&super::normalize(&format!("({l})-({r})"))).ok()?;
    let mut out = vec![];
    for k in 0..5 {
        if dl.passed() {
            return None;
        }
        let env: Vec<(char, f64)> = vars
            .iter()
            .enumerate()
            .map(|(j, &v)| (v, POINTS[(j + k) % POINTS.len()] + k as f64 * 0.61))
            .collect();
        let v = e.eval(&env)?;
        if v.im.abs() > 1e-9 {
            return None;
        }
        out.push(v.re);
    }
    Some(out)
}

fn vars_of(parts: &[&str]) -> Option<Vec<char>> {
    let mut vars = vec![];
    for p in parts {
        let e = super::expr::parse(&super::normalize(p)).ok()?;
        for v in e.vars() {
            if !vars.contains(&v) {
                vars.push(v);
            }
        }
    }
    vars.sort_unstable();
    Some(vars)
}

/// The constant c with f = c·g at every sample, if there is one (f and g not both zero).
fn ratio(f: &[f64], g: &[f64]) -> Option<f64> {
    let k = g.iter().position(|x| x.abs() > 1e-9)?;
    let c = f[k] / g[k];
    let ok = f
        .iter()
        .zip(g)
        .all(|(a, b)| (a - c * b).abs() <= 1e-6 * (a.abs().max(c.abs() * b.abs()).max(1.0)));
    (ok && c.abs() > 1e-12).then_some(c)
}

/// Two equations with the same solutions: `a - b = c·(d - e)` for a non-zero constant c.
fn equations(a: &str, b: &str, c: &str, d: &str, dl: &Deadline) -> bool {
    let Some(vars) = vars_of(&[a, b, c, d]) else { return false };
    if vars.is_empty() {
        return false;
    }
    match (samples(a, b, &vars, dl), samples(c, d, &vars, dl)) {
        (Some(f), Some(g)) => ratio(&f, &g).is_some(),
        _ => false,
    }
}

/// `a o1 b` and `c o2 d` are the same relation: both read as `f < 0` (or ≤, ≠), with f equal up
/// to a positive factor (any non-zero factor for ≠).
fn relations_equal(a: &str, o1: Op, b: &str, c: &str, o2: Op, d: &str, dl: &Deadline) -> bool {
    // `l > r` is `r - l < 0`.
    let canon = |l: &str, o: Op, r: &str| -> (String, String, Op) {
        match o {
            Op::Gt => (r.to_string(), l.to_string(), Op::Lt),
            Op::Ge => (r.to_string(), l.to_string(), Op::Le),
            o => (l.to_string(), r.to_string(), o),
        }
    };
    let (l1, r1, p1) = canon(a, o1, b);
    let (l2, r2, p2) = canon(c, o2, d);
    if p1 != p2 {
        return false;
    }
    if value(&l1, &l2, dl) && value(&r1, &r2, dl) {
        return true;
    }
    if p1 == Op::Ne && value(&l1, &r2, dl) && value(&r1, &l2, dl) {
        return true;
    }
    let Some(vars) = vars_of(&[&l1, &r1, &l2, &r2]) else { return false };
    if vars.is_empty() {
        return false;
    }
    match (samples(&l1, &r1, &vars, dl), samples(&l2, &r2, &vars, dl)) {
        (Some(f), Some(g)) => ratio(&f, &g).is_some_and(|c| p1 == Op::Ne || c > 0.0),
        _ => false,
    }
}
