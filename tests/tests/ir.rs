//! IR tests: validator, interpreter semantics, folding/CSE/DCE, autodiff against finite
//! differences (proptest, every op kind), dump snapshots, and the `.obj` catalog.

use proptest::prelude::*;
use rlobj_ir::dump::dump;
use rlobj_ir::passes::{dce, optimize};
use rlobj_ir::validate::validate;
use rlobj_ir::{
    BinaryOp as Bo, Elem, Op, Program, ReduceOp as Ro, ScanOp as So, SegmentOp as Sg, SpaceId,
    UnaryOp as Uo,
};
use rlobj_runtime::interp::Interpreter;
use rlobj_runtime::{Backend, Bound, Evaluation};
use rlobj_tests::*;

// ---------------------------------------------------------------- program catalog

/// `x*x + 0.5`: a strictly positive function of `x`.
fn pos(b: &mut Builder, x: rlobj_ir::NodeId) -> rlobj_ir::NodeId {
    let xx = b.mul(x, x);
    let h = b.c(0.5, b.p.node(x).space);
    b.add(xx, h)
}

fn unary_prog(op: Uo) -> Program {
    let mut b = Builder::new(&format!("unary_{op:?}").to_lowercase());
    let x = b.g("x", TOK);
    let arg = match op {
        Uo::Log | Uo::Sqrt | Uo::Rsqrt | Uo::Recip | Uo::Log1p => pos(&mut b, x),
        _ => x,
    };
    let y = b.un(op, arg);
    // Piecewise-constant ops: multiply by x so the gradient is the op's value.
    let y = if matches!(op, Uo::Sign | Uo::Floor | Uo::Ceil) {
        b.mul(y, x)
    } else {
        y
    };
    b.loss_weighted(y);
    b.finish()
}

fn binary_prog(op: Bo) -> Program {
    let mut b = Builder::new(&format!("binary_{op:?}").to_lowercase());
    let x = b.g("x", TOK);
    let y = b.g("y", TOK);
    let r = match op {
        Bo::Div => {
            let d = pos(&mut b, y);
            b.div(x, d)
        }
        Bo::Pow => {
            let base = pos(&mut b, x);
            b.bin(Bo::Pow, base, y)
        }
        Bo::Lt | Bo::Le | Bo::Gt | Bo::Ge | Bo::Eq | Bo::Ne => {
            let c = b.bin(op, x, y);
            let xx = b.mul(x, x);
            b.select(c, xx, y)
        }
        _ => b.bin(op, x, y),
    };
    b.loss_weighted(r);
    b.finish()
}

fn clamp_const() -> Program {
    let mut b = Builder::new("clamp_const");
    let x = b.g("x", TOK);
    let lo = b.c(-0.5, TOK);
    let hi = b.c(0.8, TOK);
    let y = b.clamp(x, lo, hi);
    b.loss_weighted(y);
    b.finish()
}

/// Tensor bounds that depend on other grad inputs.
fn clamp_tensor() -> Program {
    let mut b = Builder::new("clamp_tensor");
    let x = b.g("x", TOK);
    let lo = b.g("lo", TOK);
    let d = b.g("d", TOK);
    let dd = b.mul(d, d);
    let hi = b.add(lo, dd);
    let y = b.clamp(x, lo, hi);
    b.loss_weighted(y);
    b.finish()
}

/// GPPO: `clamp(r, lo*r/sg(r), hi*r/sg(r))` with `r = exp(logp - old)`.
fn gppo() -> Program {
    let mut b = Builder::new("gppo");
    let logp = b.g("logp", TOK);
    let old = b.f("old_logp", TOK);
    let adv = b.f("advantages", TOK);
    let eps = b.param("eps", 0.2);
    let d = b.sub(logp, old);
    let r = b.un(Uo::Exp, d);
    let sr = b.sg(r);
    let one = b.c(1.0, BATCH);
    let lo_s = b.sub(one, eps);
    let hi_s = b.add(one, eps);
    let lo_t = b.bcast(lo_s, TOK);
    let hi_t = b.bcast(hi_s, TOK);
    let lr = b.mul(lo_t, r);
    let lo = b.div(lr, sr);
    let hr = b.mul(hi_t, r);
    let hi = b.div(hr, sr);
    let c = b.clamp(r, lo, hi);
    let pg = b.mul(c, adv);
    let neg = b.un(Uo::Neg, pg);
    let m = b.reduce(Ro::Mean, neg, None, BATCH);
    b.p.loss = Some(m);
    b.finish()
}

fn select_prog() -> Program {
    let mut b = Builder::new("select");
    let x = b.g("x", TOK);
    let m = b.b("m", TOK);
    let e = b.un(Uo::Exp, x);
    let t = b.un(Uo::Tanh, x);
    let y = b.select(m, e, t);
    b.loss_weighted(y);
    b.finish()
}

fn broadcast_prog() -> Program {
    let mut b = Builder::new("broadcast");
    let a = b.g("a", SEQ);
    let s = b.g("s", BATCH);
    let x = b.f("x", TOK);
    let at = b.bcast(a, TOK);
    let st = b.bcast(s, TOK);
    let y = b.mul(at, x);
    let y = b.mul(y, st);
    b.loss_weighted(y);
    b.finish()
}

fn reduce_prog(op: Ro, masked: bool, to: SpaceId) -> Program {
    let mut b = Builder::new(&format!(
        "reduce_{}_{}{}",
        rlobj_ir::dump::reduce_name(op),
        to.0,
        if masked { "_m" } else { "" }
    ));
    let x = b.g("x", TOK);
    let m = masked.then(|| b.b("m", TOK));
    let r = b.reduce(op, x, m, to);
    let y = b.un(Uo::Tanh, r);
    b.loss_weighted(y);
    b.finish()
}

