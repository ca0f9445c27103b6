//! Corpus behaviour: random access, resume, leftovers, locking, damage and bad manifests.

mod common;

use common::{small_opts, write_synthetic};
use distill_data::corpus::{self, verify};
use distill_data::{Corpus, CorpusWriter, Error, Trace, WriterOptions, synth};
use std::fs;

#[test]
fn random_access_by_index_and_id_matches_a_sequential_read() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_synthetic(dir.path(), 333, small_opts());
    let c = Corpus::open(dir.path()).unwrap();
    assert_eq!(c.len(), 333);
    assert!(c.manifest().shards.len() >= 5, "small options should give many shards");
    let seq: Vec<Trace> = c.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(seq, written);
    // Every index, in a scrambled order, and every id.
    let mut order: Vec<u64> = (0..333).collect();
    let mut rng = synth::Rng::new(3);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for i in order {
        assert_eq!(c.get(i).unwrap(), seq[i as usize]);
        assert_eq!(c.get_by_id(&seq[i as usize].id).unwrap().as_ref(), Some(&seq[i as usize]));
    }
    assert!(matches!(c.get(333), Err(Error::OutOfRange { index: 333, len: 333 })));
    assert!(c.get_by_id("no-such-id").unwrap().is_none());
    // Parallel scan sees every record once, in order.
    let ids: Vec<String> =
        c.par_map_frames(|_, r| r.unwrap().into_iter().map(|t| t.id).collect::<Vec<_>>()).concat();
    assert_eq!(ids, seq.iter().map(|t| t.id.clone()).collect::<Vec<_>>());
}

#[test]
fn reopening_resumes_and_knows_the_committed_ids() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<Trace> = synth::traces(1, 30, 2).collect();
    {
        let mut w = CorpusWriter::open(dir.path(), small_opts()).unwrap();
        for t in &all[..20] {
            w.append(t.clone()).unwrap();
        }
        assert_eq!(w.commit().unwrap(), 20);
        for t in &all[20..25] {
            w.append(t.clone()).unwrap();
        }
        // Dropped without commit: those 5 are not committed.
    }
    let mut w = CorpusWriter::open(dir.path(), small_opts()).unwrap();
    assert_eq!(w.committed_records(), 20);
    assert!(all[..20].iter().all(|t| w.is_committed(&t.id)));
    assert!(!all[20..].iter().any(|t| w.is_committed(&t.id)));
    let dup = w.append(all[3].clone()).unwrap_err();
    assert!(matches!(dup, Error::DuplicateId { .. }), "{dup}");
    for t in &all[20..] {
        w.append(t.clone()).unwrap();
    }
    w.commit().unwrap();
    drop(w);
    let seq: Vec<Trace> =
        Corpus::open(dir.path()).unwrap().iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(seq, all);
}

#[test]
fn crash_leftovers_are_removed_on_reopen_and_ignored_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path(), 20, small_opts());
    // A shard renamed into place but never named by the manifest, and a half-written temp file.
    fs::write(dir.path().join("shard-00099.jsonl.zst"), b"garbage").unwrap();
    fs::write(dir.path().join("shard-00100.jsonl.zst.tmp"), b"half").unwrap();
    fs::write(dir.path().join("manifest.json.tmp"), b"{").unwrap();
    let c = Corpus::open(dir.path()).unwrap();
    assert_eq!(c.len(), 20);
    let report = verify(dir.path()).unwrap();
    assert!(report.ok());
    assert_eq!(report.strays.len(), 3);
    let w = CorpusWriter::open(dir.path(), small_opts()).unwrap();
    assert_eq!(w.removed_leftovers().len(), 3);
    assert!(!dir.path().join("shard-00099.jsonl.zst").exists());
}

/// A corpus starts only in a new or empty directory, and only distill's own temp files are
/// leftovers: a user's `thesis.tmp` was deleted as a "crash leftover" before.
#[test]
fn a_users_files_are_never_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("thesis.tmp"), b"chapter 1").unwrap();
    let err = CorpusWriter::open(dir.path(), small_opts()).err().unwrap().to_string();
    assert!(err.contains("not a distill corpus") && err.contains("thesis.tmp"), "{err}");
    assert_eq!(fs::read(dir.path().join("thesis.tmp")).unwrap(), b"chapter 1");
    assert!(!dir.path().join("manifest.json").exists(), "no corpus started among them");
    // Inside a real corpus, a `.tmp` that is not one of distill's names stays too.
    let c = tempfile::tempdir().unwrap();
    write_synthetic(c.path(), 5, small_opts());
    fs::write(c.path().join("notes.tmp"), b"mine").unwrap();
    let w = CorpusWriter::open(c.path(), small_opts()).unwrap();
    assert!(w.removed_leftovers().is_empty());
    assert_eq!(fs::read(c.path().join("notes.tmp")).unwrap(), b"mine");
    assert!(verify(c.path()).unwrap().strays.is_empty());
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _w = CorpusWriter::open(dir.path(), WriterOptions::default()).unwrap();
    let err = CorpusWriter::open(dir.path(), WriterOptions::default()).err().unwrap();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

