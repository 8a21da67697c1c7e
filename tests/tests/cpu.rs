//! CPU backend (Cranelift JIT), candle-eager baseline and candle op: parity with the
//! interpreter, thread-count determinism, and accuracy of the JIT's math routines.

use rlobj_ir::{InputKind, Layout, Program, SpaceId, SpaceKind, UnaryOp};
use rlobj_runtime::cpu::{CpuBackend, CpuProgram};
use rlobj_runtime::interp::Interpreter;
use rlobj_runtime::{Backend, Bound, Evaluation};
use std::path::{Path, PathBuf};

/// Tiny deterministic generator (xorshift) so batches are reproducible without deps.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unif(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random batch for `prog`: ragged rows (some empty), groups of 4 rows, turns of 5 tokens.
fn random_bound(prog: &Program, rows: usize, width: usize, seed: u64) -> Bound {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut mask = vec![false; rows * width];
    for r in 0..rows {
        let len = match r % 7 {
            0 if r > 0 => 0,
            1 => width,
            _ => (rng.unif() * width as f64) as usize,
        };
        for t in 0..len {
            mask[r * width + t] = true;
        }
    }
    let mut ids = Vec::new();
    for (k, inp) in prog.inputs.iter().enumerate() {
        if let InputKind::Ids { space } = inp.kind {
            let v: Vec<i64> = match prog.spaces[space.index()].kind {
                SpaceKind::RowGroups { .. } => (0..rows).map(|r| (r / 4) as i64).collect(),
                _ => (0..rows * width)
                    .map(|i| ((i % width) / 5) as i64)
                    .collect(),
            };
            ids.push((rlobj_ir::InputId(k as u32), v));
        }
    }
    let layout = Layout::build(prog, rows, width, &mask, &ids).expect("layout");
    let values = prog
        .inputs
        .iter()
        .map(|inp| match &inp.kind {
            InputKind::Value { elem, space, .. } => {
                let n = layout.size(*space);
                Some(
                    (0..n)
                        .map(|_| match elem {
                            rlobj_ir::Elem::Bool => (rng.unif() < 0.7) as u8 as f64,
                            rlobj_ir::Elem::F32 => {
                                let u = rng.unif();
                                let x = if inp.name.contains("logp") {
                                    -0.05 - 2.0 * u
                                } else {
                                    2.0 * u - 1.0
                                };
                                x as f32 as f64
                            }
                        })
                        .collect(),
                )
            }
            InputKind::Ids { .. } => None,
        })
        .collect();
    Bound { layout, values }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    (a - b).abs() <= rel * (1.0 + a.abs().max(b.abs()))
}

/// Compares everything two evaluations produce; `Err` names the first mismatch.
fn compare(want: &Evaluation, got: &Evaluation, rel: f64) -> Result<(), String> {
    if let (Some(a), Some(b)) = (want.loss, got.loss) {
        if !close(a, b, rel) {
            return Err(format!("loss {a} vs {b}"));
        }
    }
    for ((n, a), (_, b)) in want.metrics.iter().zip(&got.metrics) {
        if !close(*a, *b, rel) {
            return Err(format!("metric {n}: {a} vs {b}"));
        }
    }
    for ((i, a), (_, b)) in want.grads.iter().zip(&got.grads) {
        if a.len() != b.len() {
            return Err(format!("grad {i:?}: len {} vs {}", a.len(), b.len()));
        }
        // Gradients are compared relative to the largest entry (per-token values are tiny).
        let scale = a.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            if !close(*x, *y, rel) && (x - y).abs() > rel * scale.max(1e-30) * 10.0 {
                return Err(format!("grad {i:?}[{k}]: {x} vs {y} (scale {scale})"));
            }
        }
    }
    for ((n, _, a), (_, _, b)) in want.outputs.iter().zip(&got.outputs) {
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            if !close(*x, *y, rel) {
                return Err(format!("output {n}[{k}]: {x} vs {y}"));
            }
        }
    }
    for ((n, a), (_, b)) in want.states.iter().zip(&got.states) {
        if !close(*a, *b, rel) {
            return Err(format!("state {n}: {a} vs {b}"));
        }
    }
    Ok(())
}

/// The literature objectives first (the benches take the first few), then the verl and TRL
/// parity files.
fn objectives() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../objectives");
    let mut all = Vec::new();
    for dir in [root.clone(), root.join("verl"), root.join("trl")] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "obj"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        all.extend(v);
    }
    all
}