fn reduce_turn_grp(op: Ro) -> Program {
    let mut b = Builder::new(&format!(
        "reduce_nested_{}",
        rlobj_ir::dump::reduce_name(op)
    ));
    let turn = b.segments("turn", "turn");
    let grp = b.groups("group", "grp", BATCH);
    let x = b.g("x", TOK);
    let m = b.b("m", TOK);
    let t = b.reduce(op, x, Some(m), turn);
    let s = b.reduce(op, t, None, SEQ);
    let g = b.reduce(op, s, None, grp);
    let gs = b.bcast(g, SEQ);
    let d = b.sub(s, gs);
    let y = b.mul(d, d);
    b.loss_weighted(y);
    b.finish()
}

fn segment_prog(op: Sg, within: &str, masked: bool) -> Program {
    let mut b = Builder::new(&format!(
        "segment_{}_{within}{}",
        rlobj_ir::dump::segment_name(op),
        if masked { "_m" } else { "" }
    ));
    let (x, w) = match within {
        "grp" => {
            let g = b.groups("group", "grp", BATCH);
            (b.g("x", SEQ), g)
        }
        "turn" => {
            let t = b.segments("turn", "turn");
            (b.g("x", TOK), t)
        }
        _ => (b.g("x", TOK), SEQ),
    };
    let m = masked.then(|| b.b("m", b.p.node(x).space));
    let y = match op {
        Sg::TopK => {
            let k = b.c(2.0, w);
            let t = b.segment(op, x, m, w, Some(k));
            let z = b.c(0.0, b.p.node(x).space);
            let e = b.un(Uo::Exp, x);
            b.select(t, e, z)
        }
        Sg::Rank => {
            let r = b.segment(op, x, m, w, None);
            b.mul(r, x)
        }
        _ => b.segment(op, x, m, w, None),
    };
    b.loss_weighted(y);
    b.finish()
}

/// `colsum[within](x [where m]) * x`: the product makes the gradient depend on `x`, so the
/// finite-difference check sees both the forward sums and the adjoint.
fn colsum_prog(within: &str, masked: bool) -> Program {
    let mut b = Builder::new(&format!(
        "segment_colsum_{within}{}",
        if masked { "_m" } else { "" }
    ));
    let w = if within == "grp" {
        b.groups("group", "grp", BATCH)
    } else {
        BATCH
    };
    let x = b.g("x", TOK);
    let m = masked.then(|| b.b("m", TOK));
    let c = b.segment(Sg::ColumnSum, x, m, w, None);
    let y = b.mul(c, x);
    b.loss_weighted(y);
    b.finish()
}

fn quantile_prog() -> Program {
    let mut b = Builder::new("quantile");
    let grp = b.groups("group", "grp", BATCH);
    let x = b.g("x", SEQ);
    let q = b.c(0.3, grp);
    let th = b.quantile(x, None, q);
    let tb = b.bcast(th, SEQ);
    let above = b.bin(Bo::Gt, x, tb);
    let d = b.sub(x, tb);
    let e = b.un(Uo::Exp, x);
    let y = b.select(above, e, d);
    b.loss_weighted(y);
    b.finish()
}

fn scan_prog(op: So, turn: bool) -> Program {
    let mut b = Builder::new(&format!(
        "scan_{}{}",
        rlobj_ir::dump::scan_name(op),
        if turn { "_turn" } else { "" }
    ));
    let w = if turn {
        b.segments("turn", "turn")
    } else {
        SEQ
    };
    let x = b.g("x", TOK);
    let coef = matches!(op, So::ScanRev | So::ScanFwd).then(|| {
        let c = b.g("c", TOK);
        b.un(Uo::Tanh, c)
    });
    let y = b.scan(op, x, coef, w);
    b.loss_weighted(y);
    b.finish()
}

fn shift_prog(offset: i32) -> Program {
    let mut b = Builder::new(&format!("shift_{offset}"));
    let turn = b.segments("turn", "turn");
    let x = b.g("x", TOK);
    let y = b.shift(x, offset, 0.5, SEQ);
    let z = b.shift(x, -offset, -1.0, turn);
    let yz = b.mul(y, z);
    b.loss_weighted(yz);
    b.finish()
}

fn stopgrad_prog() -> Program {
    let mut b = Builder::new("stopgrad");
    let x = b.g("x", TOK);
    let s = b.sg(x);
    let y = b.mul(x, s);
    let p = b.un(Uo::Exp, s);
    let y = b.add(y, p);
    b.loss_weighted(y);
    b.finish()
}

fn structural_prog() -> Program {
    let mut b = Builder::new("structural");
    let x = b.g("x", TOK);
    let pos = b.push(
        Op::Structural(rlobj_ir::Structural::TokPosition),
        Elem::F32,
        TOK,
    );
    let w = b.push(
        Op::Structural(rlobj_ir::Structural::Width),
        Elem::F32,
        BATCH,
    );
    let row = b.push(
        Op::Structural(rlobj_ir::Structural::RowIndex),
        Elem::F32,
        SEQ,
    );
    let wt = b.bcast(w, TOK);
    let rt = b.bcast(row, TOK);
    let a = b.mul(x, pos);
    let a = b.add(a, wt);
    let a = b.mul(a, rt);
    b.loss_weighted(a);
    b.finish()
}

