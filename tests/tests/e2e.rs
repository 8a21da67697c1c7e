//! End-to-end: training with compiled objectives, variant comparison, the surrogate plot,
//! golden snapshots and the code blocks of the docs.

use rlobj_runtime::train::{self, NativeClip, StepObjective, TrainConfig};
use rlobj_tests::{fenced_blocks, run_cli};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn obj(name: &str) -> PathBuf {
    root().join("objectives").join(name)
}

#[test]
fn training_with_grpo_improves_reward() {
    let mut cfg = TrainConfig::new(80, 7);
    cfg.verbose = true;
    let report = train::train(&obj("grpo.obj"), &cfg).expect("train");
    let (a, b) = (report.reward_start(), report.reward_end());
    eprintln!("grpo: reward {a:.3} -> {b:.3} in {:.1}s", report.seconds);
    assert!(b > a + 0.2, "reward did not rise: {a:.3} -> {b:.3}");
}

fn out_dir(name: &str) -> PathBuf {
    let d = root().join("target").join("e2e").join(name);
    std::fs::create_dir_all(&d).expect("out dir");
    d
}

#[test]
fn plot_shows_surrogate_and_gradient() {
    let files: Vec<PathBuf> = ["verl/vanilla.obj", "gppo.obj", "cispo.obj", "sapo.obj"]
        .iter()
        .map(|f| obj(f))
        .collect();
    let (svg, sweeps) = rlobj_runtime::plot::plot_files(&files, &[]).expect("plot");
    std::fs::write(out_dir("plot").join("surrogates.svg"), &svg).expect("write");
    assert_eq!(sweeps.len(), 4);
    for s in &sweeps {
        assert_eq!(s.curves.len(), 2, "{}", s.objective);
        for c in &s.curves {
            assert!(
                c.loss.iter().chain(&c.grad).all(|p| p.1.is_finite()),
                "{}: {c:?}",
                s.objective
            );
        }
    }
    assert!(svg.matches("<polyline").count() >= 16);
}

/// The catalog snapshots (`tests/snapshots/golden__*.snap`): a change to an objective, the
/// stdlib or the compiler that moves a number fails here with insta's diff. Review with
/// `cargo insta review`, or accept with `rlobj golden --accept`.
#[test]
fn golden_snapshots_of_the_catalog() {
    use rlobj_runtime::golden;
    for f in golden::DEFAULT_SET {
        let path = root().join(f);
        let content = golden::render_file(&path, f).expect("render");
        let name = golden::snapshot_name(Path::new(f));
        insta::with_settings!({
            snapshot_path => "../snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(name.clone(), content);
        });
        // `rlobj golden` writes byte-identical files, so either tool can update them.
        let stored =
            std::fs::read_to_string(root().join("tests/snapshots").join(format!("{name}.snap")));
        if let Ok(stored) = stored {
            assert_eq!(golden::snap_content(&stored), content.trim_end(), "{name}");
        }
    }
}

#[test]
fn golden_workflow_creates_detects_and_accepts_changes() {
    use rlobj_runtime::golden::{check, Outcome};
    let dir = out_dir("golden");
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("dir");
    let file = src.join("mine.obj");
    let text = std::fs::read_to_string(obj("verl/vanilla.obj")).expect("read");
    std::fs::write(&file, &text).expect("write");
    let snaps = dir.join("snapshots");
    let first = check(std::slice::from_ref(&file), &snaps, false).expect("check");
    assert_eq!(first[0].outcome, Outcome::Created);
    assert_eq!(
        check(std::slice::from_ref(&file), &snaps, false).expect("check")[0].outcome,
        Outcome::Unchanged
    );
    // A different default clip range moves the loss: the change is detected, not written.
    std::fs::write(
        &file,
        text.replace("clip_ratio_high: f32 = 0.2", "clip_ratio_high: f32 = 0.1"),
    )
    .expect("write");
    let changed = check(std::slice::from_ref(&file), &snaps, false).expect("check");
    match &changed[0].outcome {
        Outcome::Changed { diff } => {
            assert!(diff.lines().any(|l| l.starts_with("- loss:")), "{diff}");
            assert!(diff.lines().any(|l| l.starts_with("+ loss:")), "{diff}");
        }
        other => panic!("expected a change, got {other:?}"),
    }
    assert!(snaps.join("golden__src_mine.snap.new").exists());
    assert_eq!(
        check(std::slice::from_ref(&file), &snaps, true).expect("check")[0].outcome,
        Outcome::Updated
    );
    assert!(!snaps.join("golden__src_mine.snap.new").exists());
    assert_eq!(
        check(&[file], &snaps, false).expect("check")[0].outcome,
        Outcome::Unchanged
    );
}

#[test]
fn compare_writes_svg_and_markdown() {
    let files: Vec<PathBuf> = ["grpo.obj", "dapo.obj", "gspo.obj", "cispo.obj"]
        .iter()
        .map(|f| obj(f))
        .collect();
    let cfg = TrainConfig::new(100, 3);
    let dir = out_dir("compare");
    let rep = train::compare(&files, &cfg, &dir).expect("compare");
    assert_eq!(rep.runs.len(), 4);
    let svg = std::fs::read_to_string(&rep.svg).expect("svg");
    assert!(
        svg.starts_with("<svg") && svg.matches("<polyline").count() >= 4 * 5,
        "too few curves"
    );
    let md = std::fs::read_to_string(&rep.markdown_path).expect("md");
    assert_eq!(md, rep.markdown);
    for name in ["grpo", "dapo", "gspo", "cispo"] {
        assert!(
            md.lines().any(|l| l.starts_with(&format!("| {name} |"))),
            "{md}"
        );
    }
    eprintln!("{md}");
    for r in &rep.runs {
        assert!(
            r.reward_end() > r.reward_start(),
            "{}: no improvement",
            r.objective
        );
    }
}

