//! The objective as a candle op: `loss = objective_loss(..)` is a scalar tensor whose
//! backward is the compiled gradient, so `loss.backward()` works in a candle training loop.
//!
//! The op is a [`CustomOp1`] on the `@grad` input (the policy log-probs); the other inputs
//! are bound once when the op is built (the custom-op arity is three at most, and they need
//! no gradient). The CPU path runs the Cranelift backend; one evaluation yields both the
//! loss and the gradient, so `bwd` only scatters the cached gradient back to `[B, T]`.
//! With the `cuda` feature, tensors on a CUDA device go through the CUDA launcher.

use crate::cpu::CpuProgram;
use crate::{Bound, RunError};
use candle_core::{CpuStorage, CustomOp1, Layout as CLayout, Shape, Tensor};
use rlobj_ir::{InputId, InputKind, SpaceId};
use std::sync::{Arc, Mutex};

/// The op: the compiled program, the bound batch and the cached gradient.
pub struct ObjectiveOp {
    cpu: Arc<CpuProgram>,
    bound: Bound,
    params: Vec<f64>,
    states: Vec<f64>,
    grad_input: InputId,
    grad: Mutex<Option<Vec<f64>>>,
}

fn cerr(e: RunError) -> candle_core::Error {
    candle_core::Error::Msg(e.0)
}

impl ObjectiveOp {
    fn evaluate(&self) -> Result<(f64, Vec<f64>), RunError> {
        let prog = self.cpu.program();
        let tok32: Vec<Option<Vec<f32>>> = prog
            .inputs
            .iter()
            .enumerate()
            .map(|(k, inp)| match &inp.kind {
                InputKind::Value { space, .. } if *space == SpaceId::TOK => self
                    .bound
                    .values
                    .get(k)
                    .and_then(|v| v.as_ref())
                    .map(|v| v.iter().map(|&x| x as f32).collect()),
                _ => None,
            })
            .collect();
        let tok: Vec<Option<&[f32]>> = tok32.iter().map(|v| v.as_deref()).collect();
        let other: Vec<Option<&[f64]>> = self.bound.values.iter().map(|v| v.as_deref()).collect();
        let ev = self.cpu.run(
            &self.bound.layout,
            &tok,
            &other,
            &self.params,
            &self.states,
            None,
        )?;
        let loss = ev
            .loss
            .ok_or_else(|| RunError("objective has no loss".into()))?;
        let grad = ev
            .grads
            .into_iter()
            .find(|(i, _)| *i == self.grad_input)
            .map(|(_, g)| g)
            .ok_or_else(|| RunError("objective has no gradient for its @grad input".into()))?;
        Ok((loss, grad))
    }

    /// The cached gradient scattered to the padded `[B, T]` layout (zeros at padding).
    fn padded_grad(&self) -> Result<Vec<f32>, RunError> {
        let cached = self
            .grad
            .lock()
            .map_err(|_| RunError("gradient cache poisoned".into()))?
            .clone();
        let g = match cached {
            Some(g) => g,
            None => self.evaluate()?.1,
        };
        let l = &self.bound.layout;
        let mut out = vec![0f32; l.rows * l.width];
        for r in 0..l.rows {
            for k in l.row_start[r]..l.row_start[r + 1] {
                out[r * l.width + l.tok_pos[k] as usize] = g[k] as f32;
            }
        }
        Ok(out)
    }
}

impl CustomOp1 for ObjectiveOp {
    fn name(&self) -> &'static str {
        "rlobj-objective"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &CLayout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (loss, grad) = self.evaluate().map_err(cerr)?;
        if let Ok(mut g) = self.grad.lock() {
            *g = Some(grad);
        }
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = self.padded_grad().map_err(cerr)?;
        let g = Tensor::from_vec(g, arg.shape(), arg.device())?.to_dtype(arg.dtype())?;
        Ok(Some(g.broadcast_mul(grad_res)?))
    }
}

/// The loss of `cpu`'s objective on the named tensors, as a candle scalar that
/// backpropagates into the tensor bound to the objective's (single) `@grad` input.
pub fn objective_loss(
    cpu: Arc<CpuProgram>,
    tensors: &[(&str, &Tensor)],
    params: &[f64],
    states: &[f64],
) -> Result<Tensor, RunError> {
    let prog = cpu.program();
    let grads: Vec<InputId> = prog.grads.iter().map(|(i, _)| *i).collect();
    let [grad_input] = grads[..] else {
        return Err(RunError(format!(
            "candle op: objective `{}` has {} @grad inputs; the op supports exactly one",
            prog.name,
            grads.len()
        )));
    };
    let gname = &prog.inputs[grad_input.index()].name;
    let arg = tensors
        .iter()
        .find(|(n, _)| n == gname)
        .map(|(_, t)| *t)
        .ok_or_else(|| RunError(format!("tensor `{gname}`: missing (it is the @grad input)")))?;
    let bound = crate::batch::bind_tensors(prog, tensors)?;
    #[cfg(feature = "cuda")]
    if arg.device().is_cuda() {
        return Err(RunError(
            "candle op: the CUDA path is provided by runtime/src/cuda.rs".into(),
        ));
    }
    let op = ObjectiveOp {
        cpu: cpu.clone(),
        bound,
        params: params.to_vec(),
        states: states.to_vec(),
        grad_input,
        grad: Mutex::new(None),
    };
    arg.apply_op1(op)
        .map_err(|e| RunError(format!("candle op: {e}")))
}
