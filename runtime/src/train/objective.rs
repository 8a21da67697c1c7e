//! The seam between the training loop and an objective: given one step's rollouts and the
//! current policy's log-probs, produce the loss, `d loss / d logp` and the metrics.
//!
//! [`Compiled`] evaluates a `.obj` file through the library API; [`NativeClip`] is a
//! hand-written PPO-clip (token-mean) used by the tests to check the compiled path.

use super::rollout::RolloutBatch;
use super::TrainError;
use crate::api::Objective;
use crate::backends::backend_by_name;
use crate::batch::HostTensor;
use crate::Backend;
use std::path::Path;

/// What one evaluation gives the training loop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepEval {
    pub loss: f64,
    /// `d loss / d logp`, `[rows * width]`, 0 at padding.
    pub grad_logp: Vec<f32>,
    /// The objective's metrics, in declaration order.
    pub metrics: Vec<(String, f64)>,
}

/// An objective the training loop can drive.
pub trait StepObjective {
    /// A short name for reports (the objective's name).
    fn name(&self) -> String;
    /// Evaluates the objective on `batch` with the current policy's log-probs `logp`
    /// (`[rows * width]`, 0 at padding).
    fn evaluate(&mut self, batch: &RolloutBatch, logp: &[f32]) -> Result<StepEval, TrainError>;
    /// The loss as a candle scalar whose backward is the compiled gradient (the candle op),
    /// with `logp` the policy's `[rows, width]` log-probs; `None` if not supported.
    fn candle_loss(
        &mut self,
        _batch: &RolloutBatch,
        _logp: &candle_core::Tensor,
    ) -> Result<Option<candle_core::Tensor>, TrainError> {
        Ok(None)
    }
}

/// PPO-clip with token-mean aggregation, written out by hand (the test oracle for the
/// compiled path): `loss = mean_tok max(-A r, -A clamp(r, 1-eps, 1+eps))`.
#[derive(Clone, Debug)]
pub struct NativeClip {
    pub eps: f64,
}

impl StepObjective for NativeClip {
    fn name(&self) -> String {
        "native_clip".into()
    }

    fn evaluate(&mut self, batch: &RolloutBatch, logp: &[f32]) -> Result<StepEval, TrainError> {
        let n = batch.mask.iter().filter(|&&m| m).count().max(1) as f64;
        let mut grad = vec![0.0f32; logp.len()];
        let (mut loss, mut clipped) = (0.0, 0.0);
        for i in 0..logp.len() {
            if !batch.mask[i] {
                continue;
            }
            let a = batch.advantages[i] as f64;
            let r = (logp[i] as f64 - batch.old_logp[i] as f64).exp();
            let unclipped = -a * r;
            let c = -a * r.clamp(1.0 - self.eps, 1.0 + self.eps);
            if c > unclipped {
                loss += c;
                clipped += 1.0;
            } else {
                loss += unclipped;
                grad[i] = (-a * r / n) as f32;
            }
        }
        Ok(StepEval {
            loss: loss / n,
            grad_logp: grad,
            metrics: vec![("pg_clipfrac".into(), clipped / n)],
        })
    }
}

/// A `.obj` objective compiled once and evaluated through the library API
/// ([`crate::api::Objective`]) on a chosen backend (the interpreter by default).
pub struct Compiled {
    obj: Objective,
    backend: Box<dyn Backend>,
    /// The Cranelift build of the program, compiled on first use by the candle op.
    cpu: Option<std::sync::Arc<crate::cpu::CpuProgram>>,
}

impl Compiled {
    /// Compiles `path`, applies `--set`-style settings (params, consts, states) and creates
    /// the backend called `backend` (`"interp"`, …).
    pub fn load(path: &Path, sets: &[(String, String)], backend: &str) -> Result<Self, TrainError> {
        let mut obj = Objective::compile(path).map_err(|e| api_err(path, e))?;
        obj.set_many(sets).map_err(|e| api_err(path, e))?;
        Self::from_objective(obj, backend)
    }

    /// Wraps an already compiled objective.
    pub fn from_objective(obj: Objective, backend: &str) -> Result<Self, TrainError> {
        if obj.program().loss.is_none() {
            return Err(TrainError(format!(
                "objective `{}` has no `loss` (it is a transform) and cannot be trained with",
                obj.name()
            )));
        }
        let grad_logp = obj
            .program()
            .grads
            .iter()
            .any(|(i, _)| obj.program().inputs[i.index()].name == "logp");
        if !grad_logp {
            return Err(TrainError(format!(
                "objective `{}` has no `input logp: f32[tok] @grad`: nothing to train the policy with",
                obj.name()
            )));
        }
        let backend = backend_by_name(backend).map_err(|e| TrainError(e.0))?;
        Ok(Compiled {
            obj,
            backend,
            cpu: None,
        })
    }

    /// The compiled objective (to read params or states).
    pub fn objective(&self) -> &Objective {
        &self.obj
    }
}

fn api_err(path: &Path, e: crate::api::Error) -> TrainError {
    TrainError(format!("{}: {e}", path.display()))
}

