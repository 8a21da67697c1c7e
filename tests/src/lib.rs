//! Test utilities shared by the integration tests: a small IR [`Builder`], random batches
//! for any program ([`random_bound`]), and central finite-difference gradient checks
//! against the interpreter ([`check_grads`]).

#![allow(clippy::unwrap_used)]

use rlobj_ir::{
    BinaryOp, Elem, Input, InputId, InputKind, Layout, Node, NodeId, Op, Param, ParamId, Program,
    ReduceOp, ScanOp, SegmentOp, Space, SpaceId, SpaceKind, SrcSpan, State, StateId, UnaryOp,
};
use rlobj_runtime::interp::Interpreter;
use rlobj_runtime::Bound;

pub const BATCH: SpaceId = SpaceId::BATCH;
pub const SEQ: SpaceId = SpaceId::SEQ;
pub const TOK: SpaceId = SpaceId::TOK;

/// Builds programs by hand: every method pushes one node with its type inferred.
pub struct Builder {
    pub p: Program,
}

impl Builder {
    pub fn new(name: &str) -> Self {
        Builder {
            p: Program::new(name),
        }
    }

    pub fn push(&mut self, op: Op, elem: Elem, space: SpaceId) -> NodeId {
        self.p.push(Node {
            op,
            elem,
            space,
            span: SrcSpan::default(),
        })
    }
    fn space(&self, n: NodeId) -> SpaceId {
        self.p.node(n).space
    }
    fn elem(&self, n: NodeId) -> Elem {
        self.p.node(n).elem
    }

