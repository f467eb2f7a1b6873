//! Property tests of the engine: random sequences of loads (good and corrupt),
//! generations, cancels, releases, swaps and idle-clock jumps never panic,
//! never deadlock (the engine answers a barrier after every sequence), never
//! load twice without a release or swap in between, never say Ready without a
//! model, and end in a state that agrees with the events. The engine's memory
//! budget is drawn too (none, below the model, about one variation's worth,
//! ample), so fit refusals are mixed into the sequences.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use versifier::engine::*;
use versifier::generate::SamplingParams;

#[derive(Debug, Clone)]
enum Step {
    Prepare(usize),
    Generate(usize, usize),
    Cancel,
    Release,
    Swap(usize),
    IdleJump,
    Pin(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize).prop_map(Step::Prepare),
        ((0..3usize), (1..4usize)).prop_map(|(m, n)| Step::Generate(m, n)),
        Just(Step::Cancel),
        Just(Step::Release),
        (0..3usize).prop_map(Step::Swap),
        Just(Step::IdleJump),
        any::<bool>().prop_map(Step::Pin),
    ]
}

const TIMEOUT: Duration = Duration::from_secs(60);

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 50, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_engine_consistent(
        steps in prop::collection::vec(step(), 1..14),
        memory_budget in prop_oneof![Just(None), Just(Some(64u64 << 10)), Just(Some(220u64 << 10)), Just(Some(16u64 << 20))],
    ) {
        // Model 0 and 1 are good, model 2 is corrupt.
        let corrupt = common::scratch_copy("hf-safetensors");
        std::fs::write(corrupt.path().join("model.safetensors"), b"broken").unwrap();
        let models = [common::fixture("hf-safetensors"), common::fixture("pytorch-bin"), corrupt.path().to_path_buf()];
        let spec = |m: usize| LoadSpec { model: models[m].clone(), device: DeviceChoice::Cpu, precision: Precision::F32 };
        let clock = ManualClock::default();
        let engine = Engine::spawn(EngineOptions {
            idle_timeout: Some(TIMEOUT),
            queue_capacity: 64,
            clock: Arc::new(clock.clone()),
            waker: None,
            memory_budget,
            batch_window: Duration::ZERO,
        }).unwrap();
        for s in &steps {
            let r = match s {
                Step::Prepare(m) => engine.send(Command::Prepare(spec(*m))),
                Step::Generate(m, n) => engine.send(Command::Generate(GenerateJob {
                    verse: versifier::poetry::VerseRules::default(),
                    id: engine.next_request_id(),
                    spec: spec(*m),
                    prompt: Prompt::Text("月".into()),
                    form: Default::default(),
                    variations: *n,
                    max_new_tokens: 6,
                    sampling: SamplingParams::default(),
                })),
                Step::Cancel => { engine.cancel(); Ok(()) }
                Step::Release => engine.release(),
                Step::Swap(m) => engine.send(Command::Swap(spec(*m))),
                Step::IdleJump => { clock.advance(TIMEOUT * 2); engine.send(Command::Tick) }
                Step::Pin(p) => engine.send(Command::SetPinned(*p)),
            };
            prop_assert!(r.is_ok(), "queue of 64 refused a command: {r:?}");
        }
        // Barrier: the Pong for this ping means every command before it was handled.
        engine.send(Command::Ping(7)).unwrap();
        let mut events = Vec::new();
        loop {
            let ev = engine.recv_timeout(Duration::from_secs(60));
            prop_assert!(ev.is_some(), "no answer within 60 s after {steps:?} (budget {memory_budget:?}): {events:#?}");
            let ev = ev.unwrap();
            let done = matches!(ev, Event::Pong(7));
            events.push(ev);
            if done {
                break;
            }
        }
        while let Some(ev) = engine.try_recv() { events.push(ev); }
        let mut resident = false;
        let mut state = EngineState::Unloaded;
        for e in &events {
            match e {
                Event::Loaded(_) => resident = true,
                Event::Released(_) => resident = false,
                Event::State(s) => {
                    if matches!(s, EngineState::Ready | EngineState::Generating) {
                        prop_assert!(resident, "{s:?} without a model: {events:#?}");
                    }
                    state = *s;
                }
                Event::Error { kind, .. } => prop_assert!(*kind != ErrorKind::Internal, "internal error: {events:#?}"),
                _ => {}
            }
        }
        // The state the events end in agrees with whether a model is resident.
        prop_assert_eq!(resident, matches!(state, EngineState::Ready), "state {:?}, resident {}", state, resident);
    }
}