/// A GRPO-like objective touching groups, z-scores, ratios, min and a KL term; one grad
/// input (`unused`) does not reach the loss, metrics/outputs/updates are present.
fn grpo_like() -> Program {
    let mut b = Builder::new("grpo_like");
    let grp = b.groups("group", "grp", BATCH);
    let logp = b.g("logp", TOK);
    let _unused = b.g("unused", SEQ);
    let old = b.f("old_logp", TOK);
    let reff = b.f("ref_logp", TOK);
    let reward = b.f("reward", SEQ);
    let beta = b.param("beta", 0.04);
    let (lam, lam_v) = b.state("lam", 0.0);
    let mean = b.reduce(Ro::Mean, reward, None, grp);
    let std = b.reduce(Ro::Std { ddof: 1 }, reward, None, grp);
    let mb = b.bcast(mean, SEQ);
    let sb = b.bcast(std, SEQ);
    let eps = b.c(1e-6, SEQ);
    let den = b.add(sb, eps);
    let num = b.sub(reward, mb);
    let adv = b.div(num, den);
    let adv_t = b.bcast(adv, TOK);
    let d = b.sub(logp, old);
    let r = b.un(Uo::Exp, d);
    let lo = b.c(0.8, TOK);
    let hi = b.c(1.28, TOK);
    let rc = b.clamp(r, lo, hi);
    let s1 = b.mul(r, adv_t);
    let s2 = b.mul(rc, adv_t);
    let pg = b.bin(Bo::Min, s1, s2);
    let kd = b.sub(reff, logp);
    let ek = b.un(Uo::Exp, kd);
    let one = b.c(1.0, TOK);
    let k3 = b.sub(ek, kd);
    let k3 = b.sub(k3, one);
    let bt = b.bcast(beta, TOK);
    let kl = b.mul(bt, k3);
    let l = b.sub(kl, pg);
    let per_seq = b.reduce(Ro::Mean, l, None, SEQ);
    let loss = b.reduce(Ro::Mean, per_seq, None, BATCH);
    b.p.loss = Some(loss);
    let clipped = b.bin(Bo::Ne, r, rc);
    let frac = b.reduce(Ro::Mean, clipped, None, BATCH);
    b.metric("clipfrac", frac);
    b.output("adv", adv);
    let nl = b.add(lam_v, frac);
    b.update(lam, nl);
    b.finish()
}

/// Every program the gradient checks and snapshots run on.
fn catalog() -> Vec<Program> {
    let mut v = Vec::new();
    for op in [
        Uo::Neg,
        Uo::Exp,
        Uo::Log,
        Uo::Log1p,
        Uo::Expm1,
        Uo::Sqrt,
        Uo::Rsqrt,
        Uo::Abs,
        Uo::Sign,
        Uo::Tanh,
        Uo::Sigmoid,
        Uo::Softplus,
        Uo::LogSigmoid,
        Uo::Floor,
        Uo::Ceil,
        Uo::Recip,
    ] {
        v.push(unary_prog(op));
    }
    for op in [
        Bo::Add,
        Bo::Sub,
        Bo::Mul,
        Bo::Div,
        Bo::Pow,
        Bo::Min,
        Bo::Max,
        Bo::Lt,
        Bo::Ge,
        Bo::Eq,
    ] {
        v.push(binary_prog(op));
    }
    v.extend([
        clamp_const(),
        clamp_tensor(),
        gppo(),
        select_prog(),
        broadcast_prog(),
    ]);
    let reds = [
        Ro::Sum,
        Ro::Mean,
        Ro::Max,
        Ro::Min,
        Ro::Var { ddof: 0 },
        Ro::Var { ddof: 1 },
        Ro::Std { ddof: 1 },
        Ro::LogSumExp,
        Ro::Count,
    ];
    for op in reds {
        v.push(reduce_prog(op, false, SEQ));
        v.push(reduce_prog(op, true, BATCH));
        v.push(reduce_turn_grp(op));
    }
    for op in [Sg::Softmax, Sg::LogSoftmax, Sg::Rank, Sg::TopK] {
        v.push(segment_prog(op, "seq", true));
        v.push(segment_prog(op, "grp", false));
        v.push(segment_prog(op, "turn", true));
    }
    for (within, masked) in [("grp", false), ("grp", true), ("batch", true)] {
        v.push(colsum_prog(within, masked));
    }
    v.push(quantile_prog());
    for op in [
        So::Cumsum,
        So::CumsumRev,
        So::ScanRev,
        So::ScanFwd,
        So::CumMin,
        So::CumMax,
        So::CumMinRev,
        So::CumMaxRev,
    ] {
        v.push(scan_prog(op, false));
        v.push(scan_prog(op, true));
    }
    v.extend([
        shift_prog(1),
        shift_prog(2),
        stopgrad_prog(),
        structural_prog(),
        grpo_like(),
    ]);
    v
}

fn grad_case(prog: &Program, seed: u64, rows: usize, width: usize) -> Result<GradReport, String> {
    let d = differentiated(prog);
    let bound = random_bound(&d, seed, rows, width);
    let (params, states) = defaults(&d);
    check_grads(&d, &bound, &params, &states, 1e-6)
}

// ---------------------------------------------------------------- gradient checks

