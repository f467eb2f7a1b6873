//! `versifier corpus`: chinese-poetry JSON (`poet.tang.*.json`, `poet.song.*.json`)
//! to training text. One poem per line, prefixed with its form tag; only regular
//! verse is kept (4 or 8 lines of 5 or 7 characters, `，`/`。` alternating, no
//! repeated line), editorial notes removed, poems with missing characters
//! dropped, duplicates dropped. A fixed share is held out by a seeded hash.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::poetry::forms::regular_form;

/// Errors of corpus preparation.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
    #[error("{path}: no poet.tang.*.json files; point --source at chinese-poetry's package folder (see packaging/corpus/fetch.sh)")]
    NoSource { path: PathBuf },
    /// OpenCC's simplified-to-traditional converter, built into the binary, did
    /// not start (its embedded dictionaries are unreadable: a broken build).
    #[error("the 詞 cannot be converted to traditional script: OpenCC's s2t converter did not start ({problem}); reinstall Versifier")]
    Converter { problem: String },
}

/// What to read and where to write.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// chinese-poetry's package folder (or its `dist/quantangshi`).
    pub source: PathBuf,
    pub out: PathBuf,
    /// Add the Song poems (`poet.song.*`) to the Tang ones.
    pub include_song: bool,
    /// Per ten thousand poems held out for evaluation (200 = 2%).
    pub holdout_per_10k: u64,
    pub seed: u64,
    /// Add the Song 詞 (`songci/ci.song.*`) whose tune has a pattern and that
    /// follow it, each line tagged `[CI:tune]`.
    pub include_ci: bool,
    /// Simplified -> traditional table (TSV, as a model's `s2t.tsv`) applied to
    /// the 詞 after OpenCC's conversion, for anything it leaves.
    pub s2t: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CorpusStats {
    pub files: usize,
    pub poems_read: usize,
    pub dropped_missing_characters: usize,
    pub dropped_not_regular: usize,
    pub dropped_duplicates: usize,
    pub kept: usize,
    pub by_form: BTreeMap<String, usize>,
    pub train_poems: usize,
    pub eval_poems: usize,
    pub holdout_per_10k: u64,
    pub seed: u64,
    pub include_song: bool,
    pub include_ci: bool,
    /// 詞 read whose tune has no pattern in the tune table.
    pub dropped_ci_unknown_tune: usize,
    /// 詞 whose lines differ from their tune's pattern.
    pub dropped_ci_off_pattern: usize,
    /// 詞 read whose text the conversion to traditional script changed.
    pub ci_converted_to_traditional: usize,
}

/// Marks editors use for characters missing from the sources.
const MISSING: [char; 6] = ['□', '■', '○', '◻', '�', '？'];

/// Removes editorial notes: anything inside （）, (), 〔〕, [], 【】, {}, 《》 notes after text.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '（' | '(' | '〔' | '[' | '【' | '{' => depth += 1,
            '）' | ')' | '〕' | ']' | '】' | '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 && !c.is_whitespace() => out.push(c),
            _ => {}
        }
    }
    out
}

/// A stable 64-bit hash (FNV-1a) of the seed and the text, for the split.
fn split_hash(seed: u64, text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn source_files(dir: &Path, include_song: bool) -> Result<Vec<PathBuf>, CorpusError> {
    let dist = [
        dir.join("dist/quantangshi"),
        dir.join("quantangshi"),
        dir.to_path_buf(),
    ]
    .into_iter()
    .find(|d| d.join("poet.tang.0.json").is_file())
    .ok_or_else(|| CorpusError::NoSource {
        path: dir.to_path_buf(),
    })?;
    json_files(&dist, |name| {
        name.starts_with("poet.tang.") || (include_song && name.starts_with("poet.song."))
    })
}

/// The `.json` files in `dir` whose names `wanted` accepts, sorted.
fn json_files(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, CorpusError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| CorpusError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".json") && wanted(n))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The poems of one collection file: a JSON list.
fn read_poems(path: &Path) -> Result<Vec<Value>, CorpusError> {
    let text = std::fs::read_to_string(path).map_err(|source| CorpusError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let poems: Value = serde_json::from_str(&text).map_err(|e| CorpusError::Format {
        path: path.to_path_buf(),
        problem: format!("not valid JSON: {e}"),
    })?;
    match poems {
        Value::Array(poems) => Ok(poems),
        _ => Err(CorpusError::Format {
            path: path.to_path_buf(),
            problem: "expected a list of poems".into(),
        }),
    }
}

/// A simplified -> traditional table: `simplified<TAB>traditional` lines.
fn read_s2t(path: &Path) -> Result<std::collections::HashMap<char, char>, CorpusError> {
    let text = std::fs::read_to_string(path).map_err(|source| CorpusError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (s, t) = (f.next()?.chars().next()?, f.next()?.chars().next()?);
            Some((s, t))
        })
        .collect())
}

