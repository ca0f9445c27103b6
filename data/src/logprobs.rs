//! Per-token top-k teacher log-probabilities, stored compactly.
//!
//! Two encodings ([`Encoding`]):
//! - `b64le`: the arrays as base64 of little-endian `u32` ids and `f32` log-probs, about a third
//!   of the size of `[{"token": .., "logprob": ..}]` lists; bit-exact.
//! - `packed1`: lossy and about half the bytes at k = 20 after the corpus's zstd (59 against 129
//!   bytes per token on SmolLM2's own samples; docs/benchmarks.md). Log-probs are quantised to
//!   1/[`Q`] nat (so a value is within 1/(2·Q) of the exact one); ids go through a move-to-front
//!   list of recent ids (the alternatives at neighbouring positions repeat), so most take one
//!   byte; within a position the log-probs are delta-coded down the ranks; the sampled token is
//!   its rank when it is among the alternatives. Varints throughout, then zstd, then base64.
//!   Decoding and re-encoding gives the same bytes.
//!
//! Positions where the server returned fewer than `k` alternatives are padded with id
//! [`PAD_ID`] and log-prob `-inf`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Id used to pad a position that has fewer than `k` alternatives.
pub const PAD_ID: u32 = u32::MAX;

/// How a [`TokenLogprobs`] is written (reading takes either).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Base64 of the raw little-endian arrays: exact.
    #[default]
    B64le,
    /// Quantised, move-to-front coded, zstd-compressed: about half the bytes, within 1/(2·Q) nat.
    Packed1,
}

