//! Text <-> token ids for the two tokenizer layouts GPT-2 checkpoints ship:
//! `tokenizer.json` (byte-level BPE like `gpt2`, or any other `tokenizers` model)
//! and a BERT-style `vocab.txt` (character WordPiece, as the Chinese GPT-2 poem
//! models use; those start a sequence with `[CLS]` and end it with `[SEP]`).
//!
//! Besides encoding, it gives every token the exact bytes it contributes to the
//! text, so `generate/` can stream UTF-8 safely without re-decoding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use std::str::FromStr;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::Tokenizer;

use super::{Gpt2Config, LoadError};

/// How the tokenizer was described on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TokenizerKind {
    /// `tokenizer.json` with a byte-level BPE (GPT-2's own).
    ByteLevelBpe,
    /// `tokenizer.json` with another model (WordPiece, Metaspace, ...).
    TokenizerJson,
    /// BERT `vocab.txt`: character WordPiece with `[CLS]`/`[SEP]`.
    VocabTxt,
}

/// Problems with a prompt's text.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "the model's vocabulary has no token for {chars} (from the prompt); use other characters"
    )]
    UnknownCharacters { chars: String },
    #[error("the tokenizer failed on the prompt: {0}")]
    Tokenizer(String),
}

/// A loaded tokenizer with the per-token byte table and the special ids.
pub struct TextTokenizer {
    kind: TokenizerKind,
    path: PathBuf,
    inner: Tokenizer,
    /// Bytes each id adds to the text; empty for special tokens.
    token_bytes: Vec<Vec<u8>>,
    /// Token that starts a sequence (`[CLS]`, or BOS when the prompt is empty).
    start_id: Option<u32>,
    /// Tokens that end a generation (`[SEP]`, EOS).
    stop_ids: Vec<u32>,
    unk_id: Option<u32>,
    /// Simplified -> traditional characters (`s2t.tsv` beside the tokenizer), applied
    /// to prompt characters the vocabulary lacks, so 春风 finds 春風.
    variants: HashMap<char, char>,
    /// Tables layers above derive from this vocabulary (see [`TextTokenizer::derived`]).
    derived: DerivedTables,
}

/// Tables derived from a vocabulary, one per type, built on first use.
#[derive(Default)]
struct DerivedTables(std::sync::Mutex<Vec<std::sync::Arc<dyn std::any::Any + Send + Sync>>>);

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("vocab", &self.token_bytes.len())
            .finish()
    }
}

/// GPT-2's byte <-> printable-character table, inverted: char -> byte.
fn byte_level_decoder() -> HashMap<char, u8> {
    let mut bytes: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
    let mut n = 0;
    for b in 0..=255u8 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    bytes
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b)))
        .collect()
}

fn json_type(v: Option<&Value>) -> Option<&str> {
    v.and_then(|v| v.get("type")).and_then(Value::as_str)
}

/// Whether a `tokenizer.json` uses the byte-level decoder (directly or in a sequence).
fn is_byte_level(json: &Value) -> bool {
    let has = |v: Option<&Value>| -> bool {
        match json_type(v) {
            Some("ByteLevel") => true,
            Some("Sequence") => v
                .and_then(|v| v.get("decoders").or_else(|| v.get("pretokenizers")))
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|d| json_type(Some(d)) == Some("ByteLevel"))),
            _ => false,
        }
    };
    has(json.get("decoder")) || has(json.get("pre_tokenizer"))
}

impl TextTokenizer {
    /// A table a layer above derives from this vocabulary (the poem forms'
    /// per-token characters and tones: a scan of every token), built by
    /// `build` on the first call for its type and shared by every call after,
    /// so a request does not scan the vocabulary again.
    pub fn derived<T: std::any::Any + Send + Sync>(
        &self,
        build: impl FnOnce(&Self) -> T,
    ) -> std::sync::Arc<T> {
        // A panic in another `build` leaves the list as it was: still usable.
        let mut tables = self
            .derived
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = tables
            .iter()
            .find_map(|t| std::sync::Arc::clone(t).downcast::<T>().ok())
        {
            return t;
        }
        let t = std::sync::Arc::new(build(self));
        tables.push(t.clone());
        t
    }

    /// Loads `tokenizer.json` or `vocab.txt` (by file name) and checks it fits `config`.
    pub fn from_file(path: &Path, config: &Gpt2Config) -> Result<Self, LoadError> {
        let is_vocab_txt = path.extension().and_then(|e| e.to_str()) == Some("txt");
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut tok = if is_vocab_txt {
            Self::from_vocab_txt(path, &text)?
        } else {
            Self::from_tokenizer_json(path, &text, config)?
        };
        if let Some(variants) = path
            .parent()
            .map(|d| d.join("s2t.tsv"))
            .filter(|p| p.is_file())
        {
            tok.variants = Self::read_variants(&variants)?;
        }
        let n = tok.token_bytes.len();
        if n > config.vocab_size {
            return Err(LoadError::VocabMismatch {
                path: path.to_path_buf(),
                tokenizer_vocab: n,
                model_vocab: config.vocab_size,
            });
        }
        if n < config.vocab_size {
            warn_once(
                path,
                "vocab_size",
                format_args!(
                    "{}: the tokenizer has {n} tokens but the model's embedding has {} rows; \
                     generated ids from {n} up have no text",
                    path.display(),
                    config.vocab_size
                ),
            );
        }
        Ok(tok)
    }

