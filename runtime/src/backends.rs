//! The registry of backends by CLI name. A backend is added by one line in [`REGISTRY`];
//! `--backend` and the error for an unknown name both read from it.

use crate::{Backend, RunError};

/// Creates a backend, or says why it cannot run here (no device, no library).
pub type Factory = fn() -> Result<Box<dyn Backend>, RunError>;

/// Every backend the CLI knows, by name, with a one-line description for `--help`.
pub const REGISTRY: &[(&str, &str, Factory)] = &[
    (
        "interp",
        "the reference interpreter (f64), the semantic oracle",
        interp,
    ),
    (
        "opencl",
        "the CUDA kernel text behind an OpenCL prelude (any OpenCL device; PoCL on CPU)",
        crate::opencl::factory,
    ),
    (
        "cuda",
        "fused CUDA kernels via NVRTC on a GPU (needs the `cuda` cargo feature)",
        crate::cuda::factory,
    ),
    (
        "cpu",
        "Cranelift JIT of the kernel plan, rows across threads",
        cpu,
    ),
    (
        "candle",
        "candle-eager baseline: CPU tensor ops + candle autograd",
        candle,
    ),
];

fn cpu() -> Result<Box<dyn Backend>, RunError> {
    Ok(Box::new(crate::cpu::CpuBackend::new()))
}

fn candle() -> Result<Box<dyn Backend>, RunError> {
    Ok(Box::new(crate::candle_eager::CandleEager::new()))
}

fn interp() -> Result<Box<dyn Backend>, RunError> {
    Ok(Box::new(crate::interp::Interpreter::new()))
}

/// The names of the registered backends.
pub fn available() -> Vec<&'static str> {
    REGISTRY.iter().map(|(n, _, _)| *n).collect()
}

/// Creates the backend called `name`.
pub fn backend_by_name(name: &str) -> Result<Box<dyn Backend>, RunError> {
    match REGISTRY.iter().find(|(n, _, _)| *n == name) {
        Some((_, _, make)) => make(),
        None => Err(RunError(format!(
            "unknown backend `{name}`; available: {}",
            available().join(", ")
        ))),
    }
}
