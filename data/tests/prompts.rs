//! Prompt files: the three shapes, stable ids, and `file:line` errors for bad input.

use distill_data::prompts::{FieldMap, ReadOptions, read_prompts};
use distill_data::{Error, Role};
use std::io::Write;
use std::path::PathBuf;

fn file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

#[test]
fn reads_the_three_shapes() {
    let d = tempfile::tempdir().unwrap();
    let math = file(&d, "math.jsonl", br#"{"problem": "What is $\\frac{1}{2}+\\frac{1}{3}$?", "answer": "\\frac{5}{6}", "level": 3}
{"problem": "Compute 2^10.", "answer": "1024"}
"#);
    let map = FieldMap { keep: vec!["level".into()], ..FieldMap::math() };
    let (ps, rep) = read_prompts(&math, "math", &map, &ReadOptions::default()).unwrap();
    assert_eq!(rep.prompts, 2);
    assert_eq!(ps[0].messages.len(), 1);
    assert_eq!(ps[0].messages[0].role, Role::User);
    assert_eq!(ps[0].reference.as_deref(), Some("\\frac{5}{6}"));
    assert_eq!(ps[0].metadata["level"], 3);
    assert_eq!(ps[1].source.row, 1);
    assert!(ps[0].id.starts_with("math/") && ps[0].id != ps[1].id);

    let gsm = file(&d, "gsm.jsonl", b"{\"question\": \"Tom has 3 apples and buys 4. How many?\", \"answer\": \"3+4=<<3+4=7>>7\\n#### 7\"}\n");
    let (ps, _) = read_prompts(&gsm, "gsm", &FieldMap::gsm8k(), &ReadOptions::default()).unwrap();
    assert_eq!(ps[0].reference.as_deref(), Some("7"));
    assert_eq!(ps[0].metadata["solution"], "3+4=<<3+4=7>>7");

    let chat = file(&d, "chat.jsonl", br#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
"#);
    let (ps, _) = read_prompts(&chat, "chat", &FieldMap::chat(), &ReadOptions::default()).unwrap();
    assert_eq!(
        ps[0].messages.len(),
        2,
        "the dataset's own assistant reply is not part of the prompt"
    );
    assert_eq!(ps[0].messages[0].role, Role::System);
}

#[test]
fn ids_are_stable_under_reordering_and_templates_apply() {
    let d = tempfile::tempdir().unwrap();
    let a = file(
        &d,
        "a.jsonl",
        b"{\"problem\": \"one\", \"answer\": \"1\"}\n{\"problem\": \"two\", \"answer\": \"2\"}\n",
    );
    let b = file(&d, "b.jsonl", b"{\"problem\": \"two\", \"answer\": \"2\"}\n\n{\"problem\": \"one\", \"answer\": \"1\"}\n{\"problem\": \"one\", \"answer\": \"1\"}\n");
    let (pa, _) = read_prompts(&a, "x", &FieldMap::math(), &ReadOptions::default()).unwrap();
    let (pb, rb) = read_prompts(&b, "x", &FieldMap::math(), &ReadOptions::default()).unwrap();
    assert_eq!(pa[0].id, pb[1].id);
    assert_eq!(pa[1].id, pb[0].id);
    assert_eq!((rb.blank, rb.duplicates, rb.prompts), (1, 1, 2));

    let map = FieldMap {
        template: Some("{prompt}\nPut the answer in \\boxed{}.".into()),
        system: Some("sys".into()),
        ..FieldMap::math()
    };
    let (p, _) = read_prompts(&a, "x", &map, &ReadOptions::default()).unwrap();
    assert_eq!(p[0].messages[1].content, "one\nPut the answer in \\boxed{}.");
    assert_eq!(p[0].messages[0].role, Role::System);
}

fn line_error(bytes: &[u8], map: &FieldMap) -> (u64, String) {
    let d = tempfile::tempdir().unwrap();
    let p = file(&d, "bad.jsonl", bytes);
    match read_prompts(&p, "bad", map, &ReadOptions::default()).unwrap_err() {
        Error::Line { path, line, msg } => {
            assert_eq!(path, p);
            let shown = Error::Line { path: path.clone(), line, msg: msg.clone() }.to_string();
            assert!(shown.starts_with(&format!("{}:{line}: ", p.display())), "{shown}");
            (line, msg)
        }
        e => panic!("expected a line error, got {e}"),
    }
}

#[test]
fn malformed_lines_are_file_line_errors() {
    let good = b"{\"problem\": \"ok\", \"answer\": \"1\"}\n";
    let m = FieldMap::math();

    let (line, msg) =
        line_error(&[good.as_slice(), b"{\"problem\": \"unterminated\n"].concat(), &m);
    assert_eq!(line, 2);
    assert!(msg.contains("invalid JSON"), "{msg}");

    let (line, msg) = line_error(
        &[good.as_slice(), good, b"{\"problem\": \"caf\xe9\", \"answer\": \"1\"}\n"].concat(),
        &m,
    );
    assert_eq!(line, 3);
    assert!(msg.contains("invalid UTF-8"), "{msg}");

    let (line, msg) = line_error(b"{\"question\": \"no problem field\", \"answer\": \"1\"}\n", &m);
    assert_eq!(line, 1);
    assert!(msg.contains("missing field 'problem'"), "{msg}");

    let mut huge = b"{\"problem\": \"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10 << 20));
    huge.extend(b"\", \"answer\": \"1\"}\n");
    let (line, msg) = line_error(&[good.as_slice(), &huge, good].concat(), &m);
    assert_eq!(line, 2);
    assert!(msg.contains("over the limit"), "{msg}");

    let (line, msg) = line_error(b"[1, 2]\n", &m);
    assert_eq!(line, 1);
    assert!(msg.contains("not a JSON object"), "{msg}");

    let (_, msg) =
        line_error(b"{\"question\": \"q\", \"answer\": \"no hashes\"}\n", &FieldMap::gsm8k());
    assert!(msg.contains("####"), "{msg}");
}

#[test]
fn skip_bad_counts_instead_of_failing() {
    let d = tempfile::tempdir().unwrap();
    let mut bytes =
        b"{\"problem\": \"a\", \"answer\": \"1\"}\nnot json\n{\"problem\": \"b\"\xff}\n".to_vec();
    bytes.extend(b"{\"problem\": \"c\", \"answer\": \"3\"}\n");
    let p = file(&d, "mixed.jsonl", &bytes);
    let opts = ReadOptions { skip_bad: true, ..Default::default() };
    let (ps, rep) = read_prompts(&p, "m", &FieldMap::math(), &opts).unwrap();
    assert_eq!(ps.len(), 2);
    assert_eq!(rep.skipped.iter().map(|s| s.0).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(rep.lines, 4);
}

/// The real shared datasets, when this checkout has them beside it.
#[test]
fn reads_the_shared_eval_and_prompt_sets() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if !shared.exists() {
        distill_data::testing::fixture_missing(&format!("{} not present", shared.display()));
        return;
    }
    for (file, map, rows) in [
        ("eval/math500.jsonl", FieldMap::math(), 500),
        ("eval/aime24.jsonl", FieldMap::math(), 30),
        ("eval/gsm8k-test.jsonl", FieldMap::gsm8k(), 1319),
        ("prompts/gsm8k-train.jsonl", FieldMap::gsm8k(), 7473),
    ] {
        let (ps, rep) =
            read_prompts(&shared.join(file), "s", &map, &ReadOptions::default()).unwrap();
        assert_eq!(rep.lines, rows, "{file}");
        assert_eq!(ps.len() as u64 + rep.duplicates, rows, "{file}");
        assert!(ps.iter().all(|p| p.reference.as_ref().is_some_and(|r| !r.is_empty())), "{file}");
    }
}

/// A UTF-8 byte-order mark at the start of the file is not part of the first record; elsewhere
/// it is still an error with its file:line.
#[test]
fn a_leading_byte_order_mark_is_accepted() {
    let d = tempfile::tempdir().unwrap();
    let p = file(&d, "bom.jsonl", b"\xEF\xBB\xBF{\"problem\": \"1+1?\", \"answer\": \"2\"}\n{\"problem\": \"2+2?\", \"answer\": \"4\"}\n");
    let (ps, _) = read_prompts(&p, "m", &FieldMap::math(), &ReadOptions::default()).unwrap();
    assert_eq!(ps.len(), 2);
    let (line, _msg) = line_error(
        b"{\"problem\": \"1+1?\", \"answer\": \"2\"}\n\xEF\xBB\xBF{\"problem\": \"2+2?\", \"answer\": \"4\"}\n",
        &FieldMap::math(),
    );
    assert_eq!(line, 2, "{_msg}");
}

/// A small valid Parquet prompt file (distill's own writer), its bytes, and where its footer
/// starts.
fn parquet_prompts(dir: &tempfile::TempDir, rows: &[(&str, &str)]) -> (PathBuf, Vec<u8>, usize) {
    use arrow_schema::{DataType, Field, Schema};
    let p = dir.path().join("ok.parquet");
    let schema = Schema::new(vec![
        Field::new("question", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
    ]);
    let mut sink = distill_data::columnar::ParquetSink::create(&p, schema).unwrap();
    for (q, a) in rows {
        sink.push(serde_json::json!({"question": q, "answer": a})).unwrap();
    }
    sink.finish().unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    let flen = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    (p, bytes, n - 8 - flen)
}

/// `bytes` with its footer's `old` replaced by `new` (the footer length rewritten).
fn patched(bytes: &[u8], start: usize, old: &[u8], new: &[u8]) -> Vec<u8> {
    let footer = &bytes[start..bytes.len() - 8];
    let at = footer.windows(old.len()).position(|w| w == old).expect("pattern in the footer");
    let mut f = footer[..at].to_vec();
    f.extend(new);
    f.extend(&footer[at + old.len()..]);
    let mut out = bytes[..start].to_vec();
    out.extend(&f);
    out.extend((f.len() as u32).to_le_bytes());
    out.extend(b"PAR1");
    out
}

/// Hostile Parquet metadata (issue 33): a schema element with a negative or huge `num_children`
/// panicked or reserved gigabytes inside the `parquet` crate; a list count of 2^31 did the same.
/// Each is now an error naming the file, before the crate reads the footer.
#[test]
fn hostile_parquet_metadata_is_a_named_error_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let (p, bytes, start) = parquet_prompts(&d, &[("What is 1 + 1?", "2"), ("3 + 4?", "7")]);
    let map = FieldMap { prompt: Some("question".into()), ..FieldMap::default() };
    let opts = ReadOptions::default();
    let (ps, _) = read_prompts(&p, "p", &map, &opts).unwrap();
    assert_eq!(ps.len(), 2);
    // The root schema element: name "arrow_schema" (field 4), then num_children 2 (field 5,
    // zigzag 4).
    let mut root = vec![0x48, 12];
    root.extend(b"arrow_schema");
    let with = |tail: &[u8]| -> Vec<u8> {
        let mut v = root.clone();
        v.extend(tail);
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("negative", with(&[0x15, 0x01]), "-1 children"),
        ("huge", with(&[0x15, 0xfe, 0xff, 0xff, 0xff, 0x0f]), "2147483647 children"),
    ];
    for (name, new, says) in cases {
        let bad = file(
            &d,
            &format!("{name}.parquet"),
            &patched(&bytes, start, &with(&[0x15, 0x04]), &new),
        );
        let e = read_prompts(&bad, "p", &map, &opts).unwrap_err().to_string();
        assert!(e.contains(&format!("{name}.parquet")) && e.contains(says), "{name}: {e}");
    }
    // The schema list (field 2 of the footer: 3 elements) claiming 2^31.
    let bad = file(
        &d,
        "list.parquet",
        &patched(&bytes, start, &[0x19, 0x3c], &[0x19, 0xfc, 0x80, 0x80, 0x80, 0x80, 0x08]),
    );
    let e = read_prompts(&bad, "p", &map, &opts).unwrap_err().to_string();
    assert!(e.contains("list.parquet") && e.contains("2147483648 elements"), "{e}");
    // A footer length past the file.
    let mut long = bytes.clone();
    let n = long.len();
    long[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let bad = file(&d, "long.parquet", &long);
    let e = read_prompts(&bad, "p", &map, &opts).unwrap_err().to_string();
    assert!(e.contains("long.parquet") && e.contains("footer claims"), "{e}");
}

/// A dictionary-encoded column repeats one long string on every row: the file is a few
/// kilobytes, its rows decode to megabytes. A row over `max_line_bytes` is an error naming it,
/// and so is a file whose rows decode to more than its limit (64 × its size, at least
/// `min_decoded_bytes`), before the rest is decoded.
#[test]
fn a_parquet_file_that_expands_past_its_limits_stops_with_the_row() {
    let d = tempfile::tempdir().unwrap();
    let long = "x".repeat(64 << 10);
    let rows: Vec<(&str, &str)> = (0..200).map(|_| (long.as_str(), "1")).collect();
    let (p, bytes, _) = parquet_prompts(&d, &rows);
    assert!(bytes.len() < 64 << 10, "the file should be small: {} bytes", bytes.len());
    let map = FieldMap { prompt: Some("question".into()), ..FieldMap::default() };
    let e = read_prompts(&p, "p", &map, &ReadOptions { skip_bad: false, max_line_bytes: 32 << 10 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("ok.parquet") && e.contains("row 0 decodes to"), "{e}");
    let limits =
        distill_data::columnar::Limits { max_row_bytes: 1 << 20, min_decoded_bytes: 1 << 20 };
    let mut read = 0;
    let mut err = None;
    for r in distill_data::columnar::ParquetRows::open_with(&p, limits).unwrap() {
        match r {
            Ok(_) => read += 1,
            Err(e) => err = Some(e.to_string()),
        }
    }
    let e = err.expect("the decoded limit stops the file");
    assert!(e.contains("ok.parquet") && e.contains("decode to more than"), "{e}");
    // Rows of 64 KiB in batches of 64: the first batch (4 MiB) is already past 1 MiB.
    assert!(read < 200, "{read} rows read");
}
