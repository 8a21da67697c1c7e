//! `--backend cuda`: the plan's kernels compiled by NVRTC (PTX for `compute_80`, which the
//! driver JIT-compiles for any newer GPU) and launched on candle's CUDA device through
//! candle's re-export of cudarc. Only built with the `cuda` cargo feature; without it the
//! registry entry says how to get it. Launch tests: `docs/cuda.md`.

use crate::{Backend, RunError};

/// Registry entry for `--backend cuda`.
pub fn factory() -> Result<Box<dyn Backend>, RunError> {
    #[cfg(feature = "cuda")]
    {
        Ok(Box::new(imp::CudaBackend::new(0)?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(RunError(
            "backend `cuda` is not in this build: rebuild with `cargo build --features cuda` \
             (needs nvcc at build time, see docs/cuda.md); `--backend opencl` runs the same \
             kernels on any OpenCL device"
                .into(),
        ))
    }
}

#[cfg(feature = "cuda")]
pub use imp::CudaBackend;

#[cfg(feature = "cuda")]
mod imp {
    use crate::nvrtc::{self, Output};
    use crate::opencl::{extract, host_batch};
    use crate::{Backend, Bound, Evaluation, RunError};
    use candle_core::backend::BackendDevice;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::CudaDevice;
    use rlobj_back::cstyle;
    use rlobj_ir::schedule;
    use rlobj_ir::Program;
    use sha2::{Digest, Sha256};

    /// PTX target: loads on sm_80 (A100) and every newer GPU.
    const PTX_ARCH: u32 = 80;
    /// Row phases launch at most this many blocks (rows are grid-strided).
    const MAX_GROUPS: usize = 65_535;

    fn cerr(what: &str, e: impl std::fmt::Display) -> RunError {
        RunError(format!("cuda: {what}: {e}"))
    }

    /// One CUDA device (candle's), with kernels cached per module by candle.
    pub struct CudaBackend {
        dev: CudaDevice,
    }

    impl CudaBackend {
        /// Opens GPU `ordinal`; a clean error (not a panic) without a driver.
        pub fn new(ordinal: usize) -> Result<Self, RunError> {
            // With the `cuda` feature libcuda is linked at build time (candle enables cudarc's
            // `dynamic-linking`), so a machine without a driver fails here with an error from
            // `CudaDevice::new`, not later.
            let dev = CudaDevice::new(ordinal).map_err(|e| cerr("opening the device", e))?;
            Ok(CudaBackend { dev })
        }

        /// The candle device kernels run on.
        pub fn device(&self) -> &CudaDevice {
            &self.dev
        }
    }

    impl Backend for CudaBackend {
        fn name(&self) -> &'static str {
            "cuda"
        }

        fn evaluate(
            &mut self,
            prog: &Program,
            bound: &Bound,
            params: &[f64],
            states: &[f64],
        ) -> Result<Evaluation, RunError> {
            let plan = schedule::schedule(prog).map_err(|e| RunError(format!("schedule: {e}")))?;
            let src = cstyle::write_cuda(prog, &plan).map_err(|e| RunError(e.to_string()))?;
            let ptx = nvrtc::compile(&src, PTX_ARCH, Output::Ptx)
                .map_err(|e| RunError(e.to_string()))?
                .ptx();
            let digest = Sha256::digest(src.text.as_bytes());
            let module: String = format!(
                "rlobj_{}",
                digest
                    .iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let hb = host_batch(prog, &plan, bound, params, states)?;
            let dev = &self.dev;
            let mut ins = Vec::new();
            for d in hb.inputs.iter().flatten() {
                ins.push(
                    dev.clone_htod(d.as_slice())
                        .map_err(|e| cerr("upload", e))?,
                );
            }
            let scal = dev
                .clone_htod(hb.scal.as_slice())
                .map_err(|e| cerr("upload", e))?;
            let idx = dev
                .clone_htod(hb.arena.data.as_slice())
                .map_err(|e| cerr("upload", e))?;
            let mut work = dev
                .clone_htod(vec![f32::NAN; hb.arena.work_len].as_slice())
                .map_err(|e| cerr("upload", e))?;
            let groups = bound.layout.rows.clamp(1, MAX_GROUPS) as u32;
            for k in &src.kernels {
                let func = dev
                    .get_or_load_custom_func(&k.name, &module, &ptx)
                    .map_err(|e| cerr(&k.name, e))?;
                let mut b = func.builder();
                for s in &ins {
                    b.arg(s);
                }
                b.arg(&scal);
                b.arg(&idx);
                b.arg(&mut work);
                let cfg = LaunchConfig {
                    grid_dim: (if k.row { groups } else { 1 }, 1, 1),
                    block_dim: (src.block, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: arguments match the kernel signature written by the C-style
                // writer (inputs, scal, idx, work); buffers live until the copy below.
                unsafe { b.launch(cfg) }.map_err(|e| cerr(&k.name, e))?;
            }
            let host: Vec<f32> = dev.clone_dtoh(&work).map_err(|e| cerr("download", e))?;
            extract(prog, &plan, bound, &host, states)
        }
    }
}
