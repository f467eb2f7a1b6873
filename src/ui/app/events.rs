//! The engine's events applied to the app's state, and what is saved.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

impl VersifierApp {
    /// Handles every event that has arrived; never blocks.
    pub fn process_events(&mut self) {
        self.poll_dialog();
        while let Some(ev) = self.engine.try_recv() {
            self.apply(ev);
        }
    }

    /// Waits up to `timeout` for one engine event and applies it (tests, headless use).
    pub fn process_one_event_blocking(&mut self, timeout: Duration) -> bool {
        match self.engine.recv_timeout(timeout) {
            Some(ev) => {
                self.apply(ev);
                true
            }
            None => false,
        }
    }

    pub(super) fn mark(&self, kind: MarkerKind, label: String) {
        if let Some(s) = &self.sampler {
            s.mark(kind, label);
        }
    }

    pub(super) fn apply(&mut self, ev: Event) {
        match ev {
            Event::State(s) => self.state = s,
            Event::Loaded(r) => {
                self.mark(
                    MarkerKind::Load,
                    format!("load {:.2} s", r.load_ms / 1000.0),
                );
                self.remember_model(&r.spec.model);
                // A saved GPU this machine lacks: the engine fell back to the
                // CPU and said so; the Device control shows where poems run.
                if r.device != r.spec.device {
                    self.settings.device = r.device;
                }
                self.last_load = Some(r);
            }
            Event::Token {
                request,
                variation,
                text,
            } if Some(request) == self.current => {
                if let Some(c) = self.cards.get_mut(self.rewriting.unwrap_or(0) + variation) {
                    c.text.push_str(&text);
                }
                if !text.is_empty() {
                    self.replaced_cards = None;
                }
            }
            Event::Token { .. } => {}
            Event::Done {
                request,
                generation,
            } if Some(request) == self.current => {
                self.poems_written(&generation);
            }
            Event::Done { .. } => {}
            Event::Released(r) if r.reason == crate::engine::ReleaseReason::ModelChange => {
                // A switch the user made by choosing a model or a 詞 tune:
                // said as a switch on the timeline, not as a release report.
                self.mark(MarkerKind::Load, "switch model".into());
                self.kv_cache_bytes = 0;
            }
            Event::Released(r) => {
                self.mark(MarkerKind::Release, release_summary(&r));
                self.last_release = Some(r);
                self.release_at_unix_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                self.kv_cache_bytes = 0;
            }
            Event::Error {
                kind,
                message,
                partial,
                fit,
                ..
            } => {
                self.failed(kind, message, partial, fit);
            }
            Event::Notice(n) => self.notices.push(n),
            Event::PrecisionsMeasured(speeds) => self.precisions_measured(speeds),
            Event::Pong(_) => {}
            Event::IdleDeadline(d) => self.idle_left = d.map(|d| (d, Instant::now())),
        }
    }

    /// The current job's poems are written: the cards take their final text,
    /// and each poem goes into history with its own seed.
    fn poems_written(&mut self, generation: &crate::generate::Generation) {
        self.kv_cache_bytes = generation.kv_cache_bytes;
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let sent = self.sent.take();
        self.replaced_cards = None;
        let first = self.rewriting.take().unwrap_or(0);
        for (i, (card, v)) in self
            .cards
            .iter_mut()
            .skip(first)
            .zip(&generation.variations)
            .enumerate()
        {
            card.text = v.text.clone();
            card.done = true;
            card.unfinished = v.stop != Some(crate::generate::StopReason::Stop);
            let Some(job) = &sent else { continue };
            if v.text.is_empty() {
                continue;
            }
            let prompt = match &job.prompt {
                Prompt::Text(t) => t.clone(),
                Prompt::Ids(_) => String::new(),
            };
            let record = PoemRecord {
                prompt,
                form: job.form.clone(),
                text: format!("{}{}", card.prompt, v.text),
                model: job.spec.model.display().to_string(),
                // Variation i was drawn with seed + i: its own seed.
                sampling: crate::generate::SamplingParams {
                    seed: job.sampling.seed.wrapping_add(i as u64),
                    ..job.sampling.clone()
                },
                unix_ms,
                unfinished: card.unfinished,
                verse: job.verse.clone(),
                ci_rules: job.verse.ci_rules,
            };
            card.record = Some(record.clone());
            // A poem written again (Re-run, same seed) is kept once.
            if !self.history.iter().any(|r| r.same_poem(&record)) {
                self.history.push(record);
            }
        }
        self.current = None;
        self.save_history();
    }

