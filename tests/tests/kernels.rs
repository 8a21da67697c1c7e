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
    edge_batch(prog, seed, rows, width).0
}

/// [`edge_bound`] with the mask and id tensors it was laid out from.
type Ids = Vec<(rlobj_ir::InputId, Vec<i64>)>;
fn edge_batch(prog: &Program, seed: u64, rows: usize, width: usize) -> (Bound, Vec<bool>, Ids) {
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
    (Bound { layout, values }, mask, ids)
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

/// The catalog objective at `objectives/NAME`.
fn objective(name: &str) -> PathBuf {
    catalog()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|f| f == name))
        .unwrap()
}

/// Value inputs' storage types for a typed run: float token inputs alternate f16 and bf16.
fn half_dtypes(prog: &Program) -> Vec<rlobj_back::cstyle::InputDtype> {
    use rlobj_back::cstyle::InputDtype;
    let mut next_f16 = true;
    prog.inputs
        .iter()
        .map(|inp| match inp.kind {
            InputKind::Value {
                elem: Elem::F32,
                space: rlobj_ir::SpaceId::TOK,
                ..
            } => {
                next_f16 = !next_f16;
                if next_f16 {
                    InputDtype::BF16
                } else {
                    InputDtype::F16
                }
            }
            _ => InputDtype::F32,
        })
        .collect()
}

/// `bound` with every value rounded to its input's storage type.
fn rounded(bound: &Bound, dtypes: &[rlobj_back::cstyle::InputDtype]) -> Bound {
    use rlobj_back::cstyle::InputDtype;
    let mut b = bound.clone();
    for (i, v) in b.values.iter_mut().enumerate() {
        let Some(v) = v else { continue };
        for x in v.iter_mut() {
            *x = match dtypes.get(i) {
                Some(InputDtype::F16) => half::f16::from_f64(*x).to_f64(),
                Some(InputDtype::BF16) => half::bf16::from_f64(*x).to_f64(),
                _ => *x,
            };
        }
    }
    b
}

/// f16 and bf16 token inputs are read by the kernels as 16-bit data (`vload_half`, bf16
/// bits << 16) and computed in f32: the result equals the interpreter's on the values
/// rounded to each type, and is the same whether the host hands over rounded or unrounded
/// values (the rounding happens in the stored type, not in the kernel).
#[test]
fn opencl_reads_f16_and_bf16_inputs() {
    let Some(mut cl) = opencl() else { return };
    for name in ["grpo.obj", "ppo.obj", "dapo.obj"] {
        let (prog, params, states) = compile(&objective(name)).unwrap();
        let dtypes = half_dtypes(&prog);
        assert!(
            dtypes.contains(&rlobj_back::cstyle::InputDtype::F16)
                && dtypes.contains(&rlobj_back::cstyle::InputDtype::BF16),
            "{name}: needs two float token inputs"
        );
        let bound = edge_bound(&prog, 5, 16, 40);
        let r = rounded(&bound, &dtypes);
        assert_ne!(r.values, bound.values, "{name}: rounding changed nothing");
        let want = Interpreter::new()
            .evaluate(&prog, &r, &params, &states)
            .unwrap();
        let got = cl
            .evaluate_typed(&prog, &r, &params, &states, &dtypes)
            .unwrap();
        compare(&want, &got, REL).unwrap_or_else(|e| panic!("{name}: {e}"));
        let raw = cl
            .evaluate_typed(&prog, &bound, &params, &states, &dtypes)
            .unwrap();
        assert_eq!(raw, got, "{name}: kernel did not read the 16-bit values");
    }
}

