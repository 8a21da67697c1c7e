//! Reverse-mode automatic differentiation over the IR. The adjoint of every node on a
//! differentiable path from a `@grad` input to the loss is built as more IR nodes appended
//! to the program (so backends need no gradient code), and `Program::grads` records
//! `d loss / d input` for every `@grad` input, in the input's space.
//!
//! Rules (see the crate docs): `Min`/`Max` ties split half/half; `Clamp` follows torch
//! (`x` gets the gradient where `lo <= x <= hi`, `lo` where `!(x >= lo)`, `hi` where
//! `!(x <= hi)`); reduce `Max`/`Min` split evenly among tied elements; `Std` has zero
//! gradient where it is 0 (torch); `Pow` has zero gradient to the base where the exponent
//! is 0 and to the exponent where the base is 0 and the exponent `>= 0` (torch);
//! `CumMin`/`CumMax` route to the most recent extremal position in scan order (ties go to
//! the later one, like torch's `cummin`); masked-out elements get zero.

use crate::validate::{differentiable_operand, validate, ValidateError};
use crate::{
    BinaryOp, Elem, InputKind, Node, NodeId, Op, Program, ReduceOp, ScanOp, SegmentOp, SpaceId,
    SrcSpan, UnaryOp,
};

#[derive(Clone, Debug, PartialEq)]
pub enum AutodiffError {
    /// The program did not validate (before or after differentiation).
    Invalid(ValidateError),
    /// `Program::grads` was already filled.
    AlreadyDifferentiated,
}

impl std::fmt::Display for AutodiffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AutodiffError::Invalid(e) => write!(f, "autodiff: {e}"),
            AutodiffError::AlreadyDifferentiated => {
                f.write_str("autodiff: program already has grads")
            }
        }
    }
}
impl std::error::Error for AutodiffError {}

/// Appends the gradient of the loss w.r.t. every `@grad` input. Without a loss, no grads
/// are produced. An input the loss does not depend on gets an all-zero gradient.
pub fn differentiate(prog: &mut Program) -> Result<(), AutodiffError> {
    if !prog.grads.is_empty() {
        return Err(AutodiffError::AlreadyDifferentiated);
    }
    let info = validate(prog).map_err(AutodiffError::Invalid)?;
    let Some(loss) = prog.loss else { return Ok(()) };
    let n_forward = prog.nodes.len();
    // Nodes on a path to the loss.
    let mut to_loss = vec![false; n_forward];
    to_loss[loss.index()] = true;
    for id in (0..n_forward as u32).rev().map(NodeId) {
        if to_loss[id.index()] {
            for o in prog.node(id).op.operands() {
                to_loss[o.index()] = true;
            }
        }
    }
    let mut ad = Adjoints {
        p: prog,
        adj: vec![None; n_forward],
        span: SrcSpan::default(),
    };
    if info.grad_dep[loss.index()] {
        ad.span = ad.p.node(loss).span;
        let one = ad.konst(1.0, SpaceId::BATCH);
        ad.adj[loss.index()] = Some(one);
    }
    for id in (0..n_forward as u32).rev().map(NodeId) {
        let Some(g) = ad.adj[id.index()] else {
            continue;
        };
        let node = ad.p.node(id).clone();
        ad.span = node.span;
        let operands = node.op.operands();
        let wanted: Vec<bool> = operands
            .iter()
            .enumerate()
            .map(|(k, o)| {
                info.grad_dep[o.index()]
                    && to_loss[o.index()]
                    && differentiable_operand(ad.p, id, k)
            })
            .collect();
        if wanted.iter().any(|w| *w) {
            ad.node_adjoint(id, &node, g, &operands, &wanted);
        }
    }
    let mut grads = Vec::new();
    let n_inputs = ad.p.inputs.len();
    for i in 0..n_inputs {
        let InputKind::Value {
            grad: true, space, ..
        } = ad.p.inputs[i].kind
        else {
            continue;
        };
        let input = crate::InputId(i as u32);
        ad.span = ad.p.inputs[i].span;
        let mut total: Option<NodeId> = None;
        for id in 0..n_forward {
            if ad.p.nodes[id].op == Op::Input(input) {
                if let Some(g) = ad.adj[id] {
                    total = Some(match total {
                        Some(t) => ad.bin(BinaryOp::Add, t, g),
                        None => g,
                    });
                }
            }
        }
        let g = match total {
            Some(t) => t,
            None => ad.konst(0.0, space),
        };
        grads.push((input, g));
    }
    prog.grads = grads;
    validate(prog).map_err(AutodiffError::Invalid)?;
    Ok(())
}

