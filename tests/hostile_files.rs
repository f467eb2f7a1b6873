//! Files built to attack the loader: pickles that name code to run, and
//! safetensors headers sized to exhaust memory. They are refused with a clear
//! error; nothing in them ever executes.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use common::{fixture, run_cli};

const MARKER: &str = "/tmp/versifier-hostile-pickle-ran";

#[test]
fn pickle_naming_os_system_or_exec_never_runs() {
    let _ = std::fs::remove_file(MARKER);
    for name in ["os-system.bin", "builtins-exec.bin"] {
        let path = fixture("hostile-pickle").join(name);
        let out = run_cli(&[
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--prompt-ids",
            "1",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            err.contains(name),
            "{name}: the error names the file: {err}"
        );
        assert!(
            !std::path::Path::new(MARKER).exists(),
            "{name}: code from the pickle ran"
        );
    }
}

#[test]
fn safetensors_header_over_the_limit_is_refused_before_reading_it() {
    let d = common::scratch_copy("hf-safetensors");
    let p = d.path().join("model.safetensors");
    // A sparse file really as large as its header claims (200 MB), so only the limit stops it.
    let claimed: u64 = 200 * 1024 * 1024;
    let mut bytes = claimed.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{");
    std::fs::write(&p, bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(8 + claimed)
        .unwrap();
    let out = run_cli(&["info", "--model", d.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("model.safetensors") && err.contains("limit"),
        "{err}"
    );
}

#[test]
fn header_with_a_hundred_thousand_entries_is_handled() {
    // A 100k-entry table whose tensors are all missing from the data section.
    let d = common::scratch_copy("hf-safetensors");
    let mut header = String::from("{");
    for i in 0..100_000 {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"t{i}\":{{\"dtype\":\"F32\",\"shape\":[1000],\"data_offsets\":[0,4000]}}"
        ));
    }
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(d.path().join("model.safetensors"), bytes).unwrap();
    let out = run_cli(&[
        "generate",
        "--model",
        d.path().to_str().unwrap(),
        "--prompt-ids",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("model.safetensors") && err.contains("data section"),
        "{err}"
    );
}

#[test]
fn weights_file_replaced_or_truncated_after_load_does_not_affect_the_model() {
    use std::time::Duration;
    use versifier::engine::*;
    // Weights are read into owned memory; the file is not kept open or mapped.
    let d = common::scratch_copy("hf-safetensors");
    let engine = Engine::spawn(EngineOptions {
        idle_timeout: None,
        ..EngineOptions::default()
    })
    .unwrap();
    let spec = LoadSpec {
        model: d.path().to_path_buf(),
        device: DeviceChoice::Cpu,
        precision: Precision::F32,
    };
    let job = |id| {
        Command::Generate(GenerateJob {
            verse: versifier::poetry::VerseRules::default(),
            id,
            spec: spec.clone(),
            prompt: Prompt::Text("月".into()),
            form: Default::default(),
            variations: 1,
            max_new_tokens: 8,
            sampling: versifier::generate::SamplingParams::greedy(),
        })
    };
    let done = |engine: &Engine| loop {
        match engine
            .recv_timeout(Duration::from_secs(60))
            .expect("an answer")
        {
            Event::Done { generation, .. } => return generation.variations[0].ids.clone(),
            Event::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    };
    engine.send(job(engine.next_request_id())).unwrap();
    let first = done(&engine);
    let p = d.path().join("model.safetensors");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(16)
        .unwrap();
    std::fs::write(&p, b"replaced by something else").unwrap();
    engine.send(job(engine.next_request_id())).unwrap();
    assert_eq!(done(&engine), first, "the loaded model is unchanged");
}

#[test]
fn weights_file_truncated_during_load_is_an_error_naming_the_tensor_not_a_crash() {
    use candle_core::{DType, Device};
    use std::sync::atomic::{AtomicBool, Ordering};
    // Truncate the file from the progress callback, after the first tensor is
    // read and before the next: the point where a memory map would SIGBUS.
    let d = common::scratch_copy("hf-safetensors");
    let weights = d.path().join("model.safetensors");
    let cut = weights.clone();
    let done = AtomicBool::new(false);
    let progress: versifier::model::LoadProgress = Box::new(move |_share| {
        if !done.swap(true, Ordering::SeqCst) {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&cut)
                .and_then(|f| f.set_len(64))
                .expect("truncate the weights file");
        }
    });
    let err = match versifier::model::load_model_with_progress(
        d.path(),
        &Device::Cpu,
        DType::F32,
        Some(progress),
    ) {
        Ok(_) => panic!("a model loaded from a file cut to 64 bytes"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("truncated while loading"), "{err}");
    assert!(err.contains("tensor `"), "{err}");
}
