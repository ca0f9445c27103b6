//! The math verifier against a table of (gold, prediction, equivalent?) cases in the answer styles
//! of ../shared/data/eval (MATH-500, AIME, AMC, GSM8K).

use distill_teacher::verify::math::{equivalent, extract_answer, gsm8k_answer, last_boxed};

const CASES: &[(&str, &str, bool)] = &[
    // Integers (AIME, AMC, GSM8K).
    ("204", "204", true),
    ("204", "204.0", true),
    ("204", "204.00", true),
    ("204", "0204", true),
    ("204", "205", false),
    ("-9", "-9", true),
    ("-9", "9", false),
    ("0", "0", true),
    ("0", "-0", true),
    ("72", "$72", true),
    ("72", "72 dollars", true),
    ("72", "\\$72", true),
    ("72", "72.", true),
    ("1000", "1,000", true),
    ("1000", "1000.0", true),
    ("8000", "8,000", true),
    ("58,500", "58500", true),
    ("10,\\!080", "10080", true),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100", true),
    ("\\$32,\\!348", "32348", true),
    ("\\$32,\\!348", "$32,348", true),
    ("1000", "100", false),
    ("5", "\\boxed{5}", false),
    ("5", "5 \\text{ apples}", true),
    ("17", "x = 17", true),
    ("17", "n=17", true),
    ("17", "17^\\circ", true),
    // Fractions.
    ("\\frac{1}{8}", "\\frac{1}{8}", true),
    ("\\frac{1}{8}", "\\dfrac{1}{8}", true),
    ("\\frac{1}{8}", "\\tfrac{1}{8}", true),
    ("\\frac{1}{8}", "1/8", true),
    ("\\frac{1}{8}", "0.125", true),
    ("\\frac{1}{8}", "\\frac{2}{16}", true),
    ("\\frac{1}{8}", "\\frac18", true),
    ("\\frac{1}{8}", "\\frac{1}{9}", false),
    ("\\frac{1}{8}", "0.12", false),
    ("\\frac43", "\\frac{4}{3}", true),
    ("\\frac43", "4/3", true),
    ("\\frac65", "1.2", true),
    ("\\frac 59", "\\frac{5}{9}", true),
    ("\\frac9{19}", "\\frac{9}{19}", true),
    ("\\dfrac{17}{50}", "0.34", true),
    ("\\dfrac{33}{100}", "33\\%", false),
    ("-\\frac{35}{9}", "\\frac{-35}{9}", true),
    ("-\\frac{35}{9}", "-35/9", true),
    ("-\\frac{35}{9}", "\\frac{35}{9}", false),
    ("-\\frac{24}{25}", "-0.96", true),
    ("\\frac{3840}{289}", "\\frac{3840}{289}", true),
    ("\\frac{1997}{2}", "998.5", true),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", true),
    ("1\\frac{4}{5}", "\\frac{9}{5}", true),
    ("1\\frac{4}{5}", "1.8", true),
    ("\\frac{448}{15625}", "0.028672", true),
    // Decimals.
    (".35625", "0.35625", true),
    (".35625", "\\frac{57}{160}", true),
    ("0.15", "\\frac{3}{20}", true),
    ("0.15", "0.150", true),
    ("0.15", "0.1500001", false),
    ("1.25", "\\frac{5}{4}", true),
    ("3.21", "3.21", true),
    (".0000672", "6.72e-5", true),
    (".0000672", "6.72 \\times 10^{-5}", true),
    ("5.4 \\text{ cents}", "5.4", true),
    ("5.4 \\text{ cents}", "5.40", true),
    // Percent, degrees, units.
    ("10\\%", "10", true),
    ("10\\%", "10%", true),
    ("90^\\circ", "90", true),
    ("90^\\circ", "90°", true),
    ("90^\\circ", "90^{\\circ}", true),
    ("145^\\circ", "145 degrees", true),
    ("864 \\mbox{ inches}^2", "864", true),
    ("864 \\mbox{ inches}^2", "865", false),
    // Radicals.
    ("\\sqrt{51}", "\\sqrt{51}", true),
    ("\\sqrt{5}", "\\sqrt5", true),
    // LaTeX takes one token: \\sqrt51 is √5·1.
    ("\\sqrt{51}", "\\sqrt51", false),
    ("\\sqrt{51}", "51^{1/2}", true),
    ("\\sqrt{51}", "\\sqrt{52}", false),
    ("3\\sqrt{13}", "\\sqrt{117}", true),
    ("3\\sqrt{13}", "3 \\sqrt{13}", true),
    ("3\\sqrt{13}", "3*\\sqrt{13}", true),
    ("3\\sqrt{13}", "13\\sqrt{3}", false),
    ("11\\sqrt2", "11\\sqrt{2}", true),
    ("70 \\sqrt{2}", "\\sqrt{9800}", true),
    ("\\frac{\\sqrt{21}}{5}", "\\frac{1}{5}\\sqrt{21}", true),
    ("\\frac{\\sqrt{21}}{5}", "\\sqrt{21}/5", true),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", true),
    ("\\frac{\\sqrt{3}}{3}", "0.577", false),
    ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt{3}", true),
    ("2\\sqrt{113}", "\\sqrt{452}", true),
    ("1+2\\sqrt{3}", "2\\sqrt{3}+1", true),
    ("1+2\\sqrt{3}", "1+2\\sqrt{2}", false),
    ("11 \\sqrt{5} + 11", "11(\\sqrt{5}+1)", true),
    ("-\\sqrt{3}", "-\\sqrt3", true),
    ("\\sqrt[3]{2}", "2^{1/3}", true),
    // π.
    ("\\pi", "\\pi", true),
    ("288 \\pi", "288\\pi", true),
    ("12\\pi", "12 \\pi", true),
    ("7\\pi", "7\\pi", true),
    ("7\\pi", "21.99", false),
    ("18+2\\pi", "2\\pi+18", true),
    ("-\\frac{\\pi}{6}", "-\\pi/6", true),
    ("-\\frac{\\pi}{6}", "\\frac{\\pi}{6}", false),
    ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", true),
    // Complex numbers.
    ("6 - 5i", "6-5i", true),
    ("6 - 5i", "-5i+6", true),
    ("6 - 5i", "6+5i", false),
    ("1+274i", "1 + 274i", true),
    ("-2 + 7i", "7i-2", true),
    // Tuples and intervals.
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", true),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)", true),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(\\frac{\\pi}{2}, 3)", false),
    ("(6,31,-1)", "(6, 31, -1)", true),
    ("(6,31,-1)", "(6,31,1)", false),
    ("(-2,1)", "(-2, 1)", true),
    ("(15,-29)", "(15, -29)", true),
    ("\\left( \\frac{3}{2}, -13 \\right)", "(1.5, -13)", true),
    ("(3,4]", "(3, 4]", true),
    ("(3,4]", "(3,4)", false),
    ("(3,4]", "[3,4]", false),
    ("(2,\\infty)", "(2, \\infty)", true),
    ("(-\\infty, 0]", "(-\\infty,0]", true),
    ("(-\\sqrt{3}, \\sqrt{3})", "(-\\sqrt3, \\sqrt3)", true),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, 8/3]", true),
    ("(5,\\infty)", "[5,\\infty)", false),
    // Bare lists: order does not matter.
    ("1,-2", "-2, 1", true),
    ("1,-2", "1, -2", true),
    ("1,-2", "1, 2", false),
    ("3, 5, 7", "7, 5, 3", true),
    ("3, 5, 7", "3, 5", false),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}", true),
    ("1 \\pm \\sqrt{19}", "1 \\pm \\sqrt{19}", true),
    ("3 \\pm 2 \\sqrt{2}", "3-2\\sqrt{2}, 3+2\\sqrt{2}", true),
    ("3 \\pm 2 \\sqrt{2}", "3+2\\sqrt{2}", false),
    // Multiple choice.
    ("\\text{(C)}", "C", true),
    ("\\text{(C)}", "(C)", true),
    ("\\text{(C)}", "\\textbf{(C)}", true),
    ("\\text{(C)}", "\\text{(C) }", true),
    ("\\text{(C)}", "(D)", false),
    ("\\text{(E)}", "E", true),
    ("\\text{(B)}", "\\mathrm{(B)}", true),
    // Words.
    ("\\text{Evelyn}", "Evelyn", true),
    ("\\text{Evelyn}", "evelyn", true),
    ("\\text{Evelyn}", "Emily", false),
    ("\\text{east}", "East", true),
    ("\\text{even}", "\\text{odd}", false),
    ("\\text{ellipse}", "ellipse", true),
    // Expressions with variables.
    ("p - q", "p-q", true),
    ("p - q", "-q + p", true),
    ("p - q", "q - p", false),
    ("2k+2", "2(k+1)", true),
    ("2k+2", "2k+1", false),
    ("2k", "k*2", true),
    ("x^3+3x-6", "x^3 + 3x - 6", true),
    ("x^3+3x-6", "3x + x^3 - 6", true),
    ("x^3+3x-6", "x^3+3x+6", false),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1", true),
    ("-13x+3", "3-13x", true),
    ("6r^2-4r-24", "2(3r^2-2r-12)", true),
    ("(a+5)(b+2)", "ab+2a+5b+10", true),
    ("(a+5)(b+2)", "(a+2)(b+5)", false),
    ("\\frac{11+9a}{20}", "\\frac{9a+11}{20}", true),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}", true),
    ("5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0", true),
    // Matrices and vectors.
    (
        "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}",
        "\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}",
        true,
    ),
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
        "\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}",
        true,
    ),
    (
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
        false,
    ),
    // Bases and subscripts.
    ("4210_{5}", "4210_5", true),
    ("4210_{5}", "4210", false),
    // Scientific notation.
    ("1500", "1.5e3", true),
    ("1500", "1.5 \\times 10^3", true),
    ("0.002", "2 \\times 10^{-3}", true),
    // Empty and junk predictions.
    ("5", "", false),
    ("5", "I don't know", false),
];

#[test]
fn the_equivalence_table_holds() {
    assert!(CASES.len() >= 150, "{} cases", CASES.len());
    let mut failures = Vec::new();
    for (gold, pred, want) in CASES {
        if equivalent(gold, pred) != *want {
            failures.push(format!("equivalent({gold:?}, {pred:?}) should be {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        CASES.len(),
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
