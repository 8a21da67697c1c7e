//! `--backend candle`: the IR lowered op by op to candle tensor ops (CPU), gradients by
//! candle's autograd. This is the honest baseline of what a user writes by hand in candle:
//! token values are padded `[B, T]` tensors, row values `[B]`, group values `[G]`, the loss a
//! scalar; padding is kept out of reductions by `where_cond` on the response mask and
//! segment reductions are `index_add` scatters.
//!
//! Unsupported here (the backend says so by name): scans, shifts, segment ops, quantiles
//! and row-segment spaces — a hand-written candle baseline would need custom kernels.

use crate::{Backend, Bound, Evaluation, RunError};
use candle_core::{DType, Device, Tensor, Var};
use rlobj_ir::{
    BinaryOp, Elem, InputKind, NodeId, Op, Program, ReduceOp, SpaceId, SpaceKind, Structural,
    UnaryOp,
};

fn cerr(e: candle_core::Error) -> RunError {
    RunError(format!("candle: {e}"))
}

/// The candle-eager backend.
#[derive(Default)]
pub struct CandleEager;

impl CandleEager {
    pub fn new() -> Self {
        CandleEager
    }
}

struct Ctx<'a> {
    prog: &'a Program,
    bound: &'a Bound,
    dev: Device,
    rows: usize,
    width: usize,
    /// Padded response mask `[B, T]` as f32 0/1.
    valid: Tensor,
    /// For every padded position, its `tok` index (or `n_tok` for padding).
    pad_tok: Vec<usize>,
}

impl Ctx<'_> {
    fn shape(&self, s: SpaceId) -> Result<Vec<usize>, RunError> {
        match &self.prog.spaces[s.index()].kind {
            SpaceKind::Batch => Ok(vec![]),
            SpaceKind::Seq => Ok(vec![self.rows]),
            SpaceKind::Tok => Ok(vec![self.rows, self.width]),
            SpaceKind::RowGroups { .. } => Ok(vec![self.bound.layout.size(s)]),
            SpaceKind::RowSegments { .. } => Err(RunError(format!(
                "candle baseline: row-segment space `{}` is not supported",
                self.prog.spaces[s.index()].name
            ))),
        }
    }

    /// Dense values of a space (tok order for tok) → the tensor layout of that space.
    fn tensor_of(&self, s: SpaceId, v: &[f64]) -> Result<Tensor, RunError> {
        let shape = self.shape(s)?;
        let data: Vec<f32> = if s == SpaceId::TOK {
            self.pad_tok
                .iter()
                .map(|&k| v.get(k).copied().unwrap_or(0.0) as f32)
                .collect()
        } else {
            v.iter().map(|&x| x as f32).collect()
        };
        Tensor::from_vec(data, shape, &self.dev).map_err(cerr)
    }

    /// A tensor of a space back to dense `f64` values.
    fn to_dense(&self, s: SpaceId, t: &Tensor) -> Result<Vec<f64>, RunError> {
        let flat: Vec<f32> = t.flatten_all().map_err(cerr)?.to_vec1().map_err(cerr)?;
        if s == SpaceId::TOK {
            let n = self.bound.layout.size(SpaceId::TOK);
            let mut out = vec![0.0; n];
            for (p, &k) in self.pad_tok.iter().enumerate() {
                if k < n {
                    out[k] = f64::from(flat[p]);
                }
            }
            Ok(out)
        } else {
            Ok(flat.iter().map(|&x| f64::from(x)).collect())
        }
    }

    fn index(&self, fine: SpaceId, coarse: SpaceId) -> Result<Tensor, RunError> {
        let m = self
            .bound
            .layout
            .map(self.prog, fine, coarse)
            .ok_or_else(|| RunError("candle baseline: no map".into()))?;
        Tensor::from_vec(m, self.bound.layout.size(fine), &self.dev).map_err(cerr)
    }

    /// `a` (in space `from`) broadcast to space `to`.
    fn broadcast(&self, a: &Tensor, from: SpaceId, to: SpaceId) -> Result<Tensor, RunError> {
        if from == to {
            return Ok(a.clone());
        }
        let shape = self.shape(to)?;
        if from == SpaceId::BATCH {
            return a.broadcast_as(shape).map_err(cerr);
        }
        let seq = if from == SpaceId::SEQ {
            a.clone()
        } else {
            a.index_select(&self.index(SpaceId::SEQ, from)?, 0)
                .map_err(cerr)?
        };
        if to == SpaceId::SEQ {
            return Ok(seq);
        }
        if to == SpaceId::TOK {
            return seq
                .unsqueeze(1)
                .and_then(|t| t.broadcast_as(shape))
                .map_err(cerr);
        }
        Err(RunError("candle baseline: unsupported broadcast".into()))
    }

    /// Sum over the members of each element of `to` (`x` in space `from`, zero where masked).
    fn seg_sum(&self, x: &Tensor, from: SpaceId, to: SpaceId) -> Result<Tensor, RunError> {
        if to == SpaceId::BATCH {
            return x.sum_all().map_err(cerr);
        }
        let x = if from == SpaceId::TOK {
            x.sum(1).map_err(cerr)?
        } else {
            x.clone()
        };
        let from = if from == SpaceId::TOK {
            SpaceId::SEQ
        } else {
            from
        };
        if from == to {
            return Ok(x);
        }
        let n = self.bound.layout.size(to);
        let zeros = Tensor::zeros(n, DType::F32, &self.dev).map_err(cerr)?;
        zeros.index_add(&self.index(from, to)?, &x, 0).map_err(cerr)
    }
}