    /// Declares a value input and returns a node reading it.
    pub fn input(&mut self, name: &str, elem: Elem, space: SpaceId, grad: bool) -> NodeId {
        let id = InputId(self.p.inputs.len() as u32);
        self.p.inputs.push(Input {
            name: name.into(),
            kind: InputKind::Value {
                elem,
                space,
                default: None,
                grad,
            },
            span: SrcSpan::default(),
            channel: None,
        });
        self.push(Op::Input(id), elem, space)
    }
    /// `f32[space]` input.
    pub fn f(&mut self, name: &str, space: SpaceId) -> NodeId {
        self.input(name, Elem::F32, space, false)
    }
    /// `f32[space] @grad` input.
    pub fn g(&mut self, name: &str, space: SpaceId) -> NodeId {
        self.input(name, Elem::F32, space, true)
    }
    /// `bool[space]` input.
    pub fn b(&mut self, name: &str, space: SpaceId) -> NodeId {
        self.input(name, Elem::Bool, space, false)
    }
    fn ids(&mut self, name: &str, space: &str, kind: impl Fn(InputId) -> SpaceKind) -> SpaceId {
        let input = InputId(self.p.inputs.len() as u32);
        let s = SpaceId(self.p.spaces.len() as u32);
        self.p.spaces.push(Space {
            name: space.into(),
            kind: kind(input),
        });
        self.p.inputs.push(Input {
            name: name.into(),
            kind: InputKind::Ids { space: s },
            span: SrcSpan::default(),
            channel: None,
        });
        s
    }
    /// `input name: id[tok] as space`.
    pub fn segments(&mut self, name: &str, space: &str) -> SpaceId {
        self.ids(name, space, |input| SpaceKind::RowSegments { input })
    }
    /// `input name: id[seq] as space in parent`.
    pub fn groups(&mut self, name: &str, space: &str, parent: SpaceId) -> SpaceId {
        self.ids(name, space, |input| SpaceKind::RowGroups { input, parent })
    }
    pub fn param(&mut self, name: &str, default: f64) -> NodeId {
        let id = ParamId(self.p.params.len() as u32);
        self.p.params.push(Param {
            name: name.into(),
            elem: Elem::F32,
            default,
            span: SrcSpan::default(),
        });
        self.push(Op::Param(id), Elem::F32, BATCH)
    }
    pub fn state(&mut self, name: &str, init: f64) -> (StateId, NodeId) {
        let id = StateId(self.p.states.len() as u32);
        self.p.states.push(State {
            name: name.into(),
            init,
            span: SrcSpan::default(),
        });
        (id, self.push(Op::State(id), Elem::F32, BATCH))
    }
    pub fn c(&mut self, v: f64, space: SpaceId) -> NodeId {
        self.push(Op::Const(v), Elem::F32, space)
    }
    pub fn cb(&mut self, v: bool, space: SpaceId) -> NodeId {
        self.push(Op::Const(if v { 1.0 } else { 0.0 }), Elem::Bool, space)
    }
    pub fn un(&mut self, op: UnaryOp, a: NodeId) -> NodeId {
        let elem = rlobj_ir::scalar::unary_elems(op).1;
        let s = self.space(a);
        self.push(Op::Unary(op, a), elem, s)
    }
    pub fn bin(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
        let elem = rlobj_ir::scalar::binary_result(op, self.elem(a)).unwrap_or(Elem::F32);
        let s = self.space(a);
        self.push(Op::Binary(op, a, b), elem, s)
    }
    pub fn add(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Div, a, b)
    }
    pub fn select(&mut self, c: NodeId, a: NodeId, b: NodeId) -> NodeId {
        let (e, s) = (self.elem(a), self.space(a));
        self.push(Op::Select(c, a, b), e, s)
    }
    pub fn clamp(&mut self, x: NodeId, lo: NodeId, hi: NodeId) -> NodeId {
        let s = self.space(x);
        self.push(Op::Clamp(x, lo, hi), Elem::F32, s)
    }
    pub fn bcast(&mut self, a: NodeId, to: SpaceId) -> NodeId {
        let e = self.elem(a);
        self.push(Op::Broadcast(a), e, to)
    }
    pub fn reduce(
        &mut self,
        op: ReduceOp,
        arg: NodeId,
        mask: Option<NodeId>,
        to: SpaceId,
    ) -> NodeId {
        self.push(
            Op::Reduce {
                op,
                arg,
                mask,
                empty: 0.0,
            },
            Elem::F32,
            to,
        )
    }
    pub fn sum(&mut self, arg: NodeId, to: SpaceId) -> NodeId {
        self.reduce(ReduceOp::Sum, arg, None, to)
    }
    pub fn segment(
        &mut self,
        op: SegmentOp,
        arg: NodeId,
        mask: Option<NodeId>,
        within: SpaceId,
        k: Option<NodeId>,
    ) -> NodeId {
        let e = if op == SegmentOp::TopK {
            Elem::Bool
        } else {
            Elem::F32
        };
        let s = self.space(arg);
        self.push(
            Op::Segment {
                op,
                arg,
                mask,
                within,
                k,
            },
            e,
            s,
        )
    }
    pub fn quantile(&mut self, arg: NodeId, mask: Option<NodeId>, q: NodeId) -> NodeId {
        let s = self.space(q);
        self.push(
            Op::Quantile {
                arg,
                mask,
                q,
                empty: 0.0,
            },
            Elem::F32,
            s,
        )
    }
    pub fn scan(
        &mut self,
        op: ScanOp,
        arg: NodeId,
        coef: Option<NodeId>,
        within: SpaceId,
    ) -> NodeId {
        self.push(
            Op::Scan {
                op,
                arg,
                coef,
                within,
            },
            Elem::F32,
            TOK,
        )
    }
    pub fn shift(&mut self, arg: NodeId, offset: i32, fill: f64, within: SpaceId) -> NodeId {
        let e = self.elem(arg);
        self.push(
            Op::Shift {
                arg,
                offset,
                fill,
                within,
            },
            e,
            TOK,
        )
    }
    pub fn sg(&mut self, a: NodeId) -> NodeId {
        let (e, s) = (self.elem(a), self.space(a));
        self.push(Op::StopGrad(a), e, s)
    }
    /// Sets the loss to `sum[batch](x)` (reducing when `x` is not a batch scalar).
    pub fn loss_sum(&mut self, x: NodeId) -> NodeId {
        let l = if self.space(x) == BATCH {
            x
        } else {
            self.sum(x, BATCH)
        };
        self.p.loss = Some(l);
        l
    }
    /// Sets the loss to `Σ w·x` with fixed random-looking weights `w` (an input `__w`), so
    /// that every element of `x` gets a distinct gradient.
    pub fn loss_weighted(&mut self, x: NodeId) -> NodeId {
        let s = self.space(x);
        let w = self.f("__w", s);
        let wx = self.mul(w, x);
        self.loss_sum(wx)
    }
    pub fn metric(&mut self, name: &str, x: NodeId) {
        self.p.metrics.push((name.into(), x));
    }
    pub fn output(&mut self, name: &str, x: NodeId) {
        self.p.outputs.push((name.into(), x));
    }
    pub fn update(&mut self, s: StateId, x: NodeId) {
        self.p.updates.push((s, x));
    }
    pub fn finish(self) -> Program {
        self.p
    }
}

