//! Unit tests of `generate/device_draw.rs`.

use super::*;
use crate::generate::TokenSampler;

fn settings(top_k: u32, top_p: f32, temperature: f32, penalty: f32) -> DrawSettings {
    DrawSettings {
        greedy: false,
        inv_temperature: 1.0 / temperature,
        top_k,
        top_p,
        penalty,
    }
}

fn row(settings: DrawSettings, draw: u32) -> DrawRow {
    DrawRow {
        settings,
        seed: 7,
        draw,
        active: true,
    }
}

/// How often each token is drawn in `n` draws (draw numbers 0..n).
fn frequencies(logits: &[f32], s: DrawSettings, seen: &[u32], allowed: &[u32], n: u32) -> Vec<f64> {
    let mut counts = vec![0usize; logits.len()];
    for d in 0..n {
        counts[draw_row(logits, &row(s, d), seen, allowed).unwrap() as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / f64::from(n)).collect()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // 20,000 draws: a frequency's standard error is at most 0.0036.
        assert!(
            (g - w).abs() < 0.015,
            "{what}: token {i} drawn {g}, want {w}"
        );
    }
}

#[test]
fn every_token_is_drawn_as_often_as_the_softmax_of_its_scaled_logit() {
    let logits = [1.0f32, 0.0, -1.0, 2.0, 0.5, -3.0];
    let v = logits.len();
    let got = frequencies(
        &logits,
        settings(0, NO_NUCLEUS, 0.7, 1.0),
        &[0],
        &all_allowed(v),
        20_000,
    );
    let z: Vec<f64> = logits.iter().map(|&l| f64::from(l) / 0.7).collect();
    assert_close(&got, &softmax(&z), "all tokens");
}

#[test]
fn top_k_and_the_nucleus_keep_the_ranks_the_host_sampler_keeps() {
    // Ids 3, 4, 1, 0, 5, 2 in rank order, probabilities 0.559, 0.251, 0.152, 0.017, 0.014, 0.007.
    let logits = [0.0f32, 2.2, -0.9, 3.5, 2.7, -0.2];
    let v = logits.len();
    let allowed = all_allowed(v);
    let p = softmax(&logits.iter().map(|&l| f64::from(l)).collect::<Vec<_>>());
    let renormalised = |ids: &[usize]| {
        let s: f64 = ids.iter().map(|&i| p[i]).sum();
        (0..v)
            .map(|i| if ids.contains(&i) { p[i] / s } else { 0.0 })
            .collect::<Vec<f64>>()
    };
    let top3 = frequencies(
        &logits,
        settings(3, NO_NUCLEUS, 1.0, 1.0),
        &[0],
        &allowed,
        20_000,
    );
    assert_close(&top3, &renormalised(&[3, 4, 1]), "top 3");
    // Ranks 0 and 1 hold 0.810: rank 2 starts past 0.75, so it is cut.
    let nucleus = frequencies(&logits, settings(5, 0.75, 1.0, 1.0), &[0], &allowed, 20_000);
    assert_close(&nucleus, &renormalised(&[3, 4]), "top 5, nucleus 0.75");
    let nucleus = frequencies(&logits, settings(5, 0.85, 1.0, 1.0), &[0], &allowed, 20_000);
    assert_close(&nucleus, &renormalised(&[3, 4, 1]), "top 5, nucleus 0.85");
}

