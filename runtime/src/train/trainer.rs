//! The training loop: sample rollouts, evaluate the objective, backpropagate its gradient
//! through the policy, step the optimiser.
//!
//! The objective gives `g = d loss / d logp` for the current log-probs. Backpropagating the
//! surrogate `sum(logp * g)` (with `g` a constant) through the policy yields exactly
//! `d loss / d θ`, whatever the objective is: the chain rule only needs `g`.

use super::objective::StepObjective;
use super::policy::{entropy_and_kl, Policy, PolicyConfig};
use super::rollout::{self, RolloutBatch};
use super::task::{AdditionTask, Rng};
use super::{TrainConfig, TrainError};
use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::time::Instant;

/// What happened at one training step (means over the step's rollouts and updates).
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    pub step: usize,
    /// Mean reward of the step's rollouts (sampled before the update).
    pub reward: f64,
    /// Fraction of rollouts that are exactly right.
    pub solved: f64,
    /// The objective's loss (mean over the step's updates).
    pub loss: f64,
    /// L2 norm of `d loss / d θ` over all policy parameters (mean over updates).
    pub grad_norm: f64,
    /// KL(policy ‖ reference) per valid token, exact over the vocabulary.
    pub kl_ref: f64,
    /// Policy entropy per valid token (nats) — the entropy proxy of the report.
    pub entropy: f64,
    /// Mean response length in tokens.
    pub response_len: f64,
    /// The objective's metrics (mean over updates).
    pub metrics: Vec<(String, f64)>,
}

impl StepStats {
    /// The clip fraction, if the objective reports one (the first metric whose name contains
    /// `clip` and `frac`).
    pub fn clip_fraction(&self) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n.contains("clip") && n.contains("frac"))
            .map(|(_, v)| *v)
    }
}

/// The result of a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainReport {
    pub objective: String,
    pub steps: Vec<StepStats>,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
}

impl TrainReport {
    fn window_mean(&self, from_end: bool, k: usize) -> f64 {
        let k = k.clamp(1, self.steps.len().max(1));
        let it: Vec<f64> = if from_end {
            self.steps.iter().rev().take(k).map(|s| s.reward).collect()
        } else {
            self.steps.iter().take(k).map(|s| s.reward).collect()
        };
        if it.is_empty() {
            0.0
        } else {
            it.iter().sum::<f64>() / it.len() as f64
        }
    }
    /// Mean reward over the first `max(1, steps/5)` steps.
    pub fn reward_start(&self) -> f64 {
        self.window_mean(false, self.steps.len() / 5)
    }
    /// Mean reward over the last `max(1, steps/5)` steps.
    pub fn reward_end(&self) -> f64 {
        self.window_mean(true, self.steps.len() / 5)
    }
}

/// One line of progress for a step.
pub fn format_step(s: &StepStats) -> String {
    let clip = s
        .clip_fraction()
        .map(|c| format!("  clipfrac {c:.3}"))
        .unwrap_or_default();
    format!(
        "step {:>4}  reward {:.3}  solved {:.3}  loss {:+.4}  |grad| {:.3}  kl {:.4}  entropy {:.3}{clip}",
        s.step, s.reward, s.solved, s.loss, s.grad_norm, s.kl_ref, s.entropy
    )
}

fn masked(values: Vec<Vec<f32>>, mask: &[bool]) -> Vec<f32> {
    values
        .into_iter()
        .flatten()
        .zip(mask)
        .map(|(x, &m)| if m { x } else { 0.0 })
        .collect()
}

fn grad_norm(grads: &candle_core::backprop::GradStore, vars: &[Var]) -> Result<f64, TrainError> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(sq.sqrt())
}

/// The policy, reference and optimiser of a run, initialised from `cfg.seed`.
struct Learner {
    policy: Policy,
    reference: Policy,
    opt: AdamW,
    rng: Rng,
}

