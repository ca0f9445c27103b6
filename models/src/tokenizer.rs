//! `tokenizer.json` through the `tokenizers` crate, plus what `tokenizer_config.json` says:
//! special tokens, whether to add BOS, and the chat template.

use std::path::Path;

use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::hf::Assets;

/// A token's byte range `start..end` in the encoded text.
pub type Span = (usize, usize);

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub add_bos: bool,
    pub chat: Option<ChatTemplate>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.vocab_size())
            .field("eos", &self.eos_token)
            .finish()
    }
}

/// A special token in tokenizer_config.json: a string or an AddedToken object.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// The tokenizer of a model directory, checked against its `config.json` (when there is
    /// one): every token id must have a row in the embedding.
    pub fn from_dir(dir: &Path) -> Result<TextTokenizer> {
        let tok = Self::from_assets(&Assets::read(dir)?, dir)?;
        tok.check_vocab_size(dir)?;
        Ok(tok)
    }

    /// A token id at or past the model's `vocab_size` would index past the embedding (a panic
    /// in the gather, or a wrong row): refused when the tokenizer is loaded. A missing or
    /// unreadable config is the config loader's to report.
    fn check_vocab_size(&self, dir: &Path) -> Result<()> {
        let path = dir.join("config.json");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return Ok(()) };
        let vocab = v
            .get("vocab_size")
            .or_else(|| v.get("text_config").and_then(|t| t.get("vocab_size")))
            .and_then(Value::as_u64);
        let Some(vocab) = vocab else { return Ok(()) };
        if let Some((token, id)) = self.inner.get_vocab(true).into_iter().max_by_key(|(_, id)| *id)
            && u64::from(id) >= vocab
        {
            return Err(Error::Tokenizer(format!(
                "{}: token {token:?} has id {id}, past the model's vocab_size {vocab} in {}: the embedding has no row for it",
                dir.join("tokenizer.json").display(),
                path.display()
            )));
        }
        Ok(())
    }

    pub fn from_assets(assets: &Assets, dir: &Path) -> Result<TextTokenizer> {
        let bytes = assets
            .tokenizer_json
            .as_ref()
            .ok_or_else(|| Error::Tokenizer(format!("{} has no tokenizer.json", dir.display())))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| {
            Error::Tokenizer(format!("{}: {e}", dir.join("tokenizer.json").display()))
        })?;
        let empty = Value::Object(Default::default());
        let tc = assets.tokenizer_config.as_ref().unwrap_or(&empty);
        let bos_token = token_str(tc.get("bos_token"));
        let eos_token = token_str(tc.get("eos_token"));
        let chat = match tc.get("chat_template") {
            Some(Value::String(t)) => {
                Some(ChatTemplate::new(t, bos_token.as_deref(), eos_token.as_deref())?)
            }
            // A list of named templates: use "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(|t| ChatTemplate::new(t, bos_token.as_deref(), eos_token.as_deref()))
                .transpose()?,
            _ => None,
        };
        let tok = TextTokenizer {
            inner,
            pad_token: token_str(tc.get("pad_token")),
            add_bos: tc.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
            bos_token,
            eos_token,
            chat,
        };
        // The template's special tokens must exist in the vocabulary.
        for t in [&tok.bos_token, &tok.eos_token].into_iter().flatten() {
            if tok.token_id(t).is_none() {
                return Err(Error::Tokenizer(format!(
                    "special token '{t}' from tokenizer_config.json is not in the vocabulary"
                )));
            }
        }
        Ok(tok)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encode text. Special tokens written in the text (`<|im_start|>`) are recognised, as
    /// transformers does; BOS is prepended only if the tokenizer config asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if self.add_bos
            && let Some(b) = self.bos_token.as_deref().and_then(|b| self.token_id(b))
            && ids.first() != Some(&b)
        {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    /// Encode and return each token's byte span in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Span>)> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Ids that end generation: the EOS token plus any listed by the model's configs.
    pub fn eos_ids(&self, extra: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = extra.to_vec();
        if let Some(e) = self.eos_token.as_deref().and_then(|e| self.token_id(e))
            && !ids.contains(&e)
        {
            ids.push(e);
        }
        ids
    }

    /// How `other`'s vocabulary differs from this one (id → token, as each maps them), or `None`
    /// when they are the same. Embedding sizes may differ (Qwen2.5 pads its embeddings past the
    /// tokenizer's ids), which is compatible: only the ids the tokenizers know are compared.
    /// Worded for a student (`self`) against its teacher (`other`).
    pub fn vocabulary_difference(&self, other: &TextTokenizer) -> Option<String> {
        let by_id = |tok: &TextTokenizer| {
            let mut v: Vec<(u32, String)> =
                tok.inner().get_vocab(true).into_iter().map(|(t, i)| (i, t)).collect();
            v.sort();
            v
        };
        let (sv, tv) = (by_id(self), by_id(other));
        let first = sv.iter().zip(&tv).find(|(a, b)| a != b).map(|(a, b)| (a.clone(), b.clone()));
        Some(match (first, sv.len().cmp(&tv.len())) {
            (None, std::cmp::Ordering::Equal) => return None,
            (Some(((i, a), (j, b))), _) if i == j => {
                format!("the first differing id is {i}: {a:?} in the student, {b:?} in the teacher")
            }
            (Some(((i, a), (j, b))), _) => format!(
                "the first difference is at id {}: the student has {a:?} = {i}, the teacher {b:?} = {j}",
                i.min(j)
            ),
            (None, _) => format!(
                "the first {} ids agree, but the student has {} ids and the teacher {}",
                sv.len().min(tv.len()),
                sv.len(),
                tv.len()
            ),
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
