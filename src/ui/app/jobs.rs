//! Jobs sent to the engine: Generate, Re-run, Keep…, Stop and Release.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

impl VersifierApp {
    pub(super) fn form(&self) -> PoemForm {
        match self.form_choice {
            FormChoice::Free => PoemForm::Free,
            FormChoice::WuJue => PoemForm::WuJue,
            FormChoice::QiJue => PoemForm::QiJue,
            FormChoice::WuLv => PoemForm::WuLv,
            FormChoice::QiLv => PoemForm::QiLv,
            FormChoice::Acrostic => PoemForm::Acrostic(
                self.acrostic_heads
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect(),
            ),
            FormChoice::Ci => PoemForm::Ci(self.ci_tune.clone()),
        }
    }

    /// Shows `form` in the form picker (with its heads or tune).
    /// Shows `form` in the form picker (its heads or tune too).
    pub fn choose_form(&mut self, form: &PoemForm) {
        self.form_choice = FormChoice::of(form);
        if let PoemForm::Acrostic(h) = form {
            self.acrostic_heads = h.iter().collect();
        }
        if let PoemForm::Ci(tune) = form {
            self.ci_tune = tune.clone();
        }
    }

    /// Keeps the first `lines` lines of `record`'s poem as the prompt (where
    /// the user may edit them) and writes the rest again in its form, with
    /// its theme.
    pub fn keep_lines(&mut self, record: &PoemRecord, lines: usize) {
        self.prompt = super::super::keep_lines::kept_text(&record.text, lines);
        self.choose_form(&record.form);
        self.settings.poem_theme = record.verse.keywords.join(" ");
        self.generate();
    }

    pub(super) fn send(&mut self, cmd: Command) {
        if let Err(e) = self.engine.send(cmd) {
            self.error = Some((ErrorKind::QueueFull, e.to_string()));
        }
    }

    /// Starts a generation with the current settings.
    pub fn generate(&mut self) {
        let form = self.form();
        if let PoemForm::Acrostic(h) = &form {
            let typed = format!("acrostic:{}", h.iter().collect::<String>());
            if let Err(e) = typed.parse::<PoemForm>() {
                self.error = Some((ErrorKind::BadRequest, e.to_string()));
                return;
            }
        }
        if !self.settings.lock_seed {
            self.settings.sampling.seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000);
        }
        let (prompt, sampling, variations) = (
            self.prompt.trim().to_string(),
            self.settings.sampling.clone(),
            self.settings.variations.clamp(1, 8),
        );
        let theme = match crate::poetry::keywords::parse_theme(&self.settings.poem_theme) {
            Ok(theme) => theme,
            Err(e) => {
                self.error = Some((
                    ErrorKind::BadRequest,
                    format!("invalid setting `keywords`: {e}"),
                ));
                return;
            }
        };
        let verse = crate::poetry::VerseRules {
            keywords: theme.words,
            ..self.settings.verse.clone()
        };
        self.start_job(prompt, form, sampling, variations, verse);
    }

    /// Writes the poem of `record` again: its prompt, form, own seed and
    /// settings, one variation, without changing the user's settings.
    pub fn rerun(&mut self, record: &PoemRecord) {
        self.start_job(
            record.prompt.clone(),
            record.form.clone(),
            record.sampling.clone(),
            1,
            record.verse_rules(),
        );
    }

    /// A card's Re-run: the card's poem is written again in its own place;
    /// the other cards stay.
    pub fn rerun_card(&mut self, card: usize, record: &PoemRecord) {
        if card >= self.cards.len() {
            return self.rerun(record);
        }
        let cards = self.cards.clone();
        self.rerun(record);
        // The job's one variation writes card `card`; the others come back.
        let fresh = std::mem::replace(&mut self.cards, cards);
        if let Some(c) = fresh.into_iter().next() {
            self.cards[card] = c;
        }
        self.rewriting = Some(card);
    }

    pub(super) fn start_job(
        &mut self,
        prompt: String,
        form: PoemForm,
        sampling: crate::generate::SamplingParams,
        variations: usize,
        verse: crate::poetry::VerseRules,
    ) {
        let id = self.engine.next_request_id();
        let echoed = crate::generate::echoed_prompt(&prompt, &form);
        let fresh = vec![
            Card {
                prompt: echoed,
                ..Card::default()
            };
            variations
        ];
        self.rewriting = None;
        let old = std::mem::replace(&mut self.cards, fresh);
        if old.iter().any(|c| !c.text.is_empty()) {
            self.replaced_cards = Some(old);
        }
        self.current = Some(id);
        self.error = None;
        // The model that writes this form (a Re-run's may not be the one chosen now).
        self.refresh_stored_precision(&form);
        let spec = self.load_spec_for(&form);
        self.measure_precision_if_new(&spec, variations);
        let job = GenerateJob {
            id,
            spec,
            prompt: Prompt::Text(prompt),
            form,
            variations,
            max_new_tokens: self.settings.max_tokens.max(1),
            sampling,
            verse,
        };
        if let Some(s) = &self.sampler {
            s.mark(MarkerKind::Generate, "generate");
        }
        self.sent = Some(job.clone());
        self.send(Command::Generate(job));
    }

    /// Whether a job is being written.
    pub fn is_writing(&self) -> bool {
        self.current.is_some()
    }

    /// Stops the running generation (its text so far stays).
    pub fn stop(&mut self) {
        self.engine.cancel();
    }

    /// Frees the model and the device.
    pub fn release(&mut self) {
        if let Err(e) = self.engine.release() {
            self.error = Some((ErrorKind::QueueFull, e.to_string()));
        }
    }

    /// How long the last load took, ms.
    pub fn last_load_ms(&self) -> Option<f64> {
        self.last_load.as_ref().map(|l| l.load_ms)
    }
}
