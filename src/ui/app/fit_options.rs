//! What fits, offered in the message strip after a refused load.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

impl VersifierApp {
    /// Buttons for the remedies a refused or out-of-memory load allows.
    pub(super) fn fit_options(&mut self, ui: &mut egui::Ui) {
        use crate::device::fit::FitOption;
        let options = self.fit.as_ref().map(|f| f.options.clone());
        match options {
            Some(options) => {
                for o in options {
                    let label = match &o {
                        FitOption::Precision {
                            precision,
                            need_bytes,
                        } => {
                            format!("Use {precision} ({} MiB)", crate::mib(*need_bytes))
                        }
                        FitOption::Variations { max, need_bytes } => {
                            format!("{max} variations ({} MiB)", crate::mib(*need_bytes))
                        }
                        FitOption::Context {
                            max_tokens,
                            need_bytes,
                        } => {
                            format!("{max_tokens} tokens ({} MiB)", crate::mib(*need_bytes))
                        }
                        FitOption::Cpu { need_bytes } => {
                            format!("Run on the CPU ({} MiB of RAM)", crate::mib(*need_bytes))
                        }
                    };
                    if ui.button(label).clicked() {
                        let s = &mut self.settings;
                        match o {
                            FitOption::Precision { precision, .. } => s.precision = precision,
                            FitOption::Variations { max, .. } => s.variations = max,
                            FitOption::Context { max_tokens, .. } => {
                                s.max_tokens = s.max_tokens.min(max_tokens)
                            }
                            FitOption::Cpu { .. } => s.device = DeviceChoice::Cpu,
                        }
                        self.generate();
                    }
                }
            }
            None => {
                if ui.button("Retry in f16").clicked() {
                    self.settings.precision = Precision::F16;
                    self.generate();
                }
                if ui.button("Retry on CPU").clicked() {
                    self.settings.device = DeviceChoice::Cpu;
                    self.generate();
                }
            }
        }
    }
}