#[test]
fn the_device_definition_draws_from_the_host_samplers_distribution() {
    // The app's defaults over a vocabulary of 300 with a spread of logits.
    let params = SamplingParams::default();
    let mut state = 11u64;
    let logits: Vec<f32> = (0..300)
        .map(|_| {
            state = mix64(state.wrapping_add(1));
            (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        })
        .collect();
    let context = [3u32, 17, 17, 250];
    let s = DrawSettings::of(&params, logits.len()).unwrap();
    let seen = bits_of(context, logits.len());
    let device = frequencies(&logits, s, &seen, &all_allowed(300), 20_000);
    let mut host = vec![0f64; 300];
    for seed in 0..20_000u64 {
        let p = SamplingParams {
            seed,
            ..params.clone()
        };
        let id = TokenSampler::new(&p, 0)
            .sample(logits.clone(), &context)
            .unwrap();
        host[id as usize] += 1.0 / 20_000.0;
    }
    let distance: f64 = device
        .iter()
        .zip(&host)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / 2.0;
    assert!(distance < 0.04, "total variation distance {distance}");
    assert!(
        host.iter().filter(|&&f| f > 0.0).count() > 20,
        "a spread draw"
    );
}

#[test]
fn ties_at_the_cut_keep_the_lower_ids_and_greedy_takes_the_lowest_best() {
    let logits = [1.0f32, 3.0, 2.0, 3.0, 2.0, 2.0];
    let allowed = all_allowed(6);
    let got = frequencies(
        &logits,
        settings(3, NO_NUCLEUS, 1.0, 1.0),
        &[0],
        &allowed,
        4000,
    );
    assert!(got[1] > 0.0 && got[3] > 0.0 && got[2] > 0.0, "{got:?}");
    assert_eq!((got[0], got[4], got[5]), (0.0, 0.0, 0.0), "{got:?}");
    let greedy = DrawSettings::of(&SamplingParams::greedy(), 6).unwrap();
    assert_eq!(draw_row(&logits, &row(greedy, 0), &[0], &allowed), Ok(1));
}

#[test]
fn the_penalty_masks_and_failures_act_as_on_the_host() {
    let logits = [2.0f32, 1.9, -1.0, f32::NAN];
    let mut allowed = bits_of([0, 1, 2], 4);
    let greedy = DrawSettings {
        penalty: 1.5,
        ..DrawSettings::of(&SamplingParams::greedy(), 4).unwrap()
    };
    // 2.0 / 1.5 < 1.9: the seen token loses; the NaN is masked out.
    assert_eq!(
        draw_row(&logits, &row(greedy, 0), &bits_of([0], 4), &allowed),
        Ok(1)
    );
    assert_eq!(draw_row(&logits, &row(greedy, 0), &[0], &allowed), Ok(0));
    let sampled = settings(2, NO_NUCLEUS, 1.0, 1.0);
    let only_2 = bits_of([2], 4);
    for d in 0..200 {
        assert_eq!(draw_row(&logits, &row(sampled, d), &[0], &only_2), Ok(2));
    }
    allowed = bits_of([], 4);
    assert_eq!(
        draw_row(&logits, &row(sampled, 0), &[0], &allowed),
        Err(DrawFailure::NoToken)
    );
    assert_eq!(
        draw_row(&logits, &row(sampled, 0), &[0], &all_allowed(4)),
        Err(DrawFailure::NonFinite)
    );
}

#[test]
fn settings_the_device_cannot_draw_say_which_and_why() {
    let nucleus_only = SamplingParams {
        top_k: 0,
        top_p: 0.9,
        ..SamplingParams::default()
    };
    assert!(DrawSettings::of(&nucleus_only, 100)
        .unwrap_err()
        .contains("top_p 0.9 without top_k"));
    let wide = SamplingParams {
        top_k: 300,
        top_p: 1.0,
        ..SamplingParams::default()
    };
    assert!(DrawSettings::of(&wide, 1000)
        .unwrap_err()
        .contains("top_k 300"));
    // A top k of the whole vocabulary is every token.
    assert_eq!(DrawSettings::of(&wide, 300).unwrap().top_k, 0);
    assert_eq!(
        DrawSettings::of(&SamplingParams::default(), 6000)
            .unwrap()
            .top_k,
        40
    );
}

#[test]
fn the_selftest_check_passes_on_the_cpu_and_counts_every_row() {
    let c = check_device_draws(&Device::Cpu).unwrap();
    assert!(c.passed, "{c:?}");
    assert_eq!((c.draws, c.greedy_draws), (2 * 16 * 8, 2 * 16 * 2), "{c:?}");
    assert_eq!(c.agreeing, c.draws);
}

#[test]
fn the_op_draws_each_active_row_as_the_reference_and_marks_it_seen() {
    let (batch, vocab) = (3, 70);
    let dev = Device::Cpu;
    let sampler = DeviceSampler::new(&dev, batch, vocab).unwrap();
    let s = DrawSettings::of(&SamplingParams::default(), vocab).unwrap();
    let rows: Vec<DrawRow> = (0..batch)
        .map(|r| DrawRow {
            settings: s,
            seed: 40 + r as u64,
            draw: 1,
            active: r != 1,
        })
        .collect();
    let contexts: [&[u32]; 3] = [&[1, 2], &[3], &[69, 0]];
    sampler.start(&rows, &contexts).unwrap();
    let logits: Vec<f32> = (0..batch * vocab)
        .map(|i| ((i * 37) % 23) as f32 * 0.2)
        .collect();
    let t = Tensor::from_vec(logits.clone(), (batch, vocab), &dev).unwrap();
    let before = sampler.state.to_vec1::<u32>().unwrap();
    sampler.run(&t).unwrap();
    let ids = sampler.take_ids().unwrap();
    assert_eq!(ids[1], before[1], "an ended row is left alone");
    for r in [0, 2] {
        let seen = bits_of(contexts[r].iter().copied(), vocab);
        let want = draw_row(
            &logits[r * vocab..(r + 1) * vocab],
            &rows[r],
            &seen,
            &all_allowed(vocab),
        );
        assert_eq!(drawn(ids[r]), want, "row {r}");
    }
    // The second draw sees the first token: its penalty applies.
    let state = sampler.state.to_vec1::<u32>().unwrap();
    let lay = StateLayout::new(batch, vocab);
    let draw_of = |r: usize| state[lay.headers() + r * HEADER + 2];
    assert_eq!(
        (draw_of(0), draw_of(1), draw_of(2)),
        (2, 1, 2),
        "counted once per draw"
    );
    let seen0 = &state[lay.seen()..lay.seen() + lay.words];
    assert!(bit(seen0, ids[0] as usize) && bit(seen0, 1) && bit(seen0, 2));
    assert_eq!(
        seen0.iter().map(|w| w.count_ones()).sum::<u32>(),
        3 - u32::from(ids[0] < 3)
    );
    // A mask of the wrong size is refused, naming what is wrong.
    let e = sampler.prepare(&rows, Some(vec![0; 5])).unwrap_err();
    assert!(e.to_string().contains("words of allowed tokens"), "{e}");
}