/// The project's one deterministic generator (SplitMix64), shared with the runtime.
pub use rlobj_runtime::rng::Rng;

/// The response mask of a random batch: per row empty, full, a ragged prefix, or random
/// holes; when `rows >= 3` one row is forced full and another empty.
pub fn random_mask(rng: &mut Rng, rows: usize, width: usize) -> Vec<bool> {
    let mut mask = vec![false; rows * width];
    let forced_full = rng.below(rows as u64) as usize;
    let forced_empty = (forced_full + 1) % rows.max(1);
    for r in 0..rows {
        let kind = if rows >= 3 && r == forced_full {
            1
        } else if rows >= 3 && r == forced_empty {
            0
        } else {
            rng.below(5)
        };
        let len = rng.below(width as u64 + 1) as usize;
        for t in 0..width {
            mask[r * width + t] = match kind {
                0 => false,
                1 => true,
                2 | 3 => t < len,
                _ => rng.chance(0.6),
            };
        }
    }
    mask
}

/// Random id tensors for every id input of `prog`: turn ids that step up within rows, and
/// group ids with about `rows_per_group` rows per group (nested groups stay inside their
/// parent group).
pub fn random_ids(
    prog: &Program,
    rng: &mut Rng,
    rows: usize,
    width: usize,
    rows_per_group: u64,
) -> Vec<(InputId, Vec<i64>)> {
    let mut ids: Vec<(InputId, Vec<i64>)> = Vec::new();
    for space in &prog.spaces {
        match &space.kind {
            SpaceKind::RowSegments { input } => {
                let mut v = Vec::with_capacity(rows * width);
                for _ in 0..rows {
                    let mut id = rng.below(3) as i64;
                    for _ in 0..width {
                        if rng.chance(0.3) {
                            id += 1;
                        }
                        v.push(id);
                    }
                }
                ids.push((*input, v));
            }
            SpaceKind::RowGroups { input, parent } => {
                let n_groups = (rows as u64 / rows_per_group).max(1);
                let parent_ids = prog
                    .spaces
                    .get(parent.index())
                    .and_then(|ps| match ps.kind {
                        SpaceKind::RowGroups { input: pi, .. } => {
                            ids.iter().find(|(i, _)| *i == pi).map(|(_, v)| v.clone())
                        }
                        _ => None,
                    });
                let v = (0..rows)
                    .map(|r| match &parent_ids {
                        Some(p) => p[r] * 1000 + rng.below(2) as i64,
                        None => rng.below(n_groups) as i64,
                    })
                    .collect();
                ids.push((*input, v));
            }
            _ => {}
        }
    }
    ids
}

