//! Golden parity against verl (1dda039b) and TRL (f2cd5771): every case of
//! `tests/golden/verl.json` and `tests/golden/trl.json` is reproduced through the catalog's
//! `.obj` files with the library API and the interpreter. So are the five extra verl batches
//! in `tests/golden/verl_batches/` (ragged rows, fully masked rows, singleton groups; see the
//! README there): policy losses, advantages, KL penalties and the value loss; and the eight
//! TRL batches in `tests/golden/trl_batches/` (TRL's own `_compute_loss`): loss, gradient and
//! metrics.
//!
//! Tolerances: loss and metrics within 1e-5 relative (1e-7 absolute); gradients and
//! per-token outputs within 1e-5 relative (1e-7 absolute) at every valid token. The goldens
//! were produced in f32, the interpreter runs in f64.
//!
//! Documented deviations (see docs/catalog.md):
//! * `clip_cov__seed1234`: verl picks the detached tokens with `torch.randperm`. The `.obj`
//!   takes the choice as an input (`clip_cov_priority`); this test recovers the recorded
//!   choice from the golden gradient (the detached tokens are exactly the valid tokens whose
//!   golden gradient is 0) and checks loss, gradient and metrics with it.
//! * `luspo__sequence` (TRL, β = 0.04): TRL averages the KL term over padding positions too;
//!   rlobj never reads padding. Gradients at valid tokens are exact; the loss is compared with
//!   the golden loss minus TRL's padding term `β·Σ_pad k3·n_i/(B·T)`, computed here from the
//!   golden inputs.
//! * `optimal_token_baseline`: the per-(group, token position) baseline uses `colsum[grp]`;
//!   the batch carries verl's `sum_pi_squared` and no `rollout_is_weights` (as the golden).

use rlobj_runtime::api::Objective;
use rlobj_runtime::backends::backend_by_name;
use rlobj_runtime::batch::HostTensor;
use rlobj_runtime::output::{report, Report, Shaped};
use serde_json::Value;
use std::path::PathBuf;

const REL: f64 = 1e-5;
const ABS: f64 = 1e-7;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(name: &str) -> Value {
    let p = root().join("tests/golden").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mat(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a matrix, found {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .map(|r| r.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
                .unwrap_or_else(|| vec![r.as_f64().unwrap_or(f64::NAN)])
        })
        .collect()
}

fn vec1(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a vector, found {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, found {v}"))
}

fn dense(m: &[Vec<f64>]) -> HostTensor {
    let b = m.len();
    let t = m.first().map_or(0, Vec::len);
    HostTensor::float(vec![b, t], m.iter().flatten().copied().collect())
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= ABS + REL * want.abs()
}

/// One run's outcome, or why it could not run.
fn run(
    file: &str,
    tensors: &[(&str, HostTensor)],
    sets: &[(&str, String)],
) -> Result<Report, String> {
    run_on("interp", file, tensors, sets)
}

fn run_on(
    backend: &str,
    file: &str,
    tensors: &[(&str, HostTensor)],
    sets: &[(&str, String)],
) -> Result<Report, String> {
    let mut obj = Objective::compile(&root().join(file)).map_err(|e| format!("{file}: {e}"))?;
    let sets: Vec<(String, String)> = sets
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    obj.set_many(&sets).map_err(|e| format!("{file}: {e}"))?;
    let batch: Vec<(String, HostTensor)> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let bound = obj.bind(&batch).map_err(|e| format!("{file}: {e}"))?;
    let mut backend = backend_by_name(backend).map_err(|e| e.to_string())?;
    let res = obj
        .evaluate(backend.as_mut(), &bound)
        .map_err(|e| format!("{file}: {e}"))?;
    report(&res).map_err(|e| e.to_string())
}

fn tokens<'a>(list: &'a [(String, Shaped)], name: &str) -> Option<&'a Vec<Vec<f64>>> {
    list.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, s)| match s {
            Shaped::Tokens(t) => Some(t),
            _ => None,
        })
}

/// Compares a [B, T] result with the golden at valid tokens; returns a description of the
/// first mismatch.
fn cmp_tokens(
    got: Option<&Vec<Vec<f64>>>,
    want: &[Vec<f64>],
    mask: &[Vec<f64>],
    what: &str,
) -> Option<String> {
    cmp_tokens_tol(got, want, mask, what, REL, ABS)
}

/// [`cmp_tokens`] with relative and absolute tolerances (the f32 backends get a looser
/// relative one; the extra verl batches a looser absolute one).
fn cmp_tokens_tol(
    got: Option<&Vec<Vec<f64>>>,
    want: &[Vec<f64>],
    mask: &[Vec<f64>],
    what: &str,
    rel: f64,
    abs: f64,
) -> Option<String> {
    let Some(got) = got else {
        return Some(format!("{what}: missing"));
    };
    for (i, row) in want.iter().enumerate() {
        for (t, w) in row.iter().enumerate() {
            if mask[i][t] > 0.5 {
                let g = got
                    .get(i)
                    .and_then(|r| r.get(t))
                    .copied()
                    .unwrap_or(f64::NAN);
                let within = (g - w).abs() <= abs + rel * w.abs();
                if !within {
                    return Some(format!("{what}[{i},{t}] = {g} vs {w}"));
                }
            }
        }
    }
    None
}