/// A catalog file that does not compile is a test failure, never a silent skip.
fn compile(path: &Path) -> Option<(Program, Vec<f64>, Vec<f64>)> {
    let o = match rlobj_runtime::api::Objective::compile(path) {
        Ok(o) => o,
        Err(e) => panic!("{}: does not compile: {e}", path.display()),
    };
    Some((
        o.program().clone(),
        o.params().to_vec(),
        o.states().to_vec(),
    ))
}

/// Relative tolerance of the f32 paths against the f64 oracle.
const REL: f64 = 2e-5;

#[test]
fn catalog_cpu_matches_interpreter() {
    let mut checked = 0;
    let mut compared = 0;
    let mut failures = Vec::new();
    for path in objectives() {
        let Some((prog, params, states)) = compile(&path) else {
            continue;
        };
        let mut cpu = CpuBackend::new();
        for seed in 0..3 {
            let bound = random_bound(&prog, 13, 37, seed);
            let want = Interpreter::new().evaluate(&prog, &bound, &params, &states);
            let got = cpu.evaluate(&prog, &bound, &params, &states);
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    compared += 1;
                    if let Err(e) = compare(&w, &g, REL) {
                        failures.push(format!("{}: seed {seed}: {e}", path.display()));
                        break;
                    }
                }
                (Ok(_), Err(e)) => {
                    failures.push(format!("{}: cpu error: {e}", path.display()));
                    break;
                }
                (Err(e), _) => {
                    eprintln!("{}: interpreter error: {e}", path.display());
                    break;
                }
            }
        }
        checked += 1;
    }
    eprintln!("cpu parity: {checked} objectives, {compared} batches compared");
    assert!(checked == 0 || compared >= checked, "too few comparisons");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cpu_is_bit_identical_for_any_thread_count() {
    for path in objectives().iter().take(8) {
        let Some((prog, params, states)) = compile(path) else {
            continue;
        };
        let bound = random_bound(&prog, 64, 97, 7);
        let mut runs = Vec::new();
        for threads in [1, 2, 3, 8] {
            let mut cpu = CpuBackend::with_threads(threads).expect("pool");
            let Ok(e) = cpu.evaluate(&prog, &bound, &params, &states) else {
                break;
            };
            runs.push(e);
        }
        for r in runs.iter().skip(1) {
            let bits = |e: &Evaluation| {
                let mut v: Vec<u64> = e.loss.iter().map(|x| x.to_bits()).collect();
                v.extend(e.metrics.iter().map(|(_, x)| x.to_bits()));
                v.extend(
                    e.grads
                        .iter()
                        .flat_map(|(_, g)| g.iter().map(|x| x.to_bits())),
                );
                v
            };
            assert_eq!(bits(&runs[0]), bits(r), "{}", path.display());
        }
    }
}

/// Max error of a JIT routine against f64 libm over `xs`: (max ulp, max relative).
fn accuracy(op: UnaryOp, xs: &[f32], reference: fn(f64) -> f64) -> (f64, f64) {
    let c = rlobj_back::clif::compile_unary(op).expect("jit");
    let ys = rlobj_back::clif::run_unary(&c, xs);
    let mut worst = (0f64, 0f64);
    for (&x, &y) in xs.iter().zip(&ys) {
        let want = reference(f64::from(x));
        if want.is_nan() {
            assert!(y.is_nan(), "{op:?}({x}) = {y}, want NaN");
            continue;
        }
        let w32 = want as f32;
        if w32.is_infinite() || y.is_infinite() {
            assert_eq!(w32, y, "{op:?}({x})");
            continue;
        }
        let ulp = f64::from(f32::EPSILON) * f64::from(w32.abs().max(f32::MIN_POSITIVE));
        let ulp = ulp.max(f64::from(f32::from_bits(1)));
        worst.0 = worst.0.max((f64::from(y) - want).abs() / ulp);
        if want != 0.0 {
            worst.1 = worst.1.max(((f64::from(y) - want) / want).abs());
        }
    }
    worst
}

fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|i| lo + (hi - lo) * (i as f32 / (n - 1) as f32))
        .collect();
    v.extend([0.0, -0.0, f32::NAN, 1e-30, -1e-30, 1e-7, -1e-7]);
    v
}

/// (routine, inputs, f64 reference, max ulp).
type Case = (UnaryOp, Vec<f32>, fn(f64) -> f64, f64);

