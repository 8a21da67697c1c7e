//! Elementwise IR ops as candle ops, with the IR's gradient rules: `Min`/`Max` split the
//! gradient half/half on ties, `Clamp` routes it like torch's clamp (tensor bounds too),
//! piecewise-constant ops are detached.

use super::space::cerr;
use crate::RunError;
use candle_core::{DType, Result as CResult, Tensor};
use rlobj_ir::{BinaryOp, UnaryOp};

/// `where_cond` with a bool-as-f32 or u8 condition.
fn pick(c: &Tensor, a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    c.where_cond(a, b)
}

pub(super) fn unary(op: UnaryOp, a: &Tensor) -> Result<Tensor, RunError> {
    match op {
        UnaryOp::Neg => a.neg(),
        UnaryOp::Exp => a.exp(),
        UnaryOp::Log => a.log(),
        UnaryOp::Log1p => log1p(a),
        UnaryOp::Expm1 => expm1(a),
        UnaryOp::Sqrt => a.sqrt(),
        UnaryOp::Rsqrt => a.sqrt().and_then(|x| x.recip()),
        UnaryOp::Abs => a.abs(),
        UnaryOp::Sign => a.detach().sign(),
        UnaryOp::Tanh => a.tanh(),
        UnaryOp::Sigmoid => sigmoid(a),
        UnaryOp::Softplus => softplus(a),
        UnaryOp::LogSigmoid => a.neg().and_then(|x| softplus(&x)).and_then(|x| x.neg()),
        UnaryOp::Floor => a.detach().floor(),
        UnaryOp::Ceil => a.detach().ceil(),
        UnaryOp::Recip => a.recip(),
        UnaryOp::Not => a.detach().eq(0f32).and_then(|c| c.to_dtype(DType::F32)),
        UnaryOp::ToF32 => Ok(a.detach()),
    }
    .map_err(cerr)
}

/// `log(1 + x)` with the value corrected where `1 + x` rounds (Goldberg's trick:
/// `log(u) · x / (u - 1)`); the gradient is that of `log(1 + x)`.
fn log1p(x: &Tensor) -> CResult<Tensor> {
    let u = (x + 1.0)?;
    let l = u.log()?;
    let d = (&u - 1.0)?;
    let exact = pick(
        &d.eq(0f32)?,
        &x.detach(),
        &(l.detach() * x.detach())?.div(&d.detach())?,
    )?;
    correct(&l, &exact)
}

/// `exp(x) - 1`, value corrected for small `|x|` (Kahan: `(u - 1) · x / log u`).
fn expm1(x: &Tensor) -> CResult<Tensor> {
    let u = x.exp()?;
    let y = (&u - 1.0)?;
    let lu = u.detach().log()?;
    let kahan = (y.detach() * x.detach())?.div(&lu)?;
    let small = x.abs()?.lt(0.5f32)?;
    let tiny = u.eq(1f32)?;
    let exact = pick(&tiny, &x.detach(), &pick(&small, &kahan, &y.detach())?)?;
    correct(&y, &exact)
}

/// `y` with its value replaced by `exact` where both are finite and differ (the gradient
/// stays that of `y`).
fn correct(y: &Tensor, exact: &Tensor) -> CResult<Tensor> {
    let yd = y.detach();
    let fine = yd.eq(exact)?;
    let fixed = (y + (exact - &yd)?)?;
    let finite = exact.abs()?.lt(f32::INFINITY)?; // false for inf / NaN
    pick(&fine, y, &pick(&finite, &fixed, y)?)
}

/// Logistic sigmoid, stable on both sides: `1/(1+e)` or `e/(1+e)` with `e = exp(-|x|)`.
fn sigmoid(x: &Tensor) -> CResult<Tensor> {
    let e = x.abs()?.neg()?.exp()?;
    let p = (&e + 1.0)?.recip()?;
    let n = (&e * &p)?;
    pick(&x.ge(0f32)?, &p, &n)
}

/// `max(x, 0) + log1p(exp(-|x|))`.
fn softplus(x: &Tensor) -> CResult<Tensor> {
    let e = x.abs()?.neg()?.exp()?;
    let l = log1p(&e)?;
    x.relu()? + l
}

