//! The objective as a candle op: `loss = objective_loss(..)` is a scalar tensor whose
//! backward is the compiled gradient, so `loss.backward()` works in a candle training loop
//! and fills the gradient of **every** `@grad` input (a policy and a value head, say).
//!
//! One evaluation of the compiled program yields the loss and all gradients `G_i`: on CPU
//! tensors the Cranelift backend (inputs copied to the host); on CUDA tensors (feature
//! `cuda`) the plan's NVRTC kernels, launched on candle's device with the tensors' storage
//! as kernel arguments, so token data never leaves the GPU and `G_i` are device tensors. The returned tensor is `loss + Σ_i (S - S.detach())` with
//! `S = Σ_i Σ where(valid_i, x_i, 0) · G_i`: its value is exactly `loss` (the bracket is 0)
//! and its gradient with respect to `x_i` is exactly `G_i` (zero at padding, whatever the
//! padding holds). The backward pass is therefore candle's own `mul`/`sum` backward: the
//! compiled gradient scaled by the incoming gradient, on the tensors' device. (A candle
//! `CustomOp` takes at most three tensors; this form takes any number of inputs and any
//! number of `@grad` inputs.)

use crate::cpu::CpuProgram;
use crate::{Bound, RunError};
use candle_core::{DType, Tensor};
use rlobj_ir::{InputId, InputKind, SpaceId};
use std::sync::Arc;

fn cerr(e: candle_core::Error) -> RunError {
    RunError(format!("candle op: {e}"))
}

/// The gradient of every `@grad` input, dense in its space.
type Grads = Vec<(InputId, Vec<f64>)>;

/// Loss and the gradient of every `@grad` input (dense, in each input's space).
fn evaluate(
    cpu: &CpuProgram,
    bound: &Bound,
    params: &[f64],
    states: &[f64],
) -> Result<(f64, Grads), RunError> {
    let prog = cpu.program();
    let tok32 = crate::cpu::token_inputs_f32(prog, bound);
    let tok: Vec<Option<&[f32]>> = tok32.iter().map(|v| v.as_deref()).collect();
    let other: Vec<Option<&[f64]>> = bound.values.iter().map(|v| v.as_deref()).collect();
    let ev = cpu.run(&bound.layout, &tok, &other, params, states, None)?;
    let loss = ev
        .loss
        .ok_or_else(|| RunError(format!("objective `{}` has no loss", prog.name)))?;
    Ok((loss, ev.grads))
}

/// The gradient of input `i` in a list of `(input, gradient)`.
fn gradient_of<G>(grads: &[(InputId, G)], i: InputId) -> Result<&G, RunError> {
    grads
        .iter()
        .find(|(k, _)| *k == i)
        .map(|(_, g)| g)
        .ok_or_else(|| RunError(format!("candle op: no gradient for input {}", i.0)))
}

/// The tensor shape an `@grad` input must have, or why it cannot be one.
fn expected_shape(space: SpaceId, rows: usize, width: usize) -> Option<Vec<usize>> {
    match space {
        SpaceId::TOK => Some(vec![rows, width]),
        SpaceId::SEQ => Some(vec![rows]),
        SpaceId::BATCH => Some(vec![]),
        _ => None,
    }
}

