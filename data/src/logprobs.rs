//! Per-token top-k teacher log-probabilities, stored compactly.
//!
//! In JSON the arrays are base64 of little-endian `u32` ids and `f32` log-probs, which is about a
//! third of the size of `[{"token": .., "logprob": ..}]` lists and round-trips bit-exactly.
//! Positions where the server returned fewer than `k` alternatives are padded with id
//! [`PAD_ID`] and log-prob `-inf`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Id used to pad a position that has fewer than `k` alternatives.
pub const PAD_ID: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// Alternatives kept per position.
    pub k: u32,
    /// The sampled token id at each completion position, `[n]`.
    pub tokens: Vec<u32>,
    /// Log-probability of the sampled token, `[n]`.
    pub token_logprobs: Vec<f32>,
    /// Top-k token ids per position, row-major `[n, k]`, most likely first.
    pub top_ids: Vec<u32>,
    /// Top-k log-probabilities, `[n, k]`, aligned with `top_ids`.
    pub top_logprobs: Vec<f32>,
}

impl TokenLogprobs {
    pub fn new(k: u32) -> Self {
        TokenLogprobs {
            k,
            tokens: vec![],
            token_logprobs: vec![],
            top_ids: vec![],
            top_logprobs: vec![],
        }
    }

    /// Number of completion positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Append one position. `top` is truncated or padded to `k`.
    pub fn push(&mut self, token: u32, logprob: f32, top: &[(u32, f32)]) {
        self.tokens.push(token);
        self.token_logprobs.push(logprob);
        for i in 0..self.k as usize {
            let (id, lp) = top.get(i).copied().unwrap_or((PAD_ID, f32::NEG_INFINITY));
            self.top_ids.push(id);
            self.top_logprobs.push(lp);
        }
    }

    /// The `(id, logprob)` alternatives at position `pos`, without padding.
    pub fn top(&self, pos: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let k = self.k as usize;
        let r = pos * k..(pos + 1) * k;
        self.top_ids[r.clone()]
            .iter()
            .copied()
            .zip(self.top_logprobs[r].iter().copied())
            .filter(|(id, _)| *id != PAD_ID)
    }

    fn check(&self) -> Result<(), String> {
        let n = self.tokens.len();
        let nk = n * self.k as usize;
        if self.token_logprobs.len() != n
            || self.top_ids.len() != nk
            || self.top_logprobs.len() != nk
        {
            return Err(format!(
                "logprobs arrays disagree: n={n}, k={}, token_logprobs={}, top_ids={}, top_logprobs={}",
                self.k,
                self.token_logprobs.len(),
                self.top_ids.len(),
                self.top_logprobs.len()
            ));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    k: u32,
    n: u64,
    /// Always "b64le" in schema 1.
    encoding: String,
    tokens: String,
    token_logprobs: String,
    top_ids: String,
    top_logprobs: String,
}

fn enc_u32(v: &[u32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    B64.encode(bytes)
}

fn enc_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    B64.encode(bytes)
}

fn dec4(s: &str, what: &str) -> Result<Vec<[u8; 4]>, String> {
    let bytes = B64.decode(s).map_err(|e| format!("logprobs.{what}: bad base64: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("logprobs.{what}: {} bytes is not a multiple of 4", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
}

impl Serialize for TokenLogprobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            k: self.k,
            n: self.tokens.len() as u64,
            encoding: "b64le".into(),
            tokens: enc_u32(&self.tokens),
            token_logprobs: enc_f32(&self.token_logprobs),
            top_ids: enc_u32(&self.top_ids),
            top_logprobs: enc_f32(&self.top_logprobs),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TokenLogprobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = Wire::deserialize(d)?;
        if w.encoding != "b64le" {
            return Err(D::Error::custom(format!(
                "logprobs: unknown encoding '{}' (expected b64le)",
                w.encoding
            )));
        }
        let u = |s: &str, what| {
            dec4(s, what).map(|v| v.into_iter().map(u32::from_le_bytes).collect::<Vec<_>>())
        };
        let f = |s: &str, what| {
            dec4(s, what).map(|v| v.into_iter().map(f32::from_le_bytes).collect::<Vec<_>>())
        };
        let lp = TokenLogprobs {
            k: w.k,
            tokens: u(&w.tokens, "tokens").map_err(D::Error::custom)?,
            token_logprobs: f(&w.token_logprobs, "token_logprobs").map_err(D::Error::custom)?,
            top_ids: u(&w.top_ids, "top_ids").map_err(D::Error::custom)?,
            top_logprobs: f(&w.top_logprobs, "top_logprobs").map_err(D::Error::custom)?,
        };
        if lp.tokens.len() as u64 != w.n {
            return Err(D::Error::custom(format!(
                "logprobs: n={} but {} tokens",
                w.n,
                lp.tokens.len()
            )));
        }
        lp.check().map_err(D::Error::custom)?;
        Ok(lp)
    }
}