fn metric(rep: &Report, name: &str) -> Option<f64> {
    rep.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

struct Tally {
    ok: Vec<String>,
    failed: Vec<String>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            ok: Vec::new(),
            failed: Vec::new(),
        }
    }
    fn case(&mut self, name: &str, problems: Vec<String>) {
        if problems.is_empty() {
            self.ok.push(name.to_string());
        } else {
            self.failed.push(format!("{name}: {}", problems.join("; ")));
        }
    }
    fn finish(self, what: &str) {
        eprintln!(
            "{what}: {}/{} cases pass",
            self.ok.len(),
            self.ok.len() + self.failed.len()
        );
        for f in &self.failed {
            eprintln!("  FAIL {f}");
        }
        assert!(
            self.failed.is_empty(),
            "{what}: {} of {} cases fail",
            self.failed.len(),
            self.ok.len() + self.failed.len()
        );
    }
}

struct Verl {
    g: Value,
    mask: Vec<Vec<f64>>,
    group: Vec<i64>,
    /// Absolute tolerance for per-token comparisons: [`ABS`] for the shared golden file;
    /// 1e-6 (the external parity script's) for the extra batches, whose random inputs include
    /// cancellation-dominated tokens (k3 of a log-ratio near 0, GAE where reward and value
    /// nearly cancel) where verl's f32 result is itself off by ~1e-7 of the O(1) operands.
    token_abs: f64,
}