fn shard_path(dir: &std::path::Path, c: &Corpus, i: usize) -> std::path::PathBuf {
    dir.join(&c.manifest().shards[i].file)
}

#[test]
fn a_flipped_byte_in_a_frame_is_reported_by_shard_and_frame_and_other_frames_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_synthetic(dir.path(), 120, small_opts());
    let c = Corpus::open(dir.path()).unwrap();
    let locs = c.frames();
    let mut rng = synth::Rng::new(11);
    for trial in 0..8 {
        // Restore, then flip one byte inside a random frame of a random shard.
        let fresh = tempfile::tempdir().unwrap();
        write_synthetic(fresh.path(), 120, small_opts());
        let loc = locs[rng.below(locs.len() as u64) as usize];
        let entry = &c.manifest().shards[loc.shard];
        let path = shard_path(fresh.path(), &c, loc.shard);
        let mut bytes = fs::read(&path).unwrap();
        let ix = corpus::reader::load_index(fresh.path(), entry).unwrap();
        let f = &ix.frames[loc.frame];
        let pos = f.offset as usize + rng.below(f.compressed as u64) as usize;
        bytes[pos] ^= 1 << rng.below(8);
        fs::write(&path, &bytes).unwrap();

        let report = verify(fresh.path()).unwrap();
        assert!(!report.ok(), "trial {trial}: damage went unnoticed");
        assert!(
            report.problems.iter().any(|p| p.shard == entry.file && p.frame == Some(loc.frame)),
            "trial {trial}: expected {} frame {} in {:?}",
            entry.file,
            loc.frame,
            report.problems
        );
        let damaged = Corpus::open(fresh.path()).unwrap();
        let mut ok = 0;
        for (i, t) in damaged.iter().enumerate() {
            match t {
                Ok(t) => {
                    assert_eq!(t, written[written.iter().position(|w| w.id == t.id).unwrap()]);
                    ok += 1;
                }
                Err(e) => assert!(e.to_string().contains(&entry.file), "record {i}: {e}"),
            }
        }
        assert_eq!(
            ok,
            120 - f.records as usize,
            "trial {trial}: every other frame must still read"
        );
    }
}

#[test]
fn a_damaged_index_trailer_is_reported_and_every_frame_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_synthetic(dir.path(), 40, small_opts());
    let c = Corpus::open(dir.path()).unwrap();
    let path = shard_path(dir.path(), &c, 0);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0xff; // inside the trailer's checksummed body
    fs::write(&path, &bytes).unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.msg.contains("index trailer")),
        "{:?}",
        report.problems
    );
    assert_eq!(report.records, 40);
    let back: Vec<Trace> =
        Corpus::open(dir.path()).unwrap().iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(back, written);
}

#[test]
fn a_manifest_naming_a_path_outside_the_corpus_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path(), 5, small_opts());
    let mpath = dir.path().join("manifest.json");
    let m = fs::read_to_string(&mpath).unwrap();
    for evil in ["../x", "../x.zst", "/etc/passwd.zst", "sub/dir.zst"] {
        fs::write(&mpath, m.replace("shard-00000.jsonl.zst", evil)).unwrap();
        let err = Corpus::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("manifest.json") && err.contains(evil), "{evil}: {err}");
        assert!(
            err.contains("not a plain file name") || err.contains("does not end in .zst"),
            "{err}"
        );
        assert!(verify(dir.path()).is_err());
    }
}

#[test]
fn a_manifest_from_a_newer_distill_says_to_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path(), 5, small_opts());
    let mpath = dir.path().join("manifest.json");
    let m = fs::read_to_string(&mpath).unwrap();
    fs::write(&mpath, m.replacen("\"version\": 1", "\"version\": 9", 1)).unwrap();
    let err = Corpus::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("version 9") && err.contains("upgrade distill"), "{err}");
    fs::write(&mpath, "{\"hello\": 1}").unwrap();
    let err = Corpus::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("does not hold a distill corpus"), "{err}");
}

