//! Synthetic R1-like traces, for benchmarks, demos and tests. Deterministic from a seed.
//!
//! A trace's reasoning mixes three kinds of paragraph, as R1's do: prose (a Zipf-distributed
//! vocabulary of 300 common English and math words plus 3,000 pseudo-words built from syllables,
//! so the text is neither random bytes nor endlessly repeated), math (equations, `\frac`, numbers)
//! and fenced Python code. Self-checks ("Wait, …") recur. Lengths span 4–20 KB per trace.

use serde_json::Map;

use crate::record::{
    EndpointKind, FinishReason, Message, Role, SCHEMA_VERSION, Sampling, Source, Teacher, Trace,
    Usage, Verdict,
};

/// SplitMix64: small, fast, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const COMMON: &str = "the of and to a in is that it for we so this be with as on are by not or \
can at from but have if then was which all one two there each what when our more these would \
number sum total value let check first second step each equal equals side term terms find given \
means since because therefore thus so now again wait maybe hmm okay right actually consider case \
cases both same different answer question problem solve solution result compute computing calculate \
multiply divide add subtract minus plus times divided square root power factor factors prime odd \
even integer integers positive negative zero fraction ratio percent area length width height \
triangle circle radius angle degrees point points line lines function variable equation equations \
expression simplify substitute combine left right both sides per each every many much less greater \
smaller larger than least most only also just still need needs know known use using used think \
seems looks like should could might must will get gets got make makes made take takes say says \
way ways time times day days money dollars cents price cost costs pay paid buy bought sell sold \
apples books students people hours minutes miles speed rate work done part parts whole half third \
quarter double triple twice again another next last before after between into out up down over \
under about around through during without within along across verify verified correct incorrect \
mistake error recheck recount approach method idea try trying tried original remaining left rest \
gives give gave start started end ended final finally total count counted list listed table order";

const SYLLABLES: [&str; 40] = [
    "ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "da", "gri", "sto", "ple", "tra", "ven",
    "mor", "lin", "cas", "bel", "dor", "fin", "gal", "hex", "ion", "jun", "kel", "lum", "nor",
    "pas", "quo", "ris", "sel", "tor", "umb", "val", "wen", "xer", "yal", "zor", "ent",
];

const NAMES: [&str; 12] = [
    "Alice", "Ben", "Carla", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal",
    "Lena",
];
const ITEMS: [&str; 10] = [
    "apples", "marbles", "books", "stickers", "pencils", "cookies", "tickets", "coins", "cards",
    "plants",
];

/// Deterministic generator of R1-like traces.
pub struct Synth {
    rng: Rng,
    vocab: Vec<String>,
    /// Cumulative Zipf weights over `vocab`.
    cdf: Vec<f64>,
}

