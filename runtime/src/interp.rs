//! The reference interpreter: evaluates every node in `f64` over the batch [`Layout`]. It
//! is the executable definition of the IR's semantics (with `rlobj_ir::scalar`) and the
//! oracle every other backend is compared against. Gradients are ordinary nodes (appended
//! by autodiff), so one forward walk computes everything.
//!
//! The program is validated first; after that every handle is in range, and batch-dependent
//! problems (wrong tensor sizes, non-contiguous segments under a scan) are [`RunError`]s.

use crate::batch::InputValues;
use crate::{Backend, Bound, Evaluation, RunError};
use rlobj_ir::scalar;
use rlobj_ir::{
    Elem, InputKind, Layout, NodeId, Op, Program, ScanOp, SegmentOp, SpaceId, Structural,
};
use std::collections::HashMap;
use std::rc::Rc;

/// The f64 reference backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Interpreter;

impl Interpreter {
    pub fn new() -> Self {
        Interpreter
    }

    /// The value of every node, each in its node's space (bools as 0/1). Used by
    /// [`Backend::evaluate`] and by tests that inspect intermediate values.
    pub fn node_values(
        &self,
        prog: &Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
    ) -> Result<Vec<Vec<f64>>, RunError> {
        rlobj_ir::validate::validate(prog).map_err(|e| RunError(e.to_string()))?;
        crate::batch::check_layout(prog, &bound.layout)?;
        let mut ev = Eval {
            prog,
            bound,
            params,
            states,
            maps: HashMap::new(),
            buckets: HashMap::new(),
            vals: Vec::new(),
        };
        for id in prog.node_ids() {
            let v = ev.node(id)?;
            let want = bound.layout.size(prog.node(id).space);
            if v.len() != want {
                return Err(RunError(format!(
                    "node %{}: produced {} values for a space of {want}",
                    id.0,
                    v.len()
                )));
            }
            ev.vals.push(v);
        }
        Ok(ev.vals)
    }
}

impl Backend for Interpreter {
    fn name(&self) -> &'static str {
        "interp"
    }

    fn evaluate(
        &mut self,
        prog: &Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
    ) -> Result<Evaluation, RunError> {
        let vals = self.node_values(prog, bound, params, states)?;
        let scalar_of = |n: NodeId| vals[n.index()].first().copied().unwrap_or(f64::NAN);
        let mut out = Evaluation {
            loss: prog.loss.map(scalar_of),
            ..Default::default()
        };
        out.metrics = prog
            .metrics
            .iter()
            .map(|(name, n)| (name.clone(), scalar_of(*n)))
            .collect();
        out.outputs = prog
            .outputs
            .iter()
            .map(|(name, n)| (name.clone(), prog.node(*n).space, vals[n.index()].clone()))
            .collect();
        out.grads = prog
            .grads
            .iter()
            .map(|(i, n)| (*i, vals[n.index()].clone()))
            .collect();
        out.states = prog
            .states
            .iter()
            .enumerate()
            .map(|(k, st)| {
                let updated = prog.updates.iter().rev().find(|(s, _)| s.index() == k);
                let v = match updated {
                    Some((_, n)) => scalar_of(*n),
                    None => states.get(k).copied().unwrap_or(st.init),
                };
                (st.name.clone(), v)
            })
            .collect();
        Ok(out)
    }
}

struct Eval<'a> {
    prog: &'a Program,
    bound: &'a Bound,
    params: &'a [f64],
    states: &'a [f64],
    /// Index maps fine → coarse, computed once per evaluation.
    maps: HashMap<(SpaceId, SpaceId), Rc<Vec<u32>>>,
    /// Fine indices of every coarse element, computed once per pair of spaces.
    buckets: HashMap<(SpaceId, SpaceId), Rc<Vec<Vec<usize>>>>,
    vals: Vec<Vec<f64>>,
}

