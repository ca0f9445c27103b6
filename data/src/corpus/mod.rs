//! The compressed trace corpus: a directory of `manifest.json` + `shard-NNNNN.jsonl.zst`.
//! Layout and guarantees are described in `docs/trace-format.md`.

pub mod manifest;
pub mod ops;
pub mod reader;
pub mod salvage;
pub mod shard;
pub mod stats;
pub mod verify;
pub mod writer;

pub use manifest::{Manifest, ShardEntry};
pub use reader::{Corpus, FrameLoc};
pub use salvage::Damage;
pub use verify::{Problem, VerifyReport, verify};
pub use writer::{CorpusWriter, WriterOptions};