impl Synth {
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut vocab: Vec<String> = COMMON.split_whitespace().map(str::to_string).collect();
        let mut syl = Rng::new(0x00D1_5711);
        while vocab.len() < 3300 {
            let n = syl.range(2, 4);
            let w: String = (0..n).map(|_| *syl.pick(&SYLLABLES)).collect();
            vocab.push(w);
        }
        let mut acc = 0.0;
        let cdf = (0..vocab.len())
            .map(|i| {
                acc += 1.0 / (i as f64 + 2.7);
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        let cdf = cdf.into_iter().map(|c| c / total).collect();
        let _ = rng.next_u64();
        Synth { rng, vocab, cdf }
    }

    fn word(&mut self) -> &str {
        let u = self.rng.f64();
        let i = self.cdf.partition_point(|&c| c < u).min(self.vocab.len() - 1);
        &self.vocab[i]
    }

    fn sentence(&mut self) -> String {
        let n = self.rng.range(6, 22);
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            let w = self.word().to_string();
            if i == 0 {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    s.extend(f.to_uppercase());
                    s.push_str(c.as_str());
                }
            } else {
                s.push_str(&w);
            }
            if self.rng.below(12) == 0 {
                s.push_str(&format!(" {}", self.rng.below(1000)));
            }
        }
        s.push(*self.rng.pick(&['.', '.', '.', '?', ',']));
        if s.ends_with(',') {
            s.pop();
            s.push('.');
        }
        s
    }

    fn prose(&mut self) -> String {
        let opener = *self.rng.pick(&[
            "",
            "Wait, ",
            "Hmm, ",
            "Okay, ",
            "So ",
            "Let me double-check. ",
            "Alternatively, ",
        ]);
        let n = self.rng.range(2, 6);
        let body: Vec<String> = (0..n).map(|_| self.sentence()).collect();
        format!("{opener}{}", body.join(" "))
    }

    fn math(&mut self) -> String {
        let a = self.rng.range(2, 99);
        let b = self.rng.range(2, 99);
        let c = self.rng.range(1, 500);
        let lines = [
            format!(
                "So we have {a}x + {b} = {c}, which gives x = \\frac{{{}}}{{{a}}}.",
                c as i64 - b as i64
            ),
            format!(
                "Then {a} \\times {b} = {}, and {} - {c} = {}.",
                a * b,
                a * b,
                a as i64 * b as i64 - c as i64
            ),
            format!("The ratio is \\frac{{{a}}}{{{b}}} \\approx {:.4}.", a as f64 / b as f64),
            format!(
                "Using the formula, $$S = \\frac{{n(n+1)}}{{2}} = \\frac{{{a} \\cdot {}}}{{2}} = {}$$",
                a + 1,
                a * (a + 1) / 2
            ),
            format!("Check: {a}^2 = {} and \\sqrt{{{}}} = {a}.", a * a, a * a),
            format!("{c} \\div {a} = {} remainder {}.", c / a, c % a),
        ];
        let n = self.rng.range(1, 4) as usize;
        (0..n).map(|_| self.rng.pick(&lines).clone()).collect::<Vec<_>>().join("\n")
    }

    fn code(&mut self) -> String {
        let f = self.word().to_string();
        let v = self.word().to_string();
        let n = self.rng.range(2, 50);
        format!(
            "```python\ndef {f}_{n}({v}):\n    total = 0\n    for i in range(len({v})):\n        if {v}[i] % {n} == 0:\n            total += {v}[i]\n    return total\n\nprint({f}_{n}(list(range({}))))\n```",
            n * 3
        )
    }

    /// One trace for prompt number `row`, sample `sample`.
    pub fn trace(&mut self, row: u64, sample: u32) -> Trace {
        let name = *self.rng.pick(&NAMES);
        let item = *self.rng.pick(&ITEMS);
        let (x, y) = (self.rng.range(3, 90), self.rng.range(2, 12));
        let question = format!(
            "{name} has {x} {item} and buys {y} more boxes with {x} {item} each. How many {item} does {name} have now? \
             Please reason step by step, and put your final answer within \\boxed{{}}."
        );
        let answer_value = x + x * y;
        let target = self.rng.range(4_000, 20_000) as usize;
        let mut reasoning = String::with_capacity(target + 1024);
        reasoning.push_str(&format!("Okay, so {name} starts with {x} {item}. "));
        while reasoning.len() < target {
            let para = match self.rng.below(10) {
                0..=5 => self.prose(),
                6..=8 => self.math(),
                _ => self.code(),
            };
            reasoning.push_str(&para);
            reasoning.push_str("\n\n");
        }
        reasoning.push_str(&format!("So the total is {x} + {x} \\times {y} = {answer_value}."));
        let correct = self.rng.below(10) < 7;
        let given = if correct { answer_value } else { answer_value + self.rng.range(1, 9) };
        let answer =
            format!("{name} has {x} + {x} \\cdot {y} = {given} {item}.\n\n\\boxed{{{given}}}");
        let length = self.rng.below(20) == 0;
        let prompt_id = format!("synthetic/{row:08}");
        let completion_tokens = ((reasoning.len() + answer.len()) / 4) as u64;
        Trace {
            schema: SCHEMA_VERSION,
            id: Trace::make_id(&prompt_id, sample),
            prompt_id,
            sample,
            source: Source { dataset: "synthetic".into(), row },
            messages: vec![Message::new(Role::User, question)],
            reasoning,
            answer,
            finish_reason: if length { FinishReason::Length } else { FinishReason::Stop },
            teacher: Teacher {
                model: "synthetic-r1".into(),
                endpoint: EndpointKind::Synthetic,
                sampling: Sampling {
                    temperature: Some(0.6),
                    top_p: Some(0.95),
                    top_k: None,
                    max_tokens: Some(32768),
                    seed: Some(row),
                },
            },
            usage: Usage { prompt_tokens: 60, completion_tokens },
            verdicts: vec![Verdict {
                verifier: "math".into(),
                passed: correct,
                extracted: Some(given.to_string()),
                reason: Some(if correct {
                    "equivalent".into()
                } else {
                    format!("{given} != {answer_value}")
                }),
            }],
            reference: Some(answer_value.to_string()),
            logprobs: None,
            metadata: Map::new(),
        }
    }
}

/// `n` prompts × `samples` traces, in order.
pub fn traces(seed: u64, n: u64, samples: u32) -> impl Iterator<Item = Trace> {
    let mut s = Synth::new(seed);
    (0..n)
        .flat_map(move |row| (0..samples).map(move |k| (row, k)))
        .map(move |(row, k)| s.trace(row, k))
}
