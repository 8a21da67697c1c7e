//! # Training a small policy with a compiled objective
//!
//! The end-to-end story of rlobj: a tiny autoregressive policy on candle (CPU) learns
//! single-digit addition ([`task`]) from a verifiable reward, with the loss and its gradient
//! coming from a `.obj` objective.
//!
//! * [`task`] — the prompts, the reward and the run's deterministic random generator.
//! * [`policy`] — the policy network, sampling and teacher-forced scoring.
//! * [`rollout`] — a step's rollouts as the conventional batch tensors (`logp`, `old_logp`,
//!   `ref_logp`, `mask`, `reward`, `group`, `advantages`), with GRPO advantages.
//! * [`objective`] — the seam between the loop and an objective ([`StepObjective`]).
//! * [`trainer`] — the loop ([`train_with`]); [`train`] runs it for a `.obj` file.
//! * [`compare`] — several objectives on the same seeds, written up as an SVG and Markdown.
//! * [`commands`] — `rlobj train`, `compare`, `plot` and `golden` as functions the CLI calls.

pub mod commands;
pub mod compare;
pub mod objective;
pub mod policy;
pub mod rollout;
pub mod task;
pub mod trainer;

pub use compare::{compare, CompareReport};
pub use objective::{Compiled, NativeClip, StepEval, StepObjective};
pub use task::AdditionTask;
pub use trainer::{format_step, train_observed, train_with, StepStats, TrainReport};

use std::path::Path;

/// A training error (from candle, the objective or the batch), with a message for the user.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainError(pub String);

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TrainError {}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError(format!("candle: {e}"))
    }
}

/// Settings of a training run. [`TrainConfig::new`] gives the defaults used by `rlobj train`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub steps: usize,
    pub seed: u64,
    /// Distinct prompts per step.
    pub prompts_per_step: usize,
    /// Samples per prompt (`G`).
    pub group_size: usize,
    /// Optimiser updates on each step's rollouts (the first is on-policy, later ones see
    /// ratios ≠ 1, so clipping matters).
    pub updates_per_step: usize,
    /// AdamW learning rate.
    pub lr: f64,
    pub task: AdditionTask,
    /// Embedding width of each feature slot of the policy.
    pub embed: usize,
    /// Hidden width of the policy MLP.
    pub hidden: usize,
    /// Settings of the objective, as `--set name=value` (params, consts, states).
    pub sets: Vec<(String, String)>,
    /// The backend that evaluates the objective (`interp`, or any registered backend).
    pub backend: String,
    /// Print one line per step to stdout.
    pub verbose: bool,
    /// Backpropagate through the candle op (`loss.backward()` on the compiled Cranelift
    /// kernel) instead of the surrogate `sum(logp * d loss / d logp)`; metrics still come
    /// from `backend`.
    pub candle_op: bool,
}

impl TrainConfig {
    pub fn new(steps: usize, seed: u64) -> Self {
        TrainConfig {
            steps,
            seed,
            prompts_per_step: 16,
            group_size: 8,
            updates_per_step: 2,
            lr: 0.003,
            task: AdditionTask::default(),
            embed: 16,
            hidden: 64,
            sets: Vec::new(),
            backend: "interp".into(),
            verbose: false,
            candle_op: false,
        }
    }
}

/// Trains with the objective in `objective_path` (compiled once; evaluated by the
/// interpreter-backed library API) and returns the per-step statistics.
pub fn train(objective_path: &Path, cfg: &TrainConfig) -> Result<TrainReport, TrainError> {
    let mut obj = Compiled::load(objective_path, &cfg.sets, &cfg.backend)?;
    train_with(&mut obj, cfg)
}