/// The conventional batch tensors of a step (every name an objective may read; the binder
/// ignores the ones it does not).
/// An empty `logp` leaves the `logp` tensor out.
pub fn batch_tensors(batch: &RolloutBatch, logp: &[f32]) -> Vec<(String, HostTensor)> {
    let (b, t) = (batch.rows, batch.width);
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mask: Vec<f64> = batch
        .mask
        .iter()
        .map(|&m| if m { 1.0 } else { 0.0 })
        .collect();
    // verl's token-level rewards: the sequence reward on the last valid token.
    let mut token_rewards = vec![0.0f64; b * t];
    for r in 0..b {
        if let Some(last) = (0..t).rev().find(|&k| batch.mask[r * t + k]) {
            token_rewards[r * t + last] = batch.reward[r] as f64;
        }
    }
    let mut out: Vec<(String, HostTensor)> = Vec::new();
    if !logp.is_empty() {
        out.push(("logp".into(), HostTensor::float(vec![b, t], f(logp))));
    }
    out.extend([
        (
            "old_logp".into(),
            HostTensor::float(vec![b, t], f(&batch.old_logp)),
        ),
        (
            "ref_logp".into(),
            HostTensor::float(vec![b, t], f(&batch.ref_logp)),
        ),
        ("mask".into(), HostTensor::float(vec![b, t], mask)),
        (
            "advantages".into(),
            HostTensor::float(vec![b, t], f(&batch.advantages)),
        ),
        (
            "token_rewards".into(),
            HostTensor::float(vec![b, t], token_rewards),
        ),
        (
            "reward".into(),
            HostTensor::float(vec![b], f(&batch.reward)),
        ),
        (
            "group".into(),
            HostTensor::int(vec![b], batch.group.clone()),
        ),
        (
            "entropy".into(),
            HostTensor::float(vec![b, t], f(&batch.entropy)),
        ),
        (
            "correct".into(),
            HostTensor::float(
                vec![b],
                batch
                    .reward
                    .iter()
                    .map(|&r| f64::from(u8::from(r >= 1.0)))
                    .collect(),
            ),
        ),
    ]);
    out
}

/// Scatters a `tok`-space vector back to padded `[rows * width]` (0 at padding).
pub fn scatter_tok(layout: &rlobj_ir::Layout, values: &[f64]) -> Vec<f32> {
    let mut out = vec![0.0f32; layout.rows * layout.width];
    for r in 0..layout.rows {
        for k in layout.row_start[r]..layout.row_start[r + 1] {
            if let (Some(&pos), Some(&v)) = (layout.tok_pos.get(k), values.get(k)) {
                out[r * layout.width + pos as usize] = v as f32;
            }
        }
    }
    out
}

impl StepObjective for Compiled {
    fn name(&self) -> String {
        self.obj.name().to_string()
    }

    fn evaluate(&mut self, batch: &RolloutBatch, logp: &[f32]) -> Result<StepEval, TrainError> {
        let name = self.name();
        let err = |e: crate::api::Error| TrainError(format!("objective `{name}`: {e}"));
        let tensors = batch_tensors(batch, logp);
        let bound = self.obj.bind(&tensors).map_err(err)?;
        let res = self
            .obj
            .evaluate(self.backend.as_mut(), &bound)
            .map_err(err)?;
        let prog = &res.program;
        let loss = res
            .eval
            .loss
            .ok_or_else(|| TrainError(format!("objective `{name}` returned no loss")))?;
        let grad = res
            .eval
            .grads
            .iter()
            .find(|(i, _)| prog.inputs[i.index()].name == "logp")
            .ok_or_else(|| {
                TrainError(format!(
                    "objective `{name}` returned no gradient for `logp`"
                ))
            })?;
        Ok(StepEval {
            loss,
            grad_logp: scatter_tok(&res.layout, &grad.1),
            metrics: res.eval.metrics.clone(),
        })
    }

    fn candle_loss(
        &mut self,
        batch: &RolloutBatch,
        logp: &candle_core::Tensor,
    ) -> Result<Option<candle_core::Tensor>, TrainError> {
        let cpu = match &self.cpu {
            Some(c) => c.clone(),
            None => {
                let c = std::sync::Arc::new(
                    crate::cpu::CpuProgram::compile(self.obj.program(), false)
                        .map_err(|e| TrainError(e.0))?,
                );
                self.cpu = Some(c.clone());
                c
            }
        };
        let dev = candle_core::Device::Cpu;
        let mut owned: Vec<(String, candle_core::Tensor)> = Vec::new();
        for (name, t) in batch_tensors(batch, &[]) {
            if name == "logp" {
                continue;
            }
            let tensor = match t.data {
                crate::batch::HostData::Int(v) => {
                    candle_core::Tensor::from_vec(v, t.shape.as_slice(), &dev)?
                }
                crate::batch::HostData::Float(v) => {
                    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
                    candle_core::Tensor::from_vec(v, t.shape.as_slice(), &dev)?
                }
                crate::batch::HostData::Bool(v) => {
                    let v: Vec<f32> = v.into_iter().map(|x| f32::from(u8::from(x))).collect();
                    candle_core::Tensor::from_vec(v, t.shape.as_slice(), &dev)?
                }
            };
            owned.push((name, tensor));
        }
        let mut named: Vec<(&str, &candle_core::Tensor)> =
            owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
        named.push(("logp", logp));
        let loss =
            crate::candle_op::objective_loss(cpu, &named, self.obj.params(), self.obj.states())
                .map_err(|e| TrainError(format!("objective `{}`: {e}", self.obj.name())))?;
        Ok(Some(loss))
    }
}
