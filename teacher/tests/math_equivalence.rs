//! The math verifier against a table of (gold, prediction, equivalent?) cases in the answer styles
//! of ../shared/data/eval (MATH-500, AIME, AMC, GSM8K).

use distill_teacher::verify::math::{
    MathConfig, equivalent, extract_answer, gsm8k_answer, judge, last_boxed,
};

/// `tests/data/math-cases.jsonl`: distill's own table, by category — the answer styles of the
/// shared eval sets (MATH-500, AIME, AMC, GSM8K) and of OlympiadBench, and hard negatives (near
/// misses that must not pass). A case with `"completion": true` is a whole completion, judged as
/// rejection sampling judges it; the others are extracted answers. The math-verify suite's own
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

/// The gold answers of the shared eval sets, fed back as predictions, are all equivalent to
/// themselves written through a box, and a shuffled key scores (almost) nothing.
#[test]
fn gold_answers_match_themselves_and_not_a_shuffled_key() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/eval");
    if !dir.exists() {
        distill_data::testing::fixture_missing(&format!("{} not present", dir.display()));
        return;
    }
    for file in ["math500.jsonl", "aime24.jsonl", "aime25.jsonl", "amc2023.jsonl"] {
        let golds: Vec<String> = std::fs::read_to_string(dir.join(file))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["answer"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["answer"].to_string()
                    })
            })
            .collect();
        for g in &golds {
            let completion = format!("Thus the final answer is $\\boxed{{{g}}}$.");
            let got = extract_answer(&completion).unwrap();
            assert!(equivalent(g, &got), "{file}: gold {g:?} does not match itself");
        }
        let n = golds.len();
        let wrong = (0..n).filter(|&i| equivalent(&golds[i], &golds[(i + 7) % n])).count();
        assert!((wrong as f64) < 0.05 * n as f64, "{file}: shifted key matched {wrong}/{n}");
    }
}
