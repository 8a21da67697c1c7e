//! `--backend candle`: the IR lowered op by op to candle tensor ops, gradients by candle's
//! autograd. This is both a portable fallback (plain candle ops only, any device candle
//! runs on) and the honest baseline of what a user writes by hand in candle: token values
//! are padded `[B, T]` tensors, row values `[B]`, group and turn values dense vectors, the
//! loss a scalar; padding is kept out of reductions by `where_cond` on the response mask and
//! segment reductions are `index_add` scatters (see [`space`]).
//!
//! Every IR op is lowered:
//! * elementwise ops ([`elem`]) follow the IR's gradient rules (min/max ties half/half,
//!   torch's clamp rule with tensor bounds);
//! * piecewise-constant ops (`Rank`, `TopK`, `Quantile`, the extremum of a reduce
//!   `Max`/`Min`, the records of `CumMin`/`CumMax`) are computed on the host and enter the
//!   graph as constants or as gathers, so their gradient is the IR's;
//! * softmax / log-softmax / logsumexp are `exp`, `index_add` and `index_select` with a
//!   constant per-segment shift;
//! * `Shift` is one `index_select` of the valid tokens; linear scans (`Cumsum*`,
//!   `ScanRev`/`ScanFwd`, i.e. discounted returns and GAE) are recursive doubling over a
//!   `[segments, longest]` matrix — `log2(T)` differentiable steps, no `T × T` matrices.
//!
//! Only the nodes that the loss, metrics, outputs and state updates read are evaluated; the
//! gradient nodes autodiff appended to the program are not (candle computes gradients).
//!
//! Precision: f32 throughout. Against the f64 interpreter every catalog objective agrees to
//! 1e-5 relative (gradients relative to their largest entry) on well-conditioned batches;
//! sums and means are taken around a per-segment shift so constant segments are exact.
//! Ill-conditioned batches (whitening a near-constant vector, z-scores of two nearly equal
//! rewards) differ by f32 rounding amplified by `1/|x - μ|`, as any f32 implementation
//! does; `tests/tests/candle.rs` documents how those are recognised.

mod elem;
mod space;

use crate::{Backend, Bound, Evaluation, RunError};
use candle_core::{Device, Tensor, Var};
use rlobj_ir::{Elem, InputId, InputKind, NodeId, Op, Program, SpaceId, Structural};
use space::{cerr, Ctx};

/// The candle-eager backend (on the CPU device unless built with [`CandleEager::on`]).
pub struct CandleEager {
    dev: Device,
}

impl Default for CandleEager {
    fn default() -> Self {
        CandleEager { dev: Device::Cpu }
    }
}

impl CandleEager {
    pub fn new() -> Self {
        Self::default()
    }

    /// The backend on any candle device.
    pub fn on(dev: Device) -> Self {
        CandleEager { dev }
    }
}

/// Nodes the forward outputs depend on.
fn needed(prog: &Program) -> Vec<bool> {
    let mut need = vec![false; prog.nodes.len()];
    let roots = prog
        .loss
        .iter()
        .chain(prog.metrics.iter().map(|(_, n)| n))
        .chain(prog.outputs.iter().map(|(_, n)| n))
        .chain(prog.updates.iter().map(|(_, n)| n));
    for n in roots {
        need[n.index()] = true;
    }
    for id in prog.node_ids().rev() {
        if need[id.index()] {
            for o in prog.node(id).op.operands() {
                need[o.index()] = true;
            }
        }
    }
    need
}

/// The f64 value of a node that is a constant, parameter or state (through broadcasts).
fn exact_scalar(prog: &Program, n: NodeId, params: &[f64], states: &[f64]) -> Option<f64> {
    match &prog.node(n).op {
        Op::Const(c) => Some(*c),
        Op::Param(p) => params.get(p.index()).copied(),
        Op::State(s) => states.get(s.index()).copied(),
        Op::Broadcast(a) | Op::StopGrad(a) => exact_scalar(prog, *a, params, states),
        _ => None,
    }
}

fn input_space(inp: &rlobj_ir::Input) -> SpaceId {
    match inp.kind {
        InputKind::Value { space, .. } | InputKind::Ids { space } => space,
    }
}

struct Run<'a> {
    cx: Ctx<'a>,
    t: Vec<Option<Tensor>>,
    vars: Vec<(InputId, Var)>,
}