    fn from_tokenizer_json(
        path: &Path,
        text: &str,
        config: &Gpt2Config,
    ) -> Result<Self, LoadError> {
        let bad = |problem: String| LoadError::Tokenizer {
            path: path.to_path_buf(),
            problem,
        };
        let json: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let inner = Tokenizer::from_str(text)
            .map_err(|e| bad(format!("not a valid tokenizer.json: {e}")))?;
        let byte_level = is_byte_level(&json);
        let model_type = json_type(json.get("model")).unwrap_or("");
        let n = inner.get_vocab_size(true);
        let token_bytes = token_bytes_of(&inner, &json);
        let valid = |id: Option<u32>, field: &str| -> Option<u32> {
            let i = id?;
            let outside = if i as usize >= config.vocab_size {
                format!(
                    "the model's {}-row embedding (vocab_size in config.json)",
                    config.vocab_size
                )
            } else if i as usize >= n {
                format!("the tokenizer's {n} tokens")
            } else {
                return Some(i);
            };
            warn_once(
                path,
                field,
                format_args!(
                    "{}: config.json {field} = {i} is outside {outside}; ignoring it",
                    path.display()
                ),
            );
            None
        };
        let eot = inner.token_to_id("<|endoftext|>");
        let eos = valid(config.eos_token_id, "eos_token_id").or(eot);
        let bos = valid(config.bos_token_id, "bos_token_id").or(eot);
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        let (start_id, unk_id) = if model_type == "WordPiece" {
            let cls = inner.token_to_id("[CLS]");
            stop_ids.extend(inner.token_to_id("[SEP]"));
            (cls.or(bos), inner.token_to_id("[UNK]"))
        } else {
            (bos, None)
        };
        Ok(Self {
            kind: if byte_level {
                TokenizerKind::ByteLevelBpe
            } else {
                TokenizerKind::TokenizerJson
            },
            path: path.to_path_buf(),
            inner,
            token_bytes,
            start_id,
            stop_ids,
            unk_id,
            variants: HashMap::new(),
            derived: DerivedTables::default(),
        })
    }