/// The builder of adjoint nodes: `adj[n]` is the accumulated `d loss / d n`.
struct Adjoints<'a> {
    p: &'a mut Program,
    adj: Vec<Option<NodeId>>,
    /// Span of the forward node being differentiated, given to every node built for it.
    span: SrcSpan,
}

impl Adjoints<'_> {
    fn push(&mut self, op: Op, elem: Elem, space: SpaceId) -> NodeId {
        self.p.push(Node {
            op,
            elem,
            space,
            span: self.span,
        })
    }
    fn space(&self, n: NodeId) -> SpaceId {
        self.p.node(n).space
    }
    fn konst(&mut self, v: f64, space: SpaceId) -> NodeId {
        self.push(Op::Const(v), Elem::F32, space)
    }
    fn un(&mut self, op: UnaryOp, a: NodeId) -> NodeId {
        let elem = crate::scalar::unary_elems(op).1;
        let s = self.space(a);
        self.push(Op::Unary(op, a), elem, s)
    }
    fn bin(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
        let elem = crate::scalar::binary_result(op, self.p.node(a).elem).unwrap_or(Elem::F32);
        let s = self.space(a);
        self.push(Op::Binary(op, a, b), elem, s)
    }
    fn mul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Mul, a, b)
    }
    fn mulc(&mut self, a: NodeId, c: f64) -> NodeId {
        let k = self.konst(c, self.space(a));
        self.mul(a, k)
    }
    fn select(&mut self, c: NodeId, a: NodeId, b: NodeId) -> NodeId {
        let s = self.space(a);
        self.push(Op::Select(c, a, b), Elem::F32, s)
    }
    /// `cond ? g : 0`.
    fn keep(&mut self, cond: NodeId, g: NodeId) -> NodeId {
        let z = self.konst(0.0, self.space(g));
        self.select(cond, g, z)
    }
    /// `cond ? 0 : g`.
    fn drop_where(&mut self, cond: NodeId, g: NodeId) -> NodeId {
        let z = self.konst(0.0, self.space(g));
        self.select(cond, z, g)
    }
    fn bcast(&mut self, a: NodeId, to: SpaceId) -> NodeId {
        if self.space(a) == to {
            return a;
        }
        let e = self.p.node(a).elem;
        self.push(Op::Broadcast(a), e, to)
    }
    fn reduce(&mut self, op: ReduceOp, arg: NodeId, mask: Option<NodeId>, to: SpaceId) -> NodeId {
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
    fn masked(&mut self, mask: Option<NodeId>, g: NodeId) -> NodeId {
        match mask {
            Some(m) => self.keep(m, g),
            None => g,
        }
    }
    fn scan(&mut self, op: ScanOp, arg: NodeId, coef: Option<NodeId>, within: SpaceId) -> NodeId {
        self.push(
            Op::Scan {
                op,
                arg,
                coef,
                within,
            },
            Elem::F32,
            SpaceId::TOK,
        )
    }
    fn shift(&mut self, arg: NodeId, offset: i32, within: SpaceId) -> NodeId {
        self.push(
            Op::Shift {
                arg,
                offset,
                fill: 0.0,
                within,
            },
            Elem::F32,
            SpaceId::TOK,
        )
    }

    fn add_to(&mut self, target: NodeId, g: NodeId) {
        let new = match self.adj[target.index()] {
            Some(old) => self.bin(BinaryOp::Add, old, g),
            None => g,
        };
        self.adj[target.index()] = Some(new);
    }

    /// Adds the contributions of node `id` (value `y`, adjoint `g`) to its operands.
    fn node_adjoint(&mut self, y: NodeId, node: &Node, g: NodeId, ops: &[NodeId], wanted: &[bool]) {
        let mut out: Vec<Option<NodeId>> = vec![None; ops.len()];
        match node.op {
            Op::Unary(op, x) => {
                out[0] = Some(self.unary_adjoint(op, x, y, g));
            }
            Op::Binary(op, a, b) => {
                let (ga, gb) = self.binary_adjoint(op, a, b, y, g, wanted);
                out[0] = ga;
                out[1] = gb;
            }
            Op::Select(c, _, _) => {
                out[1] = Some(self.keep(c, g));
                out[2] = Some(self.drop_where(c, g));
            }
            Op::Clamp(x, lo, hi) => {
                // torch's clamp backward, with tensor bounds.
                let ge = self.bin(BinaryOp::Ge, x, lo);
                let le = self.bin(BinaryOp::Le, x, hi);
                if wanted[0] {
                    let inside = self.bin(BinaryOp::And, ge, le);
                    out[0] = Some(self.keep(inside, g));
                }
                if wanted[1] {
                    out[1] = Some(self.drop_where(ge, g));
                }
                if wanted[2] {
                    out[2] = Some(self.drop_where(le, g));
                }
            }
            Op::Broadcast(a) => {
                let to = self.space(a);
                out[0] = Some(self.reduce(ReduceOp::Sum, g, None, to));
            }
            Op::Reduce { op, arg, mask, .. } => {
                out[0] = Some(self.reduce_adjoint(op, arg, mask, y, g));
            }
            Op::Segment {
                op,
                arg,
                mask,
                within,
                ..
            } => {
                out[0] = Some(self.segment_adjoint(op, arg, mask, within, y, g));
            }
            Op::Scan {
                op,
                arg,
                coef,
                within,
            } => {
                let (gx, gc) = self.scan_adjoint(op, arg, coef, within, y, g, wanted);
                out[0] = gx;
                if ops.len() > 1 {
                    out[1] = gc;
                }
            }
            Op::Shift { offset, within, .. } => {
                out[0] = Some(self.shift(g, -offset, within));
            }
            Op::Const(_)
            | Op::Input(_)
            | Op::Param(_)
            | Op::State(_)
            | Op::Structural(_)
            | Op::Quantile { .. }
            | Op::StopGrad(_) => {}
        }
        for (k, o) in ops.iter().enumerate() {
            if let (true, Some(gk)) = (wanted[k], out[k]) {
                self.add_to(*o, gk);
            }
        }
    }

    fn unary_adjoint(&mut self, op: UnaryOp, x: NodeId, y: NodeId, g: NodeId) -> NodeId {
        let s = self.space(x);
        match op {
            UnaryOp::Neg => self.un(UnaryOp::Neg, g),
            UnaryOp::Exp => self.mul(g, y),
            UnaryOp::Log => self.bin(BinaryOp::Div, g, x),
            UnaryOp::Log1p => {
                let one = self.konst(1.0, s);
                let d = self.bin(BinaryOp::Add, one, x);
                self.bin(BinaryOp::Div, g, d)
            }
            UnaryOp::Expm1 => {
                let one = self.konst(1.0, s);
                let d = self.bin(BinaryOp::Add, y, one);
                self.mul(g, d)
            }
            UnaryOp::Sqrt => {
                let d = self.mulc(y, 2.0);
                self.bin(BinaryOp::Div, g, d)
            }
            UnaryOp::Rsqrt => {
                // d x^{-1/2} = -1/2 y^3
                let y2 = self.mul(y, y);
                let y3 = self.mul(y2, y);
                let d = self.mulc(y3, -0.5);
                self.mul(g, d)
            }
            UnaryOp::Abs => {
                let sg = self.un(UnaryOp::Sign, x);
                self.mul(g, sg)
            }
            UnaryOp::Tanh => {
                let one = self.konst(1.0, s);
                let y2 = self.mul(y, y);
                let d = self.bin(BinaryOp::Sub, one, y2);
                self.mul(g, d)
            }
            UnaryOp::Sigmoid => {
                let one = self.konst(1.0, s);
                let c = self.bin(BinaryOp::Sub, one, y);
                let d = self.mul(y, c);
                self.mul(g, d)
            }
            UnaryOp::Softplus => {
                let d = self.un(UnaryOp::Sigmoid, x);
                self.mul(g, d)
            }
            UnaryOp::LogSigmoid => {
                let nx = self.un(UnaryOp::Neg, x);
                let d = self.un(UnaryOp::Sigmoid, nx);
                self.mul(g, d)
            }
            UnaryOp::Recip => {
                let y2 = self.mul(y, y);
                let d = self.un(UnaryOp::Neg, y2);
                self.mul(g, d)
            }
            // Piecewise constant or bool: never asked for (see `differentiable_operand`).
            UnaryOp::Sign | UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Not | UnaryOp::ToF32 => {
                self.konst(0.0, s)
            }
        }
    }

    fn binary_adjoint(
        &mut self,
        op: BinaryOp,
        a: NodeId,
        b: NodeId,
        y: NodeId,
        g: NodeId,
        wanted: &[bool],
    ) -> (Option<NodeId>, Option<NodeId>) {
        let s = self.space(a);
        match op {
            BinaryOp::Add => (Some(g), Some(g)),
            BinaryOp::Sub => (Some(g), wanted[1].then(|| self.un(UnaryOp::Neg, g))),
            BinaryOp::Mul => (
                wanted[0].then(|| self.mul(g, b)),
                wanted[1].then(|| self.mul(g, a)),
            ),
            BinaryOp::Div => {
                let ga = wanted[0].then(|| self.bin(BinaryOp::Div, g, b));
                let gb = wanted[1].then(|| {
                    let gy = self.mul(g, y);
                    let q = self.bin(BinaryOp::Div, gy, b);
                    self.un(UnaryOp::Neg, q)
                });
                (ga, gb)
            }
            BinaryOp::Pow => {
                let zero = self.konst(0.0, s);
                let ga = wanted[0].then(|| {
                    // b * a^(b-1), zero where b == 0.
                    let one = self.konst(1.0, s);
                    let bm1 = self.bin(BinaryOp::Sub, b, one);
                    let p = self.bin(BinaryOp::Pow, a, bm1);
                    let d = self.mul(b, p);
                    let gd = self.mul(g, d);
                    let b0 = self.bin(BinaryOp::Eq, b, zero);
                    self.drop_where(b0, gd)
                });
                let gb = wanted[1].then(|| {
                    // y * log(a), zero where a == 0 and b >= 0.
                    let la = self.un(UnaryOp::Log, a);
                    let d = self.mul(y, la);
                    let gd = self.mul(g, d);
                    let a0 = self.bin(BinaryOp::Eq, a, zero);
                    let bp = self.bin(BinaryOp::Ge, b, zero);
                    let both = self.bin(BinaryOp::And, a0, bp);
                    self.drop_where(both, gd)
                });
                (ga, gb)
            }
            BinaryOp::Min | BinaryOp::Max => {
                // Weight of `a`: 1 where it wins strictly, 1/2 on ties, 0 otherwise.
                let win = if op == BinaryOp::Min {
                    BinaryOp::Lt
                } else {
                    BinaryOp::Gt
                };
                let strict = self.bin(win, a, b);
                let tie = self.bin(BinaryOp::Eq, a, b);
                let half = self.konst(0.5, s);
                let zero = self.konst(0.0, s);
                let one = self.konst(1.0, s);
                let w_tie = self.select(tie, half, zero);
                let wa = self.select(strict, one, w_tie);
                let ga = wanted[0].then(|| self.mul(g, wa));
                let gb = wanted[1].then(|| {
                    let wb = self.bin(BinaryOp::Sub, one, wa);
                    self.mul(g, wb)
                });
                (ga, gb)
            }
            _ => (None, None),
        }
    }

    fn reduce_adjoint(
        &mut self,
        op: ReduceOp,
        x: NodeId,
        mask: Option<NodeId>,
        y: NodeId,
        g: NodeId,
    ) -> NodeId {
        let fine = self.space(x);
        let coarse = self.space(y);
        match op {
            ReduceOp::Sum => {
                let gb = self.bcast(g, fine);
                self.masked(mask, gb)
            }
            ReduceOp::Mean => {
                let n = self.reduce(ReduceOp::Count, x, mask, coarse);
                let q = self.bin(BinaryOp::Div, g, n);
                let qb = self.bcast(q, fine);
                self.masked(mask, qb)
            }
            ReduceOp::Max | ReduceOp::Min => {
                let yb = self.bcast(y, fine);
                let mut hit = self.bin(BinaryOp::Eq, x, yb);
                if let Some(m) = mask {
                    hit = self.bin(BinaryOp::And, hit, m);
                }
                let n = self.reduce(ReduceOp::Count, x, Some(hit), coarse);
                let q = self.bin(BinaryOp::Div, g, n);
                let qb = self.bcast(q, fine);
                self.keep(hit, qb)
            }
            ReduceOp::Var { ddof } | ReduceOp::Std { ddof } => {
                // dVar/dx_i = 2 (x_i - mean) / (n - ddof); zero where the result is `empty`.
                let n = self.reduce(ReduceOp::Count, x, mask, coarse);
                let dd = self.konst(ddof as f64, coarse);
                let denom = self.bin(BinaryOp::Sub, n, dd);
                let zero = self.konst(0.0, coarse);
                let mut ok = self.bin(BinaryOp::Gt, denom, zero);
                let coef = if let ReduceOp::Std { .. } = op {
                    // dStd = dVar / (2 std); zero where std == 0 (torch).
                    let nz = self.bin(BinaryOp::Ne, y, zero);
                    ok = self.bin(BinaryOp::And, ok, nz);
                    let d = self.mul(denom, y);
                    self.bin(BinaryOp::Div, g, d)
                } else {
                    let g2 = self.mulc(g, 2.0);
                    self.bin(BinaryOp::Div, g2, denom)
                };
                let coef = self.keep(ok, coef);
                let mean = self.reduce(ReduceOp::Mean, x, mask, coarse);
                let mb = self.bcast(mean, fine);
                let dev = self.bin(BinaryOp::Sub, x, mb);
                let cb = self.bcast(coef, fine);
                let gx = self.mul(cb, dev);
                self.masked(mask, gx)
            }
            ReduceOp::LogSumExp => {
                let yb = self.bcast(y, fine);
                let d = self.bin(BinaryOp::Sub, x, yb);
                let w = self.un(UnaryOp::Exp, d);
                let gb = self.bcast(g, fine);
                let gx = self.mul(gb, w);
                self.masked(mask, gx)
            }
            ReduceOp::Count => self.konst(0.0, fine),
        }
    }

    fn segment_adjoint(
        &mut self,
        op: SegmentOp,
        _x: NodeId,
        mask: Option<NodeId>,
        within: SpaceId,
        y: NodeId,
        g: NodeId,
    ) -> NodeId {
        let fine = self.space(y);
        match op {
            SegmentOp::Softmax => {
                // gx = y (g - Σ g y)
                let gy = self.mul(g, y);
                let sum = self.reduce(ReduceOp::Sum, gy, mask, within);
                let sb = self.bcast(sum, fine);
                let d = self.bin(BinaryOp::Sub, g, sb);
                let gx = self.mul(y, d);
                self.masked(mask, gx)
            }
            SegmentOp::LogSoftmax => {
                // gx = g - softmax Σ g
                let sum = self.reduce(ReduceOp::Sum, g, mask, within);
                let sb = self.bcast(sum, fine);
                let sm = self.un(UnaryOp::Exp, y);
                let w = self.mul(sm, sb);
                let gx = self.bin(BinaryOp::Sub, g, w);
                self.masked(mask, gx)
            }
            SegmentOp::Rank | SegmentOp::TopK => self.konst(0.0, fine),
            SegmentOp::ColumnSum => {
                // y_i = Σ_{j ~ i, m_j} x_j, so gx_j = m_j · Σ_{i ~ j} g_i: every token of
                // the column (masked ones too) sends its cotangent to the unmasked ones.
                let col = self.push(
                    Op::Segment {
                        op: SegmentOp::ColumnSum,
                        arg: g,
                        mask: None,
                        within,
                        k: None,
                    },
                    Elem::F32,
                    fine,
                );
                self.masked(mask, col)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_adjoint(
        &mut self,
        op: ScanOp,
        x: NodeId,
        coef: Option<NodeId>,
        w: SpaceId,
        y: NodeId,
        g: NodeId,
        wanted: &[bool],
    ) -> (Option<NodeId>, Option<NodeId>) {
        match (op, coef) {
            (ScanOp::Cumsum, _) => (Some(self.scan(ScanOp::CumsumRev, g, None, w)), None),
            (ScanOp::CumsumRev, _) => (Some(self.scan(ScanOp::Cumsum, g, None, w)), None),
            (ScanOp::ScanRev, Some(c)) => {
                // λ_t = g_t + c_{t-1} λ_{t-1}; dc_t = λ_t y_{t+1}.
                let cs = self.shift(c, -1, w);
                let lam = self.scan(ScanOp::ScanFwd, g, Some(cs), w);
                let gc = wanted.get(1).copied().unwrap_or(false).then(|| {
                    let yn = self.shift(y, 1, w);
                    self.mul(lam, yn)
                });
                (Some(lam), gc)
            }
            (ScanOp::ScanFwd, Some(c)) => {
                // λ_t = g_t + c_{t+1} λ_{t+1}; dc_t = λ_t y_{t-1}.
                let cs = self.shift(c, 1, w);
                let lam = self.scan(ScanOp::ScanRev, g, Some(cs), w);
                let gc = wanted.get(1).copied().unwrap_or(false).then(|| {
                    let yp = self.shift(y, -1, w);
                    self.mul(lam, yp)
                });
                (Some(lam), gc)
            }
            (ScanOp::CumMin | ScanOp::CumMax, _) => {
                // Records r_s = (x_s == y_s); each output routes to the latest record at or
                // before it, so a record collects g from itself up to the next record.
                let r = self.bin(BinaryOp::Eq, x, y);
                let nr = self.un(UnaryOp::Not, r);
                let nrf = self.un(UnaryOp::ToF32, nr);
                let c = self.shift(nrf, 1, w);
                let h = self.scan(ScanOp::ScanRev, g, Some(c), w);
                (Some(self.keep(r, h)), None)
            }
            (ScanOp::CumMinRev | ScanOp::CumMaxRev, _) => {
                let r = self.bin(BinaryOp::Eq, x, y);
                let nr = self.un(UnaryOp::Not, r);
                let nrf = self.un(UnaryOp::ToF32, nr);
                let c = self.shift(nrf, -1, w);
                let h = self.scan(ScanOp::ScanFwd, g, Some(c), w);
                (Some(self.keep(r, h)), None)
            }
            // Validation guarantees a coef on ScanRev/ScanFwd.
            (ScanOp::ScanRev | ScanOp::ScanFwd, None) => (None, None),
        }
    }
}