#[test]
fn every_catalog_program_validates_and_differentiates() {
    for p in catalog() {
        validate(&p).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let d = differentiated(&p);
        validate(&d).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let n_grad = p
            .inputs
            .iter()
            .filter(|i| matches!(i.kind, rlobj_ir::InputKind::Value { grad: true, .. }))
            .count();
        assert_eq!(d.grads.len(), n_grad, "{}", p.name);
        validate(&optimize(&d)).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
}

#[test]
fn every_catalog_program_gradient_is_actually_checked() {
    // Guards against a checker that skips everything.
    for p in catalog() {
        let mut total = GradReport::default();
        for seed in 0..6 {
            let r = grad_case(&p, seed, 5, 7).unwrap_or_else(|e| panic!("{e}"));
            total.checked += r.checked;
            total.skipped += r.skipped;
        }
        assert!(total.checked > 0, "{}: nothing checked ({total:?})", p.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn prop_gradients_match_finite_differences(seed in any::<u64>(), rows in 1usize..6, width in 0usize..9) {
        for p in catalog() {
            if let Err(e) = grad_case(&p, seed, rows, width) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    #[test]
    fn prop_optimize_preserves_every_result(seed in any::<u64>(), rows in 1usize..6, width in 0usize..9) {
        for p in catalog() {
            let d = differentiated(&p);
            let o = optimize(&d);
            let bound = random_bound(&d, seed, rows, width);
            let (params, states) = defaults(&d);
            let a = Interpreter::new().evaluate(&d, &bound, &params, &states).unwrap();
            let b = Interpreter::new().evaluate(&o, &bound, &params, &states).unwrap();
            prop_assert!(same_eval(&a, &b), "{}: {:?} vs {:?}", p.name, a, b);
            prop_assert!(o.nodes.len() <= d.nodes.len());
        }
    }
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn same_eval(a: &Evaluation, b: &Evaluation) -> bool {
    let vs =
        |x: &[f64], y: &[f64]| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(*p, *q));
    same(a.loss.unwrap_or(0.0), b.loss.unwrap_or(0.0))
        && a.grads.len() == b.grads.len()
        && a.grads
            .iter()
            .zip(&b.grads)
            .all(|(x, y)| x.0 == y.0 && vs(&x.1, &y.1))
        && a.metrics
            .iter()
            .zip(&b.metrics)
            .all(|(x, y)| same(x.1, y.1))
        && a.outputs
            .iter()
            .zip(&b.outputs)
            .all(|(x, y)| vs(&x.2, &y.2))
        && a.states.iter().zip(&b.states).all(|(x, y)| same(x.1, y.1))
}

#[test]
fn checker_detects_a_wrong_gradient() {
    let mut d = differentiated(&unary_prog(Uo::Tanh));
    let (input, g) = d.grads[0];
    let s = d.node(g).space;
    let wrong = d.push(rlobj_ir::Node {
        op: Op::Binary(Bo::Mul, g, g),
        elem: Elem::F32,
        space: s,
        span: Default::default(),
    });
    d.grads[0] = (input, wrong);
    let b = random_bound(&d, 3, 4, 6);
    assert!(check_grads(&d, &b, &[], &[], 1e-6).is_err());
}

// ---------------------------------------------------------------- tie and edge rules

fn one_row(p: &Program, values: Vec<Option<Vec<f64>>>, n: usize) -> Bound {
    bound(p, 1, n, &vec![true; n], vec![], values)
}

fn grad_of(e: &Evaluation, k: usize) -> Vec<f64> {
    e.grads[k].1.clone()
}

#[test]
fn elementwise_min_max_ties_split_half() {
    let mut b = Builder::new("ties");
    let x = b.g("x", TOK);
    let y = b.g("y", TOK);
    let mn = b.bin(Bo::Min, x, y);
    let mx = b.bin(Bo::Max, x, y);
    let two = b.c(2.0, TOK);
    let mx2 = b.mul(mx, two);
    let s = b.add(mn, mx2);
    b.loss_sum(s);
    let p = b.finish();
    let e = run(
        &p,
        &one_row(
            &p,
            vec![Some(vec![1.0, 2.0, 3.0]), Some(vec![1.0, 0.0, 5.0])],
            3,
        ),
    )
    .unwrap();
    assert_eq!(grad_of(&e, 0), vec![1.5, 2.0, 1.0]);
    assert_eq!(grad_of(&e, 1), vec![1.5, 1.0, 2.0]);
}

#[test]
fn reduce_max_ties_split_evenly_and_respect_masks() {
    let mut b = Builder::new("rmax");
    let x = b.g("x", TOK);
    let m = b.b("m", TOK);
    let a = b.reduce(Ro::Max, x, None, SEQ);
    let c = b.reduce(Ro::Max, x, Some(m), SEQ);
    let ten = b.c(10.0, SEQ);
    let c10 = b.mul(c, ten);
    let s = b.add(a, c10);
    b.loss_sum(s);
    let p = b.finish();
    let bd = one_row(
        &p,
        vec![
            Some(vec![1.0, 3.0, 3.0, 0.0]),
            Some(vec![1.0, 1.0, 0.0, 1.0]),
        ],
        4,
    );
    let e = run(&p, &bd).unwrap();
    assert_eq!(grad_of(&e, 0), vec![0.0, 10.5, 0.5, 0.0]);
}

#[test]
fn clamp_is_inclusive_and_routes_to_the_active_bound() {
    let mut b = Builder::new("clamp");
    let x = b.g("x", TOK);
    let lo = b.g("lo", TOK);
    let hi = b.g("hi", TOK);
    let c = b.clamp(x, lo, hi);
    b.loss_sum(c);
    let p = b.finish();
    let bd = one_row(
        &p,
        vec![
            Some(vec![-1.0, 0.0, 0.5, 1.0, 2.0]),
            Some(vec![0.0; 5]),
            Some(vec![1.0; 5]),
        ],
        5,
    );
    let e = run(&p, &bd).unwrap();
    assert_eq!(grad_of(&e, 0), vec![0.0, 1.0, 1.0, 1.0, 0.0]);
    assert_eq!(grad_of(&e, 1), vec![1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(grad_of(&e, 2), vec![0.0, 0.0, 0.0, 0.0, 1.0]);
}

#[test]
fn gppo_keeps_the_gradient_of_clipped_tokens() {
    let p = gppo();
    let bd = one_row(
        &p,
        vec![
            Some(vec![0.5, 0.0, -0.5]),
            Some(vec![0.0; 3]),
            Some(vec![1.0; 3]),
        ],
        3,
    );
    let e = run(&p, &bd).unwrap();
    let g = grad_of(&e, 0);
    let want = [-1.2 / 3.0, -1.0 / 3.0, -0.8 / 3.0];
    for (a, w) in g.iter().zip(want) {
        assert!((a - w).abs() < 1e-12, "{g:?}");
    }
    // The forward value is the ordinary clamp.
    let l = e.loss.unwrap();
    assert!((l + (1.2 + 1.0 + 0.8) / 3.0).abs() < 1e-12);
}

#[test]
fn cummax_and_cummin_rev_route_ties_to_the_latest_in_scan_order() {
    let mut b = Builder::new("cum");
    let x = b.g("x", TOK);
    let y = b.scan(So::CumMax, x, None, SEQ);
    b.loss_sum(y);
    let p = b.finish();
    let e = run(
        &p,
        &one_row(&p, vec![Some(vec![1.0, 3.0, 2.0, 3.0, 0.0])], 5),
    )
    .unwrap();
    assert_eq!(grad_of(&e, 0), vec![1.0, 2.0, 0.0, 2.0, 0.0]);

    let mut b = Builder::new("cumrev");
    let x = b.g("x", TOK);
    let y = b.scan(So::CumMinRev, x, None, SEQ);
    b.loss_sum(y);
    let p = b.finish();
    let e = run(
        &p,
        &one_row(&p, vec![Some(vec![2.0, 0.0, 1.0, 0.0, 3.0])], 5),
    )
    .unwrap();
    assert_eq!(grad_of(&e, 0), vec![0.0, 2.0, 0.0, 2.0, 1.0]);
}

#[test]
fn unused_grad_input_gets_zeros_and_no_loss_gets_no_grads() {
    let p = grpo_like();
    let d = differentiated(&p);
    let bd = random_bound(&d, 1, 4, 5);
    let e = run(&d, &bd).unwrap();
    assert_eq!(e.grads.len(), 2);
    assert_eq!(e.grads[1].1, vec![0.0; 4]);

    let mut b = Builder::new("transform");
    let x = b.g("x", TOK);
    let y = b.scan(So::Cumsum, x, None, SEQ);
    b.output("y", y);
    let mut p = b.finish();
    rlobj_ir::autodiff::differentiate(&mut p).unwrap();
    assert!(p.grads.is_empty());
    assert!(rlobj_ir::autodiff::differentiate(&mut differentiated(&grpo_like())).is_err());
}

// ---------------------------------------------------------------- interpreter semantics

#[test]
fn interpreter_quantile_rank_topk() {
    let mut b = Builder::new("order");
    let x = b.f("x", SEQ);
    let m = b.b("m", SEQ);
    let q = b.c(0.5, BATCH);
    let qu = b.quantile(x, None, q);
    let r = b.segment(Sg::Rank, x, None, BATCH, None);
    let rm = b.segment(Sg::Rank, x, Some(m), BATCH, None);
    let k2 = b.c(2.7, BATCH);
    let k9 = b.c(9.0, BATCH);
    let t2 = b.segment(Sg::TopK, x, None, BATCH, Some(k2));
    let t9 = b.segment(Sg::TopK, x, None, BATCH, Some(k9));
    let tm = b.segment(Sg::TopK, x, Some(m), BATCH, Some(k2));
    for (name, n) in [
        ("q", qu),
        ("r", r),
        ("rm", rm),
        ("t2", t2),
        ("t9", t9),
        ("tm", tm),
    ] {
        b.output(name, n);
    }
    let p = b.finish();
    let bd = bound(
        &p,
        4,
        0,
        &[],
        vec![],
        vec![
            Some(vec![2.0, 1.0, 2.0, 0.0]),
            Some(vec![0.0, 1.0, 1.0, 1.0]),
        ],
    );
    let e = run(&p, &bd).unwrap();
    let o = |k: usize| e.outputs[k].2.clone();
    assert_eq!(o(0), vec![1.5]);
    assert_eq!(o(1), vec![2.0, 1.0, 3.0, 0.0]);
    assert_eq!(o(2), vec![3.0, 1.0, 2.0, 0.0]);
    assert_eq!(o(3), vec![1.0, 0.0, 1.0, 0.0]);
    assert_eq!(o(4), vec![1.0; 4]);
    assert_eq!(o(5), vec![0.0, 1.0, 1.0, 0.0]);
}

#[test]
fn interpreter_colsum_sums_padded_columns_of_each_group() {
    let mut b = Builder::new("colsum");
    let g = b.groups("group", "grp", BATCH);
    let x = b.f("x", TOK);
    let m = b.b("m", TOK);
    let by_group = b.segment(Sg::ColumnSum, x, Some(m), g, None);
    let by_batch = b.segment(Sg::ColumnSum, x, None, BATCH, None);
    b.output("g", by_group);
    b.output("b", by_batch);
    let p = b.finish();
    // Rows (padded width 3) with holes; groups {0, 2} and {1, 3}; tokens in row order.
    #[rustfmt::skip]
    let mask = [
        true, true, true,
        true, false, true,
        true, true, false,
        false, true, true,
    ];
    let ids = vec![(rlobj_ir::InputId(0), vec![7, 3, 7, 3])];
    let xs = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    // Only row 2's first token (x = 6) is masked out: it still receives its column's sum.
    let ms = vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
    let bd = bound(&p, 4, 3, &mask, ids, vec![None, Some(xs), Some(ms)]);
    let e = run(&p, &bd).unwrap();
    // Group {0, 2}: t0 = 1 (6 masked), t1 = 2 + 7, t2 = 3. Group {1, 3}: t0 = 4, t1 = 8,
    // t2 = 5 + 9. Batch: t0 = 1 + 4 + 6, t1 = 2 + 7 + 8, t2 = 3 + 5 + 9.
    assert_eq!(
        e.outputs[0].2,
        vec![1.0, 9.0, 3.0, 4.0, 14.0, 1.0, 9.0, 8.0, 14.0]
    );
    assert_eq!(
        e.outputs[1].2,
        vec![11.0, 17.0, 17.0, 11.0, 17.0, 11.0, 17.0, 17.0, 17.0]
    );
}

#[test]
fn interpreter_empty_segments_softmax_scans_shifts() {
    let mut b = Builder::new("misc");
    let turn = b.segments("turn", "turn");
    let x = b.f("x", TOK);
    let m = b.b("m", TOK);
    let mean = b.push(
        Op::Reduce {
            op: Ro::Mean,
            arg: x,
            mask: None,
            empty: -7.0,
        },
        Elem::F32,
        SEQ,
    );
    let var1 = b.push(
        Op::Reduce {
            op: Ro::Var { ddof: 1 },
            arg: x,
            mask: Some(m),
            empty: -3.0,
        },
        Elem::F32,
        SEQ,
    );
    let sm = b.segment(Sg::Softmax, x, Some(m), SEQ, None);
    let half = b.c(0.5, TOK);
    let sr = b.scan(So::ScanRev, x, Some(half), SEQ);
    let sh = b.shift(x, 1, 9.0, SEQ);
    let shn = b.shift(x, -1, 9.0, turn);
    let one = b.c(1.0, TOK);
    let cs = b.scan(So::Cumsum, one, None, turn);
    for (name, n) in [
        ("mean", mean),
        ("var1", var1),
        ("sm", sm),
        ("sr", sr),
        ("sh", sh),
        ("shn", shn),
        ("cs", cs),
    ] {
        b.output(name, n);
    }
    let p = b.finish();
    // Row 0: 4 tokens, turns [0,0,1,1]; row 1 empty.
    let l3 = 3f64.ln();
    let bd = bound(
        &p,
        2,
        4,
        &[true, true, true, true, false, false, false, false],
        vec![(rlobj_ir::InputId(0), vec![0, 0, 1, 1, 0, 0, 0, 0])],
        vec![
            None,
            Some(vec![0.0, l3, 5.0, 1.0]),
            Some(vec![1.0, 1.0, 0.0, 0.0]),
        ],
    );
    let e = run(&p, &bd).unwrap();
    let o = |k: usize| e.outputs[k].2.clone();
    assert_eq!(o(0)[1], -7.0);
    assert!((o(0)[0] - (l3 + 6.0) / 4.0).abs() < 1e-12);
    assert_eq!(o(1)[1], -3.0);
    let sm = o(2);
    assert!(
        (sm[0] - 0.25).abs() < 1e-12
            && (sm[1] - 0.75).abs() < 1e-12
            && sm[2] == 0.0
            && sm[3] == 0.0
    );
    let sr = o(3);
    assert!((sr[3] - 1.0).abs() < 1e-12 && (sr[2] - 5.5).abs() < 1e-12);
    assert_eq!(o(4), vec![l3, 5.0, 1.0, 9.0]);
    assert_eq!(o(5), vec![9.0, 0.0, 9.0, 5.0]);
    assert_eq!(o(6), vec![1.0, 2.0, 1.0, 2.0]);
}

#[test]
fn interpreter_errors_name_the_problem() {
    let mut b = Builder::new("err");
    let turn = b.segments("turn", "turn");
    let x = b.f("x", TOK);
    let y = b.scan(So::Cumsum, x, None, turn);
    b.output("y", y);
    let p = b.finish();
    let bd = bound(
        &p,
        1,
        3,
        &[true; 3],
        vec![(rlobj_ir::InputId(0), vec![0, 1, 0])],
        vec![None, Some(vec![1.0; 3])],
    );
    let err = run(&p, &bd).unwrap_err();
    assert!(err.0.contains("turn"), "{err}");
    let bd = bound(
        &p,
        1,
        3,
        &[true; 3],
        vec![(rlobj_ir::InputId(0), vec![0, 0, 1])],
        vec![None, None],
    );
    assert!(run(&p, &bd).unwrap_err().0.contains("`x`"));
    let bd = bound(
        &p,
        1,
        3,
        &[true; 3],
        vec![(rlobj_ir::InputId(0), vec![0, 0, 1])],
        vec![None, Some(vec![1.0; 2])],
    );
    assert!(run(&p, &bd).unwrap_err().0.contains("`x`"));
    let bd = bound(
        &p,
        1,
        3,
        &[true; 3],
        vec![(rlobj_ir::InputId(0), vec![0, 0, 1])],
        vec![None, Some(vec![1.0; 3])],
    );
    assert!(run(&p, &bd).is_ok());
}

#[test]
fn state_updates_and_metrics() {
    let p = grpo_like();
    let bd = random_bound(&p, 7, 4, 5);
    let e = run(&p, &bd).unwrap();
    assert_eq!(e.metrics.len(), 1);
    assert_eq!(e.states.len(), 1);
    assert_eq!(e.states[0].1, e.metrics[0].1);
    assert_eq!(e.outputs[0].1, SEQ);
}

// ---------------------------------------------------------------- validator

fn rejects(p: &Program, needle: &str) {
    match validate(p) {
        Ok(_) => panic!("`{}` validated", p.name),
        Err(e) => assert!(e.to_string().contains(needle), "{e}"),
    }
}

#[test]
fn validator_rejects_malformed_programs() {
    let base = || {
        let mut b = Builder::new("bad");
        let x = b.f("x", TOK);
        let s = b.f("s", SEQ);
        (b, x, s)
    };
    let (mut b, _, _) = base();
    b.push(Op::Unary(Uo::Neg, rlobj_ir::NodeId(5)), Elem::F32, TOK);
    rejects(&b.p, "before its user");

    let (mut b, x, s) = base();
    b.push(Op::Binary(Bo::Add, x, s), Elem::F32, TOK);
    rejects(&b.p, "operand");

    let (mut b, x, _) = base();
    b.bcast(x, SEQ);
    rejects(&b.p, "broadcast");

    let (mut b, _, s) = base();
    b.reduce(Ro::Sum, s, None, TOK);
    rejects(&b.p, "reduce");

    let (mut b, x, _) = base();
    let g = b.groups("group", "grp", BATCH);
    b.scan(So::Cumsum, x, None, g);
    rejects(&b.p, "scans");

    let (mut b, x, _) = base();
    let k = b.c(1.0, TOK);
    b.segment(Sg::TopK, x, None, SEQ, Some(k));
    rejects(&b.p, "k %");

    // colsum: per-row values have no position; `seq`/row segments are not sets of rows.
    let (mut b, _, s) = base();
    b.segment(Sg::ColumnSum, s, None, BATCH, None);
    rejects(&b.p, "colsum runs over `tok`");
    let (mut b, x, _) = base();
    b.segment(Sg::ColumnSum, x, None, SEQ, None);
    rejects(&b.p, "colsum within `seq`");
    let (mut b, x, _) = base();
    let t = b.segments("turn", "turn");
    b.segment(Sg::ColumnSum, x, None, t, None);
    rejects(&b.p, "colsum within `turn`");

    let (mut b, x, _) = base();
    b.p.loss = Some(x);
    rejects(&b.p, "loss");

    let (mut b, x, _) = base();
    let c = b.bin(Bo::Lt, x, x);
    b.push(Op::Binary(Bo::Add, c, c), Elem::F32, TOK);
    rejects(&b.p, "does not take");

    let (mut b, x, _) = base();
    b.p.grads.push((rlobj_ir::InputId(0), x));
    rejects(&b.p, "not @grad");

    let (mut b, x, _) = base();
    b.reduce(Ro::Sum, x, Some(x), SEQ);
    rejects(&b.p, "mask");

    let (mut b, _, s) = base();
    let g1 = b.groups("g1", "g1", BATCH);
    let g2 = b.groups("g2", "g2", BATCH);
    let a = b.reduce(Ro::Sum, s, None, g1);
    b.bcast(a, g2);
    rejects(&b.p, "broadcast");

    let (mut b, _, _) = base();
    b.push(Op::Input(rlobj_ir::InputId(0)), Elem::F32, SEQ);
    rejects(&b.p, "declaration");

    let (mut b, x, _) = base();
    b.scan(So::ScanRev, x, None, SEQ);
    rejects(&b.p, "coef");

    let (mut b, x, _) = base();
    b.p.outputs.push(("o".into(), rlobj_ir::NodeId(x.0 + 10)));
    rejects(&b.p, "out of range");
}

// ---------------------------------------------------------------- passes

#[test]
fn fold_evaluates_constants_and_exact_identities() {
    let mut b = Builder::new("fold");
    let x = b.f("x", TOK);
    let two = b.c(2.0, TOK);
    let three = b.c(3.0, TOK);
    let five = b.add(two, three);
    let e = b.un(Uo::Exp, five);
    let one = b.c(1.0, TOK);
    let x1 = b.mul(x, one);
    let y = b.mul(x1, e);
    let t = b.cb(true, TOK);
    let s = b.select(t, y, x);
    let k = b.c(4.0, BATCH);
    let kb = b.bcast(k, TOK);
    let z = b.add(s, kb);
    b.output("z", z);
    let p = b.finish();
    let o = optimize(&p);
    let text = dump(&o);
    assert_eq!(o.nodes.len(), 5, "{text}");
    assert!(text.contains(&format!("const {:?}", 5f64.exp())), "{text}");
    assert!(text.contains("const 4.0"), "{text}");
    let bd = random_bound(&p, 2, 3, 4);
    assert!(same_eval(&run(&p, &bd).unwrap(), &run(&o, &bd).unwrap()));
}

#[test]
fn fold_keeps_inexact_rewrites() {
    // x * 0 is not 0 (NaN, inf) and x + 0 is not x (-0): neither may fold.
    let mut b = Builder::new("nofold");
    let x = b.f("x", TOK);
    let z = b.c(0.0, TOK);
    let a = b.mul(x, z);
    let c = b.add(a, z);
    b.output("c", c);
    let p = b.finish();
    assert_eq!(optimize(&p).nodes.len(), 4);
}

#[test]
fn cse_merges_duplicates_and_dce_keeps_roots() {
    let mut b = Builder::new("cse");
    let x = b.g("x", TOK);
    let e1 = b.un(Uo::Exp, x);
    let e2 = b.un(Uo::Exp, x);
    let s = b.add(e1, e2);
    let _dead = b.un(Uo::Tanh, x);
    let (st, sv) = b.state("st", 1.0);
    let l = b.loss_sum(s);
    let nm = b.add(l, sv);
    b.metric("m", l);
    b.update(st, nm);
    let p = differentiated(&b.finish());
    let o = rlobj_ir::cse::cse(&p);
    assert!(o.nodes.len() < p.nodes.len());
    let exps = o
        .nodes
        .iter()
        .filter(|n| n.op == Op::Unary(Uo::Exp, x))
        .count();
    assert_eq!(exps, 1);
    let d = dce(&o);
    assert!(!d
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Unary(Uo::Tanh, _))));
    validate(&d).unwrap();
    let bd = random_bound(&p, 5, 3, 4);
    assert!(same_eval(&run(&p, &bd).unwrap(), &run(&d, &bd).unwrap()));
}

// ---------------------------------------------------------------- snapshots

fn snapshot_text(p: &Program) -> String {
    let d = differentiated(p);
    format!(
        "{}\n---- after autodiff ----\n{}\n---- optimized ----\n{}",
        dump(p),
        dump(&d),
        dump(&optimize(&d))
    )
}

fn snap_name(p: &Program) -> String {
    p.name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[test]
fn dump_snapshots_of_hand_built_programs() {
    let wanted = [
        "unary_exp",
        "unary_rsqrt",
        "binary_min",
        "binary_pow",
        "clamp_tensor",
        "gppo",
        "select",
        "broadcast",
        "reduce_mean_0_m",
        "reduce_nested_std(ddof=1)",
        "reduce_logsumexp_1",
        "segment_softmax_turn_m",
        "segment_log_softmax_seq_m",
        "segment_topk_grp",
        "segment_colsum_grp_m",
        "quantile",
        "scan_scan_rev_turn",
        "scan_scan",
        "scan_cummin",
        "shift_1",
        "stopgrad",
        "structural",
        "grpo_like",
    ];
    let all = catalog();
    for name in wanted {
        let p = all
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        insta::assert_snapshot!(format!("ir_{}", snap_name(p)), snapshot_text(p));
    }
}

// ---------------------------------------------------------------- .obj sources

const OBJ_SOURCES: &[(&str, &str)] = &[
    (
        "ppo_min",
        "objective ppo_min {
    input logp: f32[tok] @grad
    input old_logp: f32[tok]
    input advantages: f32[tok]
    param eps: f32 = 0.2
    let r = exp(logp - old_logp)
    loss = -mean[batch](min(r * advantages, clamp(r, 1 - eps, 1 + eps) * advantages))
}",
    ),
    (
        "gppo_src",
        "objective gppo_src {
    input logp: f32[tok] @grad
    input old_logp: f32[tok]
    input advantages: f32[tok]
    let r = exp(logp - old_logp)
    loss = -mean[batch](clamp(r, 0.8 * r / sg(r), 1.2 * r / sg(r)) * advantages)
}",
    ),
    (
        "group_z",
        "objective group_z {
    input logp: f32[tok] @grad
    input reward: f32[seq]
    input group: id[seq] as grp
    let adv = (reward - mean[grp](reward)) / (std[grp](reward, ddof: 1) + 1e-6)
    loss = -sum[batch](logp * adv) / count[batch](logp)
    metric adv_max = max[batch](adv)
}",
    ),
    (
        "gae_src",
        "objective gae_src {
    input values: f32[tok] @grad
    input token_rewards: f32[tok]
    param gamma: f32 = 0.99
    let ret = scan_rev[seq](token_rewards, decay: gamma)
    loss = 0.5 * mean[batch]((values - sg(ret)) * (values - sg(ret)))
    output returns = ret
}",
    ),
];

#[test]
fn dump_snapshots_of_obj_sources() {
    for (name, src) in OBJ_SOURCES {
        let p =
            rlobj_front::compile_source(name, src, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        insta::assert_snapshot!(format!("obj_{name}"), snapshot_text(&p));
        for seed in 0..4 {
            grad_case(&p, seed, 4, 6).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn obj_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        if path.is_dir() {
            obj_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "obj") {
            out.push(path);
        }
    }
}

#[test]
fn every_catalog_objective_compiles_and_its_gradient_matches_finite_differences() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../objectives");
    let mut files = Vec::new();
    obj_files(&root, &mut files);
    files.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for f in &files {
        let p = match rlobj_front::compile_path(f, &[]) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}: does not compile:\n{e}", f.display()));
                continue;
            }
        };
        if let Err(e) = validate(&p) {
            failures.push(format!("{}: {e}", f.display()));
            continue;
        }
        if p.loss.is_none() {
            continue;
        }
        for seed in 0..3 {
            match grad_case(&p, seed, 4, 6) {
                Ok(r) => checked += r.checked,
                Err(e) => {
                    failures.push(format!("{}: seed {seed}: {e}", f.display()));
                    break;
                }
            }
        }
    }
    eprintln!(
        "{} objectives, {checked} gradient elements checked",
        files.len()
    );
    assert!(
        files.is_empty() || checked > 0,
        "no gradient element was checked"
    );
    assert!(
        failures.is_empty(),
        "{} of {} objectives failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
