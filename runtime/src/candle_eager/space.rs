//! Index spaces as candle tensors, and the ops that move values between them: broadcasts
//! (`index_select`), segment sums (`index_add`), reductions, segment ops, quantiles, scans
//! and shifts.
//!
//! Layouts: `batch` is a scalar `[]`, `seq` is `[B]`, `tok` is the padded `[B, T]` a user
//! holds, and every user space (row groups, row segments) is a dense vector of its
//! elements. Ops that mix tokens across positions (segment ops, scans, shifts) first gather
//! the valid tokens into a dense vector ([`Ctx::flat`]), so padding never enters them, and
//! scatter back with [`Ctx::unflat`]; both are `index_select`s, so gradients flow through.

use crate::RunError;
use candle_core::{DType, Device, Tensor};
use rlobj_ir::{scalar, Layout, Program, ReduceOp, ScanOp, SegmentOp, SpaceId, SpaceKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Index maps fine → coarse, computed once per batch.
type MapCache = HashMap<(SpaceId, SpaceId), Rc<Vec<u32>>>;

pub(super) fn cerr(e: candle_core::Error) -> RunError {
    RunError(format!("candle: {e}"))
}

/// Everything the lowering needs to know about one batch.
pub(super) struct Ctx<'a> {
    pub prog: &'a Program,
    pub layout: &'a Layout,
    pub dev: Device,
    pub rows: usize,
    /// Padded width (at least 1 so that `[B, T]` tensors are never degenerate).
    pub width: usize,
    pub n_tok: usize,
    /// Padded response mask `[B, T]` as f32 0/1.
    pub valid: Tensor,
    /// `tok` index → flat padded position `r * T + t`.
    tok_idx: Tensor,
    /// Flat padded position → `tok` index, or `n_tok` (a zero appended to the flat vector).
    pad_idx: Tensor,
    maps: RefCell<MapCache>,
}

