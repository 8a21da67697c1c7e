//! Gradient check of every function of the embedded standard library.
//!
//! For every `fn` of every stdlib module a wrapper objective is generated from the
//! function's signature (parsed from its source):
//!
//! * f32 parameters without a default become `@grad` inputs: concrete spaces as declared;
//!   space variables and unannotated `f32` are tried on `tok`, then `seq`, then `batch`
//!   (the first that type-checks). Values are drawn from a domain chosen by the parameter's
//!   name (log-probabilities negative, ratios around 1, quantile levels in (0, 1), …).
//! * bool parameters become bool inputs; defaulted bools are also tried as `true`/`false`.
//! * `str`/enum parameters iterate over every value the body (or a function it passes the
//!   parameter to) compares them against.
//! * defaulted f32 parameters are, one at a time, also made `@grad` inputs (where the
//!   function needs them at compile time this is recorded as a skip).
//! * `input group: id[seq] as grp` / `input turn: id[tok] as turn` are declared when the
//!   function (or a function it calls) uses those spaces.
//!
//! The loss is `sum[batch](f(…) * w)` with a random weight `w` in the result's space (every
//! element gets a distinct gradient); bool results are only evaluated. Gradients are checked
//! by central finite differences ([`check_grads`], relative tolerance 1e-6, kinks skipped)
//! on several random batches (ragged rows, empty rows, singleton groups).

use rlobj_front::ast::BinOp;
use rlobj_front::ast::{Block, Else, Expr, ExprKind, FnDecl, Item, TypeKind};
use rlobj_ir::{Program, SpaceId};
use rlobj_runtime::interp::Interpreter;
use rlobj_runtime::Backend;
use rlobj_tests::{check_grads, defaults, differentiated, random_bound};
use std::collections::{BTreeMap, BTreeSet};

/// Functions allowed not to compile as wrappers, with the reason. Empty: every function
/// compiles today.
const COMPILE_ALLOW: &[(&str, &str)] = &[];

/// `(seed, rows, width)` of the random batches: ragged rows, one full and one empty row when
/// `rows >= 3`, groups of one row (rows 1, 3) and larger groups.
const BATCHES: &[(u64, usize, usize)] = &[(1, 4, 5), (2, 6, 7), (3, 1, 4), (4, 3, 3), (5, 8, 6)];

const TOL: f64 = 1e-6;

/// One stdlib function with its module.
struct StdFn {
    module: String,
    decl: FnDecl,
}

impl StdFn {
    fn path(&self) -> String {
        format!("std::{}::{}", self.module, self.decl.name.name)
    }
}

fn all_functions() -> Vec<StdFn> {
    let mut out = Vec::new();
    for (k, module) in rlobj_front::sources::stdlib_modules()
        .into_iter()
        .enumerate()
    {
        let src = rlobj_front::sources::stdlib_source(module).expect("stdlib source");
        let (ast, errors) = rlobj_front::parser::parse(k as u32, src);
        assert!(errors.is_empty(), "std::{module}: syntax errors");
        for item in ast.items {
            if let Item::Fn(decl) = item {
                out.push(StdFn {
                    module: module.to_string(),
                    decl,
                });
            }
        }
    }
    out
}

// ------------------------------------------------------------------ AST walking

fn walk_block<'a>(b: &'a Block, f: &mut dyn FnMut(&'a Expr)) {
    for l in &b.lets {
        walk(&l.value, f);
    }
    walk(&b.value, f);
}

fn walk<'a>(e: &'a Expr, f: &mut dyn FnMut(&'a Expr)) {
    f(e);
    match &e.kind {
        ExprKind::Unary(_, a) => walk(a, f),
        ExprKind::Binary(_, a, b) | ExprKind::Where(a, b) => {
            walk(a, f);
            walk(b, f);
        }
        ExprKind::Call { args, .. } => {
            for a in args {
                walk(&a.value, f);
            }
        }
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => {
            walk(cond, f);
            walk_block(then, f);
            match otherwise.as_ref() {
                Else::Block(b) => walk_block(b, f),
                Else::If(e) => walk(e, f),
            }
        }
        _ => {}
    }
}

fn find_fn<'a>(fns: &'a [StdFn], name: &str) -> Option<&'a StdFn> {
    fns.iter().find(|f| f.decl.name.name == name)
}

