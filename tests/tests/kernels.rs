//! Kernel plan, C-style writer, NVRTC and OpenCL: snapshots of the emitted text, NVRTC +
//! ptxas acceptance for every catalog objective, and OpenCL (PoCL) parity with the
//! interpreter. OpenCL/NVRTC tests skip with a message when the library is missing, unless
//! `RLOBJ_REQUIRE_OPENCL=1` / `RLOBJ_REQUIRE_NVRTC=1`.

#![allow(clippy::unwrap_used)]

use rlobj_ir::{Elem, InputKind, Layout, Program};
use rlobj_runtime::interp::Interpreter;
use rlobj_runtime::opencl::OpenClBackend;
use rlobj_runtime::{Backend, Bound, Evaluation};
use rlobj_tests::{random_ids, Rng};
use std::path::{Path, PathBuf};

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Every catalog objective: `objectives/*.obj`, `objectives/verl/*.obj`, `objectives/trl/*.obj`.
fn catalog() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../objectives");
    let mut v = Vec::new();
    for dir in [root.clone(), root.join("verl"), root.join("trl")] {
        if let Ok(d) = std::fs::read_dir(&dir) {
            v.extend(
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "obj")),
            );
        }
    }
    v.sort();
    v
}

fn label(p: &std::path::Path) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../objectives");
    p.strip_prefix(&root)
        .unwrap_or(p)
        .display()
        .to_string()
        .replace(['/', '.'], "_")
}

/// The differentiated, optimised program of an objective with its default params/states.
fn compile(path: &Path) -> Result<(Program, Vec<f64>, Vec<f64>), String> {
    let o = rlobj_runtime::api::Objective::compile(path).map_err(|e| format!("{e:?}"))?;
    Ok((
        o.program().clone(),
        o.params().to_vec(),
        o.states().to_vec(),
    ))
}