/// The 詞 of the collection that follow their tune's pattern, as tagged
/// training lines (`[CI:浣溪沙]…\n`), marks normalised to `，` and `。`, in
/// traditional script like the 詩: the collection has them in simplified, and
/// OpenCC's phrase-aware conversion (白云 becomes 白雲, 人云亦云 stays) replaces
/// every simplified form, where a model's `s2t.tsv` maps only the characters
/// its vocabulary lacks (a model trained on that writes mixed script).
fn ci_lines(
    opts: &CorpusOptions,
    stats: &mut CorpusStats,
    seen: &mut HashSet<String>,
) -> Result<Vec<String>, CorpusError> {
    let dir = [opts.source.join("dist/songci"), opts.source.join("songci")]
        .into_iter()
        .find(|d| d.is_dir())
        .ok_or_else(|| CorpusError::Format {
            path: opts.source.clone(),
            problem: "no songci folder (dist/songci/ci.song.*.json) for --ci".into(),
        })?;
    let s2t = opts
        .s2t
        .as_deref()
        .map(read_s2t)
        .transpose()?
        .unwrap_or_default();
    let to_traditional = ferrous_opencc::OpenCC::from_config(
        ferrous_opencc::config::BuiltinConfig::S2t,
    )
    .map_err(|e| CorpusError::Converter {
        problem: e.to_string(),
    })?;
    let files = json_files(&dir, |name| name.starts_with("ci.song."))?;
    let mut lines = Vec::new();
    for path in &files {
        for poem in read_poems(path)? {
            stats.poems_read += 1;
            let tune = poem.get("rhythmic").and_then(Value::as_str).unwrap_or("");
            let Some(tune) = crate::poetry::tunes::find_tune(tune) else {
                stats.dropped_ci_unknown_tune += 1;
                continue;
            };
            let raw: String = poem
                .get("paragraphs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let simplified = clean(&raw);
            let traditional = to_traditional.convert(&simplified);
            stats.ci_converted_to_traditional += usize::from(traditional != simplified);
            let body: String = traditional
                .chars()
                .map(|c| match c {
                    '、' | '；' | '：' => '，',
                    '？' | '！' => '。',
                    c => *s2t.get(&c).unwrap_or(&c),
                })
                .collect();
            if body.chars().any(|c| MISSING.contains(&c)) {
                stats.dropped_missing_characters += 1;
                continue;
            }
            let form = crate::poetry::forms::PoemForm::Ci(tune.name.clone());
            if !crate::poetry::forms::satisfies(&body, &form) {
                stats.dropped_ci_off_pattern += 1;
                continue;
            }
            if !seen.insert(body.clone()) {
                stats.dropped_duplicates += 1;
                continue;
            }
            stats.kept += 1;
            *stats.by_form.entry(form.to_string()).or_insert(0) += 1;
            lines.push(format!("[CI:{}]{body}\n", tune.name));
        }
    }
    Ok(lines)
}

/// Reads the sources and writes `train.txt`, `eval.txt` and `corpus.json` into `opts.out`.
pub fn prepare_corpus(opts: &CorpusOptions) -> Result<CorpusStats, CorpusError> {
    let files = source_files(&opts.source, opts.include_song)?;
    let mut stats = CorpusStats {
        files: files.len(),
        holdout_per_10k: opts.holdout_per_10k,
        seed: opts.seed,
        include_song: opts.include_song,
        include_ci: opts.include_ci,
        ..Default::default()
    };
    let mut seen = HashSet::new();
    let (mut train, mut eval) = (String::new(), String::new());
    // Held out by a seeded hash of the poem's text, so a poem keeps its side.
    let mut place = |stats: &mut CorpusStats, line: &str, body: &str| {
        if split_hash(opts.seed, body) % 10_000 < opts.holdout_per_10k {
            stats.eval_poems += 1;
            eval.push_str(line);
        } else {
            stats.train_poems += 1;
            train.push_str(line);
        }
    };
    for path in &files {
        for poem in read_poems(path)? {
            stats.poems_read += 1;
            let Some(paragraphs) = poem.get("paragraphs").and_then(Value::as_array) else {
                continue;
            };
            let raw: String = paragraphs.iter().filter_map(Value::as_str).collect();
            let body = clean(&raw);
            if body.chars().any(|c| MISSING.contains(&c)) {
                stats.dropped_missing_characters += 1;
                continue;
            }
            let Some(form) = regular_form(&body) else {
                stats.dropped_not_regular += 1;
                continue;
            };
            if !seen.insert(body.clone()) {
                stats.dropped_duplicates += 1;
                continue;
            }
            stats.kept += 1;
            *stats.by_form.entry(form.to_string()).or_insert(0) += 1;
            let line = format!("{}{}\n", form.tag().unwrap_or(""), body);
            place(&mut stats, &line, &body);
        }
    }
    std::fs::create_dir_all(&opts.out).map_err(|source| CorpusError::Io {
        path: opts.out.clone(),
        source,
    })?;
    let write = |name: &str, data: &str| -> Result<(), CorpusError> {
        let p = opts.out.join(name);
        std::fs::write(&p, data).map_err(|source| CorpusError::Io { path: p, source })
    };
    if opts.include_ci {
        for line in ci_lines(opts, &mut stats, &mut seen)? {
            let body = super::vocab::strip_tag(line.trim_end()).1.to_string();
            place(&mut stats, &line, &body);
        }
    }
    write("train.txt", &train)?;
    write("eval.txt", &eval)?;
    let json = serde_json::to_string_pretty(&stats).unwrap_or_default();
    write("corpus.json", &json)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_notes_and_spaces() {
        assert_eq!(
            clean("床前明月光（一作看月光），疑是 地上霜。"),
            "床前明月光，疑是地上霜。"
        );
        assert_eq!(clean("春眠[一作眠]不覺曉，"), "春眠不覺曉，");
    }

    #[test]
    fn prepares_a_small_corpus_with_split_and_stats() {
        let src = tempfile::tempdir().unwrap();
        let dist = src.path().join("dist/quantangshi");
        std::fs::create_dir_all(&dist).unwrap();
        let poems = serde_json::json!([
            {"paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]},
            {"paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]},
            {"paragraphs": ["朝辭白帝彩雲間，千里江陵一日還。", "兩岸猿聲啼不住，輕舟已過萬重山。"]},
            {"paragraphs": ["春眠不覺□，處處聞啼鳥。", "夜來風雨聲，花落知多少。"]},
            {"paragraphs": ["君不見黃河之水天上來，奔流到海不復回。"]}
        ]);
        std::fs::write(dist.join("poet.tang.0.json"), poems.to_string()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let opts = CorpusOptions {
            source: src.path().into(),
            out: out.path().into(),
            include_song: false,
            holdout_per_10k: 0,
            seed: 7,
            include_ci: false,
            s2t: None,
        };
        let stats = prepare_corpus(&opts).unwrap();
        assert_eq!(stats.poems_read, 5);
        assert_eq!(stats.kept, 2);
        assert_eq!(stats.dropped_duplicates, 1);
        assert_eq!(stats.dropped_missing_characters, 1);
        assert_eq!(stats.dropped_not_regular, 1);
        let train = std::fs::read_to_string(out.path().join("train.txt")).unwrap();
        assert!(train
            .lines()
            .any(|l| l == "[WUJUE]床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。"));
        assert!(train.lines().any(|l| l.starts_with("[QIJUE]朝辭")));
        // Everything held out at 100%.
        let opts = CorpusOptions {
            holdout_per_10k: 10_000,
            ..opts
        };
        let stats = prepare_corpus(&opts).unwrap();
        assert_eq!((stats.train_poems, stats.eval_poems), (0, 2));
    }

    #[test]
    fn ci_in_their_tunes_pattern_become_tagged_traditional_lines() {
        let src = tempfile::tempdir().unwrap();
        let tang = src.path().join("dist/quantangshi");
        let songci = src.path().join("dist/songci");
        std::fs::create_dir_all(&tang).unwrap();
        std::fs::create_dir_all(&songci).unwrap();
        std::fs::write(tang.join("poet.tang.0.json"), "[]").unwrap();
        let ci = serde_json::json!([
            // 浣溪沙: 7。7。7。7，7。7。 (？ counts as a full stop)
            {"rhythmic": "浣溪沙", "paragraphs": ["一曲新词酒一杯。去年天气旧亭台。夕阳西下几时回？", "无可奈何花落去，似曾相识燕归来。小园香径独徘徊。"]},
            {"rhythmic": "浣溪沙", "paragraphs": ["一曲新词酒一杯。去年天气旧亭台。"]},
            {"rhythmic": "没有这个词牌", "paragraphs": ["一曲新词酒一杯。"]}
        ]);
        std::fs::write(songci.join("ci.song.0.json"), ci.to_string()).unwrap();
        // The model's table maps what OpenCC leaves: its 园 -> 苑 never applies
        // (OpenCC has made it 園 first) and its 園 -> 薗 does, after the conversion.
        let table = src.path().join("s2t.tsv");
        std::fs::write(&table, "园\t苑\n園\t薗\n").unwrap();
        let out = tempfile::tempdir().unwrap();
        let stats = prepare_corpus(&CorpusOptions {
            source: src.path().into(),
            out: out.path().into(),
            include_song: false,
            holdout_per_10k: 0,
            seed: 7,
            include_ci: true,
            s2t: Some(table),
        })
        .unwrap();
        assert_eq!(stats.kept, 1);
        assert_eq!(stats.dropped_ci_off_pattern, 1);
        assert_eq!(stats.dropped_ci_unknown_tune, 1);
        assert_eq!(stats.by_form.get("ci:浣溪沙"), Some(&1));
        assert_eq!(stats.ci_converted_to_traditional, 2);
        let train = std::fs::read_to_string(out.path().join("train.txt")).unwrap();
        assert_eq!(
            train.trim_end(),
            "[CI:浣溪沙]一曲新詞酒一杯。去年天氣舊亭臺。夕陽西下幾時回。無可奈何花落去，似曾相識燕歸來。小薗香徑獨徘徊。"
        );
        // The tune's tag becomes a vocabulary token.
        let vocab = crate::train::vocab::CharVocab::build(&train, 1);
        assert!(vocab.id("[CI:浣溪沙]").is_some());
    }
}
