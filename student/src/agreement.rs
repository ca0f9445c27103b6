//! How closely a student follows its teacher on the teacher's own held-out traces,
//! teacher-forced: next-token accuracy (the student's top token is the one the teacher wrote) and
//! KL(teacher ‖ student) over the full vocabulary, averaged over assistant tokens.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{log_softmax, softmax};
use serde::Serialize;

use crate::train::data::Example;
use distill_models::masks;
use distill_models::model::{AttnMask, CausalLm};
use distill_models::rope::Rope;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Agreement {
    /// Share of assistant tokens where the student's argmax is the teacher's token.
    pub next_token_accuracy: f64,
    /// Mean KL(teacher ‖ student) per assistant token, nats.
    pub kl: f64,
    /// Mean −log p_student(teacher's token): the student's loss on the teacher's traces.
    pub nll: f64,
    pub tokens: u64,
    pub traces: u64,
}

fn forward<B: Backend>(
    m: &CausalLm<B>,
    rope: &Rope<B>,
    ids: &[u32],
    dev: &B::Device,
) -> Tensor<B, 2> {
    let n = ids.len();
    let x = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]),
        dev,
    );
    let l = m.forward(x, masks::positions(1, n, 0, dev), rope, &AttnMask::Causal);
    let v = l.dims()[2];
    l.reshape([n, v])
}

/// Compare `student` with `teacher` (same vocabulary) on `examples`; `done` is called after each
/// example (for progress).
pub fn agreement<B: Backend>(
    teacher: (&CausalLm<B>, &Rope<B>),
    student: (&CausalLm<B>, &Rope<B>),
    examples: &[Example],
    dev: &B::Device,
    done: &mut dyn FnMut(),
) -> Agreement {
    let mut a = Agreement::default();
    let (mut hits, mut kl, mut nll) = (0u64, 0f64, 0f64);
    for ex in examples {
        // Position t predicts token t+1; score the positions whose next token is assistant output.
        let rows: Vec<usize> =
            (0..ex.ids.len().saturating_sub(1)).filter(|&t| ex.assistant[t + 1]).collect();
        if rows.is_empty() {
            continue;
        }
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [rows.len()]),
            dev,
        );
        let t_logits = forward(teacher.0, teacher.1, &ex.ids, dev).select(0, idx.clone());
        let s_logits = forward(student.0, student.1, &ex.ids, dev).select(0, idx);
        let p = softmax(t_logits.clone(), 1);
        let log_p = log_softmax(t_logits, 1);
        let log_q = log_softmax(s_logits, 1);
        let kl_rows = (p * (log_p - log_q.clone())).sum_dim(1); // [n, 1]
        kl += kl_rows.sum().into_scalar().elem::<f64>();
        let argmax: Vec<i64> =
            log_q.clone().argmax(1).into_data().convert::<i64>().into_vec().expect("ids");
        let lq: Vec<f32> = log_q.into_data().convert::<f32>().into_vec().expect("floats");
        let v = lq.len() / rows.len();
        for (j, &r) in rows.iter().enumerate() {
            let target = ex.ids[r + 1];
            hits += (argmax[j] as u32 == target) as u64;
            nll -= lq[j * v + target as usize] as f64;
        }
        a.tokens += rows.len() as u64;
        a.traces += 1;
        done();
    }
    if a.tokens > 0 {
        a.next_token_accuracy = hits as f64 / a.tokens as f64;
        a.kl = kl / a.tokens as f64;
        a.nll = nll / a.tokens as f64;
    }
    a
}
