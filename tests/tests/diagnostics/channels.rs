//! Channel axes (`f32[seq, chan]`): the front end unrolls them, so a channelled objective
//! must give exactly what the hand-unrolled one gives; channel reductions must match their
//! formulas; K = 1 GDPO must match verl's single-reward golden.

use rlobj_runtime::api::Objective;
use rlobj_runtime::backends::backend_by_name;
use rlobj_runtime::batch::HostTensor;
use rlobj_runtime::output::{report, Report, Shaped};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A small LCG so the batches are reproducible without a crate.
struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `rows` rows of ragged length in `[1, width]`, groups of 3 (the last one may be smaller),
/// `k` reward columns in `[-1, 1]`; returns the batch and the per-column rewards.
fn batch(
    seed: u64,
    rows: usize,
    width: usize,
    k: usize,
) -> (Vec<(String, HostTensor)>, Vec<Vec<f64>>) {
    let mut g = Lcg(seed);
    let mut mask = vec![0.0; rows * width];
    let mut logp = vec![0.0; rows * width];
    let mut old = vec![0.0; rows * width];
    for r in 0..rows {
        let len = 1 + (g.unit() * width as f64) as usize % width;
        for t in 0..width {
            mask[r * width + t] = if t < len { 1.0 } else { 0.0 };
            old[r * width + t] = -0.05 - 2.0 * g.unit();
            logp[r * width + t] = old[r * width + t] + 0.4 * (g.unit() - 0.5);
        }
    }
    let columns: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..rows).map(|_| 2.0 * g.unit() - 1.0).collect())
        .collect();
    let flat: Vec<f64> = (0..rows)
        .flat_map(|r| columns.iter().map(move |c| c[r]))
        .collect();
    let group: Vec<i64> = (0..rows as i64).map(|r| r / 3).collect();
    let bt = vec![rows, width];
    let tensors = vec![
        ("mask".to_string(), HostTensor::float(bt.clone(), mask)),
        ("logp".to_string(), HostTensor::float(bt.clone(), logp)),
        (
            "old_logp".to_string(),
            HostTensor::float(bt.clone(), old.clone()),
        ),
        ("ref_logp".to_string(), HostTensor::float(bt, old)),
        (
            "rewards".to_string(),
            HostTensor::float(vec![rows, k], flat),
        ),
        ("group".to_string(), HostTensor::int(vec![rows], group)),
    ];
    (tensors, columns)
}

fn run(obj: &mut Objective, tensors: &[(String, HostTensor)]) -> Report {
    let mut backend = backend_by_name("interp").expect("interp");
    let bound = obj
        .bind(&tensors.to_vec())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let res = obj.evaluate(backend.as_mut(), &bound).expect("evaluate");
    report(&res).expect("report")
}

fn flat(s: &Shaped) -> Vec<f64> {
    match s {
        Shaped::Scalar(x) => vec![*x],
        Shaped::Rows(v) => v.clone(),
        Shaped::Tokens(m) => m.iter().flatten().copied().collect(),
    }
}

fn output<'a>(rep: &'a Report, name: &str) -> &'a Shaped {
    &rep.outputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"))
        .1
}

fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        if a.is_nan() && b.is_nan() {
            continue;
        }
        assert!(
            (a - b).abs() <= 1e-12 + rel * b.abs(),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

/// GDPO written out by hand over three named components, as `objectives/gdpo.obj` was
/// before channel axes.
const GDPO_BY_HAND: &str = r#"use std::adv::{gdpo_component, gdpo_finish}
use std::ratio::ratio
use std::ppo::clipped_surrogate
use std::agg::agg

objective gdpo_by_hand {
    input logp: f32[tok] @grad
    input old_logp: f32[tok]
    input reward_0: f32[seq]
    input reward_1: f32[seq]
    input reward_2: f32[seq]
    input group: id[seq] as grp
    param weight_0: f32 = 1.0
    param weight_1: f32 = 1.0
    param weight_2: f32 = 1.0
    let a = weight_0 * gdpo_component(reward_0) + weight_1 * gdpo_component(reward_1) + weight_2 * gdpo_component(reward_2)
    let adv = gdpo_finish(a)
    loss = agg(clipped_surrogate(ratio(logp, old_logp), adv, 0.8, 1.2), mode: "token-mean")
    output advantages = adv
}
"#;

#[test]
fn gdpo_channels_equal_the_hand_unrolled_objective() {
    let mut chan = Objective::compile(&root().join("objectives/gdpo.obj")).expect("gdpo.obj");
    chan.set("weights", "1,0.5,2").expect("weights");
    let mut hand = Objective::compile_source("by_hand.obj", GDPO_BY_HAND).expect("by hand");
    for (k, w) in ["1", "0.5", "2"].iter().enumerate() {
        hand.set(&format!("weight_{k}"), w).expect("weight");
    }
    for seed in [1, 2, 3] {
        let (tensors, columns) = batch(seed, 10, 7, 3);
        let mut named: Vec<(String, HostTensor)> = tensors
            .iter()
            .filter(|(n, _)| n != "rewards")
            .cloned()
            .collect();
        for (k, c) in columns.iter().enumerate() {
            named.push((
                format!("reward_{k}"),
                HostTensor::float(vec![10], c.clone()),
            ));
        }
        let a = run(&mut chan, &tensors);
        let b = run(&mut hand, &named);
        let (la, lb) = (a.loss.expect("loss"), b.loss.expect("loss"));
        assert_close(&[la], &[lb], 1e-12, "loss");
        assert_close(
            &flat(&a.grads[0].1),
            &flat(&b.grads[0].1),
            1e-12,
            "grad logp",
        );
        let (oa, ob) = (output(&a, "advantages"), output(&b, "advantages"));
        assert_close(&flat(oa), &flat(ob), 1e-12, "advantages");
        // The weights matter: the equal-weight result differs.
        let mut equal = chan.clone();
        equal.set("weights", "1,1,1").expect("weights");
        let c = run(&mut equal, &tensors);
        assert!((c.loss.expect("loss") - la).abs() > 1e-9, "weights ignored");
    }
}

/// Every channel reduction against its formula on random [B, 3] rewards.
#[test]
fn channel_reductions_match_their_formulas() {
    let src = r#"objective red {
    const chan = 3
    input rewards: f32[seq, chan]
    param w: f32[chan] = 2.0
    output s = sum[chan](w * rewards)
    output m = mean[chan](rewards)
    output hi = max[chan](rewards)
    output lo = min[chan](rewards)
    output v0 = var[chan](rewards)
    output v1 = var[chan](rewards, ddof: 1)
    output sd = std[chan](rewards, ddof: 1)
    output lse = logsumexp[chan](rewards)
    output n = count[chan]() + 0 * sum[chan](rewards)
    output centred = sum[chan](rewards - mean[chan](rewards))
}
"#;
    let mut obj = Objective::compile_source("red.obj", src).expect("compile");
    let (mut tensors, columns) = batch(9, 6, 3, 3);
    tensors.retain(|(n, _)| n == "rewards");
    let rep = run(&mut obj, &tensors);
    let per_row = |f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
        (0..6)
            .map(|r| f(&columns.iter().map(|c| c[r]).collect::<Vec<_>>()))
            .collect()
    };
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let ss = |x: &[f64]| x.iter().map(|v| (v - mean(x)).powi(2)).sum::<f64>();
    let cases: Vec<(&str, Vec<f64>)> = vec![
        ("s", per_row(&|x| 2.0 * x.iter().sum::<f64>())),
        ("m", per_row(&mean)),
        (
            "hi",
            per_row(&|x| x.iter().copied().fold(f64::MIN, f64::max)),
        ),
        (
            "lo",
            per_row(&|x| x.iter().copied().fold(f64::MAX, f64::min)),
        ),
        ("v0", per_row(&|x| ss(x) / 3.0)),
        ("v1", per_row(&|x| ss(x) / 2.0)),
        ("sd", per_row(&|x| (ss(x) / 2.0).sqrt())),
        (
            "lse",
            per_row(&|x| x.iter().map(|v| v.exp()).sum::<f64>().ln()),
        ),
        ("n", per_row(&|_| 3.0)),
        ("centred", per_row(&|_| 0.0)),
    ];
    for (name, want) in cases {
        assert_close(&flat(output(&rep, name)), &want, 1e-12, name);
    }
}

/// WCO is the ensemble minimum, UWO mean − λ·(population) variance, both group-normalised.
#[test]
fn wco_uwo_rewards_follow_the_paper_formulas() {
    let path = root().join("objectives/wco_uwo.obj");
    let (tensors, columns) = batch(4, 9, 5, 4);
    for mode in ["wco", "uwo"] {
        let mut obj = Objective::compile(&path).expect("wco_uwo.obj");
        obj.set("mode", mode).expect("mode");
        obj.set("uwo_lambda", "0.3").expect("lambda");
        let rep = run(&mut obj, &tensors);
        let want: Vec<f64> = (0..9)
            .map(|r| {
                let x: Vec<f64> = columns.iter().map(|c| c[r]).collect();
                let m = x.iter().sum::<f64>() / 4.0;
                let var = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 4.0;
                match mode {
                    "wco" => x.iter().copied().fold(f64::MAX, f64::min),
                    _ => m - 0.3 * var,
                }
            })
            .collect();
        assert_close(&flat(output(&rep, "reward")), &want, 1e-12, mode);
        assert!(rep.loss.is_some_and(f64::is_finite));
    }
}