impl Eval<'_> {
    fn layout(&self) -> &Layout {
        &self.bound.layout
    }

    fn space_name(&self, s: SpaceId) -> &str {
        &self.prog.spaces[s.index()].name
    }

    fn map(&mut self, fine: SpaceId, coarse: SpaceId) -> Result<Rc<Vec<u32>>, RunError> {
        if let Some(m) = self.maps.get(&(fine, coarse)) {
            return Ok(m.clone());
        }
        let m = self
            .bound
            .layout
            .map(self.prog, fine, coarse)
            .ok_or_else(|| {
                RunError(format!(
                    "space `{}` is not laid out within `{}`",
                    self.space_name(fine),
                    self.space_name(coarse)
                ))
            })?;
        let n_coarse = self.layout().size(coarse);
        if m.len() != self.layout().size(fine) || m.iter().any(|&i| i as usize >= n_coarse) {
            return Err(RunError(format!(
                "layout map `{}` → `{}` is out of range",
                self.space_name(fine),
                self.space_name(coarse)
            )));
        }
        let m = Rc::new(m);
        self.maps.insert((fine, coarse), m.clone());
        Ok(m)
    }

    /// Fine indices of every coarse element, in fine (token) order.
    fn buckets(&mut self, fine: SpaceId, coarse: SpaceId) -> Result<Rc<Vec<Vec<usize>>>, RunError> {
        if let Some(b) = self.buckets.get(&(fine, coarse)) {
            return Ok(b.clone());
        }
        let m = self.map(fine, coarse)?;
        let mut b = vec![Vec::new(); self.layout().size(coarse)];
        for (i, &c) in m.iter().enumerate() {
            b[c as usize].push(i);
        }
        let b = Rc::new(b);
        self.buckets.insert((fine, coarse), b.clone());
        Ok(b)
    }

    /// Runs of consecutive tokens forming the segments of `within`, for scans and shifts.
    fn runs(&mut self, within: SpaceId) -> Result<Vec<std::ops::Range<usize>>, RunError> {
        if !self.layout().contiguous(self.prog, within) {
            return Err(RunError(format!(
                "scan/shift within `{}`: its segments are not contiguous in token order (ids of one segment must be consecutive within a row)",
                self.space_name(within)
            )));
        }
        let m = self.map(SpaceId::TOK, within)?;
        Ok(segment_runs(&m))
    }

    fn v(&self, n: NodeId) -> &[f64] {
        &self.vals[n.index()]
    }

    fn mask(&self, m: Option<NodeId>, i: usize) -> bool {
        m.is_none_or(|m| scalar::to_bool(self.vals[m.index()][i]))
    }

    fn node(&mut self, id: NodeId) -> Result<Vec<f64>, RunError> {
        let prog = self.prog;
        let node = prog.node(id);
        let n = self.layout().size(node.space);
        Ok(match &node.op {
            Op::Const(c) => vec![*c; n],
            Op::Input(i) => self.input(*i, n)?,
            Op::Param(p) => {
                let v = self.params.get(p.index()).copied().ok_or_else(|| {
                    RunError(format!(
                        "param `{}`: no value given",
                        prog.params[p.index()].name
                    ))
                })?;
                vec![v; n]
            }
            Op::State(s) => {
                let v = self.states.get(s.index()).copied().ok_or_else(|| {
                    RunError(format!(
                        "state `{}`: no value given",
                        prog.states[s.index()].name
                    ))
                })?;
                vec![v; n]
            }
            Op::Structural(s) => match s {
                Structural::TokPosition => {
                    self.layout().tok_pos.iter().map(|&t| t as f64).collect()
                }
                Structural::RowIndex => (0..n).map(|r| r as f64).collect(),
                Structural::Width => vec![self.layout().width as f64; n],
            },
            Op::Unary(op, a) => self.v(*a).iter().map(|&x| scalar::unary(*op, x)).collect(),
            Op::Binary(op, a, b) => self
                .v(*a)
                .iter()
                .zip(self.v(*b))
                .map(|(&x, &y)| scalar::binary(*op, x, y))
                .collect(),
            Op::Select(c, a, b) => (0..n)
                .map(|i| scalar::select(self.v(*c)[i], self.v(*a)[i], self.v(*b)[i]))
                .collect(),
            Op::Clamp(x, lo, hi) => (0..n)
                .map(|i| scalar::clamp(self.v(*x)[i], self.v(*lo)[i], self.v(*hi)[i]))
                .collect(),
            Op::Broadcast(a) => {
                let m = self.map(node.space, prog.node(*a).space)?;
                let src = self.v(*a);
                m.iter().map(|&j| src[j as usize]).collect()
            }
            Op::StopGrad(a) => self.v(*a).to_vec(),
            Op::Reduce {
                op,
                arg,
                mask,
                empty,
            } => {
                let buckets = self.buckets(prog.node(*arg).space, node.space)?;
                let on = |i| self.mask(*mask, i);
                reduce_buckets(&buckets, self.v(*arg), on, |_, seg| {
                    scalar::reduce(*op, seg, *empty)
                })
            }
            Op::Quantile {
                arg,
                mask,
                q,
                empty,
            } => {
                let buckets = self.buckets(prog.node(*arg).space, node.space)?;
                let qs = self.v(*q);
                let on = |i| self.mask(*mask, i);
                reduce_buckets(&buckets, self.v(*arg), on, |c, seg| {
                    scalar::quantile(seg, qs[c], *empty)
                })
            }
            Op::Segment {
                op,
                arg,
                mask,
                within,
                k,
            } => {
                let buckets = self.buckets(node.space, *within)?;
                self.segment(*op, *arg, *mask, *k, &buckets, n)
            }
            Op::Scan {
                op,
                arg,
                coef,
                within,
            } => {
                let runs = self.runs(*within)?;
                scan_runs(*op, self.v(*arg), coef.map(|c| self.v(c)), &runs)
            }
            Op::Shift {
                arg,
                offset,
                fill,
                within,
            } => {
                let runs = self.runs(*within)?;
                shift_runs(self.v(*arg), i64::from(*offset), *fill, &runs)
            }
        })
    }

    fn input(&self, i: rlobj_ir::InputId, n: usize) -> Result<Vec<f64>, RunError> {
        let input = &self.prog.inputs[i.index()];
        let InputKind::Value { elem, .. } = &input.kind else {
            return Err(RunError(format!(
                "input `{}`: ids are not values",
                input.name
            )));
        };
        let given = self.bound.values.get(i.index()).and_then(|v| v.as_deref());
        Ok(match crate::batch::input_values(input, given, n)? {
            InputValues::Given(v) => match elem {
                Elem::Bool => v
                    .iter()
                    .map(|&x| scalar::from_bool(scalar::to_bool(x)))
                    .collect(),
                Elem::F32 => v.to_vec(),
            },
            InputValues::Default(d) => vec![d; n],
        })
    }

    fn segment(
        &self,
        op: SegmentOp,
        arg: NodeId,
        mask: Option<NodeId>,
        k: Option<NodeId>,
        buckets: &[Vec<usize>],
        n: usize,
    ) -> Vec<f64> {
        let on = |i| self.mask(mask, i);
        let k = |c: usize| k.map(|k| self.v(k)[c]).unwrap_or(0.0);
        let pos = &self.layout().tok_pos;
        segment_op(op, self.v(arg), on, k, buckets, pos, n)
    }
}

