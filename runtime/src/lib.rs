//! # rlobj runtime
//!
//! Binds a batch to a compiled program and runs a backend on it. The interpreter
//! ([`interp`]) is the semantic oracle; every other backend is checked against it.

#![deny(clippy::unwrap_used)]

use rlobj_ir::{InputId, Layout, SpaceId};

/// A batch bound to a program: the layout of its spaces and, for every value input, its
/// data in the input's own space (token inputs are gathered at valid tokens, in `tok`
/// order). `values[i]` is `None` for id inputs.
#[derive(Clone, Debug)]
pub struct Bound {
    pub layout: Layout,
    pub values: Vec<Option<Vec<f64>>>,
}

/// Everything one evaluation produces. Vectors are in the space of the thing they belong to
/// (`grads` in the input's space, `outputs` in the output node's space).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub loss: Option<f64>,
    pub metrics: Vec<(String, f64)>,
    pub outputs: Vec<(String, SpaceId, Vec<f64>)>,
    pub grads: Vec<(InputId, Vec<f64>)>,
    /// New values of every state, in declaration order.
    pub states: Vec<(String, f64)>,
}

/// An error while running a program on a batch; the message names the tensor or node.
#[derive(Clone, Debug, PartialEq)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for RunError {}

/// A way of executing a (differentiated, optimised) program. Parity tests are written once
/// over this trait and run for every backend.
pub trait Backend {
    fn name(&self) -> &'static str;
    /// `params` and `states` are indexed like `Program::params` / `Program::states`.
    fn evaluate(
        &mut self,
        prog: &rlobj_ir::Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
    ) -> Result<Evaluation, RunError>;
}

pub mod api;
pub mod backends;
pub mod batch;
pub mod bench;
pub mod candle_eager;
pub mod candle_op;
pub mod cli;
pub mod cpu;
pub mod cuda;
pub mod emit;
pub mod golden;
pub mod interp;
pub mod nvrtc;
pub mod opencl;
pub mod output;
pub mod plot;
pub mod rng;
pub mod train;