impl Verl {
    /// The shared golden batch, `tests/golden/verl.json`.
    fn new() -> Self {
        Self::load("verl.json", ABS)
    }
    /// A golden file under `tests/golden/` (relative name).
    fn load(name: &str, token_abs: f64) -> Self {
        let g = load(name);
        let mask = mat(&g["inputs"]["response_mask"]);
        let mut ids: Vec<String> = Vec::new();
        let group = g["meta"]["uid"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|u| u.as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .map(|u| match ids.iter().position(|x| *x == u) {
                Some(i) => i as i64,
                None => {
                    ids.push(u);
                    ids.len() as i64 - 1
                }
            })
            .collect();
        Verl {
            g,
            mask,
            group,
            token_abs,
        }
    }
    fn input(&self, name: &str) -> Vec<Vec<f64>> {
        mat(&self.g["inputs"][name])
    }
    /// [`cmp_tokens`] on this file's mask with its per-token tolerance.
    fn cmp(&self, got: Option<&Vec<Vec<f64>>>, want: &[Vec<f64>], what: &str) -> Option<String> {
        cmp_tokens_tol(got, want, &self.mask, what, REL, self.token_abs)
    }
    /// The batch every verl case uses (the same tensors as `verl_parity.py`).
    fn batch(&self) -> Vec<(&'static str, HostTensor)> {
        let b = self.group.len();
        vec![
            ("logp", dense(&self.input("log_prob"))),
            ("old_logp", dense(&self.input("old_log_prob"))),
            ("ref_logp", dense(&self.input("ref_log_prob"))),
            ("advantages", dense(&self.input("advantages_tok"))),
            ("mask", dense(&self.mask)),
            ("group", HostTensor::int(vec![b], self.group.clone())),
            ("token_rewards", dense(&self.input("token_level_rewards"))),
            ("values", dense(&self.input("values"))),
            ("sum_pi_squared", dense(&self.input("sum_pi_squared"))),
            (
                "reward_baselines",
                HostTensor::float(vec![b], vec1(&self.g["inputs"]["reward_baselines"])),
            ),
        ]
    }
}

/// The `.json` file names in `tests/golden/<dir>`, sorted; at least `at_least` of them (so
/// that a lost file fails the test instead of shrinking it).
fn batch_files(dir: &str, at_least: usize) -> Vec<String> {
    let path = root().join("tests/golden").join(dir);
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(
        names.len() >= at_least,
        "expected {at_least} batch files in {}, found {}",
        path.display(),
        names.len()
    );
    names
}

/// The extra reference batches, `tests/golden/verl_batches/*.json` (see the README there):
/// verl's own outputs on ragged rows, fully masked rows and singleton groups. Each comes with
/// the prefix its case names get.
fn verl_batches() -> Vec<(String, Verl)> {
    batch_files("verl_batches", 5)
        .into_iter()
        .map(|n| {
            let v = Verl::load(&format!("verl_batches/{n}"), 1e-6);
            (format!("{}: ", n.trim_end_matches(".json")), v)
        })
        .collect()
}

fn fmt(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn verl_policy_losses() {
    let mut tally = Tally::new();
    check_policy_losses(&Verl::new(), "", &mut tally);
    for (prefix, v) in verl_batches() {
        check_policy_losses(&v, &prefix, &mut tally);
    }
    tally.finish("verl policy losses");
}

/// Every `policy_losses` case of one golden file, through `objectives/verl/<loss_mode>.obj`.
fn check_policy_losses(v: &Verl, prefix: &str, tally: &mut Tally) {
    let params: &[(&str, &[&str])] = &[
        (
            "vanilla",
            &[
                "clip_ratio_low",
                "clip_ratio_high",
                "clip_ratio_c",
                "loss_agg_mode",
            ],
        ),
        ("gspo", &["clip_ratio_low", "clip_ratio_high"]),
        ("sapo", &["tau_pos", "tau_neg"]),
        ("gpg", &["loss_agg_mode"]),
        ("geo_mean", &["clip_ratio_low", "clip_ratio_high"]),
        (
            "cispo",
            &["clip_ratio_low", "clip_ratio_high", "loss_agg_mode"],
        ),
        ("dro", &["dro_beta", "loss_agg_mode"]),
        (
            "dppo_tv",
            &[
                "clip_ratio_low",
                "clip_ratio_high",
                "clip_ratio_c",
                "loss_agg_mode",
            ],
        ),
        (
            "dppo_kl",
            &[
                "clip_ratio_low",
                "clip_ratio_high",
                "clip_ratio_c",
                "loss_agg_mode",
            ],
        ),
        ("kl_cov", &["kl_cov_ratio", "ppo_kl_coef", "loss_agg_mode"]),
        (
            "clip_cov",
            &[
                "clip_ratio_low",
                "clip_ratio_high",
                "clip_cov_ratio",
                "clip_cov_lb",
                "clip_cov_ub",
                "loss_agg_mode",
            ],
        ),
    ];
    let cases = v.g["policy_losses"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (case, c) in &cases {
        let name = &format!("{prefix}{case}");
        let mode = c["loss_mode"].as_str().unwrap_or("");
        let Some((_, keys)) = params.iter().find(|(m, _)| *m == mode) else {
            tally.case(name, vec![format!("no parity file for loss_mode {mode}")]);
            continue;
        };
        let mut cfg = c["config"].clone();
        cfg["loss_agg_mode"] = c["loss_agg_mode"].clone();
        let sets: Vec<(&str, String)> = keys
            .iter()
            .filter(|k| !cfg[**k].is_null())
            .map(|k| (*k, fmt(&cfg[*k])))
            .collect();
        let mut batch = v.batch();
        if c["rollout_is_weights"].as_bool() == Some(true) {
            batch.push(("rollout_is_weights", dense(&v.input("rollout_is_weights"))));
        }
        let want_grad = mat(&c["grad_log_prob"]);
        if mode == "clip_cov" {
            // The recorded random choice: valid tokens whose golden gradient is exactly 0.
            let prio: Vec<Vec<f64>> = want_grad
                .iter()
                .zip(&v.mask)
                .map(|(g, m)| {
                    g.iter()
                        .zip(m)
                        .map(|(g, m)| if *m > 0.5 && *g == 0.0 { 1.0 } else { 0.0 })
                        .collect()
                })
                .collect();
            batch.push(("clip_cov_priority", dense(&prio)));
        }
        let rep = match run(&format!("objectives/verl/{mode}.obj"), &batch, &sets) {
            Ok(r) => r,
            Err(e) => {
                tally.case(name, vec![e]);
                continue;
            }
        };
        let mut problems = Vec::new();
        let want = num(&c["loss"]);
        match rep.loss {
            Some(l) if close(l, want) => {}
            other => problems.push(format!("loss {other:?} vs {want}")),
        }
        if let Some(p) = v.cmp(tokens(&rep.grads, "logp"), &want_grad, "grad.logp") {
            problems.push(p);
        }
        for (k, mv) in c["metrics"].as_object().cloned().unwrap_or_default() {
            let short = k.rsplit('/').next().unwrap_or(&k).to_string();
            match metric(&rep, &short) {
                Some(m) if close(m, num(&mv)) => {}
                other => problems.push(format!("metric {short} {other:?} vs {mv}")),
            }
        }
        tally.case(name, problems);
    }
}

/// A golden advantage case: (case name, parity file, `--set` values).
type AdvCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn verl_advantages() {
    let mut tally = Tally::new();
    check_advantages(&Verl::new(), "", true, &mut tally);
    for (prefix, v) in verl_batches() {
        check_advantages(&v, &prefix, false, &mut tally);
    }
    tally.finish("verl advantages");
}

/// The `advantages` cases of one golden file. With `all_cases`, every case listed below must
/// be in the file and every case in the file must be listed; otherwise missing cases are
/// skipped (verl's `grpo_passk` refuses singleton groups, so a batch with one has none).
fn check_advantages(v: &Verl, prefix: &str, all_cases: bool, tally: &mut Tally) {
    // golden case → (parity file, --set values)
    let cases: &[AdvCase] = &[
        (
            "gae_g1_l0.95",
            "adv_gae",
            &[("gamma", "1.0"), ("lam", "0.95")],
        ),
        (
            "gae_g0.99_l0.9",
            "adv_gae",
            &[("gamma", "0.99"), ("lam", "0.9")],
        ),
        (
            "grpo_std",
            "adv_grpo",
            &[("norm_adv_by_std_in_grpo", "true")],
        ),
        (
            "grpo_nostd",
            "adv_grpo",
            &[("norm_adv_by_std_in_grpo", "false")],
        ),
        (
            "grpo_vectorized_std",
            "adv_grpo",
            &[("norm_adv_by_std_in_grpo", "true")],
        ),
        (
            "grpo_passk",
            "adv_grpo_passk",
            &[("norm_adv_by_std_in_grpo", "true")],
        ),
        ("rloo", "adv_rloo", &[]),
        ("rloo_vectorized", "adv_rloo", &[("vectorized", "true")]),
        ("opo", "adv_opo", &[]),
        (
            "reinforce_plus_plus_g1",
            "adv_reinforce_plus_plus",
            &[("gamma", "1.0")],
        ),
        (
            "reinforce_plus_plus_baseline",
            "adv_reinforce_plus_plus_baseline",
            &[],
        ),
        ("remax", "adv_remax", &[]),
        ("gpg", "adv_gpg", &[]),
        ("gdpo_fallback_single_reward", "adv_gdpo", &[]),
        ("optimal_token_baseline", "adv_optimal_token_baseline", &[]),
    ];
    let golden = v.g["advantages"].as_object().cloned().unwrap_or_default();
    for name in golden.keys() {
        if !cases.iter().any(|(n, _, _)| n == name) {
            tally.case(
                &format!("{prefix}{name}"),
                vec!["golden case not mapped to a parity file".into()],
            );
        }
    }
    for (case, file, sets) in cases {
        let name = &format!("{prefix}{case}");
        let Some(want) = golden.get(*case) else {
            if all_cases {
                tally.case(name, vec!["missing from the golden file".into()]);
            }
            continue;
        };
        let sets: Vec<(&str, String)> = sets.iter().map(|(k, x)| (*k, x.to_string())).collect();
        let rep = match run(&format!("objectives/verl/{file}.obj"), &v.batch(), &sets) {
            Ok(r) => r,
            Err(e) => {
                tally.case(name, vec![e]);
                continue;
            }
        };
        let mut problems = Vec::new();
        for out in ["advantages", "returns"] {
            if let Some(p) = v.cmp(tokens(&rep.outputs, out), &mat(&want[out]), out) {
                problems.push(p);
            }
        }
        tally.case(name, problems);
    }
}

/// verl's `compute_optimal_token_baseline_advantage` loop transcribed in f64 (sorted row
/// lengths for `handle_zero_tail`, as verl does), for the options the golden file does not
/// exercise: `rollout_is_weights` and `handle_zero_tail = false`.
fn otb_reference(v: &Verl, is_w: Option<&[Vec<f64>]>, zero_tail: bool) -> Vec<Vec<f64>> {
    let (r, old, spp, m) = (
        v.input("token_level_rewards"),
        v.input("old_log_prob"),
        v.input("sum_pi_squared"),
        &v.mask,
    );
    let (b, t) = (m.len(), m[0].len());
    let mut ret = vec![vec![0.0; t]; b];
    let mut big_w = vec![vec![0.0; t]; b];
    for i in 0..b {
        let mut acc = 0.0;
        for k in (0..t).rev() {
            acc += r[i][k] * m[i][k];
            ret[i][k] = acc;
        }
        let mut acc = 0.0;
        for k in 0..t {
            let mut w = 1.0 - 2.0 * old[i][k].exp() + spp[i][k];
            if let Some(is_w) = is_w {
                w *= is_w[i][k] * is_w[i][k];
            }
            acc += w * m[i][k];
            big_w[i][k] = acc;
        }
    }
    let mut base = vec![vec![0.0; t]; b];
    for g in 0..=v.group.iter().copied().max().unwrap_or(0) {
        let rows: Vec<usize> = (0..b).filter(|&i| v.group[i] == g).collect();
        if rows.len() < 2 {
            continue;
        }
        for k in 0..t {
            let num: f64 = rows
                .iter()
                .map(|&i| ret[i][k] * big_w[i][k] * m[i][k])
                .sum();
            let den: f64 = rows.iter().map(|&i| big_w[i][k] * m[i][k]).sum::<f64>() + 1e-8;
            for &i in &rows {
                base[i][k] = num / den;
            }
        }
        if zero_tail {
            let len = |i: usize| m[i].iter().sum::<f64>();
            let mut lens: Vec<f64> = rows.iter().map(|&i| len(i)).collect();
            lens.sort_by(f64::total_cmp);
            let (max, second) = (lens[lens.len() - 1], lens[lens.len() - 2]);
            let longest: Vec<usize> = rows.iter().copied().filter(|&i| len(i) == max).collect();
            if longest.len() == 1 && max > second {
                base[longest[0]][second as usize..].fill(0.0);
            }
        }
    }
    (0..b)
        .map(|i| (0..t).map(|k| (ret[i][k] - base[i][k]) * m[i][k]).collect())
        .collect()
}

#[test]
fn verl_optimal_token_baseline_options() {
    let v = Verl::new();
    let is_w = v.input("rollout_is_weights");
    let mut with_is = v.batch();
    with_is.push(("rollout_is_weights", dense(&is_w)));
    let mut tally = Tally::new();
    // The transcription itself must reproduce verl's recorded case.
    let want = mat(&v.g["advantages"]["optimal_token_baseline"]["advantages"]);
    let own = otb_reference(&v, None, true);
    let problems = cmp_tokens(Some(&own), &want, &v.mask, "reference")
        .into_iter()
        .collect();
    tally.case("reference_vs_golden", problems);
    for (name, batch, is, tail) in [
        ("is_weights", &with_is, Some(&is_w[..]), true),
        ("no_zero_tail", &v.batch(), None, false),
        ("is_weights_no_zero_tail", &with_is, Some(&is_w[..]), false),
    ] {
        let sets = [("handle_zero_tail", tail.to_string())];
        let file = "objectives/verl/adv_optimal_token_baseline.obj";
        let problems = match run(file, batch, &sets) {
            Ok(rep) => cmp_tokens(
                tokens(&rep.outputs, "advantages"),
                &otb_reference(&v, is, tail),
                &v.mask,
                "advantages",
            )
            .into_iter()
            .collect(),
            Err(e) => vec![e],
        };
        tally.case(name, problems);
    }
    // The f32 backends on the golden case (their catalog sweeps skip `objectives/verl`).
    for backend in ["cpu", "candle"] {
        let file = "objectives/verl/adv_optimal_token_baseline.obj";
        let problems = match run_on(backend, file, &v.batch(), &[]) {
            Ok(rep) => ["advantages", "returns"]
                .iter()
                .filter_map(|out| {
                    let want = mat(&v.g["advantages"]["optimal_token_baseline"][*out]);
                    cmp_tokens_tol(tokens(&rep.outputs, out), &want, &v.mask, out, 1e-4, ABS)
                })
                .collect(),
            Err(e) => vec![e],
        };
        tally.case(&format!("golden_on_{backend}"), problems);
    }
    tally.finish("verl optimal_token_baseline options");
}

#[test]
fn verl_agg_loss() {
    let v = Verl::new();
    let mut tally = Tally::new();
    let mat_l = v.input("agg_loss_mat");
    for (name, want) in v.g["agg_loss"].as_object().cloned().unwrap_or_default() {
        let mut parts = name.split("__");
        let mode = parts.next().unwrap_or("").to_string();
        let mut sets: Vec<(&str, String)> = vec![("loss_agg_mode", mode)];
        let mut mask = v.mask.clone();
        for extra in parts {
            match extra {
                "loss_scale_factor=4" => sets.push(("loss_scale_factor", "4".into())),
                "dp2_batch_num_tokens=100" => {
                    sets.push(("dp_size", "2".into()));
                    sets.push(("batch_num_tokens", "100".into()));
                }
                "row4_fully_masked" => mask[4].iter_mut().for_each(|m| *m = 0.0),
                other => panic!("unknown agg_loss variant {other}"),
            }
        }
        let batch = vec![("loss_mat", dense(&mat_l)), ("mask", dense(&mask))];
        match run("objectives/verl/agg_loss.obj", &batch, &sets) {
            Ok(rep) => {
                let w = num(&want);
                let ok = rep.loss.is_some_and(|l| close(l, w));
                tally.case(
                    &name,
                    if ok {
                        vec![]
                    } else {
                        vec![format!("loss {:?} vs {w}", rep.loss)]
                    },
                );
            }
            Err(e) => tally.case(&name, vec![e]),
        }
    }
    tally.finish("verl agg_loss");
}

#[test]
fn verl_kl_entropy_value_rewards() {
    let v = Verl::new();
    let mut tally = Tally::new();
    check_kl_and_value_loss(&v, "", &mut tally);
    for (prefix, extra) in verl_batches() {
        check_kl_and_value_loss(&extra, &prefix, &mut tally);
    }

    // Entropy: verl's token entropies (from logits) aggregated; rlobj takes them as input.
    let ent = &v.g["entropy"];
    let h = vec![
        ("entropy", dense(&mat(&ent["token_entropy"]))),
        ("mask", dense(&v.mask)),
    ];
    for mode in ["token-mean", "seq-mean-token-mean"] {
        match run(
            "objectives/verl/entropy_loss.obj",
            &h,
            &[("loss_agg_mode", mode.to_string())],
        ) {
            Ok(rep) => {
                let w = num(&ent[mode]);
                let ok = rep.loss.is_some_and(|l| close(l, w));
                tally.case(
                    &format!("entropy_{mode}"),
                    if ok {
                        vec![]
                    } else {
                        vec![format!("loss {:?} vs {w}", rep.loss)]
                    },
                );
            }
            Err(e) => tally.case(&format!("entropy_{mode}"), vec![e]),
        }
    }

    // KL in reward with a fixed coefficient 0.1 (`compute_rewards(scores, old, ref, 0.1)`).
    let sets = vec![
        ("kl_coef", "0.1".to_string()),
        ("adaptive", "false".to_string()),
        ("kl_penalty", "kl".to_string()),
    ];
    match run("objectives/verl/kl_in_reward.obj", &v.batch(), &sets) {
        Ok(rep) => {
            let want = mat(&v.g["compute_rewards_kl_ratio_0.1"]);
            let problems: Vec<String> = cmp_tokens(
                tokens(&rep.outputs, "token_level_rewards"),
                &want,
                &v.mask,
                "rewards",
            )
            .into_iter()
            .collect();
            tally.case("compute_rewards_kl_ratio_0.1", problems);
        }
        Err(e) => tally.case("compute_rewards_kl_ratio_0.1", vec![e]),
    }
    tally.finish("verl kl/entropy/value/rewards");
}

/// The `kl_penalty` and `value_loss` cases of one golden file.
fn check_kl_and_value_loss(v: &Verl, prefix: &str, tally: &mut Tally) {
    for (kind, want) in v.g["kl_penalty"].as_object().cloned().unwrap_or_default() {
        match run(
            "objectives/verl/kl_penalty.obj",
            &v.batch(),
            &[("kl_penalty", kind.clone())],
        ) {
            Ok(rep) => {
                let mut problems = Vec::new();
                problems.extend(v.cmp(tokens(&rep.outputs, "kl"), &mat(&want["kl"]), "kl"));
                problems.extend(v.cmp(
                    tokens(&rep.grads, "logp"),
                    &mat(&want["grad_logprob_of_masked_sum"]),
                    "grad.logp",
                ));
                tally.case(&format!("{prefix}kl_{kind}"), problems);
            }
            Err(e) => tally.case(&format!("{prefix}kl_{kind}"), vec![e]),
        }
    }

    // Value loss: returns = values + 0.1, as the golden states.
    let vl = &v.g["value_loss"];
    let returns: Vec<Vec<f64>> = v
        .input("values")
        .iter()
        .map(|r| r.iter().map(|x| x + 0.1).collect())
        .collect();
    let mut batch = v.batch();
    batch.push(("vpreds", dense(&v.input("vpreds"))));
    batch.push(("returns", dense(&returns)));
    let sets = vec![
        ("cliprange_value", fmt(&vl["cliprange_value"])),
        ("loss_agg_mode", "token-mean".to_string()),
    ];
    match run("objectives/verl/value_loss.obj", &batch, &sets) {
        Ok(rep) => {
            let mut problems = Vec::new();
            let w = num(&vl["vf_loss"]);
            if !rep.loss.is_some_and(|l| close(l, w)) {
                problems.push(format!("vf_loss {:?} vs {w}", rep.loss));
            }
            let wc = num(&vl["vf_clipfrac"]);
            if !metric(&rep, "vf_clipfrac").is_some_and(|m| close(m, wc)) {
                problems.push(format!(
                    "vf_clipfrac {:?} vs {wc}",
                    metric(&rep, "vf_clipfrac")
                ));
            }
            tally.case(&format!("{prefix}value_loss"), problems);
        }
        Err(e) => tally.case(&format!("{prefix}value_loss"), vec![e]),
    }
}

#[test]
fn trl_loss_types() {
    let mut tally = Tally::new();
    check_trl(&load("trl.json"), "", &mut tally);
    for n in batch_files("trl_batches", 8) {
        let prefix = format!("{}: ", n.trim_end_matches(".json"));
        check_trl(&load(&format!("trl_batches/{n}")), &prefix, &mut tally);
    }
    tally.finish("trl loss types");
}

/// TRL's metric names → the `.obj` files' (the metrics a batch file records under
/// `trl_metrics`; the shared golden file records none).
const TRL_METRICS: &[(&str, &str)] = &[
    ("kl", "kl"),
    ("clip_ratio/low_mean", "clip_ratio_low_mean"),
    ("clip_ratio/high_mean", "clip_ratio_high_mean"),
    ("clip_ratio/region_mean", "clip_ratio_region_mean"),
    ("cispo_clip_ratio", "cispo_clip_ratio"),
    ("vespo/phi_seq_mean", "vespo_phi_seq_mean"),
];

/// Every case of one TRL golden file (`trl.json` format) through `objectives/trl/<type>.obj`.
/// luspo: TRL averages over padding too (documented); its loss is compared after removing
/// TRL's padding KL term where only that term differs (sequence level, the shared file), and
/// otherwise only its gradients at valid tokens are. With `T = 1` TRL's `kl` metric averages
/// over all rows, masked ones included (a quirk rlobj does not copy; docs/catalog.md).
fn check_trl(g: &Value, prefix: &str, tally: &mut Tally) {
    let inp = &g["inputs"];
    let mask = mat(&inp["mask"]);
    let logp = mat(&inp["logp"]);
    let refp = mat(&inp["ref"]);
    let b = mask.len();
    let t = mask.first().map_or(0, Vec::len);
    let batch = vec![
        ("logp", dense(&logp)),
        ("old_logp", dense(&mat(&inp["old"]))),
        ("ref_logp", dense(&refp)),
        ("advantages", HostTensor::float(vec![b], vec1(&inp["adv"]))),
        ("mask", dense(&mask)),
    ];
    let beta = num(&inp["beta"]);
    let padded = mask.iter().flatten().any(|m| *m < 0.5);
    for (key, c) in g["cases"].as_object().cloned().unwrap_or_default() {
        let name = format!("{prefix}{key}");
        let mut it = key.split("__");
        let lt = it.next().unwrap_or("");
        let level = it.next().unwrap_or("token");
        let sets = vec![
            ("epsilon", fmt(&inp["eps_low"])),
            ("epsilon_high", fmt(&c["eps_high"])),
            ("beta", fmt(&inp["beta"])),
            ("max_completion_length", fmt(&inp["max_completion_length"])),
            ("importance_sampling_level", level.to_string()),
        ];
        let rep = match run(&format!("objectives/trl/{lt}.obj"), &batch, &sets) {
            Ok(r) => r,
            Err(e) => {
                tally.case(&name, vec![e]);
                continue;
            }
        };
        let mut want = Some(num(&c["loss"]));
        if lt == "luspo" && padded {
            want = if level == "sequence" {
                // TRL's KL term at padding positions, which rlobj does not read.
                let mut pad = 0.0;
                for i in 0..b {
                    let n: f64 = mask[i].iter().sum();
                    for j in 0..t {
                        if mask[i][j] < 0.5 {
                            let k = refp[i][j] - logp[i][j];
                            pad += (k.exp() - k - 1.0) * n;
                        }
                    }
                }
                want.map(|w| w - beta * pad / (b * t) as f64)
            } else {
                None // TRL's token-level luspo also sums the policy loss at padding
            };
        }
        let mut problems = Vec::new();
        if let Some(want) = want {
            if !rep.loss.is_some_and(|l| close(l, want)) {
                problems.push(format!("loss {:?} vs {want}", rep.loss));
            }
        }
        problems.extend(cmp_tokens(
            tokens(&rep.grads, "logp"),
            &mat(&c["grad_logp"]),
            &mask,
            "grad.logp",
        ));
        for (trl_name, ours) in TRL_METRICS {
            let Some(w) = c["trl_metrics"][*trl_name].as_f64() else {
                continue;
            };
            if *ours == "kl" && t == 1 {
                continue;
            }
            match metric(&rep, ours) {
                Some(m) if (m - w).abs() <= 1e-6 + 1e-5 * w.abs() => {}
                other => problems.push(format!("metric {ours} {other:?} vs {w}")),
            }
        }
        tally.case(&name, problems);
    }
}

/// Every catalog file and stdlib module type-checks.
#[test]
fn catalog_checks() {
    let mut files = Vec::new();
    for dir in ["stdlib", "objectives", "objectives/verl", "objectives/trl"] {
        if let Ok(rd) = std::fs::read_dir(root().join(dir)) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "obj") {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    let mut bad = Vec::new();
    for f in &files {
        let d = rlobj_front::check_path(f);
        if d.has_errors() {
            bad.push(d.render(false));
        } else if f.starts_with(root().join("objectives")) {
            if let Err(e) = Objective::compile(f) {
                bad.push(format!("{}: {e}", f.display()));
            }
        }
    }
    eprintln!("checked {} files, {} with errors", files.len(), bad.len());
    for b in &bad {
        eprintln!("{b}");
    }
    assert!(bad.is_empty());
}

/// Hidden-batch shapes the external checks use (a fully masked row, a singleton group):
/// every parity file runs and produces finite numbers at valid tokens.
#[test]
fn parity_files_finite_on_edge_batches() {
    let v = Verl::new();
    let mut mask = v.mask.clone();
    mask[4].iter_mut().for_each(|m| *m = 0.0);
    let b = v.group.len();
    let mut batch = v.batch();
    for (n, t) in batch.iter_mut() {
        match *n {
            "mask" => *t = dense(&mask),
            "group" => *t = HostTensor::int(vec![b], vec![0, 0, 0, 1, 2, 2]),
            _ => {}
        }
    }
    batch.push(("rollout_is_weights", dense(&v.input("rollout_is_weights"))));
    batch.push(("vpreds", dense(&v.input("vpreds"))));
    batch.push(("returns", dense(&v.input("values"))));
    let mut bad = Vec::new();
    let dir = root().join("objectives/verl");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if name == "agg_loss.obj" || name == "entropy_loss.obj" || name == "adv_grpo_passk.obj" {
            continue; // need other inputs / verl raises on singleton groups
        }
        match run(&format!("objectives/verl/{name}"), &batch, &[]) {
            Ok(rep) => {
                let finite_tok = |s: &Shaped| match s {
                    Shaped::Tokens(t) => t
                        .iter()
                        .zip(&mask)
                        .all(|(r, m)| r.iter().zip(m).all(|(x, m)| *m < 0.5 || x.is_finite())),
                    Shaped::Rows(r) => r.iter().all(|x| x.is_finite()),
                    Shaped::Scalar(x) => x.is_finite(),
                };
                let ok = rep.loss.is_none_or(f64::is_finite)
                    && rep.metrics.iter().all(|(_, m)| m.is_finite())
                    && rep.grads.iter().all(|(_, g)| finite_tok(g))
                    && rep.outputs.iter().all(|(_, o)| finite_tok(o));
                if !ok {
                    bad.push(format!("{name}: non-finite result {rep:?}"));
                }
            }
            Err(e) => bad.push(e),
        }
    }
    for x in &bad {
        eprintln!("{x}");
    }
    assert!(bad.is_empty());
}

/// One run of [`all_masked_batch_is_a_zero_step`]: (file, batch, `--set` values).
type ZeroStepRun<'a> = (String, &'a [(&'a str, HostTensor)], Vec<(&'a str, String)>);

/// A batch whose mask marks no valid token is a zero step on every backend: loss exactly 0,
/// every gradient 0, every metric finite. That is TRL's result (its denominators are clamped
/// to ≥ 1); verl's token-mean would divide 0 by 0 (see `runtime/src/batch.rs`).
#[test]
fn all_masked_batch_is_a_zero_step() {
    let v = Verl::new();
    let empty: Vec<Vec<f64>> = v.mask.iter().map(|r| vec![0.0; r.len()]).collect();
    let mut verl_batch = v.batch();
    for (n, t) in verl_batch.iter_mut() {
        if *n == "mask" {
            *t = dense(&empty);
        }
    }
    verl_batch.push(("vpreds", dense(&v.input("vpreds"))));
    verl_batch.push(("returns", dense(&v.input("values"))));
    let g = load("trl.json");
    let inp = &g["inputs"];
    let b = mat(&inp["mask"]).len();
    let trl_empty: Vec<Vec<f64>> = mat(&inp["mask"])
        .iter()
        .map(|r| vec![0.0; r.len()])
        .collect();
    let trl_batch = vec![
        ("logp", dense(&mat(&inp["logp"]))),
        ("old_logp", dense(&mat(&inp["old"]))),
        ("ref_logp", dense(&mat(&inp["ref"]))),
        ("advantages", HostTensor::float(vec![b], vec1(&inp["adv"]))),
        ("mask", dense(&trl_empty)),
    ];
    let mut runs: Vec<ZeroStepRun> = Vec::new();
    for mode in [
        "token-mean",
        "token-sum",
        "seq-mean-token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum-norm",
    ] {
        for f in ["vanilla", "value_loss"] {
            runs.push((
                format!("objectives/verl/{f}.obj"),
                &verl_batch,
                vec![("loss_agg_mode", mode.to_string())],
            ));
        }
    }
    for f in [
        "gspo", "sapo", "gpg", "geo_mean", "dro", "dppo_kl", "kl_cov",
    ] {
        runs.push((format!("objectives/verl/{f}.obj"), &verl_batch, vec![]));
    }
    runs.push((
        "objectives/verl/kl_penalty.obj".into(),
        &verl_batch,
        vec![("kl_penalty", "low_var_kl".into())],
    ));
    for lt in [
        "grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo", "luspo",
    ] {
        for level in ["token", "sequence"] {
            runs.push((
                format!("objectives/trl/{lt}.obj"),
                &trl_batch,
                vec![
                    ("beta", "0.04".into()),
                    ("importance_sampling_level", level.into()),
                ],
            ));
        }
    }
    let mut bad = Vec::new();
    let mut checked = 0;
    for backend in ["interp", "cpu", "candle", "opencl"] {
        let start = std::time::Instant::now();
        if let Err(e) = backend_by_name(backend) {
            assert!(
                backend != "opencl" || std::env::var("RLOBJ_REQUIRE_OPENCL").as_deref() != Ok("1"),
                "RLOBJ_REQUIRE_OPENCL=1 but: {e}"
            );
            eprintln!("skipping {backend}: {e}");
            continue;
        }
        for (file, batch, sets) in &runs {
            let what = format!("{backend} {file} {sets:?}");
            let rep = match run_on(backend, file, batch, sets) {
                Ok(r) => r,
                Err(e) => {
                    bad.push(format!("{what}: {e}"));
                    continue;
                }
            };
            checked += 1;
            if rep.loss != Some(0.0) {
                bad.push(format!("{what}: loss {:?}", rep.loss));
            }
            let zero = |s: &Shaped| match s {
                Shaped::Tokens(t) => t.iter().flatten().all(|x| *x == 0.0),
                Shaped::Rows(r) => r.iter().all(|x| *x == 0.0),
                Shaped::Scalar(x) => *x == 0.0,
            };
            if !rep.grads.iter().all(|(_, g)| zero(g)) {
                bad.push(format!("{what}: non-zero gradient {:?}", rep.grads));
            }
            if let Some((m, x)) = rep.metrics.iter().find(|(_, x)| !x.is_finite()) {
                bad.push(format!("{what}: metric {m} = {x}"));
            }
        }
        eprintln!("{backend}: {:.1} s", start.elapsed().as_secs_f64());
    }
    for x in &bad {
        eprintln!("{x}");
    }
    assert!(bad.is_empty(), "{} of {checked} runs", bad.len());
    assert!(checked >= 3 * runs.len(), "only {checked} runs");
}