/// A reduction of every bucket's unmasked elements (`f(bucket index, values)`), shared by
/// the interpreter and the CPU backend's host steps.
pub(crate) fn reduce_buckets(
    buckets: &[Vec<usize>],
    x: &[f64],
    on: impl Fn(usize) -> bool,
    f: impl Fn(usize, &[f64]) -> f64,
) -> Vec<f64> {
    let mut seg = Vec::new();
    buckets
        .iter()
        .enumerate()
        .map(|(c, b)| {
            seg.clear();
            seg.extend(b.iter().filter(|&&i| on(i)).map(|&i| x[i]));
            f(c, &seg)
        })
        .collect()
}

/// A segment op over every `within` segment (`buckets[c]`: segment `c`'s elements in token
/// order, `k(c)` its top-k count, `pos` every token's padded position), shared by the
/// interpreter and the CPU backend. Masked-out elements: softmax/log_softmax 0, rank after
/// every valid element (by position), never in the top k.
pub(crate) fn segment_op(
    op: SegmentOp,
    x: &[f64],
    on: impl Fn(usize) -> bool,
    k: impl Fn(usize) -> f64,
    buckets: &[Vec<usize>],
    pos: &[u32],
    n: usize,
) -> Vec<f64> {
    let mut y = vec![0.0; n];
    let mut acc = Vec::new();
    for (c, b) in buckets.iter().enumerate() {
        let (onv, off): (Vec<usize>, Vec<usize>) = b.iter().partition(|&&i| on(i));
        let seg: Vec<f64> = onv.iter().map(|&i| x[i]).collect();
        let vals: Vec<f64> = match op {
            SegmentOp::Softmax => scalar::softmax(&seg),
            SegmentOp::LogSoftmax => scalar::log_softmax(&seg),
            SegmentOp::Rank => {
                for (j, &i) in off.iter().enumerate() {
                    y[i] = (onv.len() + j) as f64;
                }
                scalar::rank(&seg)
            }
            SegmentOp::ColumnSum => {
                column_sum_segment(x, &on, b, pos, &mut acc, &mut y);
                Vec::new()
            }
            SegmentOp::TopK => scalar::topk(&seg, k(c))
                .into_iter()
                .map(scalar::from_bool)
                .collect(),
        };
        for (&i, v) in onv.iter().zip(vals) {
            y[i] = v;
        }
    }
    y
}

