//! GGML tensor types to f32, following ggml's reference `dequantize_row_*` functions.

use half::{bf16, f16};

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q5_0: u32 = 6;
pub const Q5_1: u32 = 7;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const Q5_K: u32 = 13;
pub const Q6_K: u32 = 14;
pub const BF16: u32 = 30;

/// `(elements per block, bytes per block)` for the supported types.
fn block(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        F32 => (1, 4),
        F16 | BF16 => (1, 2),
        Q4_0 => (32, 18),
        Q4_1 => (32, 20),
        Q5_0 => (32, 22),
        Q5_1 => (32, 24),
        Q8_0 => (32, 34),
        Q4_K => (256, 144),
        Q5_K => (256, 176),
        Q6_K => (256, 210),
        _ => return None,
    })
}

pub fn type_name(ty: u32) -> String {
    let known = [
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (8, "Q8_0"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (30, "BF16"),
    ];
    known.iter().find(|(t, _)| *t == ty).map_or(format!("type {ty}"), |(_, n)| n.to_string())
}

/// Bytes taken by `n` elements of type `ty`.
pub(crate) fn byte_size(ty: u32, n: u64) -> Option<Result<u64, String>> {
    let Some((per, bytes)) = block(ty) else {
        return Some(Err(format!(
            "tensor type {} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)",
            type_name(ty)
        )));
    };
    if !n.is_multiple_of(per) {
        return Some(Err(format!(
            "{n} elements is not a whole number of {per}-element {} blocks",
            type_name(ty)
        )));
    }
    (n / per).checked_mul(bytes).map(Ok)
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decode `n` elements of type `ty` from `data`.
pub fn dequantize(ty: u32, data: &[u8], n: usize) -> Result<Vec<f32>, DequantError> {
    dequantize_(ty, data, n).map_err(DequantError)
}

/// Why a tensor's bytes cannot be dequantized (its type, its size); the caller names the tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DequantError(pub String);

// The index arithmetic follows ggml-quants.c block by block, so it is kept as loops over indices.
#[allow(clippy::needless_range_loop)]
fn dequantize_(ty: u32, data: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (per, bytes) =
        block(ty).ok_or_else(|| format!("tensor type {} is not supported", type_name(ty)))?;
    let (per, bytes) = (per as usize, bytes as usize);
    if !n.is_multiple_of(per) || data.len() != n / per * bytes {
        return Err(format!("{} bytes do not hold {n} {} elements", data.len(), type_name(ty)));
    }
    let mut y = Vec::with_capacity(n);
    match ty {
        F32 => y.extend(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        F16 => y.extend(data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        BF16 => y.extend(data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        Q4_0 | Q4_1 => {
            for b in data.chunks_exact(bytes) {
                let d = h(b, 0);
                let (m, qs) = if ty == Q4_1 { (h(b, 2), &b[4..20]) } else { (0.0, &b[2..18]) };
                let off = if ty == Q4_0 { 8.0 } else { 0.0 };
                let lo = qs.iter().map(|&q| ((q & 0xF) as f32 - off) * d + m);
                let hi = qs.iter().map(|&q| ((q >> 4) as f32 - off) * d + m);
                y.extend(lo);
                y.extend(hi);
            }
        }
        Q5_0 | Q5_1 => {
            for b in data.chunks_exact(bytes) {
                let d = h(b, 0);
                let (m, rest) = if ty == Q5_1 { (h(b, 2), &b[4..]) } else { (0.0, &b[2..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let off = if ty == Q5_0 { 16.0 } else { 0.0 };
                let mut out = [0f32; 32];
                for j in 0..16 {
                    let xh0 = ((qh >> j) << 4) & 0x10;
                    let xh1 = (qh >> (j + 12)) & 0x10;
                    let x0 = ((qs[j] as u32 & 0xF) | xh0) as f32 - off;
                    let x1 = ((qs[j] as u32 >> 4) | xh1) as f32 - off;
                    out[j] = x0 * d + m;
                    out[j + 16] = x1 * d + m;
                }
                y.extend(out);
            }
        }
        Q8_0 => {
            for b in data.chunks_exact(bytes) {
                let d = h(b, 0);
                y.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        Q4_K | Q5_K => {
            for b in data.chunks_exact(bytes) {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let scales = &b[4..16];
                let (qh, mut ql) =
                    if ty == Q5_K { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                let (mut u1, mut u2) = (1u8, 2u8);
                for j in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let hi =
                        |l: usize, u: u8| if ty == Q5_K && qh[l] & u != 0 { 16.0 } else { 0.0 };
                    for l in 0..32 {
                        y.push(d1 * ((ql[l] & 0xF) as f32 + hi(l, u1)) - m1);
                    }
                    for l in 0..32 {
                        y.push(d2 * ((ql[l] >> 4) as f32 + hi(l, u2)) - m2);
                    }
                    ql = &ql[32..];
                    u1 <<= 2;
                    u2 <<= 2;
                }
            }
        }
        Q6_K => {
            for b in data.chunks_exact(bytes) {
                let d = h(b, 208);
                let (mut ql, mut qh, mut sc) = (&b[0..128], &b[128..192], &b[192..208]);
                for _ in 0..2 {
                    let mut out = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        let s = |k: usize| (sc[is + k] as i8) as f32;
                        out[l] = d * s(0) * q1 as f32;
                        out[l + 32] = d * s(2) * q2 as f32;
                        out[l + 64] = d * s(4) * q3 as f32;
                        out[l + 96] = d * s(6) * q4 as f32;
                    }
                    y.extend(out);
                    ql = &ql[64..];
                    qh = &qh[32..];
                    sc = &sc[8..];
                }
            }
        }
        _ => unreachable!("checked by block()"),
    }
    Ok(y)
}

/// ggml's `get_scale_min_k4`: 6-bit scale and min number `j` of a K-quant block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}