/// Spaces named in reductions of `f` or of any function it calls (transitively).
fn spaces_used(fns: &[StdFn], f: &FnDecl, seen: &mut BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !seen.insert(f.name.name.clone()) {
        return out;
    }
    let mut callees = Vec::new();
    walk_block(&f.body, &mut |e| {
        if let ExprKind::Call { callee, space, .. } = &e.kind {
            if let Some(s) = space {
                out.insert(s.name.clone());
            }
            if let Some(last) = callee.last() {
                callees.push(last.name.clone());
            }
        }
    });
    for c in callees {
        if let Some(g) = find_fn(fns, &c) {
            out.extend(spaces_used(fns, &g.decl, seen));
        }
    }
    out
}

fn is_var(e: &Expr, name: &str) -> bool {
    matches!(&e.kind, ExprKind::Var(p) if p.len() == 1 && p[0].name == name)
}

/// Every string the compile-time parameter `param` of `f` can usefully take: its enum
/// values, the literals it is compared with, and (transitively) those of the parameters it
/// is passed to.
fn str_values(fns: &[StdFn], f: &FnDecl, param: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(p) = f.params.iter().find(|p| p.name.name == param) else {
        return out;
    };
    if let TypeKind::Enum(vs) = &p.ty.kind {
        out.extend(vs.iter().map(|(v, _)| v.clone()));
    }
    if let Some(Expr {
        kind: ExprKind::Str(s),
        ..
    }) = &p.default
    {
        out.insert(s.clone());
    }
    let mut forwarded = Vec::new();
    walk_block(&f.body, &mut |e| match &e.kind {
        ExprKind::Binary(BinOp::Eq | BinOp::Ne, a, b) => {
            for (x, y) in [(a, b), (b, a)] {
                if let (true, ExprKind::Str(s)) = (is_var(x, param), &y.kind) {
                    out.insert(s.clone());
                }
            }
        }
        ExprKind::Call { callee, args, .. } => {
            for (i, a) in args.iter().enumerate() {
                if is_var(&a.value, param) {
                    let callee = callee.last().map(|c| c.name.clone()).unwrap_or_default();
                    forwarded.push((callee, a.name.as_ref().map(|n| n.name.clone()), i));
                }
            }
        }
        _ => {}
    });
    if depth < 8 {
        for (callee, name, pos) in forwarded {
            if let Some(g) = find_fn(fns, &callee) {
                let target = match name {
                    Some(n) => Some(n),
                    None => g.decl.params.get(pos).map(|p| p.name.name.clone()),
                };
                if let Some(t) = target {
                    out.extend(str_values(fns, &g.decl, &t, depth + 1));
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------ value domains

/// The range a parameter's random values are mapped to, by function and parameter name.
fn domain(func: &str, param: &str) -> Option<(f64, f64)> {
    let quantile_bounds = matches!(func, "var_band" | "group_var_band");
    Some(match param {
        // exp(logp) < 1 (binary_kl takes log(1 − p)).
        "logp" | "old_logp" | "ref_logp" => (-2.5, -0.05),
        "r" | "c1" | "ra" | "rb" | "rc" => (0.5, 1.7),
        "q" | "threshold" | "alpha" | "frac" | "budget" | "gamma" | "lam" => (0.1, 0.9),
        "lo" if quantile_bounds => (0.05, 0.45),
        "hi" if quantile_bounds => (0.55, 0.95),
        "lo" => (0.6, 0.95),
        "hi" => (1.05, 1.5),
        "c" => (1.5, 3.5),
        // Σπ² ≥ π², so OTB's energy 1 − 2π + Σπ² stays ≥ 0 (its baseline divides by its sum).
        "sum_pi_squared" => (0.9, 1.0),
        "cap" => (1.0, 1.6),
        "w"
        | "len"
        | "n"
        | "tau"
        | "tau_pos"
        | "tau_neg"
        | "h"
        | "eps"
        | "eps_log"
        | "dp_size"
        | "beta"
        | "f_norm"
        | "max_completion_length"
        | "ga_steps"
        | "num_processes"
        | "target_kl"
        | "horizon"
        | "limit"
        | "out_limit"
        | "cliprange_value"
        | "ddof" => (0.2, 2.2),
        _ => return None,
    })
}

// ------------------------------------------------------------------ wrappers

/// How one parameter is passed in a variant.
#[derive(Clone, Debug, PartialEq)]
enum ArgChoice {
    /// Left to its default.
    Default,
    /// An `f32` input (`@grad`).
    F32,
    /// A `bool` input.
    Bool,
    /// A literal (`"token-mean"`, `true`).
    Lit(String),
}

struct Variant {
    label: String,
    args: Vec<ArgChoice>,
    /// A failure to compile is a skip (a compile-time parameter made a tensor), not an error.
    optional: bool,
}

fn space_of(ty: &TypeKind) -> Option<Option<String>> {
    match ty {
        TypeKind::F32(s) | TypeKind::Bool(s) => Some(s.as_ref().map(|i| i.name.clone())),
        _ => None,
    }
}

/// A parameter whose space the wrapper chooses: the name of its space variable (`S`), or
/// `None` for an unannotated `f32` (each of those is chosen on its own).
fn poly_var(ty: &TypeKind) -> Option<Option<String>> {
    match space_of(ty) {
        Some(Some(s)) if matches!(s.as_str(), "tok" | "seq" | "batch" | "grp" | "turn") => None,
        other => other,
    }
}

/// The units whose space is chosen (space variables, then unannotated parameters) and, per
/// parameter, the unit it belongs to.
fn poly_units(d: &FnDecl) -> (usize, usize, Vec<Option<usize>>) {
    let mut vars: Vec<String> = Vec::new();
    let mut unit = Vec::new();
    for p in &d.params {
        unit.push(match poly_var(&p.ty.kind) {
            Some(Some(v)) => Some(match vars.iter().position(|x| *x == v) {
                Some(i) => i,
                None => {
                    vars.push(v);
                    vars.len() - 1
                }
            }),
            _ => None,
        });
    }
    let mut n = vars.len();
    for (p, u) in d.params.iter().zip(unit.iter_mut()) {
        if matches!(poly_var(&p.ty.kind), Some(None)) {
            *u = Some(n);
            n += 1;
        }
    }
    (vars.len(), n, unit)
}

/// Assignments of `tok`/`seq`/`batch` to `n` units, finest first (earlier units vary slowest).
fn assignments(n: usize) -> Vec<Vec<&'static str>> {
    const SPACES: [&str; 3] = ["tok", "seq", "batch"];
    (0..3usize.pow(n as u32))
        .map(|mut k| {
            let mut a = vec![""; n];
            for slot in a.iter_mut().rev() {
                *slot = SPACES[k % 3];
                k /= 3;
            }
            a
        })
        .collect()
}

/// The input space for a parameter: its declared space when concrete, else its unit's.
fn param_space(ty: &TypeKind, unit: Option<usize>, poly: &[&str]) -> String {
    match (space_of(ty).flatten(), unit) {
        (_, Some(u)) => poly[u].to_string(),
        (Some(s), None) => s,
        (None, None) => "batch".to_string(),
    }
}

fn source(
    fns: &[StdFn],
    sf: &StdFn,
    v: &Variant,
    poly: &[&str],
    weight: Option<&str>,
    bool_result: bool,
) -> String {
    let d = &sf.decl;
    let fname = &d.name.name;
    let mut s = format!("use std::{}::{fname}\n\n", sf.module);
    s.push_str(&format!(
        "objective t_{}_{fname} {{\n",
        sf.module.replace("::", "_")
    ));
    let used = spaces_used(fns, d, &mut BTreeSet::new());
    if used.contains("grp") {
        s.push_str("    input group: id[seq] as grp\n");
    }
    if used.contains("turn") {
        s.push_str("    input turn: id[tok] as turn\n");
    }
    let mut call = Vec::new();
    let (_, _, units) = poly_units(d);
    for ((p, a), unit) in d.params.iter().zip(&v.args).zip(units) {
        let name = &p.name.name;
        let space = param_space(&p.ty.kind, unit, poly);
        match a {
            ArgChoice::Default => continue,
            ArgChoice::F32 => {
                let grad = if bool_result { "" } else { " @grad" };
                s.push_str(&format!("    input p_{name}: f32[{space}]{grad}\n"));
                call.push(format!("{name}: p_{name}"));
            }
            ArgChoice::Bool => {
                s.push_str(&format!("    input p_{name}: bool[{space}]\n"));
                call.push(format!("{name}: p_{name}"));
            }
            ArgChoice::Lit(l) => call.push(format!("{name}: {l}")),
        }
    }
    let call = format!("{fname}({})", call.join(", "));
    if bool_result {
        s.push_str(&format!("    output result = {call}\n"));
    } else if let Some(w) = weight {
        s.push_str(&format!("    input w_out: f32[{w}]\n"));
        s.push_str(&format!("    loss = sum[batch]({call} * w_out)\n"));
    } else {
        s.push_str(&format!("    loss = sum[batch]({call})\n"));
    }
    s.push_str("}\n");
    s
}

fn variants(fns: &[StdFn], sf: &StdFn) -> Result<Vec<Variant>, String> {
    let d = &sf.decl;
    let mut base = Vec::new();
    for p in &d.params {
        let required = p.default.is_none();
        base.push(match &p.ty.kind {
            TypeKind::F32(_) if required => ArgChoice::F32,
            TypeKind::Bool(_) if required => ArgChoice::Bool,
            TypeKind::Str | TypeKind::Enum(_) if required => {
                let vs = str_values(fns, d, &p.name.name, 0);
                let first = vs
                    .iter()
                    .next()
                    .ok_or(format!("no value known for `{}`", p.name.name))?;
                ArgChoice::Lit(format!("{first:?}"))
            }
            TypeKind::Id(_) | TypeKind::Error => {
                return Err(format!("parameter `{}`: unsupported type", p.name.name))
            }
            _ => ArgChoice::Default,
        });
    }
    let mut out = vec![Variant {
        label: "base".into(),
        args: base.clone(),
        optional: false,
    }];
    for (i, p) in d.params.iter().enumerate() {
        let name = &p.name.name;
        let with = |choice: ArgChoice| {
            let mut a = base.clone();
            a[i] = choice;
            a
        };
        match &p.ty.kind {
            TypeKind::Str | TypeKind::Enum(_) => {
                for v in str_values(fns, d, name, 0) {
                    let lit = ArgChoice::Lit(format!("{v:?}"));
                    if lit != base[i] {
                        out.push(Variant {
                            label: format!("{name}={v}"),
                            args: with(lit),
                            optional: false,
                        });
                    }
                }
            }
            TypeKind::Bool(_) if p.default.is_some() => {
                for b in ["true", "false"] {
                    out.push(Variant {
                        label: format!("{name}={b}"),
                        args: with(ArgChoice::Lit(b.into())),
                        optional: false,
                    });
                }
                out.push(Variant {
                    label: format!("{name}=input"),
                    args: with(ArgChoice::Bool),
                    optional: true,
                });
            }
            TypeKind::F32(_) if p.default.is_some() => out.push(Variant {
                label: format!("{name}=input"),
                args: with(ArgChoice::F32),
                optional: true,
            }),
            _ => {}
        }
    }
    Ok(out)
}

/// Compiles a wrapper: the program, or the rendered diagnostics and their codes.
fn compile(name: &str, src: &str) -> Result<Program, (String, Vec<String>)> {
    rlobj_front::compile_source(name, src, &[]).map_err(|d| {
        let codes = d.items.iter().map(|i| i.code.clone()).collect();
        (d.render(false), codes)
    })
}

/// The space of the function's result in a wrapper with a plain `sum[batch]` loss.
fn result_space(p: &Program) -> String {
    let space = p
        .loss
        .map(|l| match &p.node(l).op {
            rlobj_ir::Op::Reduce { arg, .. } => p.node(*arg).space,
            _ => SpaceId::BATCH,
        })
        .unwrap_or(SpaceId::BATCH);
    p.spaces[space.index()].name.clone()
}

/// Maps the random values of the generated inputs into their parameter's domain.
fn apply_domains(p: &Program, func: &str, b: &mut rlobj_runtime::Bound) {
    for (k, input) in p.inputs.iter().enumerate() {
        let Some(param) = input.name.strip_prefix("p_") else {
            continue;
        };
        let Some((lo, hi)) = domain(func, param) else {
            continue;
        };
        if let rlobj_ir::InputKind::Value {
            elem: rlobj_ir::Elem::F32,
            ..
        } = input.kind
        {
            if let Some(v) = b.values[k].as_mut() {
                for x in v.iter_mut() {
                    *x = lo + (*x + 2.0) / 4.0 * (hi - lo);
                }
            }
        }
    }
}

#[derive(Default)]
struct FnReport {
    variants: usize,
    checked: usize,
    skipped: usize,
    evaluated: usize,
    notes: Vec<String>,
    errors: Vec<String>,
}

fn check_variant(fns: &[StdFn], sf: &StdFn, v: &Variant, bool_result: bool, rep: &mut FnReport) {
    let name = sf.path();
    // Spaces of polymorphic parameters: the finest assignment that type-checks.
    let (n_vars, n, _) = poly_units(&sf.decl);
    let mut first_err = None;
    let mut found = None;
    for poly in assignments(n) {
        let src = source(fns, sf, v, &poly, None, bool_result);
        match compile(&name, &src) {
            Ok(p) => {
                found = Some((poly, p));
                break;
            }
            Err((e, codes)) => {
                first_err.get_or_insert((format!("{e}\n--- wrapper ---\n{src}"), codes));
            }
        }
    }
    let Some((poly, plain)) = found else {
        let (e, codes) = first_err.unwrap_or_default();
        if v.optional {
            rep.notes.push(format!(
                "{}: compile time only ({})",
                v.label,
                codes.join(",")
            ));
        } else if let Some((_, why)) = COMPILE_ALLOW.iter().find(|(f, _)| *f == name) {
            rep.notes
                .push(format!("{}: allow-listed compile failure: {why}", v.label));
        } else {
            rep.errors
                .push(format!("{name} [{}] does not compile:\n{e}", v.label));
        }
        return;
    };
    if v.label == "base" && poly.iter().any(|s| *s != "tok") {
        rep.notes.push(format!("spaces {}", poly.join("/")));
    }
    run_variant(fns, sf, v, &poly, plain, bool_result, rep);
    // Space-polymorphic functions placed on `tok` are also checked on `seq` (every `tok`
    // parameter moved to `seq`).
    if n_vars > 0 && poly[..n_vars].iter().all(|s| *s == "tok") {
        let on_seq: Vec<&str> = poly
            .iter()
            .map(|s| if *s == "tok" { "seq" } else { s })
            .collect();
        let src = source(fns, sf, v, &on_seq, None, bool_result);
        match compile(&name, &src) {
            Ok(p) => run_variant(fns, sf, v, &on_seq, p, bool_result, rep),
            Err((e, _)) => rep.errors.push(format!(
                "{name} [{}] compiles on tok but not on seq:\n{e}\n{src}",
                v.label
            )),
        }
    }
}

/// Checks one compiled wrapper (`plain`: the unweighted form) on every batch.
fn run_variant(
    fns: &[StdFn],
    sf: &StdFn,
    v: &Variant,
    poly: &[&str],
    plain: Program,
    bool_result: bool,
    rep: &mut FnReport,
) {
    let name = sf.path();
    let fname = &sf.decl.name.name;
    let label = format!("{} @{}", v.label, poly.join("/"));
    rep.variants += 1;
    let prog = if bool_result {
        plain
    } else {
        let space = result_space(&plain);
        let src = source(fns, sf, v, poly, Some(&space), false);
        if std::env::var("RLOBJ_SHOW_WRAPPERS").is_ok_and(|f| name.ends_with(&f)) {
            eprintln!("--- {name} [{label}]\n{src}");
        }
        match compile(&name, &src) {
            Ok(p) => p,
            Err((e, _)) => {
                rep.errors.push(format!(
                    "{name} [{label}]: weighted wrapper does not compile:\n{e}\n{src}"
                ));
                return;
            }
        }
    };
    for &(seed, rows, width) in BATCHES {
        let at = format!("{name} [{label}] batch (seed {seed}, {rows} rows x {width})");
        if bool_result {
            let mut b = random_bound(&prog, seed, rows, width);
            apply_domains(&prog, fname, &mut b);
            let (params, states) = defaults(&prog);
            match Interpreter::new().evaluate(&prog, &b, &params, &states) {
                Ok(_) => rep.evaluated += 1,
                Err(e) => rep.errors.push(format!("{at}: {e}")),
            }
            continue;
        }
        let d = differentiated(&prog);
        let mut b = random_bound(&d, seed, rows, width);
        apply_domains(&d, fname, &mut b);
        let (params, states) = defaults(&d);
        match check_grads(&d, &b, &params, &states, TOL) {
            Ok(r) => {
                rep.checked += r.checked;
                rep.skipped += r.skipped;
                rep.evaluated += 1;
            }
            Err(e) => rep.errors.push(format!("{at}: {e}")),
        }
    }
}

#[test]
fn every_stdlib_function_matches_finite_differences() {
    let fns = all_functions();
    // The parsed functions are exactly the ones `rlobj doc std` lists.
    let mut documented = 0;
    for m in rlobj_front::sources::stdlib_modules() {
        let doc = rlobj_front::doc_std_module(m).expect("doc");
        for item in doc.items.iter().filter(|i| i.signature.starts_with("fn ")) {
            documented += 1;
            assert!(
                fns.iter()
                    .any(|f| f.module == m && f.decl.name.name == item.name),
                "std::{m}::{} documented but not enumerated",
                item.name
            );
        }
    }
    assert_eq!(documented, fns.len(), "documented vs enumerated functions");

    let mut table: BTreeMap<String, FnReport> = BTreeMap::new();
    let mut errors = Vec::new();
    for sf in &fns {
        let bool_result = matches!(
            sf.decl.ret.as_ref().map(|t| &t.kind),
            Some(TypeKind::Bool(_))
        );
        let mut rep = FnReport::default();
        match variants(&fns, sf) {
            Ok(vs) => {
                for v in &vs {
                    check_variant(&fns, sf, v, bool_result, &mut rep);
                }
            }
            Err(e) => rep.errors.push(format!("{}: {e}", sf.path())),
        }
        if bool_result {
            rep.notes.push("bool result: evaluated only".into());
        } else if rep.checked == 0 && rep.errors.is_empty() {
            rep.notes
                .push("no element checked (no f32 parameter)".into());
        }
        errors.extend(rep.errors.iter().cloned());
        table.insert(sf.path(), rep);
    }

    let (mut covered, mut checked, mut skipped) = (0, 0, 0);
    eprintln!(
        "{:<46} {:>8} {:>8} {:>8} {:>6}  notes",
        "function", "variants", "checked", "skipped", "evals"
    );
    for (name, r) in &table {
        eprintln!(
            "{name:<46} {:>8} {:>8} {:>8} {:>6}  {}",
            r.variants,
            r.checked,
            r.skipped,
            r.evaluated,
            r.notes.join("; ")
        );
        if r.errors.is_empty() && r.variants > 0 {
            covered += 1;
        }
        checked += r.checked;
        skipped += r.skipped;
    }
    eprintln!(
        "{covered}/{} functions covered, {checked} gradient elements checked, {skipped} skipped (kinks/non-finite)",
        table.len()
    );
    assert!(
        errors.is_empty(),
        "{} failure(s):\n\n{}",
        errors.len(),
        errors.join("\n\n")
    );
    assert!(covered > 0, "no stdlib function covered");
    assert!(checked > 0, "no gradient element checked");
}

/// The checker itself fails on a wrong gradient (so a passing run means something): a
/// wrapper whose gradient is perturbed after autodiff is rejected.
#[test]
fn wrapper_check_detects_a_wrong_gradient() {
    let src = "use std::ppo::pg_loss\n\nobjective t {\n    input p_logp: f32[tok] @grad\n    input p_adv: f32[tok]\n    loss = sum[batch](pg_loss(logp: p_logp, adv: p_adv))\n}\n";
    let p = compile("t", src).expect("compiles");
    let mut d = differentiated(&p);
    let (_, g) = d.grads[0];
    let node = d.node(g).clone();
    let two = d.push(rlobj_ir::Node {
        op: rlobj_ir::Op::Const(2.0),
        elem: rlobj_ir::Elem::F32,
        space: node.space,
        span: node.span,
    });
    let wrong = d.push(rlobj_ir::Node {
        op: rlobj_ir::Op::Binary(rlobj_ir::BinaryOp::Mul, g, two),
        ..node
    });
    d.grads[0].1 = wrong;
    let b = random_bound(&d, 1, 4, 5);
    assert!(check_grads(&d, &b, &[], &[], TOL).is_err());
}
