//! The `rlobj` CLI, the batch binder and the library API, driven in-process through
//! `rlobj_runtime::cli::main_with` (the binary is a thin layer over it), plus a few
//! subprocess checks when a built `target/debug/rlobj` is present.

use rlobj_runtime::api::{Error, Objective};
use rlobj_runtime::backends::backend_by_name;
use rlobj_runtime::cli::{main_with, Io};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A fresh scratch directory per test.
fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "rlobj-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const OBJ: &str = r#"/// A test objective.
objective t {
    input logp: f32[tok] @grad
    input old_logp: f32[tok]
    input adv: f32[seq]
    input w: f32[tok] = 1.0
    input scale: f32 = 1.0
    input group: id[seq] as grp
    input turn: id[tok] as turn
    param eps: f32 = 0.2
    const mode: "a" | "b" = "a"
    const twice: bool = false
    state lam: f32 = 0.5
    let r = exp(logp - old_logp)
    let base = if mode == "a" { r * adv } else { r * adv * 2 }
    let l = if twice { base * 2 } else { base }
    loss = sum[batch](l * w) / count[batch](r) * scale + eps * lam
    metric m = mean[batch](r)
    output per_tok = r
    output per_seq = sum[seq](r)
    output per_grp = mean[grp](adv)
    output per_turn = sum[turn](logp)
    output total = sum[batch](r)
    update lam = lam + 1
}
"#;

const TRANSFORM: &str = r#"objective tr {
    input token_rewards: f32[tok]
    output adv = cumsum_rev[seq](token_rewards)
}
"#;

const NESTED: &str = r#"objective nest {
    input logp: f32[tok] @grad
    input group: id[seq] as grp
    input sub: id[seq] as sg in grp
    input gv: f32[grp]
    loss = sum[batch](logp) + sum[batch](gv)
}
"#;

