//! Issue 11, item 5: a GGUF's metadata costs memory in proportion to its bytes. A 16 MB array of
//! u8 used to become 16 M `Value`s of 32 bytes (512 MB). Measured with a counting allocator, in
//! its own test binary so that no other test allocates at the same time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use distill_models::gguf::{Array, GgufFile, Value};

struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = NOW.fetch_add(l.size(), Ordering::SeqCst) + l.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The two tests measure one after the other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn header(n_kv: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(n_kv.to_le_bytes());
    b
}

fn key(b: &mut Vec<u8>, k: &str) {
    b.extend((k.len() as u64).to_le_bytes());
    b.extend(k.as_bytes());
}

#[test]
fn metadata_arrays_cost_memory_in_proportion_to_their_bytes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let n: usize = 16 << 20;
    let mut b = header(2);
    key(&mut b, "big.u8");
    b.extend(9u32.to_le_bytes()); // ARRAY
    b.extend(0u32.to_le_bytes()); // of UINT8
    b.extend((n as u64).to_le_bytes());
    b.extend(std::iter::repeat_n(7u8, n));
    key(&mut b, "big.str");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes()); // of STRING
    let strings = 1usize << 18;
    b.extend((strings as u64).to_le_bytes());
    for _ in 0..strings {
        b.extend(8u64.to_le_bytes());
        b.extend(b"abcdefgh");
    }
    let path = tmp.path().join("big-meta.gguf");
    std::fs::write(&path, &b).unwrap();
    let file_len = b.len();
    drop(b);

    let before = NOW.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let g = GgufFile::open(&path).unwrap();
    let peak = PEAK.load(Ordering::SeqCst) - before;
    match g.get("big.u8") {
        Some(Value::Array(Array::U8(v))) => assert_eq!(v.len(), n),
        other => panic!("{other:?}"),
    }
    assert_eq!(g.get("big.str").and_then(Value::as_array).map(Array::len), Some(strings));
    // u8: 1 byte each; strings: 24 + 8 bytes in memory for 16 in the file.
    assert!(peak < 3 * file_len, "opening a {file_len}-byte GGUF allocated {peak} bytes at peak");
}

#[test]
fn array_counts_beyond_the_file_are_refused_before_allocating() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    for (elem, count) in [(4u32, 1u64 << 40), (9, 1 << 30), (8, u64::MAX), (0, 1 << 20)] {
        let mut b = header(1);
        key(&mut b, "lie");
        b.extend(9u32.to_le_bytes());
        b.extend(elem.to_le_bytes());
        b.extend(count.to_le_bytes());
        b.extend([0u8; 64]);
        let path = tmp.path().join("lie.gguf");
        std::fs::write(&path, &b).unwrap();
        let before = NOW.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let e = GgufFile::open(&path).err().expect("a lying count must be refused").to_string();
        assert!(e.contains("'lie'") && e.contains("cannot fit"), "{e}");
        assert!(PEAK.load(Ordering::SeqCst) - before < 1 << 16, "element type {elem}");
    }
}
