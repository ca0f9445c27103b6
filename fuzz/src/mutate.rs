//! Structure-blind mutations in the style of AFL's havoc stage, with the integers that break
//! length fields (0, 1, powers of two, all ones, the input's own length).

use rand::Rng;
use rand::rngs::SmallRng;

const INTERESTING: [u64; 12] =
    [0, 1, 2, 0x7F, 0xFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 32, 1 << 40, u64::MAX];

/// One to eight stacked mutations of `input`, sometimes spliced with `other`. The result is at
/// most `max_len` bytes.
pub fn mutate(rng: &mut SmallRng, input: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        let len = b.len();
        match rng.random_range(0..10) {
            // Flip one bit.
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            // A random byte.
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] = rng.random();
            }
            // An interesting integer, 1/2/4/8 bytes, little-endian (GGUF, safetensors, our index).
            2 | 3 if len > 0 => {
                let w = [1usize, 2, 4, 8][rng.random_range(0..4)];
                if len >= w {
                    let i = rng.random_range(0..=len - w);
                    let v = match rng.random_range(0..4) {
                        0 => len as u64,
                        1 => (len as u64).wrapping_sub(rng.random_range(0..16)),
                        _ => INTERESTING[rng.random_range(0..INTERESTING.len())],
                    };
                    b[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
            }
            // Add or subtract a little from a byte.
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] =
                    b[i].wrapping_add(rng.random_range(1..=35u8).wrapping_mul(if rng.random() {
                        1
                    } else {
                        255
                    }));
            }
            // Delete a range.
            5 if len > 1 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                b.drain(i..i + n);
            }
            // Duplicate a range somewhere.
            6 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let chunk = b[i..i + n].to_vec();
                let at = rng.random_range(0..=len);
                b.splice(at..at, chunk);
            }
            // Insert random bytes.
            7 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(at..at, bytes);
            }
            // Truncate.
            8 if len > 0 => b.truncate(rng.random_range(0..len)),
            // Splice: our head, the other input's tail.
            9 if !other.is_empty() => {
                let i = rng.random_range(0..=len);
                let j = rng.random_range(0..other.len());
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            _ => {}
        }
    }
    b.truncate(max_len);
    b
}