/// CUDA text with f16/bf16 inputs includes the half headers and compiles with NVRTC (PTX and
/// ptxas for sm_80 and sm_90); all-f32 text includes neither header.
#[test]
fn nvrtc_compiles_half_inputs() {
    use rlobj_runtime::nvrtc::{compile_with_cache, ptxas_check, ptxas_path, Output};
    let (prog, _, _) = compile(&objective("grpo.obj")).unwrap();
    let plan = rlobj_ir::schedule::schedule(&prog).unwrap();
    let f32_src = rlobj_back::cstyle::write_cuda(&prog, &plan).unwrap();
    assert!(!f32_src.text.contains("cuda_fp16.h") && !f32_src.text.contains("cuda_bf16.h"));
    let opts = rlobj_back::cstyle::WriteOptions {
        dtypes: half_dtypes(&prog),
    };
    let src = rlobj_back::cstyle::write(&prog, &plan, &rlobj_back::cuda::TARGET, &opts).unwrap();
    assert!(src.text.contains("#include <cuda_fp16.h>"));
    assert!(src.text.contains("#include <cuda_bf16.h>"));
    assert!(src.text.contains("__bfloat162float(") && src.text.contains("__half2float("));
    if !nvrtc_or_skip() {
        return;
    }
    let ptx = compile_with_cache(&src, 80, Output::Ptx, None).unwrap();
    for arch in [80, 90] {
        compile_with_cache(&src, arch, Output::Cubin, None).unwrap();
        if ptxas_path().is_some() {
            ptxas_check(&ptx.ptx(), arch).unwrap();
        }
    }
}

/// Batch-wide reductions run in two phases (fixed chunks of `cstyle::CHUNK`, then one block
/// in chunk order): with more rows than one chunk holds, results match the interpreter and
/// are bit-identical run to run.
#[test]
fn opencl_two_phase_batch_reductions() {
    let Some(mut cl) = opencl() else { return };
    let chunk = rlobj_back::cstyle::CHUNK as usize;
    for name in ["gspo.obj", "dpo.obj"] {
        let (prog, params, states) = compile(&objective(name)).unwrap();
        let plan = rlobj_ir::schedule::schedule(&prog).unwrap();
        let src = rlobj_back::cstyle::write_opencl(&prog, &plan).unwrap();
        assert!(
            src.kernels
                .iter()
                .any(|k| matches!(k.grid, rlobj_back::cstyle::Grid::Chunks(_))),
            "{name}: no two-phase reduction in the plan"
        );
        let bound = edge_bound(&prog, 9, 4 * chunk + 37, 3);
        assert!(
            src.part_len(&bound.layout) >= 6,
            "{name}: fewer than 2 chunks"
        );
        let want = Interpreter::new()
            .evaluate(&prog, &bound, &params, &states)
            .unwrap();
        let a = cl.evaluate(&prog, &bound, &params, &states).unwrap();
        compare(&want, &a, REL).unwrap_or_else(|e| panic!("{name}: {e}"));
        let b = cl.evaluate(&prog, &bound, &params, &states).unwrap();
        assert_eq!(a, b, "{name}: not bit-identical run to run");
    }
}

/// The block tree at other work-group sizes: 16 (one partial group of 32), 64 and 256 (the
/// CUDA block size: the cross-group stage that warp 0 does with shuffles on CUDA).
#[test]
fn opencl_block_sizes_match_interpreter() {
    for block in [16usize, 64, 256] {
        let Some(cl) = opencl() else { return };
        let mut cl = cl.with_block(block).unwrap();
        for name in ["grpo.obj", "ppo.obj", "gspo.obj", "siren.obj"] {
            let (prog, params, states) = compile(&objective(name)).unwrap();
            let bound = edge_bound(&prog, 2, 16, 300);
            let want = Interpreter::new()
                .evaluate(&prog, &bound, &params, &states)
                .unwrap();
            let got = cl.evaluate(&prog, &bound, &params, &states).unwrap();
            compare(&want, &got, REL).unwrap_or_else(|e| panic!("{name}, block {block}: {e}"));
        }
    }
}