    /// The current job failed: what it wrote stays (or, with nothing written,
    /// the poems it replaced come back), and the message strip says why.
    fn failed(
        &mut self,
        kind: ErrorKind,
        message: String,
        partial: Option<crate::generate::Generation>,
        fit: Option<crate::device::fit::FitRefusal>,
    ) {
        self.fit = fit;
        self.mark(MarkerKind::Error, message.clone());
        let rewriting = self.rewriting.take();
        if let Some(p) = partial {
            let first = rewriting.unwrap_or(0);
            for (card, v) in self.cards.iter_mut().skip(first).zip(&p.variations) {
                card.text = v.text.clone();
            }
        }
        let before = self.replaced_cards.take();
        // Nothing written: the poems the run replaced come back (a card's
        // Re-run: that card's poem).
        if self.cards.iter().all(|c| c.text.is_empty()) {
            self.cards = before.unwrap_or_default();
        } else if let Some(i) =
            rewriting.filter(|i| self.cards.get(*i).is_some_and(|c| c.text.is_empty()))
        {
            if let Some(card) = before.and_then(|b| b.get(i).cloned()) {
                self.cards[i] = card;
            }
        } else {
            for c in self.cards.iter_mut().filter(|c| !c.done) {
                c.unfinished = true;
            }
        }
        self.sent = None;
        for c in &mut self.cards {
            c.done = true;
        }
        self.current = None;
        let message = match self.fall_back_from_failed_model(kind) {
            Some(back) => format!("{message}\n\nBack to {back}, the last model that loaded."),
            None => message,
        };
        self.error = Some((kind, message));
    }

    /// After a model that could not load was chosen: the model field goes
    /// back to the last model that did (this session's, else the one saved,
    /// else the bundled one), so the next Generate works. Its name, when it
    /// went back.
    fn fall_back_from_failed_model(&mut self, kind: ErrorKind) -> Option<String> {
        if kind != ErrorKind::BadModel {
            return None;
        }
        let good = self
            .last_load
            .as_ref()
            .map(|r| r.spec.model.clone())
            .or_else(|| self.settings.model.clone())
            .or_else(bundled_model)?;
        let chosen = self.chosen_model();
        if same_folder(&good, &chosen) || is_bundled(&chosen) && is_bundled(&good) {
            return None;
        }
        self.model_field = good.display().to_string();
        self.model_editing = false;
        Some(crate::store::model_name(&self.model_field).to_string())
    }

    pub(super) fn save_history(&mut self) {
        if let Some(store) = &self.store {
            if let Err(e) = store.save_history(&self.history) {
                self.notices
                    .push(format!("history not saved (kept in memory): {e}"));
            }
        }
    }

    /// Hands changed settings to the writer thread (which writes at most once a
    /// second and whatever is pending when the app closes); reports its errors.
    pub fn save_settings_if_changed(&mut self) {
        if let Some(w) = &self.settings_writer {
            for e in w.take_errors() {
                self.notices.push(format!("settings not saved: {e}"));
            }
            // The prompt is kept as it is typed.
            if self.settings.poem_prompt != self.prompt {
                self.settings.poem_prompt.clone_from(&self.prompt);
            }
            if self.settings != self.saved_settings {
                w.save(&self.settings);
                self.saved_settings = self.settings.clone();
            }
        }
    }

    /// Sends a command, returning a message when the queue refused it.
    pub fn engine_send(&self, cmd: Command) -> Result<(), String> {
        self.engine.send(cmd).map_err(|e| e.to_string())
    }
}
