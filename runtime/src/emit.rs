//! `rlobj compile --emit plan|cuda|ptx|cubin|opencl`: the kernel artifacts of a program as
//! backends receive it (differentiated, optimised). The CLI calls [`emit`] and writes the
//! bytes to stdout (text for every kind except `cubin`).

use crate::nvrtc::{self, Output};
use crate::RunError;
use rlobj_back::cstyle;
use rlobj_ir::schedule;
use rlobj_ir::Program;

/// The `--emit` kinds this module handles.
pub const KINDS: &[&str] = &["plan", "cuda", "ptx", "cubin", "opencl"];

/// Default GPU architecture for `ptx`/`cubin` (`sm_80`: A100 and newer load it).
pub const DEFAULT_ARCH: u32 = 80;

/// Produces one artifact. `arch` is the `XX` of `sm_XX` (PTX targets `compute_XX`).
pub fn emit(prog: &Program, kind: &str, arch: u32) -> Result<Vec<u8>, RunError> {
    let plan = schedule::schedule(prog).map_err(|e| RunError(format!("schedule: {e}")))?;
    let cuda = || cstyle::write_cuda(prog, &plan).map_err(|e| RunError(e.to_string()));
    Ok(match kind {
        "plan" => plan.render(prog).into_bytes(),
        "cuda" => cuda()?.text.into_bytes(),
        "opencl" => cstyle::write_opencl(prog, &plan)
            .map_err(|e| RunError(e.to_string()))?
            .text
            .into_bytes(),
        "ptx" => {
            nvrtc::compile(&cuda()?, arch, Output::Ptx)
                .map_err(|e| RunError(e.to_string()))?
                .bytes
        }
        "cubin" => {
            nvrtc::compile(&cuda()?, arch, Output::Cubin)
                .map_err(|e| RunError(e.to_string()))?
                .bytes
        }
        other => {
            return Err(RunError(format!(
                "unknown --emit kind `{other}` for kernels; expected one of {}",
                KINDS.join(", ")
            )))
        }
    })
}