fn scalar_t(v: f64, shape: &[usize], dev: &Device) -> Result<Tensor, RunError> {
    Tensor::full(v as f32, shape, dev).map_err(cerr)
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
        let (rows, width) = (layout.rows, layout.width.max(1));
        let n_tok = layout.size(SpaceId::TOK);
        let mut pad_tok = vec![n_tok; rows * width];
        for r in 0..rows {
            for k in layout.row_start[r]..layout.row_start[r + 1] {
                pad_tok[r * width + layout.tok_pos[k] as usize] = k;
            }
        }
        let dev = Device::Cpu;
        let valid_v: Vec<f32> = pad_tok.iter().map(|&k| (k < n_tok) as u8 as f32).collect();
        let valid = Tensor::from_vec(valid_v, (rows, width), &dev).map_err(cerr)?;
        let cx = Ctx {
            prog,
            bound,
            dev: dev.clone(),
            rows,
            width,
            valid,
            pad_tok,
        };
        let mut vars: Vec<(rlobj_ir::InputId, Var)> = Vec::new();
        let mut t: Vec<Option<Tensor>> = vec![None; prog.nodes.len()];
        let get = |t: &[Option<Tensor>], n: NodeId| {
            t[n.index()]
                .clone()
                .ok_or_else(|| RunError(format!("candle: %{} missing", n.0)))
        };
        let zero_like = |x: &Tensor| x.zeros_like().map_err(cerr);
        for id in prog.node_ids() {
            let node = prog.node(id);
            let shape = cx.shape(node.space)?;
            let v = match &node.op {
                Op::Const(c) => scalar_t(*c, &shape, &dev)?,
                Op::Param(p) => scalar_t(
                    params
                        .get(p.index())
                        .copied()
                        .unwrap_or(prog.params[p.index()].default),
                    &shape,
                    &dev,
                )?,
                Op::State(s) => scalar_t(
                    states
                        .get(s.index())
                        .copied()
                        .unwrap_or(prog.states[s.index()].init),
                    &shape,
                    &dev,
                )?,
                Op::Structural(Structural::Width) => scalar_t(layout.width as f64, &shape, &dev)?,
                Op::Structural(Structural::RowIndex) => {
                    cx.tensor_of(node.space, &(0..rows).map(|r| r as f64).collect::<Vec<_>>())?
                }
                Op::Structural(Structural::TokPosition) => cx.tensor_of(
                    node.space,
                    &layout
                        .tok_pos
                        .iter()
                        .map(|&p| f64::from(p))
                        .collect::<Vec<_>>(),
                )?,
                Op::Input(i) => {
                    let inp = &prog.inputs[i.index()];
                    let InputKind::Value {
                        elem,
                        default,
                        grad,
                        ..
                    } = &inp.kind
                    else {
                        return Err(RunError(format!(
                            "input `{}`: ids are not values",
                            inp.name
                        )));
                    };
                    let x = match (
                        bound.values.get(i.index()).and_then(|v| v.as_ref()),
                        default,
                    ) {
                        (Some(v), _) => {
                            let v: Vec<f64> = if *elem == Elem::Bool {
                                v.iter().map(|&x| (x != 0.0) as u8 as f64).collect()
                            } else {
                                v.clone()
                            };
                            cx.tensor_of(node.space, &v)?
                        }
                        (None, Some(d)) => scalar_t(*d, &shape, &dev)?,
                        (None, None) => {
                            return Err(RunError(format!(
                                "tensor `{}`: missing from the batch",
                                inp.name
                            )))
                        }
                    };
                    if *grad && prog.grads.iter().any(|(g, _)| g == i) {
                        let var = match vars.iter().find(|(g, _)| g == i) {
                            Some((_, v)) => v.clone(),
                            None => {
                                let v = Var::from_tensor(&x).map_err(cerr)?;
                                vars.push((*i, v.clone()));
                                v
                            }
                        };
                        var.as_tensor().clone()
                    } else {
                        x
                    }
                }
                Op::Unary(op, a) => {
                    let a = get(&t, *a)?;
                    let one = || a.ones_like().map_err(cerr);
                    match op {
                        UnaryOp::Neg => a.neg(),
                        UnaryOp::Exp => a.exp(),
                        UnaryOp::Log => a.log(),
                        UnaryOp::Log1p => (a.clone() + 1.0).and_then(|x| x.log()),
                        UnaryOp::Expm1 => a.exp().and_then(|x| x - 1.0),
                        UnaryOp::Sqrt => a.sqrt(),
                        UnaryOp::Rsqrt => a.sqrt().and_then(|x| x.recip()),
                        UnaryOp::Abs => a.abs(),
                        UnaryOp::Sign => a.sign().and_then(|s| s.detach().to_dtype(DType::F32)),
                        UnaryOp::Tanh => a.tanh(),
                        UnaryOp::Sigmoid => a
                            .neg()
                            .and_then(|x| x.exp())
                            .and_then(|x| x + 1.0)
                            .and_then(|x| x.recip()),
                        UnaryOp::Softplus | UnaryOp::LogSigmoid => {
                            let x = if *op == UnaryOp::LogSigmoid {
                                a.neg().map_err(cerr)?
                            } else {
                                a.clone()
                            };
                            let sp = x.relu().and_then(|r| {
                                x.abs()
                                    .and_then(|m| m.neg())
                                    .and_then(|m| m.exp())
                                    .and_then(|e| e + 1.0)
                                    .and_then(|e| e.log())
                                    .and_then(|l| r + l)
                            });
                            if *op == UnaryOp::LogSigmoid {
                                sp.and_then(|s| s.neg())
                            } else {
                                sp
                            }
                        }
                        UnaryOp::Floor => a.floor().map(|x| x.detach()),
                        UnaryOp::Ceil => a.ceil().map(|x| x.detach()),
                        UnaryOp::Recip => a.recip(),
                        UnaryOp::Not => (one()? - &a).map(|x| x.detach()),
                        UnaryOp::ToF32 => Ok(a.detach()),
                    }
                    .map_err(cerr)?
                }
                Op::Binary(op, a, b) => {
                    let (a, b) = (get(&t, *a)?, get(&t, *b)?);
                    let cmp =
                        |c: candle_core::Result<Tensor>| c.and_then(|c| c.to_dtype(DType::F32));
                    let nan_guard = |m: Tensor| -> candle_core::Result<Tensor> {
                        // IR min/max: NaN if either operand is NaN.
                        let bad = (a.ne(&a)?.to_dtype(DType::F32)?
                            + b.ne(&b)?.to_dtype(DType::F32)?)?
                        .gt(0f32)?;
                        bad.where_cond(&(a.clone() + b.clone())?, &m)
                    };
                    match op {
                        BinaryOp::Add => a + b,
                        BinaryOp::Sub => a - b,
                        BinaryOp::Mul => a * b,
                        BinaryOp::Div => a / b,
                        BinaryOp::Pow => b.mul(&a.log().map_err(cerr)?).and_then(|x| x.exp()),
                        BinaryOp::Min => a
                            .lt(&b)
                            .and_then(|c| c.where_cond(&a, &b))
                            .and_then(nan_guard),
                        BinaryOp::Max => a
                            .gt(&b)
                            .and_then(|c| c.where_cond(&a, &b))
                            .and_then(nan_guard),
                        BinaryOp::Lt => cmp(a.lt(&b)),
                        BinaryOp::Le => cmp(a.le(&b)),
                        BinaryOp::Gt => cmp(a.gt(&b)),
                        BinaryOp::Ge => cmp(a.ge(&b)),
                        BinaryOp::Eq => cmp(a.eq(&b)),
                        BinaryOp::Ne => cmp(a.ne(&b)),
                        BinaryOp::And => a * b,
                        BinaryOp::Or => a.maximum(&b),
                    }
                    .map_err(cerr)?
                }
                Op::Select(c, a, b) => {
                    let (c, a, b) = (get(&t, *c)?, get(&t, *a)?, get(&t, *b)?);
                    c.ne(0f32)
                        .and_then(|c| c.where_cond(&a, &b))
                        .map_err(cerr)?
                }
                Op::Clamp(x, lo, hi) => {
                    let (x, lo, hi) = (get(&t, *x)?, get(&t, *lo)?, get(&t, *hi)?);
                    let r = x
                        .lt(&lo)
                        .and_then(|c| c.where_cond(&lo, &x))
                        .map_err(cerr)?;
                    x.gt(&hi)
                        .and_then(|c| c.where_cond(&hi, &r))
                        .map_err(cerr)?
                }
                Op::Broadcast(a) => cx.broadcast(&get(&t, *a)?, prog.node(*a).space, node.space)?,
                Op::StopGrad(a) => get(&t, *a)?.detach(),
                Op::Reduce {
                    op,
                    arg,
                    mask,
                    empty,
                } => {
                    let from = prog.node(*arg).space;
                    let x = get(&t, *arg)?;
                    let mut m = if from == SpaceId::TOK {
                        cx.valid.clone()
                    } else {
                        x.ones_like().map_err(cerr)?
                    };
                    if let Some(mk) = mask {
                        m = (m * get(&t, *mk)?).map_err(cerr)?;
                    }
                    let on = m.ne(0f32).map_err(cerr)?;
                    let xz = on.where_cond(&x, &zero_like(&x)?).map_err(cerr)?;
                    let n = cx.seg_sum(&m, from, node.space)?;
                    let nz = n.gt(0f32).map_err(cerr)?;
                    let emp = scalar_t(*empty, &shape, &dev)?;
                    let safe_n = nz
                        .where_cond(&n, &n.ones_like().map_err(cerr)?)
                        .map_err(cerr)?;
                    let mean_of = |xz: &Tensor| -> Result<Tensor, RunError> {
                        (cx.seg_sum(xz, from, node.space)? / &safe_n).map_err(cerr)
                    };
                    let val = match op {
                        ReduceOp::Sum => cx.seg_sum(&xz, from, node.space)?,
                        ReduceOp::Count => n.clone(),
                        ReduceOp::Mean => mean_of(&xz)?,
                        ReduceOp::Var { ddof } | ReduceOp::Std { ddof } => {
                            let mu = cx.broadcast(&mean_of(&xz)?, node.space, from)?;
                            let d = (x.clone() - mu).map_err(cerr)?;
                            let d2 = on
                                .where_cond(&d.sqr().map_err(cerr)?, &zero_like(&x)?)
                                .map_err(cerr)?;
                            let ss = cx.seg_sum(&d2, from, node.space)?;
                            let den = (n.clone() - f64::from(*ddof)).map_err(cerr)?;
                            let ok = den.gt(0f32).map_err(cerr)?;
                            let den = ok
                                .where_cond(&den, &den.ones_like().map_err(cerr)?)
                                .map_err(cerr)?;
                            let v = (ss / den).map_err(cerr)?;
                            let v = if matches!(op, ReduceOp::Std { .. }) {
                                v.sqrt().map_err(cerr)?
                            } else {
                                v
                            };
                            ok.where_cond(&v, &emp).map_err(cerr)?
                        }
                        ReduceOp::Max | ReduceOp::Min | ReduceOp::LogSumExp => {
                            // Host-computed extremum per segment (what a user does with
                            // argmax); ties share the gradient evenly.
                            let xs = cx.to_dense(from, &x)?;
                            let ms = cx.to_dense(from, &on.to_dtype(DType::F32).map_err(cerr)?)?;
                            let seg = if node.space == SpaceId::BATCH {
                                vec![0u32; xs.len()]
                            } else {
                                let fine = from;
                                cx.bound
                                    .layout
                                    .map(prog, fine, node.space)
                                    .ok_or_else(|| RunError("candle: map".into()))?
                            };
                            let nseg = cx.bound.layout.size(node.space).max(1);
                            let want_min = *op == ReduceOp::Min;
                            let mut best = vec![
                                if want_min {
                                    f64::INFINITY
                                } else {
                                    f64::NEG_INFINITY
                                };
                                nseg
                            ];
                            for i in 0..xs.len() {
                                if ms[i] != 0.0 {
                                    let s = seg[i] as usize;
                                    best[s] = if want_min {
                                        rlobj_ir::scalar::min(best[s], xs[i])
                                    } else {
                                        rlobj_ir::scalar::max(best[s], xs[i])
                                    };
                                }
                            }
                            if *op == ReduceOp::LogSumExp {
                                let shift: Vec<f64> = best
                                    .iter()
                                    .map(|&b| if b.is_finite() { b } else { 0.0 })
                                    .collect();
                                let sh = cx
                                    .tensor_of(node.space, &shift)?
                                    .reshape(shape.clone())
                                    .map_err(cerr)?;
                                let shb = cx.broadcast(&sh, node.space, from)?;
                                let e = (x.clone() - shb).and_then(|d| d.exp()).map_err(cerr)?;
                                let e = on.where_cond(&e, &zero_like(&x)?).map_err(cerr)?;
                                let s = cx.seg_sum(&e, from, node.space)?;
                                (s.log().map_err(cerr)? + sh).map_err(cerr)?
                            } else {
                                let mut w = vec![0.0; xs.len()];
                                let mut cnt = vec![0.0; nseg];
                                for i in 0..xs.len() {
                                    if ms[i] != 0.0 && xs[i] == best[seg[i] as usize] {
                                        cnt[seg[i] as usize] += 1.0;
                                    }
                                }
                                for i in 0..xs.len() {
                                    if ms[i] != 0.0 && xs[i] == best[seg[i] as usize] {
                                        w[i] = 1.0 / cnt[seg[i] as usize];
                                    }
                                }
                                let wt = cx.tensor_of(from, &w)?;
                                let v = cx.seg_sum(
                                    &(xz.clone() * wt).map_err(cerr)?,
                                    from,
                                    node.space,
                                )?;
                                let nanb: Vec<f64> = best
                                    .iter()
                                    .map(|b| if b.is_nan() { f64::NAN } else { 0.0 })
                                    .collect();
                                (v + cx
                                    .tensor_of(node.space, &nanb)?
                                    .reshape(shape.clone())
                                    .map_err(cerr)?)
                                .map_err(cerr)?
                            }
                        }
                    };
                    let val = val.reshape(shape.clone()).map_err(cerr)?;
                    nz.reshape(shape.clone())
                        .and_then(|nz| nz.where_cond(&val, &emp))
                        .map_err(cerr)?
                }
                other => {
                    return Err(RunError(format!(
                        "candle baseline: {} is not supported",
                        format!("{other:?}")
                            .split([' ', '(', '{'])
                            .next()
                            .unwrap_or("op")
                    )))
                }
            };
            t[id.index()] = Some(v);
        }
        let dense = |n: NodeId, t: &[Option<Tensor>]| -> Result<Vec<f64>, RunError> {
            cx.to_dense(prog.node(n).space, &get(t, n)?)
        };
        let first = |n: NodeId, t: &[Option<Tensor>]| -> Result<f64, RunError> {
            Ok(dense(n, t)?.first().copied().unwrap_or(f64::NAN))
        };
        let mut out = Evaluation::default();
        if let Some(l) = prog.loss {
            out.loss = Some(first(l, &t)?);
            let loss_t = get(&t, l)?;
            let grads = loss_t.backward().map_err(cerr)?;
            for (i, _) in &prog.grads {
                let v = match vars
                    .iter()
                    .find(|(g, _)| g == i)
                    .and_then(|(_, v)| grads.get(v.as_tensor()))
                {
                    Some(g) => cx.to_dense(prog.inputs[i.index()].kind_space(), g)?,
                    None => vec![0.0; layout.size(prog.inputs[i.index()].kind_space())],
                };
                out.grads.push((*i, v));
            }
        }
        for (name, n) in &prog.metrics {
            out.metrics.push((name.clone(), first(*n, &t)?));
        }
        for (name, n) in &prog.outputs {
            out.outputs
                .push((name.clone(), prog.node(*n).space, dense(*n, &t)?));
        }
        for (k, st) in prog.states.iter().enumerate() {
            let v = match prog.updates.iter().rev().find(|(s, _)| s.index() == k) {
                Some((_, n)) => first(*n, &t)?,
                None => states.get(k).copied().unwrap_or(st.init),
            };
            out.states.push((st.name.clone(), v));
        }
        Ok(out)
    }
}

trait KindSpace {
    fn kind_space(&self) -> SpaceId;
}
impl KindSpace for rlobj_ir::Input {
    fn kind_space(&self) -> SpaceId {
        match self.kind {
            InputKind::Value { space, .. } | InputKind::Ids { space } => space,
        }
    }
}
