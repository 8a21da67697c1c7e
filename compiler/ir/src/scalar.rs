//! The one table of scalar semantics, in `f64`. Constant folding and the reference
//! interpreter both call these functions, so a folded constant can never disagree with an
//! evaluated one (the tinygrad habit). `bool` values are carried as `0.0` / `1.0`.

use crate::{BinaryOp, Elem, ReduceOp, UnaryOp};

/// `bool` as the number every evaluator stores.
pub fn from_bool(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// A stored `bool` value: anything but `0.0` is true (NaN never reaches a bool).
pub fn to_bool(x: f64) -> bool {
    x != 0.0
}

/// Element types of a unary op: `(operand, result)`.
pub fn unary_elems(op: UnaryOp) -> (Elem, Elem) {
    match op {
        UnaryOp::Not => (Elem::Bool, Elem::Bool),
        UnaryOp::ToF32 => (Elem::Bool, Elem::F32),
        _ => (Elem::F32, Elem::F32),
    }
}

/// Result element type of a binary op whose operands have element type `operand`, or
/// `None` when the op does not accept that element type.
pub fn binary_result(op: BinaryOp, operand: Elem) -> Option<Elem> {
    use BinaryOp::*;
    match (op, operand) {
        (Add | Sub | Mul | Div | Pow | Min | Max, Elem::F32) => Some(Elem::F32),
        (Lt | Le | Gt | Ge, Elem::F32) => Some(Elem::Bool),
        (Eq | Ne, _) => Some(Elem::Bool),
        (And | Or, Elem::Bool) => Some(Elem::Bool),
        _ => None,
    }
}

/// Whether an op's result is piecewise constant in its operands (zero gradient).
pub fn unary_is_piecewise_constant(op: UnaryOp) -> bool {
    matches!(
        op,
        UnaryOp::Sign | UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Not | UnaryOp::ToF32
    )
}

/// Logistic sigmoid, stable for large `|x|`.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + exp(x))`, stable for large `|x|`.
pub fn softplus(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

pub fn unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Log1p => x.ln_1p(),
        UnaryOp::Expm1 => x.exp_m1(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Abs => x.abs(),
        // sign(0) = 0 (torch), sign(NaN) = NaN.
        UnaryOp::Sign => {
            if x.is_nan() {
                x
            } else if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Softplus => softplus(x),
        UnaryOp::LogSigmoid => -softplus(-x),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Not => from_bool(!to_bool(x)),
        UnaryOp::ToF32 => from_bool(to_bool(x)),
    }
}

/// Elementwise minimum; NaN if either operand is NaN (unlike `f64::min`).
pub fn min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b < a {
        b
    } else {
        a
    }
}

/// Elementwise maximum; NaN if either operand is NaN (unlike `f64::max`).
pub fn max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// `min(max(x, lo), hi)` with the NaN rule of [`min`]/[`max`].
pub fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    min(max(x, lo), hi)
}

pub fn binary(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Min => min(a, b),
        BinaryOp::Max => max(a, b),
        // IEEE comparisons: false on NaN, `Ne` true.
        BinaryOp::Lt => from_bool(a < b),
        BinaryOp::Le => from_bool(a <= b),
        BinaryOp::Gt => from_bool(a > b),
        BinaryOp::Ge => from_bool(a >= b),
        BinaryOp::Eq => from_bool(a == b),
        BinaryOp::Ne => from_bool(a != b),
        BinaryOp::And => from_bool(to_bool(a) && to_bool(b)),
        BinaryOp::Or => from_bool(to_bool(a) || to_bool(b)),
    }
}

/// `select(cond, a, b)`.
pub fn select(cond: f64, a: f64, b: f64) -> f64 {
    if to_bool(cond) {
        a
    } else {
        b
    }
}

/// `log Σ exp(x)`, stable; `-inf` for all `-inf`, NaN if any NaN. `xs` must be non-empty.
fn logsumexp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, max);
    if m.is_nan() || m.is_infinite() {
        return m;
    }
    m + xs.iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
}

