//! Multi-turn SFT: earlier assistant turns stay in the prompt, rendered as the chat template
//! renders history (checked against transformers' rendering of the same conversation, recorded
//! in models/tests/fixtures/templates/expected.json by scripts/reference/chat_templates.py), and
//! `train_on = "all_assistant"` puts them in the loss too.

mod common;

use distill_data::{FinishReason, Message, Role};
use distill_models::chat::ChatTemplate;
use distill_models::tokenizer::TextTokenizer;
use distill_student::train::data::{DataConfig, TrainOn, example};
use serde_json::Value;

const TEMPLATES: &[(&str, Option<&str>, &str)] = &[
    ("smollm2", Some("<|im_start|>"), "<|im_end|>"),
    ("qwen2.5", None, "<|im_end|>"),
    ("llama3.1", Some("<|begin_of_text|>"), "<|eot_id|>"),
    ("deepseek-r1-distill", Some("<｜begin▁of▁sentence｜>"), "<｜end▁of▁sentence｜>"),
];

#[test]
fn earlier_assistant_turns_stay_in_the_prompt_and_can_be_trained_on() {
    let (_, hf) = common::smollm2();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/templates");
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap())
            .unwrap();
    // user → assistant (with reasoning) → user, then the trace's own reply.
    let history: Vec<Message> = vec![
        Message::new(Role::User, "2+2?"),
        Message::new(
            Role::Assistant,
            "<think>\nTwo plus two is four.\n</think>\n\nThe answer is \\boxed{4}.",
        ),
        Message::new(Role::User, "And 3+3?"),
    ];
    let mut trace = distill_data::synth::traces(1, 1, 1).next().unwrap();
    trace.messages = history.clone();
    trace.reasoning = "Three plus three is six.".into();
    trace.answer = "The answer is \\boxed{6}.".into();
    trace.finish_reason = FinishReason::Stop;
    trace.logprobs = None;
    let base: DataConfig =
        toml::from_str("corpus = []\nmax_seq_len = 512\nonly_passed = false").unwrap();
    for (name, bos, eos) in TEMPLATES {
        let mut tok = TextTokenizer::from_dir(&hf).unwrap();
        let src = std::fs::read_to_string(fixtures.join(format!("{name}.jinja"))).unwrap();
        tok.chat = Some(ChatTemplate::new(&src, *bos, Some(eos)).unwrap());
        // transformers' rendering of the history with the generation prompt.
        let want = expected
            .iter()
            .find(|e| {
                e["template"] == *name
                    && e["add_generation_prompt"] == true
                    && serde_json::from_value::<Vec<Message>>(e["messages"].clone()).unwrap()
                        == history
            })
            .unwrap_or_else(|| panic!("{name}: no recorded rendering of the conversation"))["text"]
            .as_str()
            .unwrap()
            .to_string();
        for train_on in [TrainOn::LastAssistant, TrainOn::AllAssistant] {
            let cfg = DataConfig { train_on, ..base.clone() };
            let (ex, _) = example(&trace, &tok, &cfg).unwrap();
            let text = tok.decode(&ex.ids, false).unwrap();
            // (A BOS the tokenizer adds itself may precede the template's text.)
            let bos = tok.bos_token.as_deref().unwrap_or("");
            let starts = |t: &str| t.starts_with(want.trim_end_matches("<think>\n"));
            assert!(
                starts(&text) || text.strip_prefix(bos).is_some_and(starts),
                "{name}: the prompt is not transformers' rendering of the history:\n{text}\n---\n{want}"
            );
            let marked: Vec<u32> =
                ex.ids.iter().zip(&ex.assistant).filter(|(_, a)| **a).map(|(i, _)| *i).collect();
            let marked = tok.decode(&marked, false).unwrap();
            assert!(marked.contains("The answer is \\boxed{6}."), "{name}: {marked}");
            let earlier = marked.contains("The answer is \\boxed{4}.");
            assert_eq!(earlier, train_on == TrainOn::AllAssistant, "{name} {train_on:?}: {marked}");
            if *name == "deepseek-r1-distill" {
                // Its template drops past reasoning: the history (and so the loss) has none.
                assert!(!text.contains("Two plus two"), "{name}: {text}");
            }
        }
    }
}