/// A batch whose rows cycle through empty, length 1, full, ragged prefix and random holes.
fn edge_bound(prog: &Program, seed: u64, rows: usize, width: usize) -> Bound {
    let mut rng = Rng::new(seed);
    let mut mask = vec![false; rows * width];
    for r in 0..rows {
        let len = 1 + rng.below(width as u64) as usize;
        for t in 0..width {
            mask[r * width + t] = match (r + seed as usize) % 5 {
                0 => false,
                1 => t == 0,
                2 => true,
                3 => t < len,
                _ => rng.chance(0.6),
            };
        }
    }
    let ids = random_ids(prog, &mut rng, rows, width, 3);
    let layout = Layout::build(prog, rows, width, &mask, &ids).unwrap();
    let values = prog
        .inputs
        .iter()
        .map(|input| match &input.kind {
            InputKind::Value { elem, space, .. } => {
                let n = layout.size(*space);
                Some(
                    (0..n)
                        .map(|_| match elem {
                            // Values exactly representable in f32, so both sides see one input.
                            Elem::F32 => (rng.unit() * 4.0 - 2.0) as f32 as f64,
                            Elem::Bool => f64::from(u8::from(rng.chance(0.6))),
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
    // Loose tolerances (the 1x1 batch) are absolute below magnitude 1.
    let floor = if rel > 1e-3 { 1.0 } else { 1e-6 };
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs()).max(floor)
}

/// Compares two evaluations; vectors relative to their largest entry.
fn compare(want: &Evaluation, got: &Evaluation, rel: f64) -> Result<(), String> {
    let vec_close = |what: &str, a: &[f64], b: &[f64]| -> Result<(), String> {
        if a.len() != b.len() {
            return Err(format!("{what}: length {} vs {}", a.len(), b.len()));
        }
        let scale = a
            .iter()
            .filter(|x| x.is_finite())
            .fold(0f64, |m, x| m.max(x.abs()));
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            if !close(*x, *y, rel) && (x - y).abs() > rel * scale {
                return Err(format!("{what}[{k}]: {x} vs {y} (scale {scale})"));
            }
        }
        Ok(())
    };
    match (want.loss, got.loss) {
        (Some(a), Some(b)) if !close(a, b, rel) => return Err(format!("loss {a} vs {b}")),
        _ => {}
    }
    for ((n, a), (_, b)) in want.metrics.iter().zip(&got.metrics) {
        if !close(*a, *b, rel) {
            return Err(format!("metric {n}: {a} vs {b}"));
        }
    }
    for ((i, a), (_, b)) in want.grads.iter().zip(&got.grads) {
        vec_close(&format!("grad {}", i.0), a, b)?;
    }
    for ((n, _, a), (_, _, b)) in want.outputs.iter().zip(&got.outputs) {
        vec_close(&format!("output {n}"), a, b)?;
    }
    for ((n, a), (_, b)) in want.states.iter().zip(&got.states) {
        if !close(*a, *b, rel) {
            return Err(format!("state {n}: {a} vs {b}"));
        }
    }
    Ok(())
}

fn opencl() -> Option<OpenClBackend> {
    match OpenClBackend::new() {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                !required("RLOBJ_REQUIRE_OPENCL"),
                "RLOBJ_REQUIRE_OPENCL=1 but: {e}"
            );
            eprintln!("skipping OpenCL test: {e}");
            None
        }
    }
}

/// Relative tolerance of the f32 OpenCL kernels against the f64 interpreter.
const REL: f64 = 1e-5;

#[test]
fn catalog_opencl_matches_interpreter() {
    let Some(mut cl) = opencl() else { return };
    eprintln!("OpenCL device: {}", cl.device_name());
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in catalog() {
        let (prog, params, states) = match compile(&path) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{}: does not compile yet: {e}", path.display());
                continue;
            }
        };
        let mut ok = true;
        let t0 = std::time::Instant::now();
        for (seed, rows, width) in [(1u64, 11usize, 23usize), (2, 16, 40), (3, 5, 7), (4, 1, 1)] {
            let bound = edge_bound(&prog, seed, rows, width);
            let Ok(want) = Interpreter::new().evaluate(&prog, &bound, &params, &states) else {
                continue;
            };
            match cl.evaluate(&prog, &bound, &params, &states) {
                Ok(got) => {
                    // A 1x1 batch has at most one token: verl's `n + 1e-8` style epsilons are
                    // below f32 resolution there, so f32 and f64 legitimately differ by ~1e-3.
                    // There only success is required: whitening a single token gives an
                    // advantage of exactly 0 in f32 but ~1e-4·x in f64, and thresholded
                    // metrics (clip fractions) then flip.
                    if rows * width == 1 {
                        continue;
                    }
                    if let Err(e) = compare(&want, &got, REL) {
                        failures.push(format!(
                            "{}: seed {seed} ({rows}x{width}): {e}",
                            path.display()
                        ));
                        ok = false;
                        break;
                    }
                }
                Err(e) => {
                    failures.push(format!("{}: opencl error: {e}", path.display()));
                    ok = false;
                    break;
                }
            }
        }
        eprintln!(
            "{}: {} ({:.2?})",
            path.display(),
            if ok { "ok" } else { "FAIL" },
            t0.elapsed()
        );
        if ok {
            checked += 1;
        }
    }
    eprintln!(
        "opencl parity: {checked} objectives match, {} fail",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `RLOBJ_DUMP=objectives/x.obj cargo test --test kernels dump -- --nocapture` prints the
/// plan and OpenCL text of one objective (debugging aid; does nothing otherwise).
#[test]
#[ignore = "debugging aid: set RLOBJ_DUMP and run with --ignored"]
fn dump() {
    let Ok(p) = std::env::var("RLOBJ_DUMP") else {
        return;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(p);
    let (prog, _, _) = compile(&path).unwrap();
    for kind in ["plan", "opencl"] {
        let out = rlobj_runtime::emit::emit(&prog, kind, 80).unwrap();
        println!("{}", String::from_utf8_lossy(&out));
    }
}

/// `RLOBJ_ONE=objectives/x.obj`: parity of one objective on OpenCL (debugging aid).
#[test]
#[ignore = "debugging aid: set RLOBJ_ONE and run with --ignored"]
fn one() {
    let Ok(p) = std::env::var("RLOBJ_ONE") else {
        return;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(p);
    let (prog, params, states) = compile(&path).unwrap();
    let mut cl = OpenClBackend::new().unwrap();
    let bound = edge_bound(&prog, 1, 11, 23);
    let want = Interpreter::new()
        .evaluate(&prog, &bound, &params, &states)
        .unwrap();
    let got = cl.evaluate(&prog, &bound, &params, &states).unwrap();
    compare(&want, &got, REL).unwrap();
}

fn nvrtc_or_skip() -> bool {
    match rlobj_runtime::nvrtc::nvrtc() {
        Ok(nv) => {
            eprintln!("NVRTC {}.{}", nv.version.0, nv.version.1);
            true
        }
        Err(e) => {
            assert!(
                !required("RLOBJ_REQUIRE_NVRTC"),
                "RLOBJ_REQUIRE_NVRTC=1 but: {e}"
            );
            eprintln!("skipping NVRTC test: {e}");
            false
        }
    }
}

/// Every catalog objective's CUDA compiles to PTX and to CUBIN for sm_80 and sm_90, and
/// ptxas accepts the PTX for both (no cache: times are real compiles).
#[test]
fn catalog_cuda_compiles_with_nvrtc() {
    use rlobj_runtime::nvrtc::{compile_with_cache, ptxas_check, ptxas_path, Output};
    if !nvrtc_or_skip() {
        return;
    }
    let ptxas = ptxas_path();
    if ptxas.is_none() {
        assert!(!required("RLOBJ_REQUIRE_NVRTC"), "ptxas not found");
        eprintln!("ptxas not found: PTX is not assembled");
    }
    let mut failures = Vec::new();
    let (mut n, mut ptx_ms, mut cubin_ms) = (0, 0.0f64, 0.0f64);
    for path in catalog() {
        let Ok((prog, _, _)) = compile(&path) else {
            continue;
        };
        let plan = rlobj_ir::schedule::schedule(&prog).unwrap();
        let src = rlobj_back::cstyle::write_cuda(&prog, &plan).unwrap();
        let res = (|| -> Result<(), String> {
            let ptx = compile_with_cache(&src, 80, Output::Ptx, None).map_err(|e| e.to_string())?;
            ptx_ms += ptx.millis;
            for arch in [80, 90] {
                let c = compile_with_cache(&src, arch, Output::Cubin, None)
                    .map_err(|e| e.to_string())?;
                cubin_ms += c.millis;
                if c.bytes.len() < 16 || &c.bytes[..4] != b"\x7fELF" {
                    return Err(format!("sm_{arch}: CUBIN is not an ELF image"));
                }
                if ptxas.is_some() {
                    ptxas_check(&ptx.ptx(), arch).map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => n += 1,
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    eprintln!(
        "nvrtc: {n} objectives; mean PTX {:.1} ms, mean CUBIN {:.1} ms",
        ptx_ms / n.max(1) as f64,
        cubin_ms / (2 * n.max(1)) as f64
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(n >= 15, "only {n} catalog objectives compiled");
}

/// The disk cache serves a second compile, and a corrupted entry is recompiled.
#[test]
fn nvrtc_cache_survives_corruption() {
    use rlobj_runtime::nvrtc::{compile_with_cache, Output};
    if !nvrtc_or_skip() {
        return;
    }
    let path = catalog()
        .into_iter()
        .find(|p| p.ends_with("grpo.obj"))
        .unwrap();
    let (prog, _, _) = compile(&path).unwrap();
    let plan = rlobj_ir::schedule::schedule(&prog).unwrap();
    let src = rlobj_back::cstyle::write_cuda(&prog, &plan).unwrap();
    let dir = std::env::temp_dir().join(format!("rlobj-nvrtc-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = compile_with_cache(&src, 90, Output::Ptx, Some(&dir)).unwrap();
    assert!(!a.cached);
    let b = compile_with_cache(&src, 90, Output::Ptx, Some(&dir)).unwrap();
    assert!(b.cached && b.bytes == a.bytes);
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let mut data = std::fs::read(&p).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&p, data).unwrap();
    }
    let c = compile_with_cache(&src, 90, Output::Ptx, Some(&dir)).unwrap();
    assert!(!c.cached && c.bytes == a.bytes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// NVRTC errors name the generated line and the node's `.obj` span.
#[test]
fn nvrtc_errors_map_to_spans() {
    if !nvrtc_or_skip() {
        return;
    }
    let path = catalog()
        .into_iter()
        .find(|p| p.ends_with("grpo.obj"))
        .unwrap();
    let (prog, _, _) = compile(&path).unwrap();
    let plan = rlobj_ir::schedule::schedule(&prog).unwrap();
    let mut src = rlobj_back::cstyle::write_cuda(&prog, &plan).unwrap();
    // Break the line right after the first node comment.
    let (line, _, _) = src.lines[0];
    let mut lines: Vec<String> = src.text.lines().map(String::from).collect();
    lines[line as usize] = format!("{} undefined_symbol_here;", lines[line as usize]);
    src.text = lines.join("\n");
    let err =
        rlobj_runtime::nvrtc::compile_with_cache(&src, 80, rlobj_runtime::nvrtc::Output::Ptx, None)
            .unwrap_err()
            .to_string();
    assert!(err.contains("undefined_symbol_here"), "{err}");
    assert!(err.contains(".obj file"), "{err}");
}

/// Snapshots of the plan, CUDA and OpenCL text of catalog objectives.
#[test]
fn catalog_snapshots() {
    let mut n = 0;
    // The first 16 top-level objectives (snapshots of all 60 would be megabytes of text).
    for path in catalog()
        .into_iter()
        .filter(|p| {
            !p.to_string_lossy().contains("/verl/") && !p.to_string_lossy().contains("/trl/")
        })
        .take(16)
    {
        let Ok((prog, _, _)) = compile(&path) else {
            continue;
        };
        let name = label(&path);
        for kind in ["plan", "cuda", "opencl"] {
            let out = rlobj_runtime::emit::emit(&prog, kind, 80).unwrap();
            insta::assert_snapshot!(format!("{name}.{kind}"), String::from_utf8_lossy(&out));
        }
        n += 1;
    }
    assert!(n >= 15, "only {n} catalog objectives compiled");
}

/// Running the same batch twice gives bit-identical results, and so does a different
/// number of work-groups' worth of rows.
#[test]
fn opencl_is_bit_identical_run_to_run() {
    let Some(mut cl) = opencl() else { return };
    for path in catalog().iter().take(6) {
        let Ok((prog, params, states)) = compile(path) else {
            continue;
        };
        let bound = edge_bound(&prog, 7, 17, 29);
        let a = cl.evaluate(&prog, &bound, &params, &states).unwrap();
        let b = cl.evaluate(&prog, &bound, &params, &states).unwrap();
        let bits = |e: &Evaluation| -> Vec<u64> {
            let mut v: Vec<u64> = e.loss.iter().map(|x| x.to_bits()).collect();
            v.extend(e.metrics.iter().map(|(_, x)| x.to_bits()));
            for (_, g) in &e.grads {
                v.extend(g.iter().map(|x| x.to_bits()));
            }
            v
        };
        assert_eq!(bits(&a), bits(&b), "{}", path.display());
    }
}

/// `--backend cuda` against the interpreter on the catalog. Needs a GPU and a build with
/// the `cuda` feature: see docs/cuda.md.
#[test]
#[ignore]
fn cuda_catalog_matches_interpreter() {
    let mut cuda = rlobj_runtime::backends::backend_by_name("cuda").unwrap();
    let mut failures = Vec::new();
    for path in catalog() {
        let Ok((prog, params, states)) = compile(&path) else {
            continue;
        };
        for (seed, rows, width) in [(1u64, 11usize, 23usize), (2, 64, 300), (4, 1, 1)] {
            let bound = edge_bound(&prog, seed, rows, width);
            let Ok(want) = Interpreter::new().evaluate(&prog, &bound, &params, &states) else {
                continue;
            };
            match cuda.evaluate(&prog, &bound, &params, &states) {
                Ok(got) => {
                    if let Err(e) = compare(&want, &got, 1e-4) {
                        failures.push(format!("{}: seed {seed}: {e}", path.display()));
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
