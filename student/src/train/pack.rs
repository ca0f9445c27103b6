//! Examples → fixed-length rows → micro-batches.
//!
//! Packing is best-fit decreasing: longest examples first, each into the row with the least room
//! that still fits it. Every document in a row attends only to itself (block-diagonal causal mask)
//! and its positions restart at 0, so a packed batch gives each document exactly the loss it gets
//! alone. Targets never cross a document boundary.

use std::collections::BTreeMap;

use super::data::Example;

/// Rows of example indices, packed into `seq_len`.
pub fn pack_bfd(lengths: &[usize], seq_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // remaining room → rows with that room
    let mut by_room: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in order {
        let len = lengths[i].min(seq_len);
        let slot = by_room.range(len..).next().map(|(&room, rs)| (room, *rs.last().unwrap()));
        let (row, room) = match slot {
            Some((room, row)) => {
                let rs = by_room.get_mut(&room).unwrap();
                rs.pop();
                if rs.is_empty() {
                    by_room.remove(&room);
                }
                (row, room)
            }
            None => {
                rows.push(vec![]);
                (rows.len() - 1, seq_len)
            }
        };
        rows[row].push(i);
        by_room.entry(room - len).or_default().push(row);
    }
    rows
}

/// A deterministic permutation of `0..n` for (seed, epoch).
pub fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut s = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// One micro-batch, ready for tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub len: usize,
    /// `[rows, len]` token ids (padding is the pad id).
    pub ids: Vec<u32>,
    /// `[rows, len]` document index within the row (padding is its own document).
    pub docs: Vec<u32>,
    /// `[rows, len]` next-token target, or `None` where there is no loss.
    pub targets: Vec<Option<u32>>,
    /// Teacher top-k at positions that predict a scored token: `(flat position, ids, logprobs)`.
    pub kd: Vec<(usize, Vec<u32>, Vec<f32>)>,
    pub kd_k: usize,
    /// The teacher's log-prob of the target at each `kd` position (aligned with `kd`; empty
    /// when the examples carry none).
    pub kd_token: Vec<f32>,
    /// RL tokens: advantage, weight and log-probs at positions that predict a sampled token.
    pub rl: Vec<super::policy::RlToken>,
    /// Tokens that are not padding.
    pub real_tokens: usize,
}

impl Batch {
    pub fn loss_tokens(&self) -> usize {
        self.targets.iter().filter(|t| t.is_some()).count()
    }
}

/// Lay out `rows` (each a list of examples) as one batch of length `len`.
pub fn build(examples: &[Example], rows: &[Vec<usize>], len: usize, pad: u32) -> Batch {
    let n = rows.len();
    let mut b = Batch {
        rows: n,
        len,
        ids: vec![pad; n * len],
        docs: vec![u32::MAX; n * len],
        targets: vec![None; n * len],
        kd: vec![],
        kd_k: 0,
        kd_token: vec![],
        rl: vec![],
        real_tokens: 0,
    };
    for (r, row) in rows.iter().enumerate() {
        let mut at = 0usize;
        for (d, &ei) in row.iter().enumerate() {
            let ex = &examples[ei];
            let l = ex.ids.len().min(len - at);
            for t in 0..l {
                let flat = r * len + at + t;
                b.ids[flat] = ex.ids[t];
                b.docs[flat] = d as u32;
                // Position t predicts token t + 1 of the same document.
                if t + 1 < l && ex.assistant[t + 1] {
                    b.targets[flat] = Some(ex.ids[t + 1]);
                }
            }
            if let Some(kd) = &ex.kd {
                b.kd_k = kd.k;
                let rows_scored = kd.ids.len() / kd.k.max(1);
                for j in 0..rows_scored {
                    // Token kd.start + j is predicted at position kd.start + j - 1.
                    let tok = kd.start + j;
                    if tok == 0 || tok >= l || b.targets[r * len + at + tok - 1].is_none() {
                        continue;
                    }
                    let s = j * kd.k..(j + 1) * kd.k;
                    if let Some(&lp) = kd.token_logprobs.get(j) {
                        b.kd_token.push(lp);
                    }
                    b.kd.push((
                        r * len + at + tok - 1,
                        kd.ids[s.clone()].to_vec(),
                        kd.logprobs[s].to_vec(),
                    ));
                }
            }
            if let Some(rl) = &ex.rl {
                for (j, &old) in rl.old_logprobs.iter().enumerate() {
                    let tok = rl.start + j;
                    if tok == 0 || tok >= l || b.targets[r * len + at + tok - 1].is_none() {
                        continue;
                    }
                    b.rl.push(super::policy::RlToken {
                        pos: r * len + at + tok - 1,
                        advantage: rl.advantage,
                        weight: rl.weight,
                        old_logprob: old,
                        ref_logprob: rl.ref_logprobs.get(j).copied().unwrap_or(f32::NAN),
                    });
                }
            }
            at += l;
        }
        b.real_tokens += at;
        // Padding: a document of its own, no loss.
        for t in at..len {
            b.docs[r * len + t] = row.len() as u32;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_decreasing_fills_rows() {
        let rows = pack_bfd(&[5, 4, 3, 3, 2, 1, 6], 8);
        let fill: Vec<usize> =
            rows.iter().map(|r| r.iter().map(|&i| [5, 4, 3, 3, 2, 1, 6][i]).sum()).collect();
        assert!(fill.iter().all(|&f| f <= 8));
        assert_eq!(fill.iter().sum::<usize>(), 24);
        assert_eq!(rows.len(), 3, "24 tokens fit three rows of 8");
        let mut all: Vec<usize> = rows.concat();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn targets_stay_inside_documents_and_on_assistant_tokens() {
        let ex = |ids: Vec<u32>, a: Vec<bool>| Example {
            id: "x".into(),
            prompt_id: "p".into(),
            ids,
            assistant: a,
            kd: None,
            rl: None,
        };
        let exs =
            vec![ex(vec![1, 2, 3], vec![false, true, true]), ex(vec![7, 8], vec![false, true])];
        let b = build(&exs, &[vec![0, 1]], 6, 0);
        assert_eq!(b.ids, vec![1, 2, 3, 7, 8, 0]);
        assert_eq!(b.docs, vec![0, 0, 0, 1, 1, 2]);
        assert_eq!(b.targets, vec![Some(2), Some(3), None, Some(8), None, None]);
        assert_eq!(shuffled(10, 1, 0), shuffled(10, 1, 0));
        assert_ne!(shuffled(10, 1, 0), shuffled(10, 1, 1));
    }
}