/// The compiled path and a hand-written PPO-clip agree on the same rollouts: the gradient the
/// loop backpropagates is the compiled `d loss / d logp`.
#[test]
fn compiled_gradient_matches_native_clip() {
    use rlobj_runtime::train::{policy, rollout, task, Compiled};
    let cfg = TrainConfig::new(1, 11);
    let mut rng = task::Rng::new(11);
    let pcfg = policy::PolicyConfig {
        prompt_vocab: 5,
        max_len: 3,
        embed: 8,
        hidden: 16,
    };
    let pol = policy::Policy::new(pcfg, &mut rng).expect("policy");
    let reference = pol.frozen_copy().expect("ref");
    let batch = rollout::collect(&cfg.task, &pol, &reference, 8, 4, &mut rng).expect("rollouts");
    // Perturb the current log-probs so some ratios leave the clip band.
    let logp: Vec<f32> = batch
        .old_logp
        .iter()
        .enumerate()
        .map(|(i, &o)| {
            if batch.mask[i] {
                o + 1.0 * ((i * 7919 % 13) as f32 / 13.0 - 0.5)
            } else {
                0.0
            }
        })
        .collect();
    let mut compiled = Compiled::load(&obj("verl/vanilla.obj"), &[], "interp").expect("compile");
    let a = compiled.evaluate(&batch, &logp).expect("compiled");
    let b = NativeClip { eps: 0.2 }
        .evaluate(&batch, &logp)
        .expect("native");
    assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
    for (x, y) in a.grad_logp.iter().zip(&b.grad_logp) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    let clip = |e: &rlobj_runtime::train::StepEval| {
        e.metrics.iter().find(|m| m.0 == "pg_clipfrac").map(|m| m.1)
    };
    let (ca, cb) = (clip(&a).expect("metric"), clip(&b).expect("metric"));
    assert!(ca > 0.0 && (ca - cb).abs() < 1e-9, "{ca} vs {cb}");
}

/// The candle op path (`loss.backward()` through the compiled Cranelift gradient) trains the
/// same as the surrogate path: identical rewards step for step while the arithmetic agrees.
#[test]
fn candle_op_path_matches_surrogate_path() {
    let mut cfg = TrainConfig::new(12, 5);
    let a = train::train(&obj("dapo.obj"), &cfg).expect("surrogate");
    cfg.candle_op = true;
    let b = train::train(&obj("dapo.obj"), &cfg).expect("candle op");
    assert_eq!(a.steps[0].reward, b.steps[0].reward);
    for (x, y) in a.steps.iter().zip(&b.steps).take(3) {
        assert!(
            (x.grad_norm - y.grad_norm).abs() < 1e-3 * (1.0 + x.grad_norm),
            "{} vs {}",
            x.grad_norm,
            y.grad_norm
        );
    }
    assert!(b.reward_end() > b.reward_start());
}

/// Every ```obj block of the docs is checked (standalone: a file of its own), every `rlobj …`
/// line of a ```sh block is run from the repository root and must exit 0.
fn run_doc(doc: &str) {
    let text = std::fs::read_to_string(root().join("docs").join(doc)).expect("doc");
    std::env::set_current_dir(root()).expect("cd");
    let blocks = fenced_blocks(&text);
    assert!(!blocks.is_empty(), "{doc}: no code blocks");
    let (mut objs, mut cmds) = (0, 0);
    for block in &blocks {
        let body = &block.body;
        match block.info.as_str() {
            "obj" => {
                let d = rlobj_front::check_source(&format!("{doc} block"), body);
                assert!(
                    !d.has_errors(),
                    "{doc}: obj block does not check:\n{}\n{body}",
                    d.render(false)
                );
                objs += 1;
            }
            "sh" => {
                for line in body
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("rlobj "))
                {
                    let cmd = line.split_once(" #").map(|(c, _)| c).unwrap_or(line);
                    let args: Vec<String> =
                        cmd.split_whitespace().skip(1).map(String::from).collect();
                    let (code, out, err) = run_cli(&args);
                    eprintln!("$ {line}\n{out}{err}");
                    let expect_fail = line.contains("# exits 1");
                    assert_eq!(
                        code != 0,
                        expect_fail,
                        "{doc}: `{line}` exited {code}:\n{out}\n{err}"
                    );
                    cmds += 1;
                }
            }
            "text" | "" => {}
            other => {
                panic!("{doc}: code block with unknown info string `{other}` (use obj, sh or text)")
            }
        }
    }
    eprintln!("{doc}: {objs} obj blocks checked, {cmds} commands run");
}

#[test]
fn docs_tutorial_blocks_compile_and_run() {
    run_doc("tutorial.md");
}

#[test]
fn docs_architecture_blocks_compile_and_run() {
    run_doc("architecture.md");
}