/// The loss of `cpu`'s objective on the named tensors, as a candle scalar that
/// backpropagates into the tensors bound to each of the objective's `@grad` inputs.
///
/// Errors name the tensor: a missing `@grad` tensor, a shape that does not match the batch
/// (`[B, T]` for token inputs, `[B]` or `[B, 1]` for row inputs, `[]` or `[1]` for batch
/// inputs), a non-float `@grad` tensor, or an objective without `@grad` inputs.
pub fn objective_loss(
    cpu: Arc<CpuProgram>,
    tensors: &[(&str, &Tensor)],
    params: &[f64],
    states: &[f64],
) -> Result<Tensor, RunError> {
    let prog = cpu.program();
    if prog.grads.is_empty() {
        return Err(RunError(format!(
            "candle op: objective `{}` has no @grad input, so its loss has no gradient",
            prog.name
        )));
    }
    let mut args = Vec::new();
    for (i, _) in &prog.grads {
        let inp = &prog.inputs[i.index()];
        let InputKind::Value { space, .. } = inp.kind else {
            return Err(RunError(format!(
                "candle op: `{}` is not a value",
                inp.name
            )));
        };
        let t = tensors
            .iter()
            .find(|(n, _)| *n == inp.name)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                RunError(format!(
                    "tensor `{}`: missing (it is a @grad input of `{}`)",
                    inp.name, prog.name
                ))
            })?;
        if !t.dtype().is_float() {
            return Err(RunError(format!(
                "tensor `{}`: a @grad input must be a float tensor, found {:?}",
                inp.name,
                t.dtype()
            )));
        }
        args.push((*i, space, t));
    }
    let dev = args
        .first()
        .map(|(_, _, t)| t.device().clone())
        .ok_or_else(|| RunError("candle op: no @grad input".into()))?;
    let (loss_t, gts, layout) = if dev.is_cuda() {
        on_cuda(prog, tensors, params, states)?
    } else {
        let bound = crate::batch::bind_tensors(prog, tensors)?;
        let (loss, grads) = evaluate(&cpu, &bound, params, states)?;
        let loss_t = Tensor::new(loss as f32, &dev).map_err(cerr)?;
        let mut gts = Vec::new();
        for (i, space, t) in &args {
            let g = gradient_of(&grads, *i)?;
            let l = &bound.layout;
            let dense: Vec<f32> = if *space == SpaceId::TOK {
                let mut out = vec![0f32; l.rows * l.width];
                for r in 0..l.rows {
                    let span = l.row_start[r]..l.row_start[r + 1];
                    for (&gk, &pos) in g[span.clone()].iter().zip(&l.tok_pos[span]) {
                        out[r * l.width + pos as usize] = gk as f32;
                    }
                }
                out
            } else {
                g.iter().map(|&x| x as f32).collect()
            };
            gts.push((*i, Tensor::from_vec(dense, t.shape(), &dev).map_err(cerr)?));
        }
        (loss_t, gts, bound.layout)
    };
    let l = &layout;
    for (i, space, t) in &args {
        let name = &prog.inputs[i.index()].name;
        let want = expected_shape(*space, l.rows, l.width).ok_or_else(|| {
            RunError(format!(
                "candle op: @grad input `{name}` lives in space `{}`; the op supports tok, seq and batch inputs",
                prog.spaces[space.index()].name
            ))
        })?;
        let dims = t.dims();
        let ok = dims == want.as_slice()
            || (*space == SpaceId::SEQ && dims == [l.rows, 1])
            || (*space == SpaceId::BATCH && dims == [1]);
        if !ok {
            return Err(RunError(format!(
                "tensor `{name}`: expected shape {want:?} for a {} input of this batch (B = {}, T = {}), found {dims:?}",
                prog.spaces[space.index()].name,
                l.rows,
                l.width
            )));
        }
    }
    let mut surrogate: Option<Tensor> = None;
    for (i, space, t) in &args {
        let gt = gradient_of(&gts, *i)?
            .reshape(t.shape())
            .and_then(|g| g.to_dtype(t.dtype()))
            .map_err(cerr)?;
        let x = if *space == SpaceId::TOK {
            let mut valid = vec![0u8; l.rows * l.width];
            for r in 0..l.rows {
                for &pos in &l.tok_pos[l.row_start[r]..l.row_start[r + 1]] {
                    valid[r * l.width + pos as usize] = 1;
                }
            }
            let m = Tensor::from_vec(valid, t.shape(), &dev).map_err(cerr)?;
            m.where_cond(t, &t.zeros_like().map_err(cerr)?)
                .map_err(cerr)?
        } else {
            (*t).clone()
        };
        let s = (x * gt)
            .and_then(|p| p.sum_all())
            .and_then(|s| s.to_dtype(DType::F32))
            .map_err(cerr)?;
        surrogate = Some(match surrogate {
            Some(acc) => (acc + s).map_err(cerr)?,
            None => s,
        });
    }
    match surrogate {
        Some(s) => (s.clone() - s.detach())
            .and_then(|zero| loss_t + zero)
            .map_err(cerr),
        None => Ok(loss_t),
    }
}

/// Loss, gradient tensors and the batch layout.
type DeviceResult = (Tensor, Vec<(InputId, Tensor)>, rlobj_ir::Layout);

/// Loss, gradients and layout from the CUDA kernels (feature `cuda`).
#[cfg(feature = "cuda")]
fn on_cuda(
    prog: &rlobj_ir::Program,
    tensors: &[(&str, &Tensor)],
    params: &[f64],
    states: &[f64],
) -> Result<DeviceResult, RunError> {
    let de = crate::cuda::evaluate_tensors(prog, tensors, params, states)?;
    Ok((de.loss, de.grads, de.layout))
}

/// Without the `cuda` feature a CUDA tensor cannot occur, but say so clearly.
#[cfg(not(feature = "cuda"))]
fn on_cuda(
    _prog: &rlobj_ir::Program,
    _tensors: &[(&str, &Tensor)],
    _params: &[f64],
    _states: &[f64],
) -> Result<DeviceResult, RunError> {
    Err(RunError(
        "candle op: CUDA tensors need a build with the `cuda` feature (docs/cuda.md)".into(),
    ))
}
