//! The saved settings: every field has a default (old or partial files
//! load), and a loaded file is brought into range with a notice per field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceChoice, Precision, PrecisionSpeeds};
use crate::generate::SamplingParams;
use crate::poetry::forms::PoemForm;
use crate::poetry::VerseRules;

/// Saved settings. Every field has a default, so old or partial files load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The last model folder; `None` means the bundled model.
    pub model: Option<PathBuf>,
    pub recent_models: Vec<PathBuf>,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Idle unload after this many seconds; `None` = never.
    pub idle_timeout_s: Option<u64>,
    pub sampling: SamplingParams,
    pub lock_seed: bool,
    pub max_tokens: usize,
    pub variations: usize,
    pub form: PoemForm,
    /// Rhyme and tones for the regulated forms.
    pub verse: VerseRules,
    /// Precision "auto": on the CPU the checkpoint's own storage precision
    /// (f16 weights for an f16 checkpoint: exact and about twice as fast),
    /// else f32; on a GPU whichever of f16 and f32 decodes faster there, as
    /// measured once per GPU and model (`precision_speeds`), f16 until then.
    /// `precision` is used when this is off.
    pub precision_auto: bool,
    /// What Precision "auto" measured: per GPU (by name) and model folder.
    pub precision_speeds: Vec<MeasuredPrecision>,
    /// Poem cards show each character's tone mark and the verdict.
    pub show_marks: bool,
    /// Yield mode: release an idle model when the GPU has less than this
    /// many MiB free (`None`: off).
    pub yield_below_mib: Option<u64>,
    pub preload_on_focus: bool,
    pub vertical_layout: bool,
    pub window_size: Option<[f32; 2]>,
    /// "system", "light" or "dark".
    pub theme: String,
    /// The Theme field as typed: what the poems are about (words or a
    /// sentence, read by `poetry::keywords::parse_theme` when Generate is pressed).
    pub poem_theme: String,
    /// The prompt as it was left, there again at the next launch.
    pub poem_prompt: String,
    /// The memory panel folded to one line.
    pub meter_folded: bool,
}

/// One speed measurement of Precision "auto".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredPrecision {
    /// The GPU's name as the driver reports it ("NVIDIA H200").
    pub gpu: String,
    pub model: PathBuf,
    pub speeds: PrecisionSpeeds,
}

impl Settings {
    /// The precision measured fastest for `model` on the GPU named `gpu`.
    pub fn measured_precision(&self, gpu: &str, model: &std::path::Path) -> Option<Precision> {
        self.precision_speeds
            .iter()
            .rev()
            .find(|m| m.gpu == gpu && m.model == model)
            .map(|m| m.speeds.faster())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            recent_models: Vec::new(),
            device: DeviceChoice::Cpu,
            precision: Precision::F32,
            idle_timeout_s: Some(300),
            sampling: SamplingParams::default(),
            lock_seed: false,
            max_tokens: 80,
            variations: 1,
            form: PoemForm::QiJue,
            verse: VerseRules::default(),
            precision_auto: true,
            precision_speeds: Vec::new(),
            show_marks: false,
            yield_below_mib: None,
            preload_on_focus: true,
            vertical_layout: false,
            window_size: None,
            theme: "system".into(),
            poem_theme: String::new(),
            poem_prompt: String::new(),
            meter_folded: false,
        }
    }
}

impl Settings {
    /// The longest idle timeout a file may ask for (a week); longer is "never" in practice.
    pub const MAX_IDLE_TIMEOUT_S: u64 = 7 * 24 * 3600;
    /// How many recently opened models the picker remembers.
    pub const MAX_RECENT_MODELS: usize = 8;