/// K = 1 GDPO is verl's single-reward fallback (golden `gdpo_fallback_single_reward`).
#[test]
fn gdpo_with_one_channel_matches_the_verl_golden() {
    let text = std::fs::read_to_string(root().join("tests/golden/verl.json")).expect("golden");
    let g: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mat = |v: &serde_json::Value| -> Vec<Vec<f64>> {
        v.as_array()
            .expect("matrix")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(f64::NAN))
                    .collect()
            })
            .collect()
    };
    let mask = mat(&g["inputs"]["response_mask"]);
    let rewards = mat(&g["inputs"]["token_level_rewards"]);
    let logp = mat(&g["inputs"]["log_prob"]);
    let old = mat(&g["inputs"]["old_log_prob"]);
    let want = mat(&g["advantages"]["gdpo_fallback_single_reward"]["advantages"]);
    let mut ids: Vec<String> = Vec::new();
    let group: Vec<i64> = g["meta"]["uid"]
        .as_array()
        .expect("uid")
        .iter()
        .map(|u| {
            let u = u.as_str().unwrap_or("").to_string();
            match ids.iter().position(|x| *x == u) {
                Some(i) => i as i64,
                None => {
                    ids.push(u);
                    ids.len() as i64 - 1
                }
            }
        })
        .collect();
    let (b, t) = (mask.len(), mask[0].len());
    // verl's outcome score: the row sum of the token rewards over valid tokens.
    let score: Vec<f64> = (0..b)
        .map(|r| {
            (0..t)
                .filter(|&j| mask[r][j] > 0.5)
                .map(|j| rewards[r][j])
                .sum()
        })
        .collect();
    let dense =
        |m: &[Vec<f64>]| HostTensor::float(vec![b, t], m.iter().flatten().copied().collect());
    let tensors = vec![
        ("mask".to_string(), dense(&mask)),
        ("logp".to_string(), dense(&logp)),
        ("old_logp".to_string(), dense(&old)),
        ("rewards".to_string(), HostTensor::float(vec![b, 1], score)),
        ("group".to_string(), HostTensor::int(vec![b], group)),
    ];
    let mut obj = Objective::compile(&root().join("objectives/gdpo.obj")).expect("gdpo.obj");
    let fitted = obj.fit_channels(&tensors).expect("fit");
    assert_eq!(fitted, vec![("chan".to_string(), 1)]);
    let rep = run(&mut obj, &tensors);
    let Shaped::Tokens(got) = output(&rep, "advantages") else {
        panic!("advantages are per token");
    };
    let mut compared = 0;
    for r in 0..b {
        for j in 0..t {
            if mask[r][j] > 0.5 {
                let (x, y) = (got[r][j], want[r][j]);
                assert!(
                    (x - y).abs() <= 1e-7 + 1e-5 * y.abs(),
                    "row {r} token {j}: {x} vs {y}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 0);
}

/// A channelled input with a default fills every channel when the batch lacks it, and a
/// `[B, T, K]` token input binds column k of every valid token.
#[test]
fn channel_defaults_and_token_channels_bind() {
    let src = r#"objective bind {
    const chan = 2
    input extra: f32[seq, chan] = 0.5
    input scores: f32[tok, chan]
    output e = sum[chan](extra)
    output d = min[chan](scores - mean[chan](scores))
    output first = max[chan](scores)
}
"#;
    let mut obj = Objective::compile_source("bind.obj", src).expect("compile");
    let (rows, width) = (2, 3);
    let mask = vec![1.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let scores: Vec<f64> = (0..rows * width * 2).map(|i| i as f64).collect();
    let tensors = vec![
        (
            "mask".to_string(),
            HostTensor::float(vec![rows, width], mask),
        ),
        (
            "scores".to_string(),
            HostTensor::float(vec![rows, width, 2], scores),
        ),
    ];
    let rep = run(&mut obj, &tensors);
    assert_close(&flat(output(&rep, "e")), &[1.0, 1.0], 1e-12, "default");
    let Shaped::Tokens(d) = output(&rep, "d") else {
        panic!("token output");
    };
    // Column 0 of token (r, t) is 2·(3r + t), column 1 that plus 1: centred, the smaller is −0.5.
    assert_eq!(d[0][0], -0.5);
    assert_eq!(d[1][0], -0.5);
    let Shaped::Tokens(hi) = output(&rep, "first") else {
        panic!("token output");
    };
    assert_eq!((hi[0][1], hi[1][0]), (3.0, 7.0));
}
