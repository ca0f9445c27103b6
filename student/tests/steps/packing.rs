//! A packed row (block-diagonal mask, positions restarting per document) gives every document
//! the same loss it gets alone.

use std::path::Path;

use burn::prelude::*;
use distill_models::device::{Cpu, CpuDevice};
use distill_models::hf;
use distill_models::rope::Rope;
use distill_student::train::data::Example;
use distill_student::train::loss::losses;
use distill_student::train::pack;

#[test]
fn packed_documents_lose_what_they_lose_alone() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tiny-qwen2");
    let dev = CpuDevice::default();
    let m = hf::load_model::<Cpu>(&dir, &dev).unwrap();
    let rope = Rope::<Cpu>::new(&m.config, &dev);
    let ex = |ids: Vec<u32>, prompt: usize| Example {
        id: "x".into(),
        prompt_id: "p".into(),
        assistant: (0..ids.len()).map(|i| i >= prompt).collect(),
        ids,
        kd: None,
        rl: None,
    };
    let docs = vec![
        ex(vec![5, 17, 42, 8, 77, 3, 19, 2], 3),
        ex(vec![9, 10, 11, 12, 13, 2], 2),
        ex(vec![60, 61, 62, 63, 64, 65, 66, 67, 68, 2], 4),
    ];
    let len: usize = docs.iter().map(|d| d.ids.len()).sum::<usize>() + 3; // and some padding
    let packed = pack::build(&docs, &[vec![0, 1, 2]], len, 0);
    for d in 0..docs.len() {
        // The packed row with only document d's targets kept…
        let mut only = packed.clone();
        for (i, t) in only.targets.iter_mut().enumerate() {
            if packed.docs[i] != d as u32 {
                *t = None;
            }
        }
        let in_row = losses(&m.model, &rope, &only, &dev);
        // …against document d alone.
        let alone = pack::build(&docs, &[vec![d]], docs[d].ids.len(), 0);
        let solo = losses(&m.model, &rope, &alone, &dev);
        assert_eq!(in_row.tokens, solo.tokens);
        let (a, b) = (in_row.ce.into_scalar().elem::<f64>(), solo.ce.into_scalar().elem::<f64>());
        assert!((a - b).abs() <= 1e-4 * b.abs(), "document {d}: packed {a} vs alone {b}");
    }
    // And without the block-diagonal mask the documents would see each other.
    let mut leaky = packed.clone();
    leaky.docs.iter_mut().for_each(|x| *x = 0);
    let (a, b) = (
        losses(&m.model, &rope, &leaky, &dev).ce.into_scalar().elem::<f64>(),
        losses(&m.model, &rope, &packed, &dev).ce.into_scalar().elem::<f64>(),
    );
    assert!((a - b).abs() > 1e-3, "one causal mask over the row must change the loss ({a} vs {b})");
}