/// Quantisation steps per nat of `packed1`: the KD loss moves by about 1e-5 on average and by
/// at most 1e-3 at any position (`distill bench logprobs`).
pub const Q: f32 = 256.0;

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// How it is written in a trace.
    pub encoding: Encoding,
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
            encoding: Encoding::B64le,
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
    /// `b64le` (the arrays below) or `packed1` (`data`).
    encoding: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_logprobs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_ids: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
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
        let n = self.tokens.len() as u64;
        match self.encoding {
            Encoding::B64le => Wire {
                k: self.k,
                n,
                encoding: "b64le".into(),
                tokens: Some(enc_u32(&self.tokens)),
                token_logprobs: Some(enc_f32(&self.token_logprobs)),
                top_ids: Some(enc_u32(&self.top_ids)),
                top_logprobs: Some(enc_f32(&self.top_logprobs)),
                data: None,
            },
            Encoding::Packed1 => Wire {
                k: self.k,
                n,
                encoding: "packed1".into(),
                tokens: None,
                token_logprobs: None,
                top_ids: None,
                top_logprobs: None,
                data: Some(B64.encode(packed::encode(self))),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TokenLogprobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = Wire::deserialize(d)?;
        let lp = match w.encoding.as_str() {
            "b64le" => {
                let field = |f: &Option<String>, what: &str| {
                    f.clone().ok_or_else(|| format!("logprobs: b64le without `{what}`"))
                };
                let u = |s: &str, what| {
                    dec4(s, what).map(|v| v.into_iter().map(u32::from_le_bytes).collect::<Vec<_>>())
                };
                let f = |s: &str, what| {
                    dec4(s, what).map(|v| v.into_iter().map(f32::from_le_bytes).collect::<Vec<_>>())
                };
                let get = |o: &Option<String>, what| field(o, what).map_err(D::Error::custom);
                TokenLogprobs {
                    encoding: Encoding::B64le,
                    k: w.k,
                    tokens: u(&get(&w.tokens, "tokens")?, "tokens").map_err(D::Error::custom)?,
                    token_logprobs: f(&get(&w.token_logprobs, "token_logprobs")?, "token_logprobs")
                        .map_err(D::Error::custom)?,
                    top_ids: u(&get(&w.top_ids, "top_ids")?, "top_ids")
                        .map_err(D::Error::custom)?,
                    top_logprobs: f(&get(&w.top_logprobs, "top_logprobs")?, "top_logprobs")
                        .map_err(D::Error::custom)?,
                }
            }
            "packed1" => {
                let data = w
                    .data
                    .as_deref()
                    .ok_or_else(|| D::Error::custom("logprobs: packed1 without `data`"))?;
                let bytes = B64
                    .decode(data)
                    .map_err(|e| D::Error::custom(format!("logprobs.data: bad base64: {e}")))?;
                packed::decode(&bytes, w.k, w.n).map_err(D::Error::custom)?
            }
            other => {
                return Err(D::Error::custom(format!(
                    "logprobs: unknown encoding '{other}' (expected b64le or packed1)"
                )));
            }
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

/// The `packed1` encoding.
mod packed {
    use super::{Encoding, PAD_ID, Q, TokenLogprobs};

    /// Recent ids kept for move-to-front coding.
    const MTF: usize = 2048;
    /// Most alternatives per position, and the blob's decompressed size cap.
    const MAX_K: u32 = 4096;
    const MAX_BLOB: usize = 256 << 20;

    fn put(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn zig(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }

    fn unzig(v: u64) -> i64 {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }

    /// A log-prob as its code: −lp · Q, rounded (a log-prob is ≤ 0; larger values clamp).
    fn code(lp: f32) -> u64 {
        (-(lp.min(0.0)) * Q).round().min(u32::MAX as f32) as u64
    }

    fn value(c: u64) -> f32 {
        -(c as f32) / Q
    }

    struct Mtf(Vec<u32>);

    impl Mtf {
        fn put(&mut self, out: &mut Vec<u8>, id: u32) {
            match self.0.iter().position(|&x| x == id) {
                Some(p) => {
                    put(out, p as u64 + 1);
                    self.0.remove(p);
                }
                None => {
                    put(out, 0);
                    put(out, id as u64);
                    self.0.truncate(MTF - 1);
                }
            }
            self.0.insert(0, id);
        }

        fn get(&mut self, r: &mut Reader<'_>) -> Result<u32, String> {
            let v = r.varint()?;
            let id = if v == 0 {
                u32::try_from(r.varint()?).map_err(|_| "an id over u32".to_string())?
            } else {
                let p = (v - 1) as usize;
                if p >= self.0.len() {
                    return Err(format!(
                        "move-to-front index {p} past the {} recent ids",
                        self.0.len()
                    ));
                }
                self.0.remove(p)
            };
            if v == 0 {
                self.0.truncate(MTF - 1);
            }
            self.0.insert(0, id);
            Ok(id)
        }
    }

    pub fn encode(lp: &TokenLogprobs) -> Vec<u8> {
        let k = lp.k as usize;
        let mut out = Vec::with_capacity(lp.len() * (k + 4));
        let mut mtf = Mtf(Vec::with_capacity(MTF));
        for j in 0..lp.len() {
            let top: Vec<(u32, f32)> = lp.top(j).filter(|(_, l)| l.is_finite()).collect();
            put(&mut out, top.len() as u64);
            let mut prev = 0i64;
            for &(id, l) in &top {
                mtf.put(&mut out, id);
                let c = code(l) as i64;
                put(&mut out, zig(c - prev));
                prev = c;
            }
            // The sampled token: its rank among the alternatives when it is one of them.
            let (tok, tl) = (lp.tokens[j], lp.token_logprobs[j]);
            match top.iter().position(|&(id, l)| id == tok && code(l) == code(tl)) {
                Some(r) => put(&mut out, r as u64 + 1),
                None => {
                    put(&mut out, 0);
                    mtf.put(&mut out, tok);
                    put(&mut out, if tl.is_finite() { code(tl) + 1 } else { 0 });
                }
            }
        }
        zstd::bulk::compress(&out, 19).expect("in-memory zstd")
    }

    struct Reader<'a> {
        b: &'a [u8],
        at: usize,
    }

    impl Reader<'_> {
        fn varint(&mut self) -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = *self.b.get(self.at).ok_or("logprobs.data ends inside a number")?;
                self.at += 1;
                v |= ((byte & 0x7f) as u64) << shift;
                if byte < 0x80 {
                    return Ok(v);
                }
            }
            Err("logprobs.data: a number longer than 64 bits".into())
        }
    }

    pub fn decode(bytes: &[u8], k: u32, n: u64) -> Result<TokenLogprobs, String> {
        if k > MAX_K {
            return Err(format!("logprobs: k = {k} is over {MAX_K}"));
        }
        // Streamed, so that memory grows with what the frame really holds, up to the cap.
        let mut raw = Vec::new();
        let dec = zstd::stream::read::Decoder::new(bytes)
            .map_err(|e| format!("logprobs.data: not a zstd frame: {e}"))?;
        std::io::Read::read_to_end(&mut std::io::Read::take(dec, MAX_BLOB as u64 + 1), &mut raw)
            .map_err(|e| format!("logprobs.data: not a zstd frame: {e}"))?;
        if raw.len() > MAX_BLOB {
            return Err(format!("logprobs.data: more than {MAX_BLOB} bytes decompressed"));
        }
        // Every position takes at least two bytes: n is checked before anything is sized by it.
        if n > raw.len() as u64 / 2 + 1 {
            return Err(format!("logprobs: n = {n} positions in {} bytes", raw.len()));
        }
        let (n, ku) = (n as usize, k as usize);
        let mut lp = TokenLogprobs::new(k);
        lp.encoding = Encoding::Packed1;
        lp.tokens.reserve(n);
        let mut r = Reader { b: &raw, at: 0 };
        let mut mtf = Mtf(Vec::with_capacity(MTF));
        let mut top = Vec::with_capacity(ku);
        for j in 0..n {
            let c = r.varint()? as usize;
            if c > ku {
                return Err(format!("logprobs: position {j} has {c} alternatives, k = {k}"));
            }
            top.clear();
            let mut prev = 0i64;
            for _ in 0..c {
                let id = mtf.get(&mut r)?;
                let code = prev + unzig(r.varint()?);
                if code < 0 {
                    return Err(format!("logprobs: position {j}: a negative code"));
                }
                prev = code;
                top.push((id, value(code as u64)));
            }
            let rank = r.varint()? as usize;
            let (tok, tl) = if rank > 0 {
                *top.get(rank - 1)
                    .ok_or_else(|| format!("logprobs: position {j}: rank {rank} of {c}"))?
            } else {
                let id = mtf.get(&mut r)?;
                let c = r.varint()?;
                (id, if c == 0 { f32::NEG_INFINITY } else { value(c - 1) })
            };
            lp.push(tok, tl, &top);
        }
        if r.at != raw.len() {
            return Err(format!(
                "logprobs.data: {} bytes after the last position",
                raw.len() - r.at
            ));
        }
        let _ = PAD_ID;
        Ok(lp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A teacher-like top-k: peaked, the sampled token usually among the alternatives, ids that
    /// repeat across positions, some positions padded.
    fn sample(k: u32, n: usize) -> TokenLogprobs {
        let mut lp = TokenLogprobs::new(k);
        let mut s = 7u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for j in 0..n {
            let c = if j % 5 == 4 { k as usize - 2 } else { k as usize };
            let mut top = Vec::new();
            let mut l = -0.05 - (next() % 100) as f32 / 1000.0;
            for r in 0..c {
                let id = if r < 3 { (next() % 12) as u32 } else { (next() % 49_152) as u32 };
                if top.iter().any(|&(i, _)| i == id) {
                    continue;
                }
                top.push((id, l));
                l -= 0.3 + (next() % 300) as f32 / 100.0;
            }
            let (tok, tl) = if j % 7 == 3 { (40_000 + j as u32, -9.87) } else { top[j % 2] };
            lp.push(tok, tl, &top);
        }
        lp
    }

    fn roundtrip(lp: &TokenLogprobs) -> TokenLogprobs {
        let v = serde_json::to_value(lp).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn packed1_is_within_half_a_step_and_stable() {
        let mut lp = sample(20, 300);
        lp.encoding = Encoding::Packed1;
        let back = roundtrip(&lp);
        assert_eq!(back.encoding, Encoding::Packed1);
        assert_eq!(
            (back.k, back.tokens.clone(), back.top_ids.clone()),
            (lp.k, lp.tokens.clone(), lp.top_ids.clone())
        );
        let tol = 0.5 / Q + 1e-6;
        for (a, b) in lp
            .token_logprobs
            .iter()
            .chain(&lp.top_logprobs)
            .zip(back.token_logprobs.iter().chain(&back.top_logprobs))
        {
            assert!(a == b || (a - b).abs() <= tol, "{a} → {b}");
        }
        // Decoding and encoding again gives the same bytes.
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&roundtrip(&back)).unwrap()
        );
        // Smaller than the exact encoding.
        let exact =
            serde_json::to_string(&TokenLogprobs { encoding: Encoding::B64le, ..lp.clone() })
                .unwrap();
        assert!(serde_json::to_string(&lp).unwrap().len() * 2 < exact.len());
    }

    #[test]
    fn packed1_refuses_bad_data_with_a_reason() {
        let mut lp = sample(8, 40);
        lp.encoding = Encoding::Packed1;
        let mut v = serde_json::to_value(&lp).unwrap();
        let good = v["data"].as_str().unwrap().to_string();
        let bad = |v: &serde_json::Value| {
            serde_json::from_value::<TokenLogprobs>(v.clone()).unwrap_err().to_string()
        };
        v["n"] = serde_json::json!(1u64 << 40);
        assert!(bad(&v).contains("positions in"), "{}", bad(&v));
        v["n"] = serde_json::json!(40);
        v["k"] = serde_json::json!(1u32 << 30);
        assert!(bad(&v).contains("is over"), "{}", bad(&v));
        v["k"] = serde_json::json!(8);
        v["data"] = serde_json::json!(B64.encode(b"not zstd"));
        assert!(bad(&v).contains("not a zstd frame"), "{}", bad(&v));
        let raw = zstd::bulk::decompress(&B64.decode(&good).unwrap(), 1 << 20).unwrap();
        v["data"] =
            serde_json::json!(B64.encode(zstd::bulk::compress(&raw[..raw.len() / 2], 3).unwrap()));
        assert!(bad(&v).contains("ends inside") || bad(&v).contains("rank"), "{}", bad(&v));
        v["data"] = serde_json::json!(good);
        v["n"] = serde_json::json!(39);
        assert!(bad(&v).contains("after the last position"), "{}", bad(&v));
    }
}
