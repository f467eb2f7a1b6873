//! The poem history: one record per poem, and its exports (Markdown, text).

use serde::{Deserialize, Serialize};

use crate::generate::SamplingParams;
use crate::poetry::forms::{layout, PoemForm};

/// One saved poem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoemRecord {
    pub prompt: String,
    pub form: PoemForm,
    pub text: String,
    pub model: String,
    /// The settings of this very poem: `sampling.seed` is its own seed (the
    /// batch's seed plus its variation), so a re-run writes it again.
    pub sampling: SamplingParams,
    pub unix_ms: u64,
    /// Stopped (Esc) or cut before the poem ended.
    #[serde(default)]
    pub unfinished: bool,
    /// Rhyme and tones it was written with.
    #[serde(default)]
    pub verse: crate::poetry::VerseRules,
    /// Whether the rules held a 詞 to its tune's rhymes and 詞譜
    /// ([`crate::poetry::VerseRules::ci_rules`], which `verse` does not
    /// save): false in records written before they could.
    #[serde(default)]
    pub ci_rules: bool,
}

/// `unix_ms` as local date and time, `2026-12-01 14:05` (UTC where the
/// local offset cannot be read).
pub fn date_text(unix_ms: u64) -> String {
    use time::{
        format_description::FormatItem, macros::format_description, OffsetDateTime, UtcOffset,
    };
    const FORMAT: &[FormatItem<'static>] =
        format_description!("[year]-[month]-[day] [hour]:[minute]");
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000) else {
        return String::new();
    };
    let offset = UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC);
    t.to_offset(offset).format(FORMAT).unwrap_or_default()
}

/// The model's folder name, for lists.
pub fn model_name(model: &str) -> &str {
    std::path::Path::new(model)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(model)
}

impl PoemRecord {
    /// Whether `other` is this poem written again: the same text, form,
    /// model, settings and rules (the time may differ).
    pub fn same_poem(&self, other: &PoemRecord) -> bool {
        self.text == other.text
            && self.form == other.form
            && self.model == other.model
            && self.sampling == other.sampling
            && self.unfinished == other.unfinished
            && self.verse_rules() == other.verse_rules()
    }

    /// The verse rules a re-run of this poem writes with: the ones it was
    /// written with.
    pub fn verse_rules(&self) -> crate::poetry::VerseRules {
        crate::poetry::VerseRules {
            ci_rules: self.ci_rules,
            ..self.verse.clone()
        }
    }

    /// One poem as a document: the poem, then its form, model, seed and date
    /// (Markdown or plain text).
    pub fn document(&self, markdown: bool) -> String {
        let details = format!(
            "{} · {} · seed {} · {}{}",
            self.form.label(),
            model_name(&self.model),
            self.sampling.seed,
            date_text(self.unix_ms),
            if self.unfinished {
                " · unfinished"
            } else {
                ""
            }
        );
        if markdown {
            export_text(std::slice::from_ref(self), true)
        } else {
            format!("{}\n\n{details}\n", layout(&self.text))
        }
    }

    /// Whether the poem or its prompt contains `query`, simplified or
    /// traditional alike (西楼 finds 西樓).
    pub fn matches(&self, query: &str) -> bool {
        let t = crate::poetry::rhyme::table();
        let q = t.traditional_text(query.trim());
        q.is_empty()
            || t.traditional_text(&self.text).contains(&q)
            || t.traditional_text(&self.prompt).contains(&q)
    }
}

/// The history as a Markdown document (a heading per poem, its lines, the
/// seed and model) or as plain text (the poems, a blank line between).
pub fn export_text(records: &[PoemRecord], markdown: bool) -> String {
    let mut out = String::new();
    for r in records {
        if markdown {
            out.push_str(&format!("## {} · {}\n\n", r.form.label(), r.prompt));
            for line in layout(&r.text).lines() {
                out.push_str(&format!("{line}  \n"));
            }
            out.push_str(&format!(
                "\n*seed {} · {} · {}{}*\n\n",
                r.sampling.seed,
                model_name(&r.model),
                date_text(r.unix_ms),
                if r.unfinished { " · unfinished" } else { "" }
            ));
        } else {
            out.push_str(&layout(&r.text));
            out.push_str("\n\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_before_ci_rules_re_runs_without_them_and_a_new_one_with() {
        let old = r#"{"prompt":"月","form":{"Ci":"菩薩蠻"},"text":"月","model":"m",
            "sampling":{"seed":3},"unix_ms":1,"verse":{"mode":"strict"}}"#;
        let record: PoemRecord = serde_json::from_str(old).unwrap();
        assert!(!record.ci_rules);
        assert!(!record.verse_rules().ci_rules);
        assert!(record.verse.ci_rules, "the rules alone default to on");
        let new = PoemRecord {
            ci_rules: true,
            ..record
        };
        let json = serde_json::to_string(&new).unwrap();
        let back: PoemRecord = serde_json::from_str(&json).unwrap();
        assert!(back.verse_rules().ci_rules, "{json}");
        // Settings saved with the rules never turn them off.
        assert!(!serde_json::to_string(&new.verse)
            .unwrap()
            .contains("ci_rules"));
    }

    #[test]
    fn history_search_finds_traditional_text_typed_in_simplified() {
        let record = PoemRecord {
            prompt: "月".into(),
            form: PoemForm::QiJue,
            text: "月滿西樓夜氣清，一尊聊與酒爲傾。".into(),
            model: "tang-poems".into(),
            sampling: SamplingParams::default(),
            unix_ms: 0,
            unfinished: false,
            verse: crate::poetry::VerseRules::default(),
            ci_rules: true,
        };
        for query in ["西楼", "西樓", "", "  月满 "] {
            assert!(record.matches(query), "{query}");
        }
        assert!(!record.matches("東樓"));
    }

    #[test]
    fn history_exports_as_markdown_with_seed_and_as_plain_poems() {
        let record = PoemRecord {
            prompt: "春".into(),
            form: PoemForm::WuJue,
            text: "春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。".into(),
            model: "tang-poems".into(),
            sampling: SamplingParams {
                seed: 42,
                ..SamplingParams::default()
            },
            unix_ms: 0,
            unfinished: false,
            verse: crate::poetry::VerseRules::default(),
            ci_rules: true,
        };
        let md = export_text(std::slice::from_ref(&record), true);
        assert!(md.starts_with("## "), "{md}");
        assert!(md.contains("春眠不覺曉，處處聞啼鳥。  \n"), "{md}");
        assert!(md.contains("*seed 42 · tang-poems · 1970-01-01"), "{md}");
        let doc = record.document(false);
        assert!(
            doc.contains("seed 42") && doc.starts_with("春眠不覺曉"),
            "{doc}"
        );
        let txt = export_text(&[record.clone(), record], false);
        assert_eq!(txt.matches("花落知多少。").count(), 2, "{txt}");
        assert!(!txt.contains("seed"), "{txt}");
    }
}