pub(super) fn binary(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    const_b: Option<f64>,
) -> Result<Tensor, RunError> {
    let cmp = |c: CResult<Tensor>| c.and_then(|c| c.to_dtype(DType::F32));
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => return pow(a, b, const_b),
        BinaryOp::Min => min_max(a, b, true),
        BinaryOp::Max => min_max(a, b, false),
        BinaryOp::Lt => cmp(a.lt(b)),
        BinaryOp::Le => cmp(a.le(b)),
        BinaryOp::Gt => cmp(a.gt(b)),
        BinaryOp::Ge => cmp(a.ge(b)),
        BinaryOp::Eq => cmp(a.eq(b)),
        BinaryOp::Ne => cmp(a.ne(b)),
        BinaryOp::And => (a.detach() * b.detach())
            .and_then(|x| x.ne(0f32))
            .and_then(|x| x.to_dtype(DType::F32)),
        BinaryOp::Or => (a.detach() + b.detach())
            .and_then(|x| x.ne(0f32))
            .and_then(|x| x.to_dtype(DType::F32)),
    }
    .map_err(cerr)
}

/// Elementwise min/max: the winner takes the gradient, ties split it half/half, NaN in
/// either operand gives NaN (gradient to `b`, as the IR's rule).
fn min_max(a: &Tensor, b: &Tensor, min: bool) -> CResult<Tensor> {
    let strict = if min { a.lt(b)? } else { a.gt(b)? };
    let other = if min { a.gt(b)? } else { a.lt(b)? };
    let tie = a.eq(b)?;
    let half = ((a * 0.5)? + (b * 0.5)?)?;
    let nan = (b + a.detach())?; // NaN in value, gradient to b
    pick(&strict, a, &pick(&other, b, &pick(&tie, &half, &nan)?)?)
}

/// `a ** b`. Constant exponents use exact forms (integer powers by multiplication, so
/// negative bases work); otherwise `exp(b · log a)` with torch's zero-gradient rules.
fn pow(a: &Tensor, b: &Tensor, const_b: Option<f64>) -> Result<Tensor, RunError> {
    let r = match const_b {
        Some(0.0) => a.ones_like(),
        Some(1.0) => Ok(a.clone()),
        Some(0.5) => a.sqrt(),
        Some(c) if c.fract() == 0.0 && c.abs() <= 8.0 => {
            let mut p = a.clone();
            for _ in 1..(c.abs() as u32) {
                p = (&p * a).map_err(cerr)?;
            }
            if c < 0.0 {
                p.recip()
            } else {
                Ok(p)
            }
        }
        _ => {
            // exp(b log a); where a == 0 and b > 0 the value is 0 (and gradients 0).
            let zero = a.eq(0f32).map_err(cerr)?;
            let safe = pick(&zero, &a.ones_like().map_err(cerr)?, a).map_err(cerr)?;
            let v = (b * safe.log().map_err(cerr)?)
                .and_then(|x| x.exp())
                .map_err(cerr)?;
            let bd = b.detach();
            let at_zero = pick(
                &bd.eq(0f32).map_err(cerr)?,
                &a.ones_like().map_err(cerr)?,
                &pick(
                    &bd.lt(0f32).map_err(cerr)?,
                    &(a.ones_like().map_err(cerr)? * f64::INFINITY).map_err(cerr)?,
                    &a.zeros_like().map_err(cerr)?,
                )
                .map_err(cerr)?,
            )
            .map_err(cerr)?;
            pick(&zero, &at_zero, &v)
        }
    };
    r.map_err(cerr)
}

/// `Clamp(x, lo, hi)`: value `min(max(x, lo), hi)` (NaN-propagating); gradient to `x` where
/// `lo <= x <= hi`, to `lo` where `!(x >= lo)`, to `hi` where `!(x <= hi)`.
pub(super) fn clamp(x: &Tensor, lo: &Tensor, hi: &Tensor) -> Result<Tensor, RunError> {
    let f = || -> CResult<Tensor> {
        let zeros = x.zeros_like()?;
        let ge = x.ge(lo)?;
        let le = x.le(hi)?;
        let inside = (ge.to_dtype(DType::F32)? * le.to_dtype(DType::F32)?)?.ne(0f32)?;
        let routed =
            ((pick(&inside, x, &zeros)? + pick(&ge, &zeros, lo)?)? + pick(&le, &zeros, hi)?)?;
        // Exact value (detached), IR semantics.
        let (xd, lod, hid) = (x.detach(), lo.detach(), hi.detach());
        let mx = min_max(&xd, &lod, false)?;
        let exact = min_max(&mx, &hid, true)?;
        let agree = routed.detach().eq(&exact)?;
        let fixed = (&routed + (exact - routed.detach())?)?;
        pick(&agree, &routed, &fixed)
    };
    f().map_err(cerr)
}