impl Learner {
    fn new(cfg: &TrainConfig) -> Result<Self, TrainError> {
        let mut rng = Rng::new(cfg.seed);
        let pcfg = PolicyConfig {
            prompt_vocab: cfg.task.prompt_vocab(),
            max_len: cfg.task.max_len,
            embed: cfg.embed,
            hidden: cfg.hidden,
        };
        let policy = Policy::new(pcfg, &mut rng)?;
        let reference = policy.frozen_copy()?;
        let params = ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        };
        let opt = AdamW::new(policy.vars(), params)?;
        Ok(Learner {
            policy,
            reference,
            opt,
            rng,
        })
    }

    fn step(
        &mut self,
        step: usize,
        cfg: &TrainConfig,
        task: &AdditionTask,
        objective: &mut dyn StepObjective,
    ) -> Result<StepStats, TrainError> {
        let batch: RolloutBatch = rollout::collect(
            task,
            &self.policy,
            &self.reference,
            cfg.prompts_per_step,
            cfg.group_size,
            &mut self.rng,
        )?;
        let rows = batch.rows as f64;
        let reward = batch.reward.iter().map(|&r| r as f64).sum::<f64>() / rows;
        let solved = batch.reward.iter().filter(|&&r| r >= 1.0).count() as f64 / rows;
        let response_len = batch.mask.iter().filter(|&&m| m).count() as f64 / rows;
        let (mut loss, mut gnorm) = (0.0, 0.0);
        let mut metrics: Vec<(String, f64)> = Vec::new();
        let (mut entropy, mut kl_ref) = (0.0, 0.0);
        let updates = cfg.updates_per_step.max(1);
        for u in 0..updates {
            let scored = self.policy.score(&batch.prompts, &batch.tokens)?;
            if u == 0 {
                let ref_dist = self
                    .reference
                    .score(&batch.prompts, &batch.tokens)?
                    .log_dist;
                (entropy, kl_ref) = entropy_and_kl(&scored.log_dist, &ref_dist, &batch.mask)?;
            }
            let logp = masked(scored.logp.detach().to_vec2::<f32>()?, &batch.mask);
            let ev = objective.evaluate(&batch, &logp)?;
            if !ev.loss.is_finite() || ev.grad_logp.iter().any(|g| !g.is_finite()) {
                return Err(TrainError(format!(
                    "objective `{}` produced a non-finite loss or gradient at step {step}",
                    objective.name()
                )));
            }
            let grads = match cfg.candle_op {
                true => match objective.candle_loss(&batch, &scored.logp)? {
                    Some(loss) => loss.backward()?,
                    None => {
                        return Err(TrainError(format!(
                            "objective `{}` does not support the candle op",
                            objective.name()
                        )))
                    }
                },
                false => {
                    let dev = candle_core::Device::Cpu;
                    let g = Tensor::from_vec(ev.grad_logp, (batch.rows, batch.width), &dev)?;
                    (&scored.logp * &g)?.sum_all()?.backward()?
                }
            };
            gnorm += grad_norm(&grads, &self.policy.vars())?;
            self.opt.step(&grads)?;
            loss += ev.loss;
            for (name, v) in ev.metrics {
                match metrics.iter_mut().find(|(n, _)| *n == name) {
                    Some(m) => m.1 += v,
                    None => metrics.push((name, v)),
                }
            }
        }
        let k = updates as f64;
        for m in &mut metrics {
            m.1 /= k;
        }
        Ok(StepStats {
            step,
            reward,
            solved,
            loss: loss / k,
            grad_norm: gnorm / k,
            kl_ref,
            entropy,
            response_len,
            metrics,
        })
    }
}

/// Trains a fresh policy (from `cfg.seed`) with `objective` for `cfg.steps` steps
/// (printing each step to stdout when `cfg.verbose`).
pub fn train_with(
    objective: &mut dyn StepObjective,
    cfg: &TrainConfig,
) -> Result<TrainReport, TrainError> {
    train_observed(objective, cfg, &mut |_| {})
}

/// [`train_with`], calling `on_step` after every step.
pub fn train_observed(
    objective: &mut dyn StepObjective,
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&StepStats),
) -> Result<TrainReport, TrainError> {
    let start = Instant::now();
    let mut learner = Learner::new(cfg)?;
    let mut steps = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let s = learner.step(step, cfg, &cfg.task, objective)?;
        if cfg.verbose {
            println!("{}", format_step(&s));
        }
        on_step(&s);
        steps.push(s);
    }
    Ok(TrainReport {
        objective: objective.name(),
        steps,
        seconds: start.elapsed().as_secs_f64(),
    })
}