    /// Brings every field into the range the window offers (a hand-edited or
    /// damaged file may say `temperature: -3` or `variations: 10000`), with one
    /// notice per field changed, naming the field, what it was and what it is now.
    pub fn sanitized(mut self) -> (Self, Vec<String>) {
        let mut notes = Vec::new();
        fn fix<T: PartialOrd + Copy + std::fmt::Debug>(
            notes: &mut Vec<String>,
            field: &str,
            value: &mut T,
            lo: T,
            hi: T,
            fallback: T,
        ) {
            use std::cmp::Ordering::{Greater, Less};
            // NaN compares as None: neither in range nor above/below, so it gets the default.
            let new = match ((*value).partial_cmp(&lo), (*value).partial_cmp(&hi)) {
                (Some(Less), _) => lo,
                (_, Some(Greater)) => hi,
                (Some(_), Some(_)) => return,
                _ => fallback,
            };
            notes.push(format!(
                "settings: `{field}` was {value:?}, now {new:?} (allowed {lo:?}..={hi:?})"
            ));
            *value = new;
        }
        let d = Settings::default();
        fix(
            &mut notes,
            "variations",
            &mut self.variations,
            1,
            8,
            d.variations,
        );
        fix(
            &mut notes,
            "max_tokens",
            &mut self.max_tokens,
            1,
            1024,
            d.max_tokens,
        );
        let sd = SamplingParams::default();
        let sp = &mut self.sampling;
        fix(
            &mut notes,
            "sampling.temperature",
            &mut sp.temperature,
            0.01,
            10.0,
            sd.temperature,
        );
        fix(
            &mut notes,
            "sampling.top_p",
            &mut sp.top_p,
            0.01,
            1.0,
            sd.top_p,
        );
        fix(
            &mut notes,
            "sampling.top_k",
            &mut sp.top_k,
            0,
            100_000,
            sd.top_k,
        );
        fix(
            &mut notes,
            "sampling.repetition_penalty",
            &mut sp.repetition_penalty,
            1.0,
            10.0,
            sd.repetition_penalty,
        );
        if let Some(t) = &mut self.idle_timeout_s {
            fix(
                &mut notes,
                "idle_timeout_s",
                t,
                1,
                Self::MAX_IDLE_TIMEOUT_S,
                300,
            );
        }
        if let Some([w, h]) = &mut self.window_size {
            fix(&mut notes, "window_size[0]", w, 320.0, 16384.0, 1100.0);
            fix(&mut notes, "window_size[1]", h, 240.0, 16384.0, 760.0);
        }
        if !["system", "light", "dark"].contains(&self.theme.as_str()) {
            notes.push(format!(
                "settings: `theme` was {:?}, now \"system\" (allowed: system, light, dark)",
                self.theme
            ));
            self.theme = "system".into();
        }
        self.recent_models.truncate(Self::MAX_RECENT_MODELS);
        (self, notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn precision_auto_remembers_the_faster_precision_per_gpu_and_model() {
        let speeds = |f32_tokens_per_s, f16_tokens_per_s| PrecisionSpeeds {
            device: DeviceChoice::Cuda(0),
            batch: 8,
            f32_tokens_per_s,
            f16_tokens_per_s,
        };
        let mut s = Settings::default();
        let (bundled, other) = (PathBuf::from("models/tang-poems"), PathBuf::from("/m/gpt2"));
        assert_eq!(s.measured_precision("NVIDIA H200", &bundled), None);
        s.precision_speeds.push(MeasuredPrecision {
            gpu: "NVIDIA H200".into(),
            model: bundled.clone(),
            speeds: speeds(2885.0, 3181.0),
        });
        s.precision_speeds.push(MeasuredPrecision {
            gpu: "NVIDIA H200".into(),
            model: other.clone(),
            speeds: speeds(700.0, 640.0),
        });
        assert_eq!(
            s.measured_precision("NVIDIA H200", &bundled),
            Some(Precision::F16)
        );
        assert_eq!(
            s.measured_precision("NVIDIA H200", &other),
            Some(Precision::F32)
        );
        assert_eq!(
            s.measured_precision("NVIDIA A100", &bundled),
            None,
            "per GPU"
        );
        // A tie keeps f16 (half the memory); the newest measurement wins.
        assert_eq!(speeds(500.0, 500.0).faster(), Precision::F16);
        s.precision_speeds.push(MeasuredPrecision {
            gpu: "NVIDIA H200".into(),
            model: bundled.clone(),
            speeds: speeds(3300.0, 3181.0),
        });
        assert_eq!(
            s.measured_precision("NVIDIA H200", &bundled),
            Some(Precision::F32)
        );
        // Kept across a restart.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        store.save_settings(&s).unwrap();
        assert_eq!(store.load_settings().0.precision_speeds, s.precision_speeds);
    }

    #[test]
    fn settings_round_trip_and_partial_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        let (s, note) = store.load_settings();
        assert_eq!(s, Settings::default());
        assert!(note.is_none());
        let s = Settings {
            variations: 4,
            form: PoemForm::WuLv,
            idle_timeout_s: None,
            ..Settings::default()
        };
        store.save_settings(&s).unwrap();
        assert_eq!(store.load_settings().0, s);
        std::fs::write(&store.settings_path, r#"{"variations": 3}"#).unwrap();
        let (s, note) = store.load_settings();
        assert_eq!(s.variations, 3);
        assert_eq!(s.max_tokens, Settings::default().max_tokens);
        assert!(note.is_none());
    }

    #[test]
    fn out_of_range_settings_are_brought_into_range_with_a_notice_per_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        std::fs::write(
            &store.settings_path,
            r#"{"variations": 10000, "max_tokens": 0, "idle_timeout_s": 18446744073709551615,
                "sampling": {"temperature": -3.0, "top_p": 7},
                "window_size": [1e30, 10], "theme": "neon"}"#,
        )
        .unwrap();
        let (s, note) = store.load_settings();
        let note = note.expect("a notice");
        assert_eq!(s.variations, 8);
        assert_eq!(s.max_tokens, 1);
        assert_eq!(s.idle_timeout_s, Some(Settings::MAX_IDLE_TIMEOUT_S));
        assert_eq!(s.sampling.temperature, 0.01);
        assert_eq!(s.sampling.top_p, 1.0);
        assert_eq!(s.window_size, Some([16384.0, 240.0]));
        assert_eq!(s.theme, "system");
        for field in [
            "variations",
            "max_tokens",
            "idle_timeout_s",
            "sampling.temperature",
            "sampling.top_p",
            "window_size[0]",
            "window_size[1]",
            "theme",
        ] {
            assert!(
                note.contains(&format!("`{field}`")),
                "{field} missing from {note}"
            );
        }
        // A file within range gives no notice and is unchanged.
        let (clean, fixes) = Settings::default().sanitized();
        assert!(fixes.is_empty(), "{fixes:?}");
        assert_eq!(clean, Settings::default());
    }
}