impl Run<'_> {
    fn get(&self, n: NodeId) -> Result<&Tensor, RunError> {
        self.t[n.index()]
            .as_ref()
            .ok_or_else(|| RunError(format!("candle: %{} missing", n.0)))
    }

    fn opt(&self, n: Option<NodeId>) -> Result<Option<&Tensor>, RunError> {
        n.map(|n| self.get(n)).transpose()
    }

    fn input(&mut self, i: InputId, bound: &Bound) -> Result<Tensor, RunError> {
        let prog = self.cx.prog;
        let inp = &prog.inputs[i.index()];
        let InputKind::Value {
            elem, grad, space, ..
        } = &inp.kind
        else {
            return Err(RunError(format!(
                "input `{}`: ids are not values",
                inp.name
            )));
        };
        let n = self.cx.size(*space);
        let given = bound.values.get(i.index()).and_then(|v| v.as_deref());
        let x = match crate::batch::input_values(inp, given, n)? {
            crate::batch::InputValues::Given(v) => {
                let v: Vec<f64> = if *elem == Elem::Bool {
                    v.iter().map(|&x| f64::from(u8::from(x != 0.0))).collect()
                } else {
                    v.to_vec()
                };
                self.cx.tensor_of(*space, &v)?
            }
            crate::batch::InputValues::Default(d) => self.cx.full(d, &self.cx.shape(*space))?,
        };
        if !(*grad && prog.grads.iter().any(|(g, _)| *g == i)) {
            return Ok(x);
        }
        if let Some((_, v)) = self.vars.iter().find(|(g, _)| *g == i) {
            return Ok(v.as_tensor().clone());
        }
        let v = Var::from_tensor(&x).map_err(cerr)?;
        self.vars.push((i, v.clone()));
        Ok(v.as_tensor().clone())
    }

    fn node(
        &mut self,
        id: NodeId,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
    ) -> Result<Tensor, RunError> {
        let cx = &self.cx;
        let prog = cx.prog;
        let node = prog.node(id);
        let shape = cx.shape(node.space);
        let space_of = |n: NodeId| prog.node(n).space;
        Ok(match &node.op {
            Op::Const(c) => cx.full(*c, &shape)?,
            Op::Param(p) => cx.full(
                params
                    .get(p.index())
                    .copied()
                    .unwrap_or(prog.params[p.index()].default),
                &shape,
            )?,
            Op::State(s) => cx.full(
                states
                    .get(s.index())
                    .copied()
                    .unwrap_or(prog.states[s.index()].init),
                &shape,
            )?,
            Op::Structural(Structural::Width) => cx.full(cx.layout.width as f64, &shape)?,
            Op::Structural(Structural::RowIndex) => {
                let v: Vec<f64> = (0..cx.size(node.space)).map(|r| r as f64).collect();
                cx.tensor_of(node.space, &v)?
            }
            Op::Structural(Structural::TokPosition) => {
                let v: Vec<f64> = cx.layout.tok_pos.iter().map(|&p| f64::from(p)).collect();
                cx.tensor_of(node.space, &v)?
            }
            Op::Input(i) => return self.input(*i, bound),
            Op::Unary(op, a) => elem::unary(*op, self.get(*a)?)?,
            Op::Binary(op, a, b) => {
                let cb = match prog.node(*b).op {
                    Op::Const(c) => Some(c),
                    _ => None,
                };
                elem::binary(*op, self.get(*a)?, self.get(*b)?, cb)?
            }
            Op::Select(c, a, b) => {
                let (a, b) = (self.get(*a)?, self.get(*b)?);
                self.get(*c)?
                    .ne(0f32)
                    .and_then(|c| c.where_cond(a, b))
                    .map_err(cerr)?
            }
            Op::Clamp(x, lo, hi) => elem::clamp(self.get(*x)?, self.get(*lo)?, self.get(*hi)?)?,
            Op::Broadcast(a) => cx.broadcast(self.get(*a)?, space_of(*a), node.space)?,
            Op::StopGrad(a) => self.get(*a)?.detach(),
            Op::Reduce {
                op,
                arg,
                mask,
                empty,
            } => cx.reduce(
                *op,
                self.get(*arg)?,
                self.opt(*mask)?,
                *empty,
                space_of(*arg),
                node.space,
            )?,
            Op::Quantile {
                arg,
                mask,
                q,
                empty,
            } => cx.quantile(
                self.get(*arg)?,
                self.opt(*mask)?,
                self.get(*q)?,
                exact_scalar(prog, *q, params, states),
                *empty,
                space_of(*arg),
                node.space,
            )?,
            Op::Segment {
                op,
                arg,
                mask,
                within,
                k,
            } => cx.segment(
                *op,
                self.get(*arg)?,
                self.opt(*mask)?,
                self.opt(*k)?,
                node.space,
                *within,
            )?,
            Op::Scan {
                op,
                arg,
                coef,
                within,
            } => {
                if space_of(*arg) != SpaceId::TOK {
                    return Err(RunError("candle: scans run over token values".into()));
                }
                cx.scan(*op, self.get(*arg)?, self.opt(*coef)?, *within)?
            }
            Op::Shift {
                arg,
                offset,
                fill,
                within,
            } => {
                if space_of(*arg) != SpaceId::TOK {
                    return Err(RunError("candle: shifts run over token values".into()));
                }
                cx.shift(self.get(*arg)?, *offset, *fill, *within)?
            }
        })
    }
}

