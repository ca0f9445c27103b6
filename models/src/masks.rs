//! Attention masks and position ids for packed and padded batches.
//!
//! `true` in a mask means "masked". Masks are `[batch, 1, q, k]`; the attention broadcasts them
//! over heads.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::model::AttnMask;

/// Packed rows: `doc_ids[b][t]` says which document token `t` of row `b` belongs to. A token sees
/// only earlier tokens of its own document (block-diagonal causal). Returns the mask and the
/// positions, which restart at 0 at each document start.
pub fn packed<B: Backend>(
    doc_ids: &[Vec<u32>],
    device: &B::Device,
) -> (AttnMask<B>, Tensor<B, 2, Int>) {
    let b = doc_ids.len();
    let t = doc_ids.first().map_or(0, Vec::len);
    let mut mask = vec![false; b * t * t];
    let mut pos = vec![0i64; b * t];
    for (r, docs) in doc_ids.iter().enumerate() {
        assert_eq!(docs.len(), t, "packed rows must have equal length");
        let mut start = 0;
        for q in 0..t {
            if q > 0 && docs[q] != docs[q - 1] {
                start = q;
            }
            pos[r * t + q] = (q - start) as i64;
            for k in 0..t {
                mask[(r * t + q) * t + k] = k > q || k < start;
            }
        }
    }
    let mask = Tensor::from_data(TensorData::new(mask, [b, 1, t, t]), device);
    (AttnMask::Custom(mask), Tensor::from_data(TensorData::new(pos, [b, t]), device))
}

/// Left-padded rows for generation: row `r` has `pad[r]` padding tokens before its prompt.
/// Queries are the last `q_len` of `k_len` positions. Padding keys are masked, and so are future
/// keys. Positions count from each row's first real token.
pub fn left_padded<B: Backend>(
    pad: &[usize],
    q_len: usize,
    k_len: usize,
    device: &B::Device,
) -> (AttnMask<B>, Tensor<B, 2, Int>) {
    let b = pad.len();
    let offset = k_len - q_len;
    let mut mask = vec![false; b * q_len * k_len];
    let mut pos = vec![0i64; b * q_len];
    for (r, &p) in pad.iter().enumerate() {
        for q in 0..q_len {
            let abs = offset + q;
            pos[r * q_len + q] = abs.saturating_sub(p) as i64;
            for k in 0..k_len {
                mask[(r * q_len + q) * k_len + k] = k < p || k > abs;
            }
        }
    }
    let mask = Tensor::from_data(TensorData::new(mask, [b, 1, q_len, k_len]), device);
    (AttnMask::Custom(mask), Tensor::from_data(TensorData::new(pos, [b, q_len]), device))
}

/// One decode step against a [`crate::model::KvCache`] holding `cached` positions in buffers of
/// `capacity`: each row's single query sees keys `pad[r]..=cached` (its left padding and the
/// unfilled tail are masked). Returns the mask `[b, 1, 1, capacity]` and positions `[b, 1]`.
pub fn decode<B: Backend>(
    pad: &[usize],
    cached: usize,
    capacity: usize,
    device: &B::Device,
) -> (AttnMask<B>, Tensor<B, 2, Int>) {
    let b = pad.len();
    let mask: Vec<bool> =
        pad.iter().flat_map(|&p| (0..capacity).map(move |k| k < p || k > cached)).collect();
    let pos: Vec<i64> = pad.iter().map(|&p| cached.saturating_sub(p) as i64).collect();
    (
        AttnMask::Custom(Tensor::from_data(TensorData::new(mask, [b, 1, 1, capacity]), device)),
        Tensor::from_data(TensorData::new(pos, [b, 1]), device),
    )
}

/// Positions `0..t` for every row.
pub fn positions<B: Backend>(
    b: usize,
    t: usize,
    start: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = (0..b).flat_map(|_| (start..start + t).map(|x| x as i64)).collect();
    Tensor::from_data(TensorData::new(v, [b, t]), device)
}
