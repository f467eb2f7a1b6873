//! The engine driven through its message API, shared by the engine tests: a
//! real engine with a manual clock, a hook run after each event it sends,
//! and bounded waits for events.
#![allow(dead_code)] // each test file uses some of these
#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::common::fixture;
use versifier::engine::*;
use versifier::generate::SamplingParams;

pub const WAIT: Duration = Duration::from_secs(60);
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// A test hook run on the engine thread after each event it sends.
pub type Hook = Box<dyn Fn(&EngineRemote, &ManualClock) + Send + Sync>;

pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    pub seen: Vec<Event>,
    pub hook: Arc<Mutex<Option<Hook>>>,
}

impl Harness {
    pub fn new(queue_capacity: usize) -> Self {
        let clock = ManualClock::default();
        let hook: Arc<Mutex<Option<Hook>>> = Arc::new(Mutex::new(None));
        let remote: Arc<OnceLock<EngineRemote>> = Arc::new(OnceLock::new());
        let (h, r, c) = (Arc::clone(&hook), Arc::clone(&remote), clock.clone());
        let waker: Waker = Arc::new(move || {
            if let (Some(remote), Ok(guard)) = (r.get(), h.lock()) {
                if let Some(f) = guard.as_ref() {
                    f(remote, &c);
                }
            }
        });
        let engine = Engine::spawn(EngineOptions {
            idle_timeout: Some(TIMEOUT),
            queue_capacity,
            clock: Arc::new(clock.clone()),
            waker: Some(waker),
            memory_budget: None,
            batch_window: Duration::ZERO,
        })
        .unwrap();
        let _ = remote.set(engine.remote());
        Self {
            engine,
            clock,
            seen: Vec::new(),
            hook,
        }
    }

    pub fn set_hook(&self, f: impl Fn(&EngineRemote, &ManualClock) + Send + Sync + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(f));
    }

    pub fn spec(name: &str) -> LoadSpec {
        LoadSpec {
            model: fixture(name),
            device: DeviceChoice::Cpu,
            precision: Precision::F32,
        }
    }

    pub fn job(&self, max_new_tokens: usize) -> GenerateJob {
        GenerateJob {
            verse: versifier::poetry::VerseRules::default(),
            id: self.engine.next_request_id(),
            spec: Self::spec("hf-safetensors"),
            prompt: Prompt::Text("月".into()),
            form: Default::default(),
            variations: 2,
            max_new_tokens,
            sampling: SamplingParams {
                seed: 1,
                ..SamplingParams::default()
            },
        }
    }

    /// Collects events until `pred` matches one (which is returned); panics after WAIT.
    pub fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        loop {
            let ev = self
                .engine
                .recv_timeout(WAIT)
                .unwrap_or_else(|| panic!("no {what} within {WAIT:?}; saw {:#?}", self.seen));
            self.seen.push(ev.clone());
            if pred(&ev) {
                return ev;
            }
        }
    }

    pub fn until_state(&mut self, want: EngineState) {
        self.until(
            &format!("{want:?}"),
            |e| matches!(e, Event::State(s) if *s == want),
        );
    }

    /// Waits for the last event of a load (the idle timer being armed), so a
    /// hook installed afterwards only sees the next command's events.
    pub fn until_settled(&mut self) {
        self.until("idle deadline", |e| {
            matches!(e, Event::IdleDeadline(Some(_)))
        });
    }

    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.seen.iter().filter(|e| pred(e)).count()
    }
}

pub fn is_loaded(e: &Event) -> bool {
    matches!(e, Event::Loaded(_))
}
pub fn is_released(e: &Event) -> bool {
    matches!(e, Event::Released(_))
}
pub fn is_done(e: &Event) -> bool {
    matches!(e, Event::Done { .. })
}