impl CandleEager {
    /// The forward value of every node the outputs need (`None` for the others), dense in
    /// its node's space: for tests that locate a disagreement with the interpreter.
    pub fn node_values(
        &self,
        prog: &Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
    ) -> Result<Vec<Option<Vec<f64>>>, RunError> {
        let mut run = Run {
            cx: Ctx::new(prog, &bound.layout, self.dev.clone())?,
            t: vec![None; prog.nodes.len()],
            vars: Vec::new(),
        };
        let need = needed(prog);
        let mut out = vec![None; prog.nodes.len()];
        for id in prog.node_ids() {
            if need[id.index()] {
                let v = run.node(id, bound, params, states)?;
                out[id.index()] = Some(run.cx.to_dense(prog.node(id).space, &v)?);
                run.t[id.index()] = Some(v);
            }
        }
        Ok(out)
    }
}

impl Backend for CandleEager {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn evaluate(
        &mut self,
        prog: &Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
    ) -> Result<Evaluation, RunError> {
        let layout = &bound.layout;
        crate::batch::check_layout(prog, layout)?;
        let mut run = Run {
            cx: Ctx::new(prog, layout, self.dev.clone())?,
            t: vec![None; prog.nodes.len()],
            vars: Vec::new(),
        };
        let need = needed(prog);
        for id in prog.node_ids() {
            if need[id.index()] {
                let v = run.node(id, bound, params, states)?;
                run.t[id.index()] = Some(v);
            }
        }
        let cx = &run.cx;
        let dense = |n: NodeId| -> Result<Vec<f64>, RunError> {
            cx.to_dense(prog.node(n).space, run.get(n)?)
        };
        let first = |n: NodeId| -> Result<f64, RunError> {
            Ok(dense(n)?.first().copied().unwrap_or(f64::NAN))
        };
        let mut out = Evaluation::default();
        if let Some(l) = prog.loss {
            out.loss = Some(first(l)?);
            let grads = run.get(l)?.backward().map_err(cerr)?;
            for (i, _) in &prog.grads {
                let space = input_space(&prog.inputs[i.index()]);
                let v = match run
                    .vars
                    .iter()
                    .find(|(g, _)| g == i)
                    .and_then(|(_, v)| grads.get(v.as_tensor()))
                {
                    Some(g) => cx.to_dense(space, g)?,
                    None => vec![0.0; layout.size(space)],
                };
                out.grads.push((*i, v));
            }
        }
        for (name, n) in &prog.metrics {
            out.metrics.push((name.clone(), first(*n)?));
        }
        for (name, n) in &prog.outputs {
            out.outputs
                .push((name.clone(), prog.node(*n).space, dense(*n)?));
        }
        for (k, st) in prog.states.iter().enumerate() {
            let v = match prog.updates.iter().rev().find(|(s, _)| s.index() == k) {
                Some((_, n)) => first(*n)?,
                None => states.get(k).copied().unwrap_or(st.init),
            };
            out.states.push((st.name.clone(), v));
        }
        Ok(out)
    }
}