#[test]
fn a_truncated_shard_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path(), 30, small_opts());
    let c = Corpus::open(dir.path()).unwrap();
    let path = shard_path(dir.path(), &c, 0);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.shard == "shard-00000.jsonl.zst"),
        "{:?}",
        report.problems
    );
    let err = Corpus::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("shard-00000.jsonl.zst"), "{err}");
}

#[test]
fn filter_and_merge_are_idempotent() {
    use distill_data::corpus::ops::{FilterSpec, filter, merge};
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let ta = write_synthetic(a.path(), 60, small_opts());
    let tb: Vec<Trace> = synth::traces(99, 10, 1)
        .map(|mut t| {
            t.id = format!("b-{}", t.id);
            t
        })
        .collect();
    {
        let mut w = CorpusWriter::open(b.path(), small_opts()).unwrap();
        for t in &tb {
            w.append(t.clone()).unwrap();
        }
        w.commit().unwrap();
    }
    let srcs = [
        Corpus::open(a.path()).unwrap(),
        Corpus::open(b.path()).unwrap(),
        Corpus::open(a.path()).unwrap(),
    ];
    let mut w = CorpusWriter::open(out.path(), small_opts()).unwrap();
    let r = merge(&srcs, &mut w).unwrap();
    assert_eq!((r.written, r.already_present), (70, 60));
    let r = merge(&srcs, &mut w).unwrap();
    assert_eq!((r.written, r.already_present), (0, 130));
    drop(w);

    let kept = tempfile::tempdir().unwrap();
    let spec = FilterSpec {
        passed: Some(true),
        drop_finish: vec![distill_data::FinishReason::Length],
        ..Default::default()
    };
    let mut w = CorpusWriter::open(kept.path(), small_opts()).unwrap();
    let r = filter(&srcs[0], &mut w, &spec).unwrap();
    let expect = ta
        .iter()
        .filter(|t| t.passed() && t.finish_reason != distill_data::FinishReason::Length)
        .count() as u64;
    assert_eq!(r.written, expect);
    assert_eq!(r.written + r.dropped.values().sum::<u64>(), 60);
}

/// A manifest claiming 2^40 records in a shard (it used to size the writer's id set and OOM every
/// writer) is refused by writers and readers, naming the manifest and the shard.
#[test]
fn a_manifest_with_a_huge_record_count_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = CorpusWriter::open(dir.path(), small_opts()).unwrap();
        for t in synth::traces(3, 5, 1) {
            w.append(t).unwrap();
        }
        w.commit().unwrap();
    }
    let mpath = dir.path().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&mpath).unwrap()).unwrap();
    m["shards"][0]["records"] = serde_json::json!(1u64 << 40);
    fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let e =
        CorpusWriter::open(dir.path(), small_opts()).err().expect("writer must refuse").to_string();
    assert!(e.contains("shard-00000") && e.contains("the manifest says 1099511627776"), "{e}");
    assert!(Corpus::open(dir.path()).is_err());
}

/// A later record under an id already present, with different content, is not written and is
/// counted as a conflict, not as "already present" — within one run and across runs.
#[test]
fn a_different_record_under_a_present_id_is_a_conflict() {
    use distill_data::corpus::ops::merge;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let ta = write_synthetic(a.path(), 5, small_opts());
    {
        let mut w = CorpusWriter::open(b.path(), small_opts()).unwrap();
        for (i, t) in ta.iter().enumerate() {
            let mut t = t.clone();
            if i == 2 {
                t.answer.push_str(" (edited)");
            }
            w.append(t).unwrap();
        }
        w.commit().unwrap();
    }
    let srcs = [Corpus::open(a.path()).unwrap(), Corpus::open(b.path()).unwrap()];
    let mut w = CorpusWriter::open(out.path(), small_opts()).unwrap();
    let r = merge(&srcs, &mut w).unwrap();
    assert_eq!((r.written, r.already_present, r.conflicting), (5, 4, 1));
    assert_eq!(r.conflicting_ids, vec![ta[2].id.clone()]);
    drop(w);
    // Again, over what is now committed: the same verdicts.
    let mut w = CorpusWriter::open(out.path(), small_opts()).unwrap();
    let r = merge(&srcs, &mut w).unwrap();
    assert_eq!((r.written, r.already_present, r.conflicting), (0, 9, 1));
}