/// A reduction over the (already mask-filtered) elements of one segment. Empty segments
/// yield `empty` for every op (`Count` included); `Var`/`Std` yield `empty` when
/// `n <= ddof`. `Max`/`Min` propagate NaN. `Var` is two-pass for accuracy.
pub fn reduce(op: ReduceOp, xs: &[f64], empty: f64) -> f64 {
    let n = xs.len();
    if n == 0 {
        return empty;
    }
    let mean = || xs.iter().sum::<f64>() / n as f64;
    let var = |ddof: u32| -> Option<f64> {
        if n as u64 <= ddof as u64 {
            return None;
        }
        let m = mean();
        Some(xs.iter().map(|&x| (x - m) * (x - m)).sum::<f64>() / (n as f64 - ddof as f64))
    };
    match op {
        ReduceOp::Sum => xs.iter().sum(),
        ReduceOp::Mean => mean(),
        ReduceOp::Max => xs.iter().copied().fold(f64::NEG_INFINITY, max),
        ReduceOp::Min => xs.iter().copied().fold(f64::INFINITY, min),
        ReduceOp::Count => n as f64,
        ReduceOp::Var { ddof } => var(ddof).unwrap_or(empty),
        ReduceOp::Std { ddof } => var(ddof).map(f64::sqrt).unwrap_or(empty),
        ReduceOp::LogSumExp => logsumexp(xs),
    }
}

/// Softmax of one segment's (mask-filtered) elements.
pub fn softmax(xs: &[f64]) -> Vec<f64> {
    if xs.is_empty() {
        return Vec::new();
    }
    let l = logsumexp(xs);
    xs.iter().map(|&x| (x - l).exp()).collect()
}

/// Log-softmax of one segment's (mask-filtered) elements.
pub fn log_softmax(xs: &[f64]) -> Vec<f64> {
    if xs.is_empty() {
        return Vec::new();
    }
    let l = logsumexp(xs);
    xs.iter().map(|&x| x - l).collect()
}

/// Ascending order used by `Rank`/`TopK`/`Quantile`: NaN above `+inf`, ties by position.
pub fn order_key(a: (f64, usize), b: (f64, usize)) -> std::cmp::Ordering {
    let by_val = match (a.0.is_nan(), b.0.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal),
    };
    by_val.then(a.1.cmp(&b.1))
}

/// 0-based ascending ranks of one segment's (mask-filtered) elements, ties by position.
pub fn rank(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&i, &j| order_key((xs[i], i), (xs[j], j)));
    let mut out = vec![0.0; xs.len()];
    for (r, &i) in idx.iter().enumerate() {
        out[i] = r as f64;
    }
    out
}

/// Top-`k` membership of one segment's (mask-filtered) elements: the `floor(k)` (clamped
/// to `[0, n]`, NaN → 0) largest, ties by lower position first, NaN largest.
pub fn topk(xs: &[f64], k: f64) -> Vec<bool> {
    let n = xs.len();
    let k = if k.is_nan() {
        0
    } else {
        k.floor().clamp(0.0, n as f64) as usize
    };
    let mut idx: Vec<usize> = (0..n).collect();
    // Descending by value, ascending by position.
    idx.sort_by(|&i, &j| order_key((xs[j], 0), (xs[i], 0)).then(i.cmp(&j)));
    let mut out = vec![false; n];
    for &i in idx.iter().take(k) {
        out[i] = true;
    }
    out
}

/// `q`-quantile of one segment's (mask-filtered) elements with linear interpolation
/// (torch.quantile's default). `q` is clamped to `[0, 1]`; NaN `q` or any NaN element
/// gives NaN; an empty segment gives `empty`.
pub fn quantile(xs: &[f64], q: f64, empty: f64) -> f64 {
    if xs.is_empty() {
        return empty;
    }
    if q.is_nan() || xs.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (a, b) = (v[lo], v[hi.min(v.len() - 1)]);
    if lo == hi {
        a
    } else {
        a + (b - a) * (pos - lo as f64)
    }
}