#[test]
fn jit_math_accuracy_against_libm() {
    let sp = |x: f64| {
        if x > 0.0 {
            x + (-x).exp().ln_1p()
        } else {
            x.exp().ln_1p()
        }
    };
    let cases: Vec<Case> = vec![
        (UnaryOp::Exp, grid(-103.0, 88.7, 200_001), f64::exp, 2.0),
        (
            UnaryOp::Log,
            {
                let mut v: Vec<f32> = (0..200_000u32)
                    .map(|i| f32::from_bits(1 + i * 10_650))
                    .collect();
                v.extend([f32::INFINITY, -1.0, 0.0]);
                v
            },
            f64::ln,
            2.0,
        ),
        (UnaryOp::Log1p, grid(-0.999, 1e4, 200_001), f64::ln_1p, 4.0),
        (UnaryOp::Expm1, grid(-30.0, 88.0, 200_001), f64::exp_m1, 4.0),
        (UnaryOp::Tanh, grid(-20.0, 20.0, 200_001), f64::tanh, 4.0),
        (
            UnaryOp::Sigmoid,
            grid(-100.0, 100.0, 200_001),
            |x| 1.0 / (1.0 + (-x).exp()),
            4.0,
        ),
        (UnaryOp::Softplus, grid(-80.0, 80.0, 200_001), sp, 4.0),
    ];
    for (op, xs, f, max_ulp) in cases {
        let (ulp, rel) = accuracy(op, &xs, f);
        eprintln!("{op:?}: max {ulp:.2} ulp, max rel {rel:.3e}");
        assert!(ulp <= max_ulp, "{op:?}: {ulp} ulp");
    }
}

#[test]
fn clif_text_is_emitted() {
    for path in objectives().iter().take(3) {
        let Some((prog, _, _)) = compile(path) else {
            continue;
        };
        let c = CpuProgram::compile(&prog, true).expect("compile");
        let t = c.clif_text();
        assert!(t.is_empty() || t.contains("function"), "{t}");
    }
}

