//! Finishing reductions of the CPU backend in `f64`: per-row results from loop
//! accumulators and pairwise combination of partials (fixed order).

use super::RedPlan;
use rlobj_ir::{scalar, ReduceOp};

/// A row's result of one reduction: the value, or the partial `(n, a, b)`.
pub(super) fn finish_row(rp: &RedPlan, acc: &[f32], scratch: &[Vec<f32>], len: usize) -> [f64; 3] {
    let n = match rp.count {
        Some(c) => f64::from(acc[c as usize]),
        None => len as f64,
    };
    let a = rp.value.map(|s| f64::from(acc[s as usize])).unwrap_or(0.0);
    let p = match rp.scratch {
        Some((xs, ms)) => {
            let x = &scratch[xs][..len];
            let vals: Vec<f64> = match ms {
                Some(ms) => x
                    .iter()
                    .zip(&scratch[ms][..len])
                    .filter(|(_, &m)| m != 0.0)
                    .map(|(&v, _)| f64::from(v))
                    .collect(),
                None => x.iter().map(|&v| f64::from(v)).collect(),
            };
            stats(rp.op, &vals)
        }
        None => [n, a, 0.0],
    };
    if rp.partial {
        p
    } else {
        [finish_acc(rp.op, p, rp.empty), 0.0, 0.0]
    }
}

/// `(n, mean, M2)` for Var/Std, `(n, max, Σexp(x - max))` for LogSumExp.
fn stats(op: ReduceOp, xs: &[f64]) -> [f64; 3] {
    let n = xs.len() as f64;
    match op {
        ReduceOp::LogSumExp => {
            let m = xs.iter().copied().fold(f64::NEG_INFINITY, scalar::max);
            let s = if m.is_finite() {
                xs.iter().map(|&x| (x - m).exp()).sum()
            } else {
                1.0
            };
            [n, m, s]
        }
        _ => {
            if xs.is_empty() {
                return [0.0; 3];
            }
            let mean = xs.iter().sum::<f64>() / n;
            let m2 = xs.iter().map(|&x| (x - mean) * (x - mean)).sum();
            [n, mean, m2]
        }
    }
}

/// Combines two non-empty accumulators (Chan's formula for Var/Std).
pub(super) fn combine2(op: ReduceOp, x: [f64; 3], y: [f64; 3]) -> [f64; 3] {
    let n = x[0] + y[0];
    match op {
        ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Count => [n, x[1] + y[1], 0.0],
        ReduceOp::Max => [n, scalar::max(x[1], y[1]), 0.0],
        ReduceOp::Min => [n, scalar::min(x[1], y[1]), 0.0],
        ReduceOp::Var { .. } | ReduceOp::Std { .. } => {
            let d = y[1] - x[1];
            [
                n,
                x[1] + d * y[0] / n,
                x[2] + y[2] + d * d * x[0] * y[0] / n,
            ]
        }
        ReduceOp::LogSumExp => {
            let m = scalar::max(x[1], y[1]);
            if !m.is_finite() {
                return [n, m, 1.0];
            }
            [n, m, x[2] * (x[1] - m).exp() + y[2] * (y[1] - m).exp()]
        }
    }
}

/// The reduction's value from its accumulator.
pub(super) fn finish_acc(op: ReduceOp, a: [f64; 3], empty: f64) -> f64 {
    let n = a[0];
    if n == 0.0 {
        return empty;
    }
    match op {
        ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min => a[1],
        ReduceOp::Mean => a[1] / n,
        ReduceOp::Count => n,
        ReduceOp::Var { ddof } | ReduceOp::Std { ddof } => {
            if n <= f64::from(ddof) {
                return empty;
            }
            let v = a[2] / (n - f64::from(ddof));
            if matches!(op, ReduceOp::Std { .. }) {
                v.sqrt()
            } else {
                v
            }
        }
        ReduceOp::LogSumExp => {
            if !a[1].is_finite() {
                a[1]
            } else {
                a[1] + a[2].ln()
            }
        }
    }
}