fn u32s(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

impl<'a> Ctx<'a> {
    pub fn new(prog: &'a Program, layout: &'a Layout, dev: Device) -> Result<Self, RunError> {
        let (rows, width) = (layout.rows, layout.width.max(1));
        let n_tok = layout.size(SpaceId::TOK);
        let mut pad = vec![n_tok; rows * width];
        let mut tok = Vec::with_capacity(n_tok);
        for r in 0..rows {
            for k in layout.row_start[r]..layout.row_start[r + 1] {
                let p = r * width + layout.tok_pos[k] as usize;
                pad[p] = k;
                tok.push(p);
            }
        }
        let valid: Vec<f32> = pad
            .iter()
            .map(|&k| f32::from(u8::from(k < n_tok)))
            .collect();
        let valid = Tensor::from_vec(valid, (rows, width), &dev).map_err(cerr)?;
        let tok_idx = Tensor::from_vec(u32s(&tok), tok.len(), &dev).map_err(cerr)?;
        let pad_idx = Tensor::from_vec(u32s(&pad), pad.len(), &dev).map_err(cerr)?;
        Ok(Ctx {
            prog,
            layout,
            dev,
            rows,
            width,
            n_tok,
            valid,
            tok_idx,
            pad_idx,
            maps: RefCell::new(HashMap::new()),
        })
    }

    pub fn size(&self, s: SpaceId) -> usize {
        self.layout.size(s)
    }

    pub fn shape(&self, s: SpaceId) -> Vec<usize> {
        match &self.prog.spaces[s.index()].kind {
            SpaceKind::Batch => vec![],
            SpaceKind::Seq => vec![self.rows],
            SpaceKind::Tok => vec![self.rows, self.width],
            SpaceKind::RowGroups { .. } | SpaceKind::RowSegments { .. } => vec![self.size(s)],
        }
    }

    fn space_name(&self, s: SpaceId) -> &str {
        &self.prog.spaces[s.index()].name
    }

    /// For every element of `fine`, its element of `coarse` (cached per batch).
    pub fn map(&self, fine: SpaceId, coarse: SpaceId) -> Result<Rc<Vec<u32>>, RunError> {
        if let Some(m) = self.maps.borrow().get(&(fine, coarse)) {
            return Ok(m.clone());
        }
        let m = if coarse == SpaceId::BATCH {
            vec![0; self.size(fine)]
        } else {
            self.layout.map(self.prog, fine, coarse).ok_or_else(|| {
                RunError(format!(
                    "candle: space `{}` is not laid out within `{}`",
                    self.space_name(fine),
                    self.space_name(coarse)
                ))
            })?
        };
        let n = self.size(coarse);
        if m.len() != self.size(fine) || m.iter().any(|&i| i as usize >= n) {
            return Err(RunError(format!(
                "candle: layout map `{}` → `{}` is out of range",
                self.space_name(fine),
                self.space_name(coarse)
            )));
        }
        let m = Rc::new(m);
        self.maps.borrow_mut().insert((fine, coarse), m.clone());
        Ok(m)
    }

    pub fn index(&self, v: Vec<u32>) -> Result<Tensor, RunError> {
        let n = v.len();
        Tensor::from_vec(v, n, &self.dev).map_err(cerr)
    }

    fn map_t(&self, fine: SpaceId, coarse: SpaceId) -> Result<Tensor, RunError> {
        self.index(self.map(fine, coarse)?.to_vec())
    }

    pub fn full(&self, v: f64, shape: &[usize]) -> Result<Tensor, RunError> {
        Tensor::full(v as f32, shape, &self.dev).map_err(cerr)
    }

    /// Dense values of a space → the tensor layout of that space.
    pub fn tensor_of(&self, s: SpaceId, v: &[f64]) -> Result<Tensor, RunError> {
        let flat = self.dense_t(v)?;
        self.unflat(&flat, s)
    }

    /// A dense f32 vector from host values.
    pub fn dense_t(&self, v: &[f64]) -> Result<Tensor, RunError> {
        let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_vec(data, v.len(), &self.dev).map_err(cerr)
    }

    /// A tensor of a space → dense `f64` values.
    pub fn to_dense(&self, s: SpaceId, t: &Tensor) -> Result<Vec<f64>, RunError> {
        let flat: Vec<f32> = self.flat(t, s)?.to_vec1().map_err(cerr)?;
        Ok(flat.into_iter().map(f64::from).collect())
    }

    /// The dense vector of a space's elements (valid tokens only for `tok`).
    pub fn flat(&self, x: &Tensor, s: SpaceId) -> Result<Tensor, RunError> {
        let f = x.flatten_all().map_err(cerr)?;
        if s == SpaceId::TOK {
            f.index_select(&self.tok_idx, 0).map_err(cerr)
        } else {
            Ok(f)
        }
    }

    /// Inverse of [`Ctx::flat`]: padding gets 0.
    pub fn unflat(&self, y: &Tensor, s: SpaceId) -> Result<Tensor, RunError> {
        let shape = self.shape(s);
        if s == SpaceId::TOK {
            let zero = Tensor::zeros(1, y.dtype(), &self.dev).map_err(cerr)?;
            Tensor::cat(&[y, &zero], 0)
                .and_then(|e| e.index_select(&self.pad_idx, 0))
                .and_then(|e| e.reshape(shape))
                .map_err(cerr)
        } else {
            y.reshape(shape).map_err(cerr)
        }
    }

    /// `a` (in space `from`) broadcast to the finer space `to`.
    pub fn broadcast(&self, a: &Tensor, from: SpaceId, to: SpaceId) -> Result<Tensor, RunError> {
        if from == to {
            return Ok(a.clone());
        }
        let shape = self.shape(to);
        if from == SpaceId::BATCH {
            return a.broadcast_as(shape).map_err(cerr);
        }
        if to == SpaceId::TOK && self.prog.within(SpaceId::SEQ, from) {
            let seq = self.broadcast(a, from, SpaceId::SEQ)?;
            return seq
                .unsqueeze(1)
                .and_then(|t| t.broadcast_as(shape))
                .map_err(cerr);
        }
        let f = self.flat(a, from)?;
        let g = f.index_select(&self.map_t(to, from)?, 0).map_err(cerr)?;
        self.unflat(&g, to)
    }

    /// Sum over the members of each element of `to` (`x` in space `from`, already zero
    /// where masked).
    pub fn seg_sum(&self, x: &Tensor, from: SpaceId, to: SpaceId) -> Result<Tensor, RunError> {
        if from == to {
            return Ok(x.clone());
        }
        if to == SpaceId::BATCH {
            return x.sum_all().map_err(cerr);
        }
        let (x, from) = if from == SpaceId::TOK && self.prog.within(SpaceId::SEQ, to) {
            (x.sum(1).map_err(cerr)?, SpaceId::SEQ)
        } else {
            (self.flat(x, from)?, from)
        };
        if from == to {
            return Ok(x);
        }
        let zeros = Tensor::zeros(self.size(to), DType::F32, &self.dev).map_err(cerr)?;
        let s = if self.size(from) == 0 {
            zeros
        } else {
            zeros
                .index_add(&self.map_t(from, to)?, &x, 0)
                .map_err(cerr)?
        };
        self.unflat(&s, to)
    }

    /// Fine indices of every coarse element, in fine order.
    fn buckets(&self, fine: SpaceId, coarse: SpaceId) -> Result<Vec<Vec<usize>>, RunError> {
        let m = self.map(fine, coarse)?;
        let mut b = vec![Vec::new(); self.size(coarse)];
        for (i, &c) in m.iter().enumerate() {
            b[c as usize].push(i);
        }
        Ok(b)
    }

    /// Host copy of an (optional) mask in space `s`, as bools.
    fn host_mask(&self, mask: Option<&Tensor>, s: SpaceId) -> Result<Vec<bool>, RunError> {
        Ok(match mask {
            Some(m) => self
                .to_dense(s, m)?
                .into_iter()
                .map(scalar::to_bool)
                .collect(),
            None => vec![true; self.size(s)],
        })
    }

    /// `Reduce` from `from` to `to`.
    pub fn reduce(
        &self,
        op: ReduceOp,
        x: &Tensor,
        mask: Option<&Tensor>,
        empty: f64,
        from: SpaceId,
        to: SpaceId,
    ) -> Result<Tensor, RunError> {
        let shape = self.shape(to);
        let zeros = x.zeros_like().map_err(cerr)?;
        let mut m = if from == SpaceId::TOK {
            self.valid.clone()
        } else {
            x.ones_like().map_err(cerr)?
        };
        if let Some(mk) = mask {
            m = (m * mk).map_err(cerr)?;
        }
        let on = m.ne(0f32).map_err(cerr)?;
        let xz = on.where_cond(x, &zeros).map_err(cerr)?;
        let n = self.seg_sum(&m, from, to)?;
        let nz = n.gt(0f32).map_err(cerr)?;
        let emp = self.full(empty, &shape)?;
        let ones = n.ones_like().map_err(cerr)?;
        let safe_n = nz.where_cond(&n, &ones).map_err(cerr)?;
        // Sums and means are taken around a per-segment shift (its first element, a
        // constant): `Σx = n·s + Σ(x - s)`. A segment of equal values then sums to `n·s`
        // with one rounding and averages to exactly its value, as in f64 — which matters
        // where a whitening step divides a near-zero difference by a near-zero std.
        let shifted = |xz: &Tensor| -> Result<(Tensor, Tensor), RunError> {
            let xs: Vec<f32> = self.flat(&xz.detach(), from)?.to_vec1().map_err(cerr)?;
            let ms: Vec<f32> = self.flat(&m.detach(), from)?.to_vec1().map_err(cerr)?;
            let mut shift = vec![f64::NAN; self.size(to)];
            for (i, &c) in self.map(from, to)?.iter().enumerate() {
                if ms[i] != 0.0 && shift[c as usize].is_nan() && xs[i].is_finite() {
                    shift[c as usize] = f64::from(xs[i]);
                }
            }
            for v in shift.iter_mut().filter(|v| v.is_nan()) {
                *v = 0.0;
            }
            let sh = self.tensor_of(to, &shift)?;
            let d = (xz - self.broadcast(&sh, to, from)?).map_err(cerr)?;
            let d = on.where_cond(&d, &zeros).map_err(cerr)?;
            Ok((sh, self.seg_sum(&d, from, to)?))
        };
        let mean_of = |xz: &Tensor| -> Result<Tensor, RunError> {
            let (sh, ds) = shifted(xz)?;
            (ds / &safe_n).and_then(|q| q + sh).map_err(cerr)
        };
        let sum_of = |xz: &Tensor| -> Result<Tensor, RunError> {
            let (sh, ds) = shifted(xz)?;
            (sh * &n).and_then(|b| b + ds).map_err(cerr)
        };
        let val = match op {
            ReduceOp::Sum => sum_of(&xz)?,
            ReduceOp::Count => n.clone(),
            ReduceOp::Mean => mean_of(&xz)?,
            ReduceOp::Var { ddof } | ReduceOp::Std { ddof } => {
                let mu = self.broadcast(&mean_of(&xz)?, to, from)?;
                let d = (xz.clone() - mu).map_err(cerr)?;
                let d2 = on
                    .where_cond(&d.sqr().map_err(cerr)?, &zeros)
                    .map_err(cerr)?;
                let ss = self.seg_sum(&d2, from, to)?;
                let den = (n.clone() - f64::from(ddof)).map_err(cerr)?;
                let ok = den.gt(0f32).map_err(cerr)?;
                let den = ok.where_cond(&den, &ones).map_err(cerr)?;
                let v = (ss / den).map_err(cerr)?;
                let v = if matches!(op, ReduceOp::Std { .. }) {
                    // torch: zero gradient where the std is 0.
                    let pos = v.gt(0f32).map_err(cerr)?;
                    let safe = pos.where_cond(&v, &ones).map_err(cerr)?;
                    let s = safe.sqrt().map_err(cerr)?;
                    pos.where_cond(&s, &v.zeros_like().map_err(cerr)?)
                        .map_err(cerr)?
                } else {
                    v
                };
                ok.where_cond(&v, &emp).map_err(cerr)?
            }
            ReduceOp::Max | ReduceOp::Min | ReduceOp::LogSumExp => {
                // Host-computed extremum per segment (what a user does with argmax); ties
                // share the gradient evenly.
                let xs = self.to_dense(from, &x.detach())?;
                let ms = self.to_dense(from, &on.to_dtype(DType::F32).map_err(cerr)?)?;
                let seg = self.map(from, to)?;
                let nseg = self.size(to);
                let want_min = op == ReduceOp::Min;
                let init = if want_min {
                    f64::INFINITY
                } else {
                    f64::NEG_INFINITY
                };
                let mut best = vec![init; nseg];
                for i in 0..xs.len() {
                    if ms[i] != 0.0 {
                        let s = seg[i] as usize;
                        best[s] = if want_min {
                            scalar::min(best[s], xs[i])
                        } else {
                            scalar::max(best[s], xs[i])
                        };
                    }
                }
                if op == ReduceOp::LogSumExp {
                    let shift: Vec<f64> = best
                        .iter()
                        .map(|&b| if b.is_finite() { b } else { 0.0 })
                        .collect();
                    let sh = self.tensor_of(to, &shift)?;
                    let shb = self.broadcast(&sh, to, from)?;
                    let e = (xz.clone() - shb).and_then(|d| d.exp()).map_err(cerr)?;
                    let e = on.where_cond(&e, &zeros).map_err(cerr)?;
                    let s = self.seg_sum(&e, from, to)?;
                    // NaN / +inf extrema propagate as the interpreter does.
                    let fix: Vec<f64> = best
                        .iter()
                        .map(|&b| if b.is_finite() { 0.0 } else { b })
                        .collect();
                    let lse = (s.log().map_err(cerr)? + sh).map_err(cerr)?;
                    let bad: Vec<f64> = best
                        .iter()
                        .map(|b| f64::from(u8::from(b.is_nan() || *b == f64::INFINITY)))
                        .collect();
                    let bad = self.tensor_of(to, &bad)?.ne(0f32).map_err(cerr)?;
                    bad.where_cond(&self.tensor_of(to, &fix)?, &lse)
                        .map_err(cerr)?
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
                    let wt = self.tensor_of(from, &w)?;
                    let sel = wt.gt(0f32).map_err(cerr)?;
                    let wx = sel
                        .where_cond(&(xz.clone() * wt).map_err(cerr)?, &zeros)
                        .map_err(cerr)?;
                    let v = self.seg_sum(&wx, from, to)?;
                    let nanb: Vec<f64> = best
                        .iter()
                        .map(|b| if b.is_nan() { f64::NAN } else { 0.0 })
                        .collect();
                    (v + self.tensor_of(to, &nanb)?).map_err(cerr)?
                }
            }
        };
        let val = val.reshape(shape.clone()).map_err(cerr)?;
        nz.reshape(shape)
            .and_then(|nz| nz.where_cond(&val, &emp))
            .map_err(cerr)
    }

    /// `Quantile` of `x` (space `from`) per element of `to`: piecewise constant in `x`, so
    /// it is computed on the host (zero gradient, as the IR says). `q_exact` is `q` when it
    /// is a constant or parameter: `0.2` rounded to f32 would move an order-statistic
    /// threshold off the element it lands on.
    #[allow(clippy::too_many_arguments)]
    pub fn quantile(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        q: &Tensor,
        q_exact: Option<f64>,
        empty: f64,
        from: SpaceId,
        to: SpaceId,
    ) -> Result<Tensor, RunError> {
        let xs = self.to_dense(from, &x.detach())?;
        let on = self.host_mask(mask, from)?;
        let qs = match q_exact {
            Some(q) => vec![q; self.size(to)],
            None => self.to_dense(to, q)?,
        };
        let mut out = Vec::with_capacity(qs.len());
        for (c, b) in self.buckets(from, to)?.iter().enumerate() {
            let seg: Vec<f64> = b.iter().filter(|&&i| on[i]).map(|&i| xs[i]).collect();
            out.push(scalar::quantile(&seg, qs[c], empty));
        }
        self.tensor_of(to, &out)
    }

    /// `Segment` op on `x` (space `s`) within each element of `within`.
    pub fn segment(
        &self,
        op: SegmentOp,
        x: &Tensor,
        mask: Option<&Tensor>,
        k: Option<&Tensor>,
        s: SpaceId,
        within: SpaceId,
    ) -> Result<Tensor, RunError> {
        let n = self.size(s);
        let on = self.host_mask(mask, s)?;
        let buckets = self.buckets(s, within)?;
        match op {
            SegmentOp::Rank | SegmentOp::TopK => {
                let xs = self.to_dense(s, &x.detach())?;
                let ks = match k {
                    Some(k) => self.to_dense(within, k)?,
                    None => vec![0.0; self.size(within)],
                };
                let mut y = vec![0.0; n];
                for (c, b) in buckets.iter().enumerate() {
                    let (bon, off): (Vec<usize>, Vec<usize>) = b.iter().partition(|&&i| on[i]);
                    let seg: Vec<f64> = bon.iter().map(|&i| xs[i]).collect();
                    let vals: Vec<f64> = if op == SegmentOp::Rank {
                        for (j, &i) in off.iter().enumerate() {
                            y[i] = (bon.len() + j) as f64;
                        }
                        scalar::rank(&seg)
                    } else {
                        scalar::topk(&seg, ks[c])
                            .into_iter()
                            .map(scalar::from_bool)
                            .collect()
                    };
                    for (&i, v) in bon.iter().zip(vals) {
                        y[i] = v;
                    }
                }
                self.tensor_of(s, &y)
            }
            SegmentOp::ColumnSum => self.column_sum(x, &on, s, within),
            SegmentOp::Softmax | SegmentOp::LogSoftmax => {
                let xf = self.flat(x, s)?;
                let xs: Vec<f32> = xf.detach().to_vec1().map_err(cerr)?;
                // A constant shift per segment (softmax is invariant to it).
                let mut shift = vec![f64::NEG_INFINITY; self.size(within)];
                for (c, b) in buckets.iter().enumerate() {
                    for &i in b.iter().filter(|&&i| on[i]) {
                        shift[c] = scalar::max(shift[c], f64::from(xs[i]));
                    }
                }
                for v in shift.iter_mut() {
                    if !v.is_finite() {
                        *v = 0.0;
                    }
                }
                let on_f: Vec<f64> = on.iter().map(|&b| scalar::from_bool(b)).collect();
                let on_t = self.dense_t(&on_f)?.ne(0f32).map_err(cerr)?;
                let zeros = xf.zeros_like().map_err(cerr)?;
                let xz = on_t.where_cond(&xf, &zeros).map_err(cerr)?;
                let map = self.map_t(s, within)?;
                let sh = self.dense_t(&shift)?;
                let shb = sh.index_select(&map, 0).map_err(cerr)?;
                let e = (xz.clone() - shb)
                    .and_then(|d| d.exp())
                    .and_then(|e| on_t.where_cond(&e, &zeros))
                    .map_err(cerr)?;
                let nw = self.size(within);
                let sums = Tensor::zeros(nw, DType::F32, &self.dev).map_err(cerr)?;
                let sums = if n == 0 {
                    sums
                } else {
                    sums.index_add(&map, &e, 0).map_err(cerr)?
                };
                let lse = (sums.log().map_err(cerr)? + sh).map_err(cerr)?;
                let ls = (xz - lse.index_select(&map, 0).map_err(cerr)?).map_err(cerr)?;
                let y = if op == SegmentOp::Softmax {
                    ls.exp().map_err(cerr)?
                } else {
                    ls
                };
                let y = on_t.where_cond(&y, &zeros).map_err(cerr)?;
                self.unflat(&y, s)
            }
        }
    }

    /// `ColumnSum` from candle ops: every token gets a dense key for its (segment, padded
    /// position) column; `index_add` sums the unmasked tokens of each column (in token, i.e.
    /// row, order) and `index_select` hands the sums back, so the gradient flows through both.
    fn column_sum(
        &self,
        x: &Tensor,
        on: &[bool],
        s: SpaceId,
        within: SpaceId,
    ) -> Result<Tensor, RunError> {
        let seg = self.map(s, within)?;
        let mut columns: HashMap<(u32, u32), u32> = HashMap::new();
        let keys: Vec<u32> = seg
            .iter()
            .zip(&self.layout.tok_pos)
            .map(|(&g, &t)| {
                let next = columns.len() as u32;
                *columns.entry((g, t)).or_insert(next)
            })
            .collect();
        let xf = self.flat(x, s)?;
        if keys.is_empty() {
            return self.unflat(&xf, s);
        }
        let on_f: Vec<f64> = on.iter().map(|&b| scalar::from_bool(b)).collect();
        let on_t = self.dense_t(&on_f)?.ne(0f32).map_err(cerr)?;
        let zeros = xf.zeros_like().map_err(cerr)?;
        let xz = on_t.where_cond(&xf, &zeros).map_err(cerr)?;
        let kt = self.index(keys)?;
        let y = Tensor::zeros(columns.len(), DType::F32, &self.dev)
            .and_then(|z| z.index_add(&kt, &xz, 0))
            .and_then(|sums| sums.index_select(&kt, 0))
            .map_err(cerr)?;
        self.unflat(&y, s)
    }

    /// Runs of consecutive tokens forming the segments of `within` (scans and shifts).
    fn runs(&self, within: SpaceId) -> Result<Vec<std::ops::Range<usize>>, RunError> {
        if !self.layout.contiguous(self.prog, within) {
            return Err(RunError(format!(
                "scan/shift within `{}`: its segments are not contiguous in token order (ids of one segment must be consecutive within a row)",
                self.space_name(within)
            )));
        }
        let m = self.map(SpaceId::TOK, within)?;
        Ok(crate::interp::segment_runs(&m))
    }

    /// `Shift { offset, fill }` of a token value within each segment of `within`: one
    /// `index_select` from the valid tokens plus a fill element.
    pub fn shift(
        &self,
        x: &Tensor,
        offset: i32,
        fill: f64,
        within: SpaceId,
    ) -> Result<Tensor, RunError> {
        let mut src = vec![self.n_tok as u32; self.n_tok];
        for r in self.runs(within)? {
            for t in r.clone() {
                let s = t as i64 + i64::from(offset);
                if s >= r.start as i64 && s < r.end as i64 {
                    src[t] = s as u32;
                }
            }
        }
        let xf = self.flat(x, SpaceId::TOK)?;
        let f = self.full(fill, &[1])?;
        let src = self.index(src)?;
        let y = Tensor::cat(&[&xf, &f], 0)
            .and_then(|e| e.index_select(&src, 0))
            .map_err(cerr)?;
        self.unflat(&y, SpaceId::TOK)
    }

    /// `Scan` of a token value within each segment of `within`.
    pub fn scan(
        &self,
        op: ScanOp,
        x: &Tensor,
        coef: Option<&Tensor>,
        within: SpaceId,
    ) -> Result<Tensor, RunError> {
        let runs = self.runs(within)?;
        if self.n_tok == 0 {
            return x.zeros_like().map_err(cerr);
        }
        let xf = self.flat(x, SpaceId::TOK)?;
        let y = match op {
            ScanOp::CumMin | ScanOp::CumMax | ScanOp::CumMinRev | ScanOp::CumMaxRev => {
                self.cum_extreme(op, &xf, &runs)?
            }
            _ => {
                let rev = matches!(op, ScanOp::CumsumRev | ScanOp::ScanRev);
                let c = match (op, coef) {
                    (ScanOp::ScanRev | ScanOp::ScanFwd, Some(c)) => {
                        Some(self.flat(c, SpaceId::TOK)?)
                    }
                    (ScanOp::ScanRev | ScanOp::ScanFwd, None) => {
                        return Err(RunError("candle: scan without a coefficient".into()))
                    }
                    _ => None,
                };
                self.linear_scan(&xf, c.as_ref(), rev, &runs)?
            }
        };
        self.unflat(&y, SpaceId::TOK)
    }

    /// `g_t = x_t + c_t g_{t∓1}` (`c = 1` when `None`) over each run, by recursive doubling
    /// on a `[runs, longest]` matrix: `log2(longest)` vectorised steps, each differentiable,
    /// so memory is `O(n log n)` and the autograd graph stays shallow on 4096-token rows.
    fn linear_scan(
        &self,
        xf: &Tensor,
        c: Option<&Tensor>,
        rev: bool,
        runs: &[std::ops::Range<usize>],
    ) -> Result<Tensor, RunError> {
        let s = runs.len();
        let l = runs.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut gather = vec![self.n_tok as u32; s * l];
        let mut back = vec![0u32; self.n_tok];
        for (i, r) in runs.iter().enumerate() {
            for (j, t) in r.clone().enumerate() {
                gather[i * l + j] = t as u32;
                back[t] = (i * l + j) as u32;
            }
        }
        let gather = self.index(gather)?;
        let zero = Tensor::zeros(1, DType::F32, &self.dev).map_err(cerr)?;
        let mat = |v: &Tensor| -> Result<Tensor, RunError> {
            Tensor::cat(&[v, &zero], 0)
                .and_then(|e| e.index_select(&gather, 0))
                .and_then(|e| e.reshape((s, l)))
                .map_err(cerr)
        };
        let mut b = mat(xf)?;
        let mut a = match c {
            Some(c) => Some(mat(c)?),
            None => None,
        };
        // Shift along the row by `d` towards the scan direction's past, zero-filled.
        let shifted = |t: &Tensor, d: usize| -> Result<Tensor, RunError> {
            let pad = Tensor::zeros((s, d), DType::F32, &self.dev).map_err(cerr)?;
            let r = if rev {
                t.narrow(1, d, l - d)
                    .and_then(|body| Tensor::cat(&[&body, &pad], 1))
            } else {
                t.narrow(1, 0, l - d)
                    .and_then(|body| Tensor::cat(&[&pad, &body], 1))
            };
            r.map_err(cerr)
        };
        let mut d = 1;
        while d < l {
            let bs = shifted(&b, d)?;
            b = match &a {
                Some(a) => (b + (a * bs).map_err(cerr)?).map_err(cerr)?,
                None => (b + bs).map_err(cerr)?,
            };
            if let Some(av) = &a {
                if 2 * d < l {
                    a = Some((av * shifted(av, d)?).map_err(cerr)?);
                }
            }
            d *= 2;
        }
        let back = self.index(back)?;
        b.flatten_all()
            .and_then(|f| f.index_select(&back, 0))
            .map_err(cerr)
    }

    /// Running min/max: the value is a gather of the latest record (in scan order) at or
    /// before each token, so the gradient goes to that record, as the IR's rule says.
    fn cum_extreme(
        &self,
        op: ScanOp,
        xf: &Tensor,
        runs: &[std::ops::Range<usize>],
    ) -> Result<Tensor, RunError> {
        let xs: Vec<f32> = xf.detach().to_vec1().map_err(cerr)?;
        let want_min = matches!(op, ScanOp::CumMin | ScanOp::CumMinRev);
        let rev = matches!(op, ScanOp::CumMinRev | ScanOp::CumMaxRev);
        let mut src = vec![0u32; self.n_tok];
        let mut nan = vec![0.0; self.n_tok];
        for r in runs {
            let order: Vec<usize> = if rev {
                r.clone().rev().collect()
            } else {
                r.clone().collect()
            };
            let mut acc = if want_min {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
            let mut rec = order.first().copied().unwrap_or(0);
            for &t in &order {
                let x = f64::from(xs[t]);
                acc = if want_min {
                    scalar::min(acc, x)
                } else {
                    scalar::max(acc, x)
                };
                if x == acc {
                    rec = t;
                }
                src[t] = rec as u32;
                if acc.is_nan() {
                    nan[t] = f64::NAN;
                }
            }
        }
        let y = xf.index_select(&self.index(src)?, 0).map_err(cerr)?;
        (y + self.dense_t(&nan)?).map_err(cerr)
    }
}