/// The candle baseline is f32 with naive formulas (`log(1+x)`, `exp(b log a)`), so it gets
/// a looser bound; objectives using ops it does not lower are skipped by name.
#[test]
fn catalog_candle_matches_interpreter() {
    let mut compared = 0;
    let mut unsupported = Vec::new();
    let mut failures = Vec::new();
    for path in objectives() {
        let Some((prog, params, states)) = compile(&path) else {
            continue;
        };
        let bound = random_bound(&prog, 13, 37, 1);
        let Ok(want) = Interpreter::new().evaluate(&prog, &bound, &params, &states) else {
            continue;
        };
        match rlobj_runtime::candle_eager::CandleEager::new()
            .evaluate(&prog, &bound, &params, &states)
        {
            Ok(got) => {
                compared += 1;
                if let Err(e) = compare(&want, &got, 1e-4) {
                    failures.push(format!("{}: {e}", path.display()));
                }
            }
            Err(e) if e.0.contains("not supported") => {
                unsupported.push(format!("{}: {e}", path.display()))
            }
            Err(e) => failures.push(format!("{}: candle error: {e}", path.display())),
        }
    }
    eprintln!("candle parity: {compared} compared; unsupported: {unsupported:#?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn candle_op_backward_equals_interpreter_gradient() {
    use candle_core::{Device, Tensor, Var};
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../objectives/grpo.obj");
    let Some((prog, params, states)) = compile(&path) else {
        return;
    };
    let (b, t) = (8usize, 16usize);
    let mut rng = Rng(99);
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let dev = Device::Cpu;
    for inp in &prog.inputs {
        let tensor = match (&inp.kind, inp.name.as_str()) {
            (InputKind::Ids { .. }, _) => {
                Tensor::from_vec((0..b as i64).map(|r| r / 4).collect::<Vec<_>>(), b, &dev)
            }
            (InputKind::Value { space, .. }, _) if *space == SpaceId::TOK => {
                let v: Vec<f32> = (0..b * t)
                    .map(|_| -0.05 - 2.0 * rng.unif() as f32)
                    .collect();
                Tensor::from_vec(v, (b, t), &dev)
            }
            (InputKind::Value { .. }, _) => Tensor::from_vec(
                (0..b).map(|_| rng.unif() as f32).collect::<Vec<_>>(),
                b,
                &dev,
            ),
        }
        .expect("tensor");
        named.push((inp.name.clone(), tensor));
    }
    let mask: Vec<f32> = (0..b * t)
        .map(|i| ((i % t) < 3 + (i / t) % t) as u8 as f32)
        .collect();
    named.push((
        "mask".into(),
        Tensor::from_vec(mask, (b, t), &dev).expect("mask"),
    ));
    let gname = prog.inputs[prog.grads[0].0.index()].name.clone();
    let var = Var::from_tensor(
        &named
            .iter()
            .find(|(n, _)| *n == gname)
            .expect("grad input")
            .1,
    )
    .expect("var");
    let mut tensors: Vec<(&str, &Tensor)> = named
        .iter()
        .filter(|(n, _)| *n != gname)
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    tensors.push((gname.as_str(), var.as_tensor()));
    let cpu = std::sync::Arc::new(CpuProgram::compile(&prog, false).expect("compile"));
    let loss =
        rlobj_runtime::candle_op::objective_loss(cpu, &tensors, &params, &states).expect("op");
    let grads = loss.backward().expect("backward");
    let g: Vec<f32> = grads
        .get(var.as_tensor())
        .expect("grad")
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    let bound = rlobj_runtime::batch::bind_tensors(&prog, &tensors).expect("bind");
    let want = Interpreter::new()
        .evaluate(&prog, &bound, &params, &states)
        .expect("interp");
    let l = &bound.layout;
    let wg = &want.grads[0].1;
    let scale = wg.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    for r in 0..l.rows {
        for k in l.row_start[r]..l.row_start[r + 1] {
            let got = f64::from(g[r * l.width + l.tok_pos[k] as usize]);
            assert!(
                (got - wg[k]).abs() <= 1e-5 * scale,
                "grad[{k}]: {got} vs {}",
                wg[k]
            );
        }
    }
    let lv = f64::from(loss.to_scalar::<f32>().expect("scalar"));
    assert!(
        close(lv, want.loss.expect("loss"), 1e-5),
        "{lv} vs {:?}",
        want.loss
    );
}

/// `cargo test --release -p rlobj-tests --test cpu bench_report -- --ignored --nocapture`
/// prints the bench JSON for the headline objectives (never asserts timings).
#[test]
#[ignore]
fn bench_report() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../objectives");
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let toks: usize = std::env::var("BENCH_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096);
    for name in ["verl/vanilla", "grpo", "dapo", "gspo", "dr_grpo"] {
        let backends: Vec<String> = ["cpu", "candle", "interp"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match rlobj_runtime::bench::bench(
            &dir.join(format!("{name}.obj")),
            rows,
            toks,
            &backends,
            true,
        ) {
            Ok(s) => println!("{s}"),
            Err(e) => println!("{name}: {e}"),
        }
    }
}

/// `run_into` (f32 gradients, buffers reused across runs) gives the same results as `run`,
/// run after run, even when batches of different sizes alternate.
#[test]
fn run_into_reuses_buffers_and_matches_run() {
    for path in objectives().iter().take(10) {
        let Some((prog, params, states)) = compile(path) else {
            continue;
        };
        let cpu = CpuProgram::compile(&prog, false).expect("compile");
        let mut out = rlobj_runtime::cpu::CpuResults::default();
        for (k, (rows, width)) in [(9, 31), (17, 53), (9, 31)].into_iter().enumerate() {
            let bound = random_bound(&prog, rows, width, k as u64);
            let tok32 = rlobj_runtime::cpu::token_inputs_f32(&prog, &bound);
            let tok: Vec<Option<&[f32]>> = tok32.iter().map(|v| v.as_deref()).collect();
            let other: Vec<Option<&[f64]>> = bound.values.iter().map(|v| v.as_deref()).collect();
            let Ok(want) = cpu.run(&bound.layout, &tok, &other, &params, &states, None) else {
                break;
            };
            cpu.run_into(
                &bound.layout,
                &tok,
                &other,
                &params,
                &states,
                None,
                &mut out,
            )
            .expect("run_into");
            assert_eq!(want.loss.map(f64::to_bits), out.eval.loss.map(f64::to_bits));
            for (i, g) in &out.tok_grads {
                let w = &want.grads.iter().find(|(j, _)| j == i).expect("grad").1;
                let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
                assert_eq!(w, &g64, "{}", path.display());
            }
        }
    }
}