/// A tensor for the tiny safetensors writer below.
#[derive(Clone)]
struct T {
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32t(shape: &[usize], v: &[f32]) -> T {
    T {
        dtype: "F32",
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn f64t(shape: &[usize], v: &[f64]) -> T {
    T {
        dtype: "F64",
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn i64t(shape: &[usize], v: &[i64]) -> T {
    T {
        dtype: "I64",
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn i32t(shape: &[usize], v: &[i32]) -> T {
    T {
        dtype: "I32",
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn u64t(shape: &[usize], v: &[u64]) -> T {
    T {
        dtype: "U64",
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn boolt(shape: &[usize], v: &[bool]) -> T {
    T {
        dtype: "BOOL",
        shape: shape.to_vec(),
        bytes: v.iter().map(|&b| u8::from(b)).collect(),
    }
}
fn u8t(shape: &[usize], v: &[u8]) -> T {
    T {
        dtype: "U8",
        shape: shape.to_vec(),
        bytes: v.to_vec(),
    }
}
fn bf16t(shape: &[usize], v: &[f32]) -> T {
    T {
        dtype: "BF16",
        shape: shape.to_vec(),
        bytes: v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}
fn f16t(shape: &[usize], v: &[f32]) -> T {
    T {
        dtype: "F16",
        shape: shape.to_vec(),
        bytes: v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

/// Serialises tensors in the safetensors format (header JSON padded to 8 bytes).
fn st_bytes(tensors: &[(&str, T)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, t) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + t.bytes.len()]}),
        );
        off += t.bytes.len();
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    for (_, t) in tensors {
        out.extend(&t.bytes);
    }
    out
}

const B: usize = 3;
const TW: usize = 4;
/// Row lengths 4, 2, 1.
const MASK: [f32; 12] = [1., 1., 1., 1., 1., 1., 0., 0., 1., 0., 0., 0.];

/// The standard good batch for [`OBJ`] (NaN in the padding of `logp`, on purpose).
fn good() -> Vec<(&'static str, T)> {
    let nan = f32::NAN;
    vec![
        ("mask", f32t(&[B, TW], &MASK)),
        (
            "logp",
            f32t(
                &[B, TW],
                &[
                    -1.0, -0.5, -2.0, -0.1, -0.3, -0.7, nan, nan, -1.5, nan, nan, nan,
                ],
            ),
        ),
        (
            "old_logp",
            f32t(
                &[B, TW],
                &[-1.1, -0.4, -2.0, -0.2, -0.3, -0.9, 0., 0., -1.4, 0., 0., 0.],
            ),
        ),
        ("adv", f32t(&[B], &[1.0, -1.0, 0.5])),
        ("group", i64t(&[B], &[7, 7, 3])),
        (
            "turn",
            i64t(&[B, TW], &[0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
        ),
        ("extra_unused", f32t(&[2], &[1.0, 2.0])),
    ]
}

fn with(mut b: Vec<(&'static str, T)>, name: &'static str, t: T) -> Vec<(&'static str, T)> {
    b.retain(|(n, _)| *n != name);
    b.push((name, t));
    b
}
fn without(mut b: Vec<(&'static str, T)>, name: &str) -> Vec<(&'static str, T)> {
    b.retain(|(n, _)| *n != name);
    b
}

struct Case {
    dir: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = scratch();
        std::fs::write(dir.join("t.obj"), OBJ).unwrap();
        std::fs::write(dir.join("tr.obj"), TRANSFORM).unwrap();
        std::fs::write(dir.join("nest.obj"), NESTED).unwrap();
        Case { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn batch(&self, name: &str, tensors: &[(&str, T)]) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, st_bytes(tensors)).unwrap();
        p.display().to_string()
    }
}

/// Runs the CLI in-process: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut full = vec!["rlobj"];
    full.extend_from_slice(args);
    let code = main_with(
        full,
        &mut Io {
            out: &mut out,
            err: &mut err,
            color: false,
        },
    );
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// `rlobj run t.obj --batch <tensors> …` expected to fail; returns stderr.
fn run_err(c: &Case, tensors: &[(&str, T)], extra: &[&str]) -> String {
    let b = c.batch("b.safetensors", tensors);
    let obj = c.path("t.obj");
    let mut args = vec!["run", obj.as_str(), "--batch", b.as_str(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(&args);
    assert_eq!(code, 1, "expected exit 1; stdout: {out}\nstderr: {err}");
    assert!(out.is_empty(), "nothing on stdout on error: {out}");
    err
}

fn run_json(c: &Case, obj: &str, tensors: &[(&str, T)], extra: &[&str]) -> serde_json::Value {
    let b = c.batch("ok.safetensors", tensors);
    let obj = c.path(obj);
    let mut args = vec!["run", obj.as_str(), "--batch", b.as_str(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "stderr: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

// ---------------------------------------------------------------------------------------
// Bad batches: every error names the tensor
// ---------------------------------------------------------------------------------------

#[test]
fn missing_input_names_it_and_lists_the_batch() {
    let c = Case::new();
    let e = run_err(&c, &without(good(), "old_logp"), &[]);
    assert!(e.contains("`old_logp`") && e.contains("missing"), "{e}");
    assert!(
        e.contains("logp") && e.contains("mask") && e.contains("extra_unused"),
        "lists the batch: {e}"
    );
}

#[test]
fn missing_mask_is_named() {
    let c = Case::new();
    let e = run_err(&c, &without(good(), "mask"), &[]);
    assert!(e.contains("`mask`") && e.contains("missing"), "{e}");
}

#[test]
fn missing_id_input_is_named() {
    let c = Case::new();
    let e = run_err(&c, &without(good(), "group"), &[]);
    assert!(e.contains("`group`"), "{e}");
}

#[test]
fn wrong_mask_rank_is_named() {
    let c = Case::new();
    let e = run_err(&c, &with(good(), "mask", f32t(&[12], &MASK)), &[]);
    assert!(e.contains("`mask`") && e.contains("rank"), "{e}");
}

#[test]
fn wrong_token_shape_shows_expected_and_found() {
    let c = Case::new();
    let e = run_err(
        &c,
        &with(good(), "old_logp", f32t(&[B, 5], &[0.0; 15])),
        &[],
    );
    assert!(
        e.contains("`old_logp`") && e.contains("[3, 4]") && e.contains("[3, 5]"),
        "{e}"
    );
    assert!(
        e.contains("B = 3") && e.contains("T = 4"),
        "B and T from mask: {e}"
    );
}

#[test]
fn wrong_row_shape_is_named() {
    let c = Case::new();
    let e = run_err(&c, &with(good(), "adv", f32t(&[2], &[1.0, 2.0])), &[]);
    assert!(
        e.contains("`adv`") && e.contains("[3]") && e.contains("[2]"),
        "{e}"
    );
}

#[test]
fn wrong_scalar_shape_is_named() {
    let c = Case::new();
    let e = run_err(&c, &with(good(), "scale", f32t(&[2], &[1.0, 2.0])), &[]);
    assert!(e.contains("`scale`") && e.contains("[]"), "{e}");
}

#[test]
fn wrong_id_shape_is_named() {
    let c = Case::new();
    let e = run_err(&c, &with(good(), "turn", i64t(&[B], &[0, 0, 0])), &[]);
    assert!(e.contains("`turn`") && e.contains("[3, 4]"), "{e}");
}

#[test]
fn int_data_for_f32_input_is_a_dtype_error() {
    let c = Case::new();
    let e = run_err(&c, &with(good(), "adv", i64t(&[B], &[1, 2, 3])), &[]);
    assert!(
        e.contains("`adv`") && e.contains("dtype") && e.contains("I64"),
        "{e}"
    );
}

#[test]
fn float_ids_are_a_dtype_error() {
    let c = Case::new();
    let e = run_err(
        &c,
        &with(good(), "group", f32t(&[B], &[0.0, 0.0, 1.0])),
        &[],
    );
    assert!(e.contains("`group`") && e.contains("integer"), "{e}");
}

#[test]
fn unsupported_dtype_is_named() {
    let c = Case::new();
    let t = T {
        dtype: "F8_E4M3",
        shape: vec![B],
        bytes: vec![0; B],
    };
    let e = run_err(&c, &with(good(), "adv", t), &[]);
    assert!(e.contains("`adv`") && e.contains("not supported"), "{e}");
}

#[test]
fn nan_at_a_valid_token_is_named_with_its_position() {
    let c = Case::new();
    let mut v = [
        -1.1f32, -0.4, -2.0, -0.2, -0.3, -0.9, 0., 0., -1.4, 0., 0., 0.,
    ];
    v[5] = f32::NAN;
    let e = run_err(&c, &with(good(), "old_logp", f32t(&[B, TW], &v)), &[]);
    assert!(
        e.contains("`old_logp`") && e.contains("row 1") && e.contains("token 1"),
        "{e}"
    );
}

#[test]
fn inf_in_a_row_input_is_named() {
    let c = Case::new();
    let e = run_err(
        &c,
        &with(good(), "adv", f32t(&[B], &[1.0, f32::INFINITY, 0.0])),
        &[],
    );
    assert!(
        e.contains("`adv`") && e.contains("row 1") && e.contains("inf"),
        "{e}"
    );
}

#[test]
fn nan_in_padding_is_ignored() {
    let c = Case::new();
    let j = run_json(&c, "t.obj", &good(), &[]);
    assert!(j["loss"].as_f64().unwrap().is_finite());
    for row in j["grads"]["logp"].as_array().unwrap() {
        for x in row.as_array().unwrap() {
            assert!(x.as_f64().unwrap().is_finite(), "{j}");
        }
    }
}

#[test]
fn nested_groups_violation_is_named() {
    let c = Case::new();
    let b = c.batch(
        "n.safetensors",
        &[
            ("mask", f32t(&[B, TW], &MASK)),
            ("logp", f32t(&[B, TW], &[0.0; 12])),
            ("group", i64t(&[B], &[0, 0, 1])),
            ("sub", i64t(&[B], &[5, 6, 5])),
            ("gv", f32t(&[B], &[1.0, 1.0, 2.0])),
        ],
    );
    let (code, _, err) = cli(&["run", &c.path("nest.obj"), "--batch", &b]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("`sub`") && err.contains("grp"), "{err}");
}

#[test]
fn group_valued_input_must_agree_within_a_group() {
    let c = Case::new();
    let base = vec![
        ("mask", f32t(&[B, TW], &MASK)),
        ("logp", f32t(&[B, TW], &[0.0; 12])),
        ("group", i64t(&[B], &[0, 0, 1])),
        ("sub", i64t(&[B], &[5, 6, 7])),
    ];
    let ok = with(base.clone(), "gv", f32t(&[B], &[1.0, 1.0, 2.0]));
    let j = run_json(&c, "nest.obj", &ok, &[]);
    assert_eq!(j["loss"].as_f64().unwrap(), 3.0);
    let bad = with(base, "gv", f32t(&[B], &[1.0, 1.5, 2.0]));
    let b = c.batch("g.safetensors", &bad);
    let (code, _, err) = cli(&["run", &c.path("nest.obj"), "--batch", &b]);
    assert_eq!(code, 1);
    assert!(
        err.contains("`gv`") && err.contains("row 0") && err.contains("row 1"),
        "{err}"
    );
}

#[test]
fn u64_ids_above_i64_are_out_of_range() {
    let c = Case::new();
    let e = run_err(
        &c,
        &with(good(), "group", u64t(&[B], &[0, u64::MAX, 1])),
        &[],
    );
    assert!(e.contains("`group`") && e.contains("out of range"), "{e}");
}

#[test]
fn empty_batch_is_an_error() {
    let c = Case::new();
    let empty = vec![
        ("mask", f32t(&[0, TW], &[])),
        ("logp", f32t(&[0, TW], &[])),
        ("old_logp", f32t(&[0, TW], &[])),
        ("adv", f32t(&[0], &[])),
        ("group", i64t(&[0], &[])),
        ("turn", i64t(&[0, TW], &[])),
    ];
    let e = run_err(&c, &empty, &[]);
    assert!(e.contains("empty batch") && e.contains("B = 0"), "{e}");
}

/// All padding: `t.obj`'s loss is `sum / count` with no guard, 0/0, so the run is an error
/// naming the mask and the NaN rather than a NaN loss.
#[test]
fn all_padding_with_an_unguarded_division_is_an_error_naming_mask() {
    let c = Case::new();
    let e = run_err(&c, &with(good(), "mask", f32t(&[B, TW], &[0.0; 12])), &[]);
    assert!(
        e.contains("`mask`") && e.contains("no valid token") && e.contains("the loss is NaN"),
        "{e}"
    );
}

/// All padding with a guarded denominator (as every catalog objective has): a zero step.
#[test]
fn all_padding_with_a_guarded_division_is_a_zero_step() {
    let c = Case::new();
    std::fs::write(
        c.dir.join("guarded.obj"),
        "objective g {\n    input logp: f32[tok] @grad\n    input adv: f32[seq]\n    \
         loss = sum[batch](logp * adv) / max(count[batch](logp), 1)\n    \
         metric n = count[batch](logp)\n}\n",
    )
    .unwrap();
    let obj = c.path("guarded.obj");
    let b = c.batch(
        "empty.safetensors",
        &with(good(), "mask", f32t(&[B, TW], &[0.0; 12])),
    );
    let (code, out, err) = cli(&["run", &obj, "--batch", &b, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["loss"], 0.0, "{out}");
    assert_eq!(v["metrics"]["n"], 0.0, "{out}");
    let g = v["grads"]["logp"].as_array().unwrap();
    assert!(
        g.iter()
            .flat_map(|r| r.as_array().unwrap())
            .all(|x| x == 0.0),
        "{out}"
    );
}

#[test]
fn corrupt_and_missing_batch_files_are_named() {
    let c = Case::new();
    let p = c.dir.join("garbage.safetensors");
    std::fs::write(
        &p,
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a safetensors file",
    )
    .unwrap();
    let (code, _, err) = cli(&["run", &c.path("t.obj"), "--batch", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("garbage.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    // Truncated data: header promises more bytes than there are.
    let mut bytes = st_bytes(&good());
    bytes.truncate(bytes.len() - 8);
    std::fs::write(&p, &bytes).unwrap();
    let (code, _, err) = cli(&["run", &c.path("t.obj"), "--batch", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("garbage.safetensors"), "{err}");
    let (code, _, err) = cli(&[
        "run",
        &c.path("t.obj"),
        "--batch",
        &c.path("nope.safetensors"),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("nope.safetensors") && err.contains("cannot read"),
        "{err}"
    );
    // Empty file.
    std::fs::write(&p, b"").unwrap();
    let (code, _, err) = cli(&["run", &c.path("t.obj"), "--batch", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
}

// ---------------------------------------------------------------------------------------
// Accepted forms
// ---------------------------------------------------------------------------------------

#[test]
fn accepted_shapes_and_dtypes_give_the_same_result() {
    let c = Case::new();
    let base = run_json(&c, "t.obj", &good(), &[]);
    let logp = [
        -1.0f32, -0.5, -2.0, -0.1, -0.3, -0.7, 0., 0., -1.5, 0., 0., 0.,
    ];
    let variants: Vec<Vec<(&str, T)>> = vec![
        with(good(), "mask", boolt(&[B, TW], &MASK.map(|m| m > 0.0))),
        with(good(), "mask", u8t(&[B, TW], &MASK.map(|m| m as u8))),
        with(good(), "mask", i64t(&[B, TW], &MASK.map(|m| m as i64))),
        with(good(), "adv", f32t(&[B, 1], &[1.0, -1.0, 0.5])),
        with(good(), "adv", f64t(&[B], &[1.0, -1.0, 0.5])),
        with(good(), "group", i32t(&[B], &[7, 7, 3])),
        with(good(), "group", i64t(&[B, 1], &[7, 7, 3])),
        with(good(), "scale", f32t(&[], &[1.0])),
        with(good(), "scale", f32t(&[1], &[1.0])),
        with(good(), "w", f32t(&[B, TW], &[1.0; 12])),
        with(good(), "logp", f64t(&[B, TW], &logp.map(f64::from))),
    ];
    for (i, v) in variants.iter().enumerate() {
        let j = run_json(&c, "t.obj", v, &[]);
        assert_eq!(j["loss"], base["loss"], "variant {i}");
    }
}

#[test]
fn bf16_and_f16_inputs_are_accepted() {
    let c = Case::new();
    // Values exactly representable in both half formats.
    let logp = [
        -1.0f32, -0.5, -2.0, -0.125, -0.25, -0.75, 0., 0., -1.5, 0., 0., 0.,
    ];
    let base = run_json(
        &c,
        "t.obj",
        &with(good(), "logp", f32t(&[B, TW], &logp)),
        &[],
    );
    for t in [bf16t(&[B, TW], &logp), f16t(&[B, TW], &logp)] {
        let j = run_json(&c, "t.obj", &with(good(), "logp", t), &[]);
        assert_eq!(j["loss"], base["loss"]);
    }
}

#[test]
fn optional_input_takes_its_default() {
    let c = Case::new();
    let a = run_json(&c, "t.obj", &good(), &[]);
    let b = run_json(
        &c,
        "t.obj",
        &with(good(), "w", f32t(&[B, TW], &[2.0; 12])),
        &[],
    );
    let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
    // loss = mean(r·adv·w) + eps·lam: doubling w doubles the first term.
    assert!(((lb - 0.1) - 2.0 * (la - 0.1)).abs() < 1e-12, "{la} {lb}");
}

// ---------------------------------------------------------------------------------------
// JSON and --out shapes
// ---------------------------------------------------------------------------------------

#[test]
fn json_has_exactly_the_contract_keys_in_order() {
    let c = Case::new();
    let b = c.batch("ok.safetensors", &good());
    let (code, out, err) = cli(&["run", &c.path("t.obj"), "--batch", &b, "--json"]);
    assert_eq!(code, 0, "{err}");
    let keys = [
        "\"loss\"",
        "\"metrics\"",
        "\"grads\"",
        "\"outputs\"",
        "\"state\"",
    ];
    let pos: Vec<usize> = keys.iter().map(|k| out.find(k).unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j.as_object().unwrap().len(), 5);
    assert!(j["metrics"]["m"].is_f64());
    assert_eq!(j["state"]["lam"].as_f64(), Some(1.5));
}

#[test]
fn json_shapes_follow_the_spaces() {
    let c = Case::new();
    let j = run_json(&c, "t.obj", &good(), &[]);
    let g = j["grads"]["logp"].as_array().unwrap();
    assert_eq!(g.len(), B);
    for (r, row) in g.iter().enumerate() {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), TW);
        for (t, x) in row.iter().enumerate() {
            if MASK[r * TW + t] == 0.0 {
                assert_eq!(x.as_f64(), Some(0.0), "padding grad is 0");
            } else {
                assert_ne!(x.as_f64(), Some(0.0));
            }
        }
    }
    let o = &j["outputs"];
    assert_eq!(o["per_tok"].as_array().unwrap().len(), B);
    assert_eq!(o["per_tok"][2].as_array().unwrap().len(), TW);
    assert_eq!(o["per_tok"][2][1].as_f64(), Some(0.0));
    assert_eq!(o["per_seq"].as_array().unwrap().len(), B);
    assert!(o["total"].is_f64());
    // Row groups broadcast to rows: rows 0 and 1 share group 7 (mean adv 0).
    let grp: Vec<f64> = o["per_grp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(grp, vec![0.0, 0.0, 0.5]);
    // Token segments broadcast to tokens: row 0 turns {0,1} → sums of logp per turn.
    let turn = &o["per_turn"];
    assert_eq!(turn[0][0].as_f64(), Some(-1.5));
    assert!((turn[0][2].as_f64().unwrap() + 2.1).abs() < 1e-6);
    assert_eq!(turn[1][3].as_f64(), Some(0.0), "padding");
}

#[test]
fn transform_has_null_loss_and_no_grads() {
    let c = Case::new();
    let b = vec![
        ("mask", f32t(&[B, TW], &MASK)),
        ("token_rewards", f32t(&[B, TW], &[1.0; 12])),
    ];
    let j = run_json(&c, "tr.obj", &b, &[]);
    assert!(j["loss"].is_null());
    assert!(j["grads"].as_object().unwrap().is_empty());
    let adv = &j["outputs"]["adv"];
    assert_eq!(adv[0][0].as_f64(), Some(4.0));
    assert_eq!(adv[1][0].as_f64(), Some(2.0));
    assert_eq!(adv[1][3].as_f64(), Some(0.0));
}

#[test]
fn json_numbers_round_trip_exactly() {
    let c = Case::new();
    let b = c.batch("ok.safetensors", &good());
    let obj = Objective::compile(&c.dir.join("t.obj")).unwrap();
    let mut obj2 = obj.clone();
    let bound = obj.bind_file(Path::new(&b)).unwrap();
    let mut be = backend_by_name("interp").unwrap();
    let res = obj2.evaluate(be.as_mut(), &bound).unwrap();
    let j = run_json(&c, "t.obj", &good(), &[]);
    assert_eq!(
        j["loss"].as_f64(),
        res.eval.loss,
        "shortest round-trip text"
    );
}

#[test]
fn out_writes_safetensors_with_json_shapes() {
    let c = Case::new();
    let b = c.batch("ok.safetensors", &good());
    let out = c.dir.join("out.safetensors");
    let (code, _, err) = cli(&[
        "run",
        &c.path("t.obj"),
        "--batch",
        &b,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(shape("loss"), Vec::<usize>::new());
    assert_eq!(shape("grad.logp"), vec![B, TW]);
    assert_eq!(shape("metric.m"), Vec::<usize>::new());
    assert_eq!(shape("output.per_tok"), vec![B, TW]);
    assert_eq!(shape("output.per_seq"), vec![B]);
    assert_eq!(shape("output.per_grp"), vec![B]);
    assert_eq!(shape("output.total"), Vec::<usize>::new());
    assert_eq!(
        st.tensor("grad.logp").unwrap().dtype(),
        safetensors::Dtype::F32
    );
}

#[test]
fn human_table_without_json() {
    let c = Case::new();
    let b = c.batch("ok.safetensors", &good());
    let (code, out, err) = cli(&["run", &c.path("t.obj"), "--batch", &b]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("loss")
            && out.contains("d loss/d logp")
            && out.contains("per_tok")
            && out.contains("lam"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------
// --set
// ---------------------------------------------------------------------------------------

#[test]
fn set_param_changes_the_loss_without_recompiling() {
    let c = Case::new();
    let a = run_json(&c, "t.obj", &good(), &[]);
    let b = run_json(&c, "t.obj", &good(), &["--set", "eps=0.7"]);
    let d = b["loss"].as_f64().unwrap() - a["loss"].as_f64().unwrap();
    assert!((d - 0.5 * 0.5).abs() < 1e-12, "{d}");
}

#[test]
fn set_state_sets_its_initial_value() {
    let c = Case::new();
    let j = run_json(&c, "t.obj", &good(), &["--set", "lam=2"]);
    assert_eq!(j["state"]["lam"].as_f64(), Some(3.0));
}

#[test]
fn set_const_recompiles() {
    let c = Case::new();
    let a = run_json(&c, "t.obj", &good(), &["--set", "eps=0"]);
    let b = run_json(&c, "t.obj", &good(), &["--set", "mode=b", "--set", "eps=0"]);
    let t = run_json(
        &c,
        "t.obj",
        &good(),
        &["--set", "twice=True", "--set", "eps=0"],
    );
    let la = a["loss"].as_f64().unwrap();
    assert!((b["loss"].as_f64().unwrap() - 2.0 * la).abs() < 1e-12);
    assert!((t["loss"].as_f64().unwrap() - 2.0 * la).abs() < 1e-12);
}

#[test]
fn set_unknown_name_lists_the_valid_ones() {
    let c = Case::new();
    let e = run_err(&c, &good(), &["--set", "nope=1"]);
    assert!(
        e.contains("`nope`") && e.contains("eps") && e.contains("mode") && e.contains("lam"),
        "{e}"
    );
    assert!(e.contains("t.obj"), "names the file: {e}");
}

#[test]
fn set_wrong_types_are_errors() {
    let c = Case::new();
    let e = run_err(&c, &good(), &["--set", "eps=abc"]);
    assert!(e.contains("`eps`") && e.contains("number"), "{e}");
    let e = run_err(&c, &good(), &["--set", "twice=maybe"]);
    assert!(e.contains("`twice`") && e.contains("true or false"), "{e}");
    let e = run_err(&c, &good(), &["--set", "eps=inf"]);
    assert!(e.contains("`eps`") && e.contains("finite"), "{e}");
    let e = run_err(&c, &good(), &["--set", "mode=zzz"]);
    assert!(e.contains("zzz") || e.contains("mode"), "{e}");
    let e = run_err(&c, &good(), &["--set", "eps"]);
    assert!(e.contains("NAME=VALUE"), "{e}");
}

#[test]
fn api_keeps_state_across_calls() {
    let c = Case::new();
    let b = c.batch("ok.safetensors", &good());
    let mut obj = Objective::compile(&c.dir.join("t.obj")).unwrap();
    let bound = obj.bind_file(Path::new(&b)).unwrap();
    let mut be = backend_by_name("interp").unwrap();
    obj.evaluate(be.as_mut(), &bound).unwrap();
    obj.evaluate(be.as_mut(), &bound).unwrap();
    assert_eq!(obj.states(), &[2.5]);
    obj.set("mode", "b").unwrap();
    assert_eq!(obj.states(), &[2.5], "state survives a recompile");
    assert!(matches!(obj.set("eps", "x"), Err(Error::Usage(_))));
}

#[test]
fn api_binds_candle_tensors() {
    use candle_core::{Device, Tensor};
    let c = Case::new();
    let b = c.batch("ok.safetensors", &good());
    let obj = Objective::compile(&c.dir.join("t.obj")).unwrap();
    let from_file = obj.bind_file(Path::new(&b)).unwrap();
    let d = Device::Cpu;
    let logp = [
        -1.0f32, -0.5, -2.0, -0.1, -0.3, -0.7, 9., 9., -1.5, 9., 9., 9.,
    ];
    let old = [
        -1.1f32, -0.4, -2.0, -0.2, -0.3, -0.9, 0., 0., -1.4, 0., 0., 0.,
    ];
    let mask = Tensor::from_slice(&MASK, (B, TW), &d)
        .unwrap()
        .to_dtype(candle_core::DType::U8)
        .unwrap();
    let logp = Tensor::from_slice(&logp, (B, TW), &d).unwrap();
    let old = Tensor::from_slice(&old, (B, TW), &d)
        .unwrap()
        .to_dtype(candle_core::DType::BF16)
        .unwrap();
    let adv = Tensor::from_slice(&[1.0f32, -1.0, 0.5], B, &d).unwrap();
    let group = Tensor::from_slice(&[7i64, 7, 3], B, &d).unwrap();
    let turn = Tensor::from_slice(&[0i64, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0], (B, TW), &d).unwrap();
    let bound = obj
        .bind_tensors(&[
            ("mask", &mask),
            ("logp", &logp),
            ("old_logp", &old),
            ("adv", &adv),
            ("group", &group),
            ("turn", &turn),
        ])
        .unwrap();
    assert_eq!(bound.layout, from_file.layout);
    assert_eq!(
        bound.values[0], from_file.values[0],
        "logp gathered at valid tokens"
    );
    let e = obj
        .bind_tensors(&[("mask", &mask), ("logp", &logp)])
        .unwrap_err();
    assert!(
        e.to_string().contains("`old_logp`") || e.to_string().contains("`group`"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Other subcommands
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_backend_lists_available() {
    let c = Case::new();
    let e = run_err(&c, &good(), &["--backend", "tpu"]);
    assert!(e.contains("`tpu`") && e.contains("interp"), "{e}");
}

#[test]
fn check_exit_codes() {
    let d = scratch();
    let ok = d.join("ok.obj");
    std::fs::write(&ok, OBJ).unwrap();
    let (code, out, _) = cli(&["check", ok.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("ok"));
    let empty = d.join("empty.obj");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = cli(&["check", empty.to_str().unwrap()]);
    assert!(code == 0 || code == 1, "{err}");
    let garbage = d.join("garbage.obj");
    std::fs::write(&garbage, "objective { ) ] 123 @@ %% \"unterminated").unwrap();
    let (code, _, err) = cli(&["check", garbage.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("garbage.obj"), "{err}");
    let binary = d.join("binary.obj");
    std::fs::write(&binary, b"\x00\xff\xfe\x80objective\xc3\x28 {}").unwrap();
    let (code, _, err) = cli(&["check", binary.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("binary.obj"), "{err}");
    let (code, _, _) = cli(&["check", d.join("missing.obj").to_str().unwrap()]);
    assert_eq!(code, 1);
    // One bad file among good ones fails the whole run.
    let (code, _, _) = cli(&["check", ok.to_str().unwrap(), garbage.to_str().unwrap()]);
    assert_eq!(code, 1);
}

#[test]
fn check_json_format() {
    let d = scratch();
    let garbage = d.join("g.obj");
    std::fs::write(&garbage, "objective x { loss = }").unwrap();
    let ok = d.join("ok.obj");
    std::fs::write(&ok, OBJ).unwrap();
    let (code, out, _) = cli(&[
        "check",
        "--format",
        "json",
        ok.to_str().unwrap(),
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["files"][0]["errors"], 0);
    assert!(j["files"][1]["errors"].as_u64().unwrap() >= 1);
    assert!(j["files"][1]["diagnostics"].is_array());
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["check", "fmt", "run", "compile", "diff", "demo", "doc"] {
        let (code, out, _) = cli(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub}");
        assert!(out.contains("Usage"), "{sub}: {out}");
    }
    let (code, _, _) = cli(&["--help"]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&["frobnicate"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, _) = cli(&[]);
    assert_eq!(code, 1);
}

#[test]
fn compile_emit_ir_and_not_yet_available_artifacts() {
    let c = Case::new();
    let (code, out, err) = cli(&["compile", &c.path("t.obj"), "--emit", "ir"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("logp"), "{out}");
    let (code, out, err) = cli(&[
        "compile",
        &c.path("t.obj"),
        "--emit",
        "ir-grad",
        "--timings",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty() && err.contains("timings"), "{err}");
    let (code, _, err) = cli(&["compile", &c.path("t.obj"), "--emit", "plan"]);
    assert!(code == 0 || err.contains("t.obj"), "{err}");
    let (code, _, err) = cli(&[
        "compile",
        &c.dir.join("missing.obj").display().to_string(),
        "--emit",
        "ir",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.obj"), "{err}");
}

#[test]
fn diff_prints_a_side_by_side_table() {
    let c = Case::new();
    let b = c.batch("ok.safetensors", &good());
    let t = c.path("t.obj");
    std::fs::write(
        c.dir.join("t_b.obj"),
        OBJ.replace("\"b\" = \"a\"", "\"b\" = \"b\""),
    )
    .unwrap();
    let (code, out, err) = cli(&[
        "diff",
        &t,
        &c.path("t_b.obj"),
        "--batch",
        &b,
        "--set",
        "eps=0.3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("loss") && out.contains("metric m") && out.contains("sign changes"),
        "{out}"
    );
    assert!(
        out.contains("(row ") && out.contains("token "),
        "largest differences with positions: {out}"
    );
    let (code, _, err) = cli(&[
        "diff",
        &t,
        &c.path("tr.obj"),
        "--batch",
        &b,
        "--set",
        "zzz=1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("`zzz`"), "{err}");
}

#[test]
fn demo_runs_the_catalog() {
    let (code, out, err) = cli(&["demo", "--rows", "8", "--width", "16"]);
    assert_eq!(code, 0, "stderr: {err}\nstdout: {out}");
    assert!(out.contains("grpo") && out.contains("vanilla"), "{out}");
    let table: String = out.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(
        !table.contains("NaN") && !table.contains("inf"),
        "padding NaN never leaks: {out}"
    );
    let (code, _, _) = cli(&["demo", "--rows", "0"]);
    assert_eq!(code, 1);
}

#[test]
fn doc_renders_markdown() {
    let c = Case::new();
    let (code, out, err) = cli(&["doc", &c.path("t.obj")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("# ") && out.contains("A test objective."),
        "{out}"
    );
    let (code, _, err) = cli(&["doc", "std::no_such_module"]);
    assert_eq!(code, 1);
    assert!(err.contains("std::no_such_module"), "{err}");
}

#[test]
fn fmt_reports_unreadable_and_non_utf8_files() {
    let d = scratch();
    let binary = d.join("b.obj");
    std::fs::write(&binary, b"\xff\xfe").unwrap();
    let (code, _, err) = cli(&["fmt", binary.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("b.obj") && err.contains("UTF-8"), "{err}");
    let (code, _, err) = cli(&["fmt", "--check", d.join("missing.obj").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.obj"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The real binary (when built): exit codes are never a panic's
// ---------------------------------------------------------------------------------------

fn binary() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rlobj");
    p.exists().then_some(p)
}

#[test]
fn binary_exit_codes_on_bad_input() {
    let Some(bin) = binary() else {
        eprintln!("skipped: target/debug/rlobj is not built");
        return;
    };
    let d = scratch();
    let g = d.join("g.obj");
    std::fs::write(&g, b"\xff\x00 objective {{{{").unwrap();
    let o = std::process::Command::new(&bin)
        .arg("check")
        .arg(&g)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let c = Case::new();
    let b = c.batch("b.safetensors", &without(good(), "logp"));
    let o = std::process::Command::new(&bin)
        .args(["run", &c.path("t.obj"), "--batch", &b, "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`logp`"));
    let o = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn fmt_check_and_write() {
    let d = scratch();
    let f = d.join("messy.obj");
    let messy = OBJ.replace(
        "    input logp: f32[tok] @grad",
        "  input   logp :f32[ tok ]  @grad",
    );
    std::fs::write(&f, &messy).unwrap();
    let p = f.to_str().unwrap();
    let (code, out, err) = cli(&["fmt", "--check", p]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("messy.obj"), "{out}");
    let (code, _, err) = cli(&["fmt", "--write", p]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["fmt", "--check", p]);
    assert_eq!(code, 0, "formatting is idempotent: {err}");
    let (code, out, _) = cli(&["fmt", p]);
    assert_eq!(code, 0);
    assert_eq!(out, std::fs::read_to_string(&f).unwrap());
    let bad = d.join("bad.obj");
    std::fs::write(&bad, "objective x { loss = }").unwrap();
    let (code, _, err) = cli(&["fmt", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.obj"), "{err}");
}

/// Arbitrary bytes and near-miss sources never panic any subcommand (a panic fails the test).
#[test]
fn no_input_file_makes_a_subcommand_panic() {
    let d = scratch();
    let c = Case::new();
    let batch = c.batch("ok.safetensors", &good());
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let pieces = [
        "objective",
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "input",
        "f32",
        "tok",
        "seq",
        "@grad",
        "loss",
        "=",
        "sum",
        "batch",
        "let",
        "x",
        ":",
        ",",
        "\"",
        "//",
        "///",
        "\n",
        "1e",
        "0.5",
        "id",
        "as",
        "grp",
        "use",
        "std::",
        "::",
        "where",
        "if",
        "else",
        "\u{00e9}",
        "\u{1F600}",
        "\0",
        "-",
        "*",
        "/",
    ];
    for i in 0..60 {
        let f = d.join(format!("f{i}.obj"));
        if i % 3 == 0 {
            let bytes: Vec<u8> = (0..next() % 64).map(|_| (next() % 256) as u8).collect();
            std::fs::write(&f, bytes).unwrap();
        } else {
            let src: String = (0..next() % 40)
                .map(|_| pieces[next() % pieces.len()])
                .collect::<Vec<_>>()
                .join(" ");
            std::fs::write(&f, src).unwrap();
        }
        let p = f.to_str().unwrap();
        for args in [
            vec!["check", p],
            vec!["check", "--format", "json", p],
            vec!["fmt", p],
            vec!["doc", p],
            vec!["compile", p, "--emit", "ir"],
            vec!["run", p, "--batch", batch.as_str(), "--json"],
        ] {
            let (code, _, _) = cli(&args);
            assert!(code == 0 || code == 1, "{args:?}");
        }
    }
}

#[test]
fn run_and_compile_report_non_utf8_objectives() {
    let c = Case::new();
    let b = c.batch("ok.safetensors", &good());
    let f = c.dir.join("bin.obj");
    std::fs::write(&f, b"\x00\xff\xfe\x80objective\xc3\x28 {}").unwrap();
    let p = f.to_str().unwrap();
    for args in [
        vec!["run", p, "--batch", b.as_str()],
        vec!["compile", p, "--emit", "ir"],
        vec!["doc", p],
    ] {
        let (code, _, err) = cli(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains("bin.obj"), "{args:?}: {err}");
    }
}

// ---------------------------------------------------------------------------------------
// Channel axes: `rewards` of shape [B, K] binds to `input rewards: f32[seq, chan]`
// ---------------------------------------------------------------------------------------

fn gdpo_path() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../objectives/gdpo.obj")
        .display()
        .to_string()
}

/// The standard batch with `rewards` of `k` columns (column j of row r is `r - j / 2`).
fn channel_batch(k: usize) -> Vec<(&'static str, T)> {
    let v: Vec<f32> = (0..B)
        .flat_map(|r| (0..k).map(move |j| r as f32 - j as f32 / 2.0 + (r * j) as f32 * 0.3))
        .collect();
    with(
        with(good(), "group", i64t(&[B], &[7, 7, 7])),
        "rewards",
        f32t(&[B, k], &v),
    )
}

fn gdpo_json(c: &Case, tensors: &[(&str, T)], extra: &[&str]) -> serde_json::Value {
    let b = c.batch("ch.safetensors", tensors);
    let obj = gdpo_path();
    let mut args = vec!["run", obj.as_str(), "--batch", b.as_str(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "stderr: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn run_takes_the_channel_count_from_the_batch() {
    let c = Case::new();
    // gdpo.obj declares `const chan = 3`; the batch has 2 columns.
    let auto = gdpo_json(&c, &channel_batch(2), &[]);
    let explicit = gdpo_json(&c, &channel_batch(2), &["--set", "chan=2"]);
    assert_eq!(auto, explicit);
    assert!(auto["loss"].as_f64().is_some_and(f64::is_finite), "{auto}");
    // Weight 0 on the second column = the first column alone (K = 1).
    let first_only = gdpo_json(&c, &channel_batch(2), &["--set", "weights=1,0"]);
    let column0: Vec<f32> = (0..B).map(|r| r as f32).collect();
    let single = with(channel_batch(2), "rewards", f32t(&[B, 1], &column0));
    let one = gdpo_json(&c, &single, &[]);
    assert_eq!(first_only["outputs"], one["outputs"]);
    assert_ne!(
        auto["outputs"], one["outputs"],
        "the second column must matter"
    );
}

#[test]
fn wrong_channel_count_names_the_tensor_and_the_fix() {
    let c = Case::new();
    let b = c.batch("ch.safetensors", &channel_batch(2));
    let obj = gdpo_path();
    let (code, out, err) = cli(&["run", &obj, "--batch", &b, "--set", "chan=3"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(
            "tensor `rewards`: has 2 channels (shape [3, 2]) but the objective was compiled with chan = 3; run with --set chan=2"
        ),
        "{err}"
    );
    // A [B] tensor for a 3-channel input: the expected shape is spelled out.
    let flat = with(channel_batch(2), "rewards", f32t(&[B], &[1.0, 2.0, 3.0]));
    let b = c.batch("flat.safetensors", &flat);
    let (code, _, err) = cli(&["run", &obj, "--batch", &b]);
    assert_eq!(code, 1);
    assert!(
        err.contains("tensor `rewards`: expected shape [3, 3]"),
        "{err}"
    );
}

#[test]
fn library_bind_does_not_refit_channels() {
    let c = Case::new();
    let bytes = st_bytes(&channel_batch(2));
    let p = c.dir.join("lib.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let mut obj = Objective::compile(Path::new(&gdpo_path())).unwrap();
    let err = obj.bind_file(&p).unwrap_err().to_string();
    assert!(
        err.contains("has 2 channels") && err.contains("--set chan=2"),
        "{err}"
    );
    obj.set("chan", "2").unwrap();
    assert!(obj.bind_file(&p).is_ok());
}

#[test]
fn per_channel_params_take_k_values_or_one_index() {
    let mut obj = Objective::compile(Path::new(&gdpo_path())).unwrap();
    let value = |o: &Objective, n: &str| {
        let i = o.program().params.iter().position(|p| p.name == n).unwrap();
        o.params()[i]
    };
    obj.set("weights", "1,0.5,2").unwrap();
    assert_eq!(value(&obj, "weights[1]"), 0.5);
    assert_eq!(value(&obj, "weights[2]"), 2.0);
    obj.set("weights[0]", "3").unwrap();
    assert_eq!(value(&obj, "weights[0]"), 3.0);
    let err = obj.set("weights", "1,2").unwrap_err().to_string();
    assert!(
        err.contains("has 3 channels") && err.contains("found 2"),
        "{err}"
    );
    assert!(matches!(obj.set("weights", "1,x,2"), Err(Error::Usage(_))));
    assert_eq!(
        value(&obj, "weights[0]"),
        3.0,
        "a failed set changes nothing"
    );
    // A const and the matching weights in one call: the const applies first.
    obj.set_many(&[
        ("weights".to_string(), "4,5".to_string()),
        ("chan".to_string(), "2".to_string()),
    ])
    .unwrap();
    assert_eq!(value(&obj, "weights[1]"), 5.0);
    assert!(!obj.program().params.iter().any(|p| p.name == "weights[2]"));
}
