//! The memory panel and the message strip: their views and actions.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

impl VersifierApp {
    /// The message strip and, for a refused load, the options that fit.
    pub(super) fn messages(&mut self, ui: &mut egui::Ui) {
        let view = super::super::messages::MessagesView {
            error: self.error.as_ref(),
            notices: &self.notices,
        };
        let actions = super::super::messages::show(ui, &view);
        if matches!(
            self.error.as_ref().map(|e| e.0),
            Some(ErrorKind::OutOfMemory | ErrorKind::DoesNotFit)
        ) {
            ui.horizontal_wrapped(|ui| self.fit_options(ui));
        }
        for action in actions {
            match action {
                super::super::messages::MessageAction::DismissError => self.error = None,
                super::super::messages::MessageAction::DismissNotice(n) => {
                    self.notices.retain(|x| x != &n);
                }
                super::super::messages::MessageAction::ClearNotices => self.notices.clear(),
            }
        }
    }

    /// Yield mode: releases an idle model when other programs squeeze the GPU,
    /// saying why in the timeline and a notice.
    pub(super) fn apply_yield_mode(&mut self) {
        let Some(keep_free) = self.settings.yield_below_mib else {
            return;
        };
        let latest = self.latest_memory();
        let Some(why) = super::super::yield_mode::yield_reason(
            &self.state,
            self.settings.device,
            latest.as_ref(),
            keep_free,
        ) else {
            return;
        };
        self.mark(MarkerKind::Release, "yield".into());
        self.release();
        // Until the engine says Releasing, do not ask again.
        self.state = EngineState::Releasing;
        self.notices.push(why);
    }

    /// What the memory panel draws, borrowed from the app's state.
    pub(super) fn meter_view(&mut self) -> MeterView<'_> {
        let generating = matches!(self.state, EngineState::Generating);
        let kv_estimate_bytes = if generating {
            // The cache holds the prompt and the tokens asked for, not the
            // whole context: scale the full-context figure down to that.
            let (per_variation, _) = self.variation_budget();
            let n_positions = match &self.config_cache {
                Some((_, Some(cfg))) => cfg.n_positions.max(1) as u64,
                _ => 1,
            };
            let columns = (self.settings.max_tokens as u64 + 16).min(n_positions);
            per_variation.map(|p| p * columns / n_positions * self.cards.len() as u64)
        } else {
            None
        };
        MeterView {
            state: &self.state,
            device: self.settings.device,
            sampler: self.sampler.as_ref(),
            last_load: self.last_load.as_ref(),
            last_release: self.last_release.as_ref(),
            release_at_unix_ms: self.release_at_unix_ms,
            kv_estimate_bytes,
            compact: false,
            yield_below_mib: self.settings.yield_below_mib,
            kv_cache_bytes: self.kv_cache_bytes,
            idle_left: self.idle_left,
            pinned: self.pinned,
            idle_timeout_s: self.settings.idle_timeout_s,
        }
    }

    /// Carries out what the user did in the memory panel.
    pub fn apply_meter_action(&mut self, action: MeterAction) {
        match action {
            MeterAction::Release => self.release(),
            MeterAction::SetPinned(pinned) => {
                self.pinned = pinned;
                if let Err(e) = self.engine_send(Command::SetPinned(pinned)) {
                    self.notices.push(e);
                }
            }
            MeterAction::SetIdleTimeout(t) => {
                self.settings.idle_timeout_s = t;
                if let Err(e) =
                    self.engine_send(Command::SetIdleTimeout(t.map(Duration::from_secs)))
                {
                    self.notices.push(e);
                }
            }
            MeterAction::ExportTimeline => self.export_timeline(),
            MeterAction::SetYield(keep_free) => self.settings.yield_below_mib = keep_free,
        }
    }

    /// Folds or unfolds the memory panel, or releases from the folded line.
    pub(super) fn apply_fold_action(&mut self, action: super::super::meter_fold::FoldAction) {
        use super::super::meter_fold::FoldAction;
        match action {
            FoldAction::Fold => self.settings.meter_folded = true,
            FoldAction::Unfold => self.settings.meter_folded = false,
            FoldAction::Release => self.apply_meter_action(MeterAction::Release),
        }
    }
}