    fn from_vocab_txt(path: &Path, text: &str) -> Result<Self, LoadError> {
        let bad = |problem: String| LoadError::Tokenizer {
            path: path.to_path_buf(),
            problem,
        };
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut pieces = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let tok = line.trim_end_matches('\r').to_string();
            if tok.is_empty() {
                return Err(bad(format!("line {}: empty token", i + 1)));
            }
            if vocab.insert(tok.clone(), i as u32).is_some() {
                return Err(bad(format!("line {}: token {tok:?} appears twice", i + 1)));
            }
            pieces.push(tok);
        }
        if pieces.is_empty() {
            return Err(bad("the vocabulary is empty".into()));
        }
        let unk = "[UNK]";
        if !vocab.contains_key(unk) {
            return Err(bad("no [UNK] token: not a BERT vocab.txt".into()));
        }
        let wordpiece = WordPiece::builder()
            .vocab(vocab.clone().into_iter().collect::<ahash::AHashMap<_, _>>())
            .unk_token(unk.into())
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let mut inner = Tokenizer::new(wordpiece);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(|e| bad(e.to_string()))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        let is_special = |p: &str| p.starts_with('[') && p.ends_with(']') && p.len() > 2;
        let token_bytes = pieces
            .iter()
            .map(|p| {
                if is_special(p) {
                    Vec::new()
                } else {
                    p.strip_prefix("##").unwrap_or(p).as_bytes().to_vec()
                }
            })
            .collect();
        let start_id = vocab.get("[CLS]").copied();
        let stop_ids = vocab.get("[SEP]").copied().into_iter().collect();
        Ok(Self {
            kind: TokenizerKind::VocabTxt,
            path: path.to_path_buf(),
            inner,
            token_bytes,
            start_id,
            stop_ids,
            unk_id: vocab.get(unk).copied(),
            variants: HashMap::new(),
            derived: DerivedTables::default(),
        })
    }

    /// Reads `s2t.tsv`: one `simplified<TAB>traditional` pair of characters a line.
    fn read_variants(path: &Path) -> Result<HashMap<char, char>, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let mut parts = line.split('\t');
            let one = |p: Option<&str>| -> Option<char> {
                let mut cs = p?.chars();
                let c = cs.next()?;
                cs.next().is_none().then_some(c)
            };
            match (one(parts.next()), one(parts.next())) {
                (Some(s), Some(t)) => {
                    map.insert(s, t);
                }
                _ => {
                    return Err(LoadError::Tokenizer {
                        path: path.to_path_buf(),
                        problem: format!(
                            "line {}: expected `simplified<TAB>traditional`, found {line:?}",
                            i + 1
                        ),
                    })
                }
            }
        }
        Ok(map)
    }

    /// `text` as the vocabulary writes it: each character the vocabulary lacks
    /// replaced by its traditional form when it has that (春风 -> 春風).
    pub fn to_vocab_chars(&self, text: &str) -> String {
        self.map_variants(text)
    }

    /// Replaces characters the vocabulary lacks by their traditional form when it has that.
    fn map_variants(&self, text: &str) -> String {
        if self.variants.is_empty() {
            return text.to_string();
        }
        text.chars()
            .map(|c| match self.variants.get(&c) {
                Some(&t) if self.inner.token_to_id(c.encode_utf8(&mut [0; 4])).is_none() => t,
                _ => c,
            })
            .collect()
    }

    /// Whether the vocabulary has this exact token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Tokens that end a generation.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn start_id(&self) -> Option<u32> {
        self.start_id
    }

    /// The bytes token `id` contributes to the text (empty for special tokens and unknown ids).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Encodes text with no special tokens; characters the vocabulary cannot
    /// express are an error that lists them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        let mapped = self.map_variants(text);
        let text = mapped.as_str();
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if let Some(unk) = self.unk_id {
            let mut missing = String::new();
            for (i, &id) in ids.iter().enumerate() {
                if id == unk {
                    if let Some((s, e)) = enc.get_offsets().get(i).copied() {
                        if let Some(piece) = text.get(s..e) {
                            if !missing.contains(piece) {
                                if !missing.is_empty() {
                                    missing.push_str(", ");
                                }
                                missing.push_str(&format!("\"{piece}\""));
                            }
                        }
                    }
                }
            }
            if !missing.is_empty() {
                return Err(EncodeError::UnknownCharacters { chars: missing });
            }
        }
        Ok(ids)
    }

    /// The ids a generation starts from: `[CLS]` + text for WordPiece models; the
    /// text alone for BPE models, or BOS when the text is empty.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>, EncodeError> {
        let body = self.encode(text)?;
        let mut ids = Vec::with_capacity(body.len() + 1);
        let wants_start = self.kind != TokenizerKind::ByteLevelBpe || body.is_empty();
        if wants_start {
            ids.extend(self.start_id);
        }
        ids.extend(body);
        Ok(ids)
    }

    /// Decodes ids to text (lossy for invalid UTF-8), skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Logs a warning about a checkpoint once per process for each (file, field),
/// not at every reload of the same model.
fn warn_once(path: &std::path::Path, field: &str, message: std::fmt::Arguments) {
    static SEEN: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> =
        std::sync::Mutex::new(Vec::new());
    let key = (path.to_path_buf(), field.to_string());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !seen.contains(&key) {
        seen.push(key);
        tracing::warn!("{message}");
    }
}

/// What each id of a `tokenizer.json` adds to the text, as bytes: byte-level
/// BPE pieces mapped back to bytes, WordPiece continuations without their
/// prefix, Metaspace's ▁ as a space, special added tokens as nothing.
fn token_bytes_of(inner: &Tokenizer, json: &Value) -> Vec<Vec<u8>> {
    let byte_level = is_byte_level(json);
    let model_type = json_type(json.get("model")).unwrap_or("");
    let prefix = json
        .get("model")
        .and_then(|m| m.get("continuing_subword_prefix"))
        .and_then(Value::as_str)
        .unwrap_or("##")
        .to_string();
    let metaspace = json_type(json.get("decoder")) == Some("Metaspace");
    let added = inner.get_added_tokens_decoder();
    let n = inner.get_vocab_size(true);
    let table = byte_level_decoder();
    let mut token_bytes = Vec::with_capacity(n);
    for id in 0..n as u32 {
        if let Some(tok) = added.get(&id) {
            token_bytes.push(if tok.special {
                Vec::new()
            } else {
                tok.content.clone().into_bytes()
            });
            continue;
        }
        let Some(piece) = inner.id_to_token(id) else {
            token_bytes.push(Vec::new());
            continue;
        };
        let bytes = if byte_level {
            piece
                .chars()
                .map(|c| table.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| piece.into_bytes())
        } else if model_type == "WordPiece" {
            match piece.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.as_bytes().to_vec(),
                None => piece.into_bytes(),
            }
        } else if metaspace {
            piece.replace('\u{2581}', " ").into_bytes()
        } else {
            inner
                .decode(&[id], false)
                .map(String::into_bytes)
                .unwrap_or_default()
        };
        token_bytes.push(bytes);
    }
    token_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_covers_all_bytes_once() {
        let t = byte_level_decoder();
        assert_eq!(t.len(), 256);
        let mut seen: Vec<u8> = t.values().copied().collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(t[&'\u{120}'], b' '); // 'Ġ' is a space
        assert_eq!(t[&'A'], b'A');
    }
}
