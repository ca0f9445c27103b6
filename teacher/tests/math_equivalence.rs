//! The math verifier against a table of (gold, prediction, equivalent?) cases in the answer styles
//! of ../shared/data/eval (MATH-500, AIME, AMC, GSM8K).

use distill_teacher::verify::math::{
    MathConfig, equivalent, extract_answer, gsm8k_answer, judge, last_boxed,
};

/// `tests/data/math-cases.jsonl`: distill's own table, by category — the answer styles of the
/// shared eval sets (MATH-500, AIME, AMC, GSM8K) and of OlympiadBench, and hard negatives (near
/// misses that must not pass). A case with `"completion": true` is a whole completion, judged as
/// rejection sampling judges it; the others (`"extracted": true`) are extracted answers. The math-verify suite's own
/// cases are in `math_verify_suite.rs`; `scripts/reference/math_verify_table.py` runs math-verify
/// over both files.
fn table() -> Vec<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/math-cases.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_equivalence_table_holds() {
    let cases = table();
    let negatives = cases
        .iter()
        .filter(|c| c["category"].as_str().unwrap().starts_with("Hard negative"))
        .count();
    assert!(
        cases.len() >= 250 && negatives >= 40,
        "{} cases, {negatives} hard negatives",
        cases.len()
    );
    let cfg = MathConfig::default();
    let mut failures = Vec::new();
    for c in &cases {
        let (gold, pred) = (c["gold"].as_str().unwrap(), c["pred"].as_str().unwrap());
        let want = c["expected"].as_bool().unwrap();
        let got = if c["completion"] == true {
            let (_, answer, _) = distill_data::think::split_think(pred);
            judge(gold, "", &answer, &cfg).1
        } else {
            equivalent(gold, pred)
        };
        if got != want {
            failures.push(format!(
                "{} [{}]: {gold:?} against {pred:?} should be {want}",
                c["id"], c["category"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn answers_are_extracted_from_completions() {
    assert_eq!(
        last_boxed("so \\boxed{\\frac{1}{2}} and finally \\boxed{\\frac{\\sqrt{3}}{2}}.")
            .as_deref(),
        Some("\\frac{\\sqrt{3}}{2}")
    );
    assert_eq!(
        last_boxed("\\boxed{\\left\\{1, 2\\right\\}}").as_deref(),
        Some("\\left\\{1, 2\\right\\}")
    );
    assert_eq!(last_boxed("the answer is \\boxed 7.").as_deref(), Some("7"));
    assert_eq!(last_boxed("no box here"), None);
    assert_eq!(gsm8k_answer("She has 3+4=<<3+4=7>>7 apples.\n#### 7").as_deref(), Some("7"));
    assert_eq!(extract_answer("We get 12 + 30 = 42. The answer is 42.").as_deref(), Some("42"));
    assert_eq!(extract_answer("Step 1: 3 apples. Step 2: 1,200 pears").as_deref(), Some("1,200"));
    assert_eq!(extract_answer("**Answer:** $18.50").as_deref(), Some("18.50"));
    assert_eq!(extract_answer("nothing numeric"), None);
}

/// The false-pass audit: in every shared eval set, each problem's gold against every other
/// problem's gold (both ways) must fail, except true coincidences — the same answer written the
/// same way, or the pairs listed in `tests/data/gold-coincidences.json` (the same value written
/// differently). Every gold also passes against itself written through a box.
#[test]
fn no_gold_passes_for_another_problem_unless_it_is_the_same_answer() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/eval");
    if !dir.exists() {
        distill_data::testing::fixture_missing(&format!("{} not present", dir.display()));
        return;
    }
    let listed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/gold-coincidences.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let cfg = MathConfig::default();
    let mut unexplained = Vec::new();
    let mut seen = Vec::new();
    for file in
        ["math500.jsonl", "aime24.jsonl", "aime25.jsonl", "amc2023.jsonl", "gsm8k-test.jsonl"]
    {
        let golds: Vec<String> = std::fs::read_to_string(dir.join(file))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let raw =
                    v["answer"].as_str().map_or_else(|| v["answer"].to_string(), str::to_string);
                distill_teacher::verify::math::gold_answer(&raw, &cfg).unwrap()
            })
            .collect();
        for g in &golds {
            let completion = format!("Thus the final answer is $\\boxed{{{g}}}$.");
            assert!(judge(g, "", &completion, &cfg).1, "{file}: gold {g:?} does not match itself");
        }
        let ok: Vec<(String, String)> = listed[file]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (i, a) in golds.iter().enumerate() {
            for (j, b) in golds.iter().enumerate() {
                if i == j || a.trim() == b.trim() || !equivalent(a, b) {
                    continue;
                }
                let pair = (a.clone(), b.clone());
                if ok.contains(&pair) || ok.contains(&(b.clone(), a.clone())) {
                    seen.push((file, pair));
                } else {
                    unexplained
                        .push(format!("{file}: gold {i} {a:?} passes for problem {j}'s {b:?}"));
                }
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "{} unexplained passes:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    // Every listed coincidence still happens (the list is not stale).
    for (file, pairs) in listed.as_object().unwrap() {
        for p in pairs.as_array().unwrap() {
            let pair = (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string());
            assert!(
                seen.iter()
                    .any(|(f, q)| f == file && (*q == pair || (q.1.clone(), q.0.clone()) == pair)),
                "{file}: listed coincidence {pair:?} no longer passes"
            );
        }
    }
}

/// Hostile answers end in a verdict, fast: deep nesting, unclosed boxes, huge sets, huge powers
/// and megabytes of text. Each is bounded by the parser's depth limit, the box and length caps
/// and the per-verdict deadline (`answer::BUDGET`, 200 ms); the bound checked here is generous
/// (5 s) so that a loaded machine does not fail it, while an unbounded case would take minutes
/// or overflow the stack.
#[test]
fn pathological_answers_are_judged_in_bounded_time() {
    let cfg = MathConfig::default();
    let n = 100_000;
    let set: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let cases: Vec<(&str, String)> = vec![
        ("parentheses", format!("{}1{}", "(".repeat(n), ")".repeat(n))),
        ("short parentheses", format!("{}1{}", "(".repeat(1500), ")".repeat(1500))),
        ("minus signs", format!("{}1", "-".repeat(n))),
        ("short minus signs", format!("{}1", "-".repeat(3000))),
        ("braces", format!("{}1{}", "{".repeat(1500), "}".repeat(1500))),
        ("fractions", format!("{}1{}", "\\frac{1}{".repeat(500), "}".repeat(500))),
        ("unclosed boxes", "\\boxed{".repeat(n)),
        ("a huge set", set.join(", ")),
        ("a short huge set", set[..1000].join(",")),
        ("tower", "2^{2^{2^{2^{2^{100}}}}}".to_string()),
        ("power of a variable", "x^{1000000} + y^{999999}".to_string()),
        ("megabytes", "1 + ".repeat(300_000)),
        ("dollars", "$1$ and ".repeat(50_000)),
        ("cues", "The answer is ".repeat(50_000)),
    ];
    for (what, text) in cases {
        let t = std::time::Instant::now();
        let as_answer = equivalent("7", &text);
        let (_, as_completion) = judge("7", "", &text, &cfg);
        let secs = t.elapsed().as_secs_f64();
        assert!(secs < 5.0, "{what}: {secs:.2} s");
        // None of them is the answer 7.
        assert!(!as_answer && !as_completion, "{what} passed as 7");
    }
}