/// A random batch for any program, from its input declarations: a ragged mask (see
/// [`random_mask`]), contiguous turn ids inside rows for `id[tok]` inputs, random group ids
/// for `id[seq]` inputs (nested inside their parent groups), `f32` values uniform in
/// `[-2, 2]`, bools true with probability 0.6.
pub fn random_bound(prog: &Program, seed: u64, rows: usize, width: usize) -> Bound {
    let mut rng = Rng::new(seed);
    let mask = random_mask(&mut rng, rows, width);
    let ids = random_ids(prog, &mut rng, rows, width, 2);
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
                            Elem::F32 => rng.unit() * 4.0 - 2.0,
                            Elem::Bool => {
                                if rng.chance(0.6) {
                                    1.0
                                } else {
                                    0.0
                                }
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

/// Default parameter values and initial states of a program.
pub fn defaults(prog: &Program) -> (Vec<f64>, Vec<f64>) {
    (
        prog.params.iter().map(|p| p.default).collect(),
        prog.states.iter().map(|s| s.init).collect(),
    )
}

/// Replaces every `StopGrad` and `Quantile` node by a new input holding its value at the
/// base point, so finite differences see them as the constants autodiff treats them as.
pub fn freeze(prog: &Program, bound: &Bound, vals: &[Vec<f64>]) -> (Program, Bound) {
    let mut p = prog.clone();
    let mut b = bound.clone();
    for (k, val) in vals.iter().enumerate().take(p.nodes.len()) {
        let (elem, space) = (p.nodes[k].elem, p.nodes[k].space);
        if matches!(p.nodes[k].op, Op::StopGrad(_) | Op::Quantile { .. }) {
            let id = InputId(p.inputs.len() as u32);
            p.inputs.push(Input {
                name: format!("__frozen{k}"),
                kind: InputKind::Value {
                    elem,
                    space,
                    default: None,
                    grad: false,
                },
                span: SrcSpan::default(),
                channel: None,
            });
            p.nodes[k].op = Op::Input(id);
            b.values.push(Some(val.clone()));
        }
    }
    (p, b)
}

/// Every discrete decision a program takes at a point (bool values, min/max/clamp sides,
/// abs signs, floor/ceil/sign values, reduce-max/min winners, ranks, cummin/cummax records).
/// Finite differences are only meaningful where these agree at `x - h`, `x` and `x + h`.
pub fn decisions(prog: &Program, layout: &Layout, vals: &[Vec<f64>]) -> Vec<f64> {
    let sign = |d: f64| {
        if d.is_nan() {
            2.0
        } else {
            d.signum() * (d != 0.0) as i32 as f64
        }
    };
    let mut out = Vec::new();
    for (k, node) in prog.nodes.iter().enumerate() {
        let v = &vals[k];
        if node.elem == Elem::Bool {
            out.extend_from_slice(v);
            continue;
        }
        match &node.op {
            Op::Binary(BinaryOp::Min | BinaryOp::Max, a, b) => out.extend(
                vals[a.index()]
                    .iter()
                    .zip(&vals[b.index()])
                    .map(|(x, y)| sign(x - y)),
            ),
            Op::Clamp(x, lo, hi) => {
                let bounds = vals[lo.index()].iter().zip(&vals[hi.index()]);
                for (x, (l, h)) in vals[x.index()].iter().zip(bounds) {
                    out.push(sign(x - l));
                    out.push(sign(x - h));
                }
            }
            Op::Unary(UnaryOp::Abs, a) => out.extend(vals[a.index()].iter().map(|&x| sign(x))),
            Op::Unary(UnaryOp::Sign | UnaryOp::Floor | UnaryOp::Ceil, _) => {
                out.extend_from_slice(v)
            }
            Op::Reduce {
                op: ReduceOp::Max | ReduceOp::Min,
                arg,
                ..
            } => {
                let m = layout.map(prog, prog.node(*arg).space, node.space).unwrap();
                out.extend(
                    vals[arg.index()]
                        .iter()
                        .zip(&m)
                        .map(|(x, &c)| (*x == v[c as usize]) as i32 as f64),
                );
            }
            Op::Reduce {
                op: ReduceOp::Std { .. },
                ..
            } => out.extend(v.iter().map(|&x| (x == 0.0) as i32 as f64)),
            Op::Segment {
                op: SegmentOp::Rank,
                ..
            } => out.extend_from_slice(v),
            Op::Scan {
                op: ScanOp::CumMin | ScanOp::CumMax | ScanOp::CumMinRev | ScanOp::CumMaxRev,
                arg,
                ..
            } => out.extend(
                vals[arg.index()]
                    .iter()
                    .zip(v)
                    .map(|(x, y)| (x == y) as i32 as f64),
            ),
            _ => {}
        }
    }
    out
}

/// What a gradient check did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GradReport {
    /// Elements compared against finite differences.
    pub checked: usize,
    /// Elements skipped because a perturbation changed a discrete decision or the loss
    /// was not finite.
    pub skipped: usize,
}

/// Central finite differences (`h = 1e-5·max(1, |x|)`) of the loss w.r.t. every element of
/// every `@grad` input, compared with the program's grads (`prog` must be differentiated):
/// `|fd - ad| <= tol · max(1, |fd|, |ad|)`. Stop-gradients and quantiles are frozen at the
/// base point; elements near a kink are skipped (see [`decisions`]).
pub fn check_grads(
    prog: &Program,
    bound: &Bound,
    params: &[f64],
    states: &[f64],
    tol: f64,
) -> Result<GradReport, String> {
    let interp = Interpreter::new();
    let base = interp
        .node_values(prog, bound, params, states)
        .map_err(|e| e.to_string())?;
    let (fp, fb) = freeze(prog, bound, &base);
    let loss = fp.loss.ok_or("program has no loss")?;
    let eval = |b: &Bound| -> Result<(f64, Vec<f64>), String> {
        let v = interp
            .node_values(&fp, b, params, states)
            .map_err(|e| e.to_string())?;
        Ok((v[loss.index()][0], decisions(&fp, &b.layout, &v)))
    };
    let (l0, d0) = eval(&fb)?;
    let mut report = GradReport::default();
    for (input, gnode) in &prog.grads {
        let ad = &base[gnode.index()];
        let xs = fb.values[input.index()]
            .clone()
            .ok_or("grad of an id input")?;
        if ad.len() != xs.len() {
            return Err(format!(
                "grad of input {} has {} values for {}",
                input.0,
                ad.len(),
                xs.len()
            ));
        }
        for j in 0..xs.len() {
            let h = 1e-5 * xs[j].abs().max(1.0);
            let mut b = fb.clone();
            let at = |b: &mut Bound, x: f64| {
                if let Some(v) = b.values[input.index()].as_mut() {
                    v[j] = x;
                }
            };
            at(&mut b, xs[j] + h);
            let (lp, dp) = eval(&b)?;
            at(&mut b, xs[j] - h);
            let (lm, dm) = eval(&b)?;
            if dp != d0 || dm != d0 || !(lp.is_finite() && lm.is_finite() && l0.is_finite()) {
                report.skipped += 1;
                continue;
            }
            let fd = (lp - lm) / (2.0 * h);
            let err = (fd - ad[j]).abs();
            if err.is_nan() || err > tol * fd.abs().max(ad[j].abs()).max(1.0) {
                return Err(format!(
                    "program `{}`: d loss / d {}[{j}] = {} by autodiff, {fd} by finite differences",
                    prog.name,
                    prog.inputs[input.index()].name,
                    ad[j]
                ));
            }
            report.checked += 1;
        }
    }
    Ok(report)
}

/// Differentiates a copy of `prog` (panics on an autodiff error: for tests).
pub fn differentiated(prog: &Program) -> Program {
    let mut p = prog.clone();
    rlobj_ir::autodiff::differentiate(&mut p).unwrap();
    p
}

/// A bound batch from explicit data: `values` are in each input's space (`None` for ids).
pub fn bound(
    prog: &Program,
    rows: usize,
    width: usize,
    mask: &[bool],
    ids: Vec<(InputId, Vec<i64>)>,
    values: Vec<Option<Vec<f64>>>,
) -> Bound {
    Bound {
        layout: Layout::build(prog, rows, width, mask, &ids).unwrap(),
        values,
    }
}

/// Differentiates (when there is a loss and no grads yet) and evaluates with defaults.
pub fn run(
    prog: &Program,
    b: &Bound,
) -> Result<rlobj_runtime::Evaluation, rlobj_runtime::RunError> {
    use rlobj_runtime::Backend;
    let p = if prog.grads.is_empty() && prog.loss.is_some() {
        differentiated(prog)
    } else {
        prog.clone()
    };
    let (params, states) = defaults(&p);
    Interpreter::new().evaluate(&p, b, &params, &states)
}

/// A fenced block of a Markdown file: its info string, the 1-based line of its opening fence
/// and its body.
pub struct FencedBlock {
    pub info: String,
    pub line: usize,
    pub body: String,
}

/// The fenced code blocks of a Markdown text, in order; panics on an unterminated block (a
/// broken doc is a test failure).
pub fn fenced_blocks(md: &str) -> Vec<FencedBlock> {
    let mut out = Vec::new();
    let mut cur: Option<FencedBlock> = None;
    for (i, line) in md.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("```") {
            match cur.take() {
                Some(b) => out.push(b),
                None => {
                    cur = Some(FencedBlock {
                        info: rest.trim().to_string(),
                        line: i + 1,
                        body: String::new(),
                    })
                }
            }
        } else if let Some(b) = cur.as_mut() {
            b.body.push_str(line);
            b.body.push('\n');
        }
    }
    assert!(cur.is_none(), "unterminated code block");
    out
}

/// Runs the CLI in-process, as the binary would: `(exit code, stdout, stderr)`.
pub fn run_cli(args: &[String]) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = {
        let mut io = rlobj_runtime::cli::Io {
            out: &mut out,
            err: &mut err,
            color: false,
        };
        let argv = std::iter::once("rlobj".to_string()).chain(args.iter().cloned());
        rlobj_runtime::cli::main_with(argv, &mut io)
    };
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}