/// Launch tests on a GPU (feature `cuda`; see docs/cuda.md for the one command).
#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use candle_core::{DType, Device, Tensor, Var};
    use rlobj_ir::{SpaceId, SpaceKind};

    /// The batch of [`edge_batch`] as named candle tensors on `dev` (value inputs in `dt`
    /// for float token inputs, f32 otherwise), plus which are `@grad`.
    fn tensors(
        prog: &Program,
        seed: u64,
        rows: usize,
        width: usize,
        dev: &Device,
        dt: DType,
    ) -> (Bound, Vec<(String, Tensor, bool)>) {
        let (bound, mask, ids) = edge_batch(prog, seed, rows, width);
        let l = &bound.layout;
        let mut out = Vec::new();
        let m: Vec<f32> = mask.iter().map(|&v| f32::from(u8::from(v))).collect();
        out.push((
            "mask".to_string(),
            Tensor::from_vec(m, (rows, width), dev).unwrap(),
            false,
        ));
        let tok_row = l.map(prog, SpaceId::TOK, SpaceId::SEQ).unwrap_or_default();
        for (i, inp) in prog.inputs.iter().enumerate() {
            match &inp.kind {
                InputKind::Ids { space } => {
                    let v = ids.iter().find(|(k, _)| k.index() == i).unwrap().1.clone();
                    let shape =
                        if matches!(prog.spaces[space.index()].kind, SpaceKind::RowGroups { .. }) {
                            vec![rows]
                        } else {
                            vec![rows, width]
                        };
                    out.push((
                        inp.name.clone(),
                        Tensor::from_vec(v, shape, dev).unwrap(),
                        false,
                    ));
                }
                InputKind::Value {
                    space, grad, elem, ..
                } => {
                    let v = bound.values[i].as_ref().unwrap();
                    let kind = &prog.spaces[space.index()].kind;
                    let (data, shape): (Vec<f32>, Vec<usize>) = match kind {
                        SpaceKind::Batch => (vec![v[0] as f32], vec![]),
                        SpaceKind::Seq => (v.iter().map(|&x| x as f32).collect(), vec![rows]),
                        SpaceKind::RowGroups { .. } => {
                            let map = l.map(prog, SpaceId::SEQ, *space).unwrap();
                            (
                                map.iter().map(|&g| v[g as usize] as f32).collect(),
                                vec![rows],
                            )
                        }
                        SpaceKind::Tok | SpaceKind::RowSegments { .. } => {
                            let map = l
                                .map(prog, SpaceId::TOK, *space)
                                .unwrap_or_else(|| (0..v.len() as u32).collect());
                            let mut d = vec![0f32; rows * width];
                            for k in 0..l.size(SpaceId::TOK) {
                                d[tok_row[k] as usize * width + l.tok_pos[k] as usize] =
                                    v[map[k] as usize] as f32;
                            }
                            (d, vec![rows, width])
                        }
                    };
                    let t = Tensor::from_vec(data, shape, dev).unwrap();
                    let t = if *space == SpaceId::TOK && *elem == Elem::F32 {
                        t.to_dtype(dt).unwrap()
                    } else {
                        t
                    };
                    out.push((inp.name.clone(), t, *grad));
                }
            }
        }
        (bound, out)
    }

    /// The candle op on CUDA tensors: loss equals the interpreter's, and `loss.backward()`
    /// gives the compiled gradient (what `rlobj run` reports) at valid tokens, 0 at padding.
    fn op_parity(path: &Path, dev: &Device, dt: DType, rel: f64) -> Result<(), String> {
        let obj = rlobj_runtime::api::Objective::compile(path).map_err(|e| format!("{e:?}"))?;
        let prog = obj.program().clone();
        if prog.grads.is_empty() || prog.loss.is_none() {
            return Ok(());
        }
        let (_, named) = tensors(&prog, 3, 37, 129, dev, dt);
        let vars: Vec<(String, Var)> = named
            .iter()
            .filter(|x| x.2)
            .map(|(n, t, _)| (n.clone(), Var::from_tensor(t).unwrap()))
            .collect();
        let mut ts: Vec<(&str, &Tensor)> = named
            .iter()
            .filter(|x| !x.2)
            .map(|(n, t, _)| (n.as_str(), t))
            .collect();
        for (n, v) in &vars {
            ts.push((n.as_str(), v.as_tensor()));
        }
        // The interpreter sees the values the GPU sees (rounded to `dt`), bound on the host.
        let bound = rlobj_runtime::batch::bind_tensors(&prog, &ts).map_err(|e| e.0)?;
        let want = Interpreter::new()
            .evaluate(&prog, &bound, obj.params(), obj.states())
            .map_err(|e| e.0)?;
        let cpu = std::sync::Arc::new(
            rlobj_runtime::cpu::CpuProgram::compile(&prog, false).map_err(|e| e.0)?,
        );
        let loss = rlobj_runtime::candle_op::objective_loss(cpu, &ts, obj.params(), obj.states())
            .map_err(|e| e.0)?;
        let grads = loss.backward().map_err(|e| e.to_string())?;
        let lv = f64::from(
            loss.to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        );
        let wl = want.loss.unwrap();
        if !close(lv, wl, rel) {
            return Err(format!("loss {lv} vs {wl}"));
        }
        let l = &bound.layout;
        for (i, wg) in &want.grads {
            let name = &prog.inputs[i.index()].name;
            let var = &vars.iter().find(|(n, _)| n == name).unwrap().1;
            let g: Vec<f32> = grads
                .get(var.as_tensor())
                .ok_or(format!("no gradient for `{name}`"))?
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let scale = wg.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
            if g.len() == l.rows * l.width && wg.len() == l.size(SpaceId::TOK) {
                for r in 0..l.rows {
                    for k in l.row_start[r]..l.row_start[r + 1] {
                        let got = f64::from(g[r * l.width + l.tok_pos[k] as usize]);
                        if (got - wg[k]).abs() > rel * scale {
                            return Err(format!("d/d{name}[{k}]: {got} vs {}", wg[k]));
                        }
                    }
                }
            } else {
                for (k, (a, b)) in g.iter().zip(wg).enumerate() {
                    if (f64::from(*a) - b).abs() > rel * scale {
                        return Err(format!("d/d{name}[{k}]: {a} vs {b}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Backward of the op on CUDA == the interpreter's gradients, for every catalog
    /// objective with a `@grad` input (f32 inputs), and for bf16/f16 token inputs on three
    /// (tolerances of the gradient's dtype).
    #[test]
    #[ignore = "needs a GPU and --features cuda (docs/cuda.md)"]
    fn cuda_op_backward_equals_run_gradients() {
        let dev = Device::new_cuda(0).unwrap();
        let mut failures = Vec::new();
        for path in catalog() {
            if let Err(e) = op_parity(&path, &dev, DType::F32, 1e-4) {
                failures.push(format!("{}: f32: {e}", path.display()));
            }
        }
        for name in ["grpo.obj", "ppo.obj", "dapo.obj"] {
            // The gradient comes back in the input's dtype: a few units of its precision
            // (bf16 keeps 8 bits, f16 11), relative to the largest entry.
            for (dt, rel) in [(DType::BF16, 1e-2), (DType::F16, 2e-3)] {
                if let Err(e) = op_parity(&objective(name), &dev, dt, rel) {
                    failures.push(format!("{name}: {dt:?}: {e}"));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Achieved bandwidth of the fused kernels on a large batch against the plan's bytes
    /// (printed; the figure to compare with the device's peak). Inputs stay on the device.
    #[test]
    #[ignore = "needs a GPU and --features cuda (docs/cuda.md)"]
    fn cuda_bandwidth() {
        let dev = Device::new_cuda(0).unwrap();
        let (rows, width) = (512usize, 4096usize);
        for name in ["grpo.obj", "ppo.obj", "dapo.obj", "gspo.obj"] {
            let (prog, params, states) = compile(&objective(name)).unwrap();
            let plan = rlobj_ir::schedule::schedule(&prog).unwrap();
            let (bound, named) = tensors(&prog, 11, rows, width, &dev, DType::F32);
            let ts: Vec<(&str, &Tensor)> = named.iter().map(|(n, t, _)| (n.as_str(), t)).collect();
            let e = rlobj_runtime::cuda::evaluate_tensors(&prog, &ts, &params, &states).unwrap();
            let secs =
                rlobj_runtime::cuda::time_launches(&prog, &ts, &params, &states, 20).unwrap();
            let ntok = bound.layout.size(SpaceId::TOK);
            let bytes = plan.bytes_per_token as f64 * ntok as f64;
            eprintln!(
                "{name}: {rows}x{width} ({ntok} tokens): kernels {:.3} ms, {} B/token, {:.1} GB/s; loss {}",
                secs * 1e3,
                plan.bytes_per_token,
                bytes / secs / 1e9,
                e.loss.to_scalar::<f32>().unwrap()
            );
        }
    }
}
