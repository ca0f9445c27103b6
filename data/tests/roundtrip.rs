//! Records round-trip losslessly: through JSON, and through a corpus on disk.

use distill_data::record::*;
use distill_data::{Corpus, CorpusWriter, TokenLogprobs, WriterOptions};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        // Any Unicode scalar, including control characters, newlines, quotes and backslashes.
        proptest::collection::vec(any::<char>(), 0..max).prop_map(|v| v.into_iter().collect()),
        "[a-z0-9 \\n\\t\"\\\\{}]{0,64}",
        "[가-힣 ]{0,32}|[\\u{1F600}-\\u{1F64F}]{0,8}|[α-ω∑∫√≤≥ ]{0,32}",
    ]
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![Just(None), s.prop_map(Some)]
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1e-300),
        Just(f64::MAX),
        -10.0f64..10.0,
        any::<f64>().prop_filter("finite", |x| x.is_finite())
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::System),
        Just(Role::Developer),
        Just(Role::User),
        Just(Role::Assistant),
        Just(Role::Tool)
    ]
}

fn finish() -> impl Strategy<Value = FinishReason> {
    prop_oneof![
        Just(FinishReason::Stop),
        Just(FinishReason::Length),
        Just(FinishReason::ToolCalls),
        Just(FinishReason::ContentFilter),
        "[a-z_]{1,12}".prop_map(FinishReason::from),
    ]
}

fn logprobs() -> impl Strategy<Value = TokenLogprobs> {
    (0u32..6, 0usize..40).prop_flat_map(|(k, n)| {
        (
            Just(k),
            proptest::collection::vec(any::<u32>(), n),
            proptest::collection::vec(-30.0f32..0.0, n),
            proptest::collection::vec(any::<u32>(), n * k as usize),
            proptest::collection::vec(
                prop_oneof![-30.0f32..0.0, Just(f32::NEG_INFINITY)],
                n * k as usize,
            ),
        )
            .prop_map(|(k, tokens, token_logprobs, top_ids, top_logprobs)| TokenLogprobs {
                encoding: distill_data::logprobs::Encoding::B64le,
                k,
                tokens,
                token_logprobs,
                top_ids,
                top_logprobs,
            })
    })
}

fn metadata() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(
        "[a-z]{1,8}",
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text(16).prop_map(Value::String),
            proptest::collection::vec(any::<u32>().prop_map(Value::from), 0..4)
                .prop_map(Value::Array),
        ],
        0..4,
    )
    .prop_map(|m| m.into_iter().collect())
}

prop_compose! {
    fn sampling()(
        temperature in opt(finite()),
        top_p in opt(finite()),
        top_k in opt(any::<u32>()),
        max_tokens in opt(any::<u32>()),
        seed in opt(any::<u64>()),
    ) -> Sampling {
        Sampling { temperature, top_p, top_k, max_tokens, seed }
    }
}

prop_compose! {
    fn trace()(
        prompt_id in "[a-z0-9/_-]{1,24}",
        sample in any::<u32>(),
        dataset in text(12),
        row in any::<u64>(),
        messages in proptest::collection::vec((role(), text(200)).prop_map(|(r, c)| Message::new(r, c)), 0..4),
        reasoning in text(2000),
        answer in text(200),
        finish_reason in finish(),
        model in text(20),
        endpoint in prop_oneof![Just(EndpointKind::OpenaiChat), Just(EndpointKind::Local), Just(EndpointKind::Import)],
        sampling in sampling(),
        usage in (any::<u64>(), any::<u64>()),
        verdicts in proptest::collection::vec(
            (text(10), any::<bool>(), opt(text(20)), opt(text(40)))
                .prop_map(|(verifier, passed, extracted, reason)| Verdict { verifier, passed, extracted, reason }),
            0..3),
        reference in opt(text(30)),
        logprobs in opt(logprobs()),
        metadata in metadata(),
    ) -> Trace {
        Trace {
            schema: SCHEMA_VERSION,
            id: Trace::make_id(&prompt_id, sample),
            prompt_id, sample,
            source: Source { dataset, row },
            messages, reasoning, answer, finish_reason,
            teacher: Teacher { model, endpoint, sampling },
            usage: Usage { prompt_tokens: usage.0, completion_tokens: usage.1 },
            verdicts, reference, logprobs, metadata,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn json_round_trip_is_lossless(t in trace()) {
        let line = t.to_json();
        prop_assert!(!line.contains('\n'), "a record must be one line");
        let back = Trace::from_json(&line).unwrap();
        // The re-serialized line is byte-identical too (so -0.0 stays -0.0).
        prop_assert_eq!(back.to_json(), line);
        prop_assert_eq!(back, t);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn corpus_round_trip_is_lossless(mut ts in proptest::collection::vec(trace(), 1..40)) {
        // Ids must be unique within a corpus.
        for (i, t) in ts.iter_mut().enumerate() {
            t.id = format!("{}-{i}", t.id);
        }
        let dir = tempfile::tempdir().unwrap();
        let opts = WriterOptions { frame_records: 5, shard_records: 17, ..Default::default() };
        let mut w = CorpusWriter::open(dir.path(), opts).unwrap();
        for t in &ts {
            w.append(t.clone()).unwrap();
        }
        w.commit().unwrap();
        drop(w);
        let c = Corpus::open(dir.path()).unwrap();
        let back: Vec<Trace> = c.iter().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, ts);
    }
}

#[test]
fn one_megabyte_fields_round_trip() {
    let mut t = distill_data::synth::traces(1, 1, 1).next().unwrap();
    t.reasoning = "∑ 한국어 \"quoted\" \\ back\n".repeat((1 << 20) / 24);
    t.answer = "x".repeat(1 << 20);
    t.messages[0].content = "🙂".repeat(1 << 18);
    assert!(t.reasoning.len() >= 1 << 20);
    assert_eq!(Trace::from_json(&t.to_json()).unwrap(), t);

    let dir = tempfile::tempdir().unwrap();
    let mut w = CorpusWriter::open(dir.path(), WriterOptions::default()).unwrap();
    w.append(t.clone()).unwrap();
    let mut small = t.clone();
    small.id = "small#0".into();
    small.reasoning.clear();
    w.append(small.clone()).unwrap();
    w.commit().unwrap();
    drop(w);
    let c = Corpus::open(dir.path()).unwrap();
    assert_eq!(c.get(0).unwrap(), t);
    assert_eq!(c.get_by_id("small#0").unwrap().unwrap(), small);
}

#[test]
fn a_newer_schema_is_rejected_with_a_version_error() {
    let t = distill_data::synth::traces(1, 1, 1).next().unwrap();
    let mut v: Value = serde_json::to_value(&t).unwrap();
    v["schema"] = Value::from(SCHEMA_VERSION + 1);
    v["a_field_from_the_future"] = Value::from(1);
    let err = Trace::from_json(&v.to_string()).unwrap_err().to_string();
    assert!(err.contains("schema version 2 is newer"), "{err}");
    assert!(err.contains("upgrade distill"), "{err}");

    // Same version, unknown field: a plain error naming the field.
    let mut v: Value = serde_json::to_value(&t).unwrap();
    v["bogus"] = Value::from(1);
    let err = Trace::from_json(&v.to_string()).unwrap_err().to_string();
    assert!(err.contains("unknown field `bogus`"), "{err}");
}