/// The runs of consecutive tokens with one segment id (`m`: token → segment, contiguous).
pub(crate) fn segment_runs(m: &[u32]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=m.len() {
        if i == m.len() || m[i] != m[start] {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

/// `ColumnSum` over one `within` segment (the definition; the CPU backend runs it too): `b`
/// are the segment's tokens in token order, `pos` the padded position of every token. Each
/// position's unmasked tokens are summed in row order and every token of the segment at that
/// position (masked ones too) gets the sum. `acc` is scratch, reused across segments.
pub(crate) fn column_sum_segment(
    x: &[f64],
    on: impl Fn(usize) -> bool,
    b: &[usize],
    pos: &[u32],
    acc: &mut Vec<f64>,
    y: &mut [f64],
) {
    acc.clear();
    for &i in b {
        let t = pos[i] as usize;
        if acc.len() <= t {
            acc.resize(t + 1, 0.0);
        }
        if on(i) {
            acc[t] += x[i];
        }
    }
    for &i in b {
        y[i] = acc[pos[i] as usize];
    }
}

/// A scan over every run (segment) of `x`, shared by the interpreter and the CPU backend.
pub(crate) fn scan_runs(
    op: ScanOp,
    x: &[f64],
    coef: Option<&[f64]>,
    runs: &[std::ops::Range<usize>],
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for r in runs {
        let c = coef.map(|c| &c[r.clone()]);
        scan_run(op, &x[r.clone()], c, &mut y[r.clone()]);
    }
    y
}

/// `x` shifted by `offset` within every run, `fill` where the source leaves the run.
pub(crate) fn shift_runs(
    x: &[f64],
    offset: i64,
    fill: f64,
    runs: &[std::ops::Range<usize>],
) -> Vec<f64> {
    let mut y = vec![fill; x.len()];
    for r in runs {
        for t in r.clone() {
            let s = t as i64 + offset;
            if s >= r.start as i64 && s < r.end as i64 {
                y[t] = x[s as usize];
            }
        }
    }
    y
}

/// One scan over one segment's tokens, in token order.
fn scan_run(op: ScanOp, x: &[f64], c: Option<&[f64]>, y: &mut [f64]) {
    let n = x.len();
    let coef = |t: usize| c.map(|c| c[t]).unwrap_or(0.0);
    match op {
        ScanOp::Cumsum | ScanOp::ScanFwd => {
            let mut acc = 0.0;
            for t in 0..n {
                acc = if op == ScanOp::Cumsum {
                    acc + x[t]
                } else {
                    x[t] + coef(t) * acc
                };
                y[t] = acc;
            }
        }
        ScanOp::CumsumRev | ScanOp::ScanRev => {
            let mut acc = 0.0;
            for t in (0..n).rev() {
                acc = if op == ScanOp::CumsumRev {
                    acc + x[t]
                } else {
                    x[t] + coef(t) * acc
                };
                y[t] = acc;
            }
        }
        ScanOp::CumMin | ScanOp::CumMax => {
            let mut acc = if op == ScanOp::CumMin {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
            for t in 0..n {
                acc = if op == ScanOp::CumMin {
                    scalar::min(acc, x[t])
                } else {
                    scalar::max(acc, x[t])
                };
                y[t] = acc;
            }
        }
        ScanOp::CumMinRev | ScanOp::CumMaxRev => {
            let mut acc = if op == ScanOp::CumMinRev {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
            for t in (0..n).rev() {
                acc = if op == ScanOp::CumMinRev {
                    scalar::min(acc, x[t])
                } else {
                    scalar::max(acc, x[t])
                };
                y[t] = acc;
            }
        }
    }
}
