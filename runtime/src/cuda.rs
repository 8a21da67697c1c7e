//! `--backend cuda` and the CUDA path of the candle op: the plan's kernels compiled by NVRTC
//! (PTX for `compute_80`, which the driver JIT-compiles for any newer GPU; cached on disk by
//! `nvrtc`) and launched on candle's CUDA device through candle's re-export of cudarc.
//! Only built with the `cuda` cargo feature; without it the registry entry says how to get
//! it. Launch tests: `docs/cuda.md`.

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
pub use imp::{evaluate_tensors, time_launches, CudaBackend, DeviceEval};

#[cfg(feature = "cuda")]
mod imp {
    use crate::nvrtc::{self, Output};
    use crate::opencl::{extract, host_batch_except};
    use crate::{Backend, Bound, Evaluation, RunError};
    use candle_core::backend::BackendDevice;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::op::BackpropOp;
    use candle_core::{CudaDevice, CudaStorage, DType, Storage, Tensor};
    use rlobj_back::cstyle::{self, InputDtype, KernelSource, WriteOptions};
    use rlobj_ir::schedule::{self, header, IndexArray, Plan};
    use rlobj_ir::{InputId, InputKind, Program, SpaceId};
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    /// PTX target: loads on sm_80 (A100) and every newer GPU.
    const PTX_ARCH: u32 = 80;
    /// Row phases launch at most this many blocks (rows are grid-strided).
    const MAX_GROUPS: usize = 65_535;

    fn cerr(what: &str, e: impl std::fmt::Display) -> RunError {
        RunError(format!("cuda: {what}: {e}"))
    }

    /// Copies a host slice to a new device buffer. CUDA refuses zero-byte allocations, and a
    /// batch with no valid token has empty token inputs and index arrays, so an empty slice
    /// becomes one zero element (kernels never read it: their loops run zero times).
    fn upload<T: DeviceRepr + ValidAsZeroBits + 'static>(
        dev: &CudaDevice,
        s: &[T],
    ) -> Result<CudaSlice<T>, RunError> {
        let r = if s.is_empty() {
            dev.alloc_zeros::<T>(1)
        } else {
            dev.clone_htod(s)
        };
        r.map_err(|e| cerr("upload", e))
    }

    /// A program's plan, kernel text and PTX (NVRTC's disk cache makes repeats cheap).
    struct Module {
        plan: Plan,
        src: KernelSource,
        ptx: String,
        /// candle caches loaded modules by name: the name is a hash of the text.
        name: String,
    }

    /// Modules already built in this process, by (program digest, input dtypes): a training
    /// loop calls the op every step, and scheduling, writing and the NVRTC disk-cache lookup
    /// are then paid once, not per step.
    type ModuleCache = HashMap<([u8; 32], Vec<InputDtype>), Arc<Module>>;
    static MODULES: OnceLock<Mutex<ModuleCache>> = OnceLock::new();

    /// The module for `prog` with these input dtypes, from the in-memory cache or built.
    fn module(prog: &Program, dtypes: Vec<InputDtype>) -> Result<Arc<Module>, RunError> {
        let json = serde_json::to_vec(prog).map_err(|e| cerr("hashing the program", e))?;
        let key: ([u8; 32], Vec<InputDtype>) = (Sha256::digest(&json).into(), dtypes);
        let cache = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(m) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(m);
        }
        let m = Arc::new(build_module(prog, key.1.clone())?);
        if let Ok(mut c) = cache.lock() {
            c.insert(key, m.clone());
        }
        Ok(m)
    }

    fn build_module(prog: &Program, dtypes: Vec<InputDtype>) -> Result<Module, RunError> {
        let plan = schedule::schedule(prog).map_err(|e| RunError(format!("schedule: {e}")))?;
        let opts = WriteOptions { dtypes };
        let src = cstyle::write(prog, &plan, &rlobj_back::cuda::TARGET, &opts)
            .map_err(|e| RunError(e.to_string()))?;
        let ptx = nvrtc::compile(&src, PTX_ARCH, Output::Ptx)
            .map_err(|e| RunError(e.to_string()))?
            .ptx();
        let digest = Sha256::digest(src.text.as_bytes());
        let name = format!(
            "rlobj_{}",
            digest
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Ok(Module {
            plan,
            src,
            ptx,
            name,
        })
    }

    /// A value input as a kernel argument: a view of candle storage (no copy) or a buffer
    /// uploaded from host values.
    enum Arg<'a> {
        F32(CudaView<'a, f32>),
        F16(CudaView<'a, half::f16>),
        BF16(CudaView<'a, half::bf16>),
        U8(CudaView<'a, u8>),
    }

    impl<'a> Arg<'a> {
        fn push<'b>(&'b self, b: &mut LaunchArgs<'b>) {
            match self {
                Arg::F32(v) => b.arg(v),
                Arg::F16(v) => b.arg(v),
                Arg::BF16(v) => b.arg(v),
                Arg::U8(v) => b.arg(v),
            };
        }
    }

    /// The device buffers one evaluation writes.
    struct Arena {
        scal: CudaSlice<f32>,
        idx: CudaSlice<i32>,
        work: CudaSlice<f32>,
        part: CudaSlice<f32>,
    }

    /// Host arrays of the value inputs (`None` for id inputs), as `host_batch` lays them out.
    type HostInputs = Vec<Option<Vec<f32>>>;

    /// Uploads the scalars and the index arena, allocates `work` and `part` (zeroed, so a
    /// buffer a kernel failed to write reads as 0, never as stale memory).
    fn arena(
        dev: &CudaDevice,
        m: &Module,
        prog: &Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
        on_device: &[bool],
    ) -> Result<(Arena, HostInputs), RunError> {
        let hb = host_batch_except(prog, &m.plan, bound, params, states, on_device)?;
        let up = |e| cerr("upload", e);
        let a = Arena {
            scal: upload(dev, hb.scal.as_slice())?,
            idx: upload(dev, hb.arena.data.as_slice())?,
            work: dev
                .alloc_zeros::<f32>(hb.arena.work_len.max(1))
                .map_err(up)?,
            part: dev
                .alloc_zeros::<f32>(m.src.part_len(&bound.layout))
                .map_err(up)?,
        };
        Ok((a, hb.inputs))
    }

    /// Launches every kernel of the plan in order on candle's stream.
    fn launch(
        dev: &CudaDevice,
        m: &Module,
        bound: &Bound,
        ins: &[Arg<'_>],
        a: &mut Arena,
    ) -> Result<(), RunError> {
        for k in &m.src.kernels {
            let func = dev
                .get_or_load_custom_func(&k.name, &m.name, &m.ptx)
                .map_err(|e| cerr(&k.name, e))?;
            let mut b = func.builder();
            for x in ins {
                x.push(&mut b);
            }
            b.arg(&a.scal);
            b.arg(&a.idx);
            b.arg(&mut a.work);
            b.arg(&mut a.part);
            let cfg = LaunchConfig {
                grid_dim: (k.grid.blocks(&bound.layout, MAX_GROUPS) as u32, 1, 1),
                block_dim: (m.src.block, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel signature written by the C-style
            // writer (value inputs in input order with their storage types, scal, idx,
            // work, part); every buffer outlives the launch (stream-ordered use).
            unsafe { b.launch(cfg) }.map_err(|e| cerr(&k.name, e))?;
        }
        Ok(())
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
            let m = module(prog, Vec::new())?;
            let dev = &self.dev;
            let (mut a, inputs) = arena(dev, &m, prog, bound, params, states, &[])?;
            let mut bufs = Vec::new();
            for d in inputs.iter().flatten() {
                bufs.push(upload(dev, d.as_slice())?);
            }
            let ins: Vec<Arg<'_>> = bufs.iter().map(|b| Arg::F32(b.slice(..))).collect();
            launch(dev, &m, bound, &ins, &mut a)?;
            let host: Vec<f32> = dev.clone_dtoh(&a.work).map_err(|e| cerr("download", e))?;
            extract(prog, &m.plan, bound, &host, states)
        }
    }

    /// Loss and gradients of one evaluation on candle CUDA tensors, all on the device.
    pub struct DeviceEval {
        /// The loss, a scalar f32 tensor.
        pub loss: Tensor,
        /// The gradient of every `@grad` input: f32, shaped like the input's tensor (`[B, T]`
        /// for token inputs, zero at padding; `[B]` for row inputs; `[]` for batch inputs).
        pub grads: Vec<(InputId, Tensor)>,
        /// The batch layout (from `mask` and the id tensors, read on the host).
        pub layout: rlobj_ir::Layout,
    }

    /// Whether an input is read straight from its candle tensor: token, row and batch value
    /// inputs are laid out in the tensor exactly as the kernels index them (`[B, T]`
    /// row-major, `[B]`, `[1]`). Other spaces (one value per group or segment) and channel
    /// components are bound on the host.
    fn direct(prog: &Program, i: usize) -> bool {
        // A channel component reads one column of a wider tensor: bound on the host.
        prog.inputs[i].channel.is_none()
            && matches!(
                prog.inputs[i].kind,
                InputKind::Value { space, .. }
                    if space == SpaceId::TOK || space == SpaceId::SEQ || space == SpaceId::BATCH
            )
    }

    /// The storage type the kernels read a tensor of dtype `d` in, if they can.
    fn storage_dtype(d: DType) -> Option<InputDtype> {
        match d {
            DType::F32 => Some(InputDtype::F32),
            DType::F16 => Some(InputDtype::F16),
            DType::BF16 => Some(InputDtype::BF16),
            DType::U8 => Some(InputDtype::U8),
            _ => None,
        }
    }

    /// Runs the objective on CUDA tensors. Token/row/batch value tensors are bound as kernel
    /// arguments straight from candle storage (f32, bf16, f16 or u8 on the device, read by
    /// the kernels and widened to f32; any offset; strided tensors are made contiguous on
    /// the device first); the host
    /// reads only what defines the layout (`mask`, id tensors), the per-group inputs and
    /// tensors of other dtypes or devices. Padding is never
    /// read, so it may hold anything; NaN/Inf at valid positions is not checked on this path.
    pub fn evaluate_tensors(
        prog: &Program,
        tensors: &[(&str, &Tensor)],
        params: &[f64],
        states: &[f64],
    ) -> Result<DeviceEval, RunError> {
        Ok(run_tensors(prog, tensors, params, states, 0)?.0)
    }

    /// Seconds per launch of the whole kernel sequence on these tensors (mean of `repeat`
    /// launches after one warm-up, stream-synchronised): the kernels only, without binding
    /// the layout on the host. For bandwidth figures.
    pub fn time_launches(
        prog: &Program,
        tensors: &[(&str, &Tensor)],
        params: &[f64],
        states: &[f64],
        repeat: usize,
    ) -> Result<f64, RunError> {
        Ok(run_tensors(prog, tensors, params, states, repeat.max(1))?.1)
    }

    fn run_tensors(
        prog: &Program,
        tensors: &[(&str, &Tensor)],
        params: &[f64],
        states: &[f64],
        repeat: usize,
    ) -> Result<(DeviceEval, f64), RunError> {
        let find = |name: &str| tensors.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
        // Device-bound inputs are replaced by zeros on the host, only to bind the layout.
        let mut host = Vec::with_capacity(tensors.len());
        let mut dtypes = vec![InputDtype::F32; prog.inputs.len()];
        // Other dtypes, and tensors on other devices, are bound through the host; strided
        // tensors are made contiguous on the device first (a no-op clone otherwise).
        let mut owned: Vec<Option<Tensor>> = Vec::with_capacity(prog.inputs.len());
        for (i, inp) in prog.inputs.iter().enumerate() {
            let t = find(&inp.name).filter(|t| direct(prog, i) && t.device().is_cuda());
            owned.push(match t.map(|t| (t, storage_dtype(t.dtype()))) {
                Some((t, Some(dt))) => {
                    dtypes[i] = dt;
                    let c = t
                        .contiguous()
                        .map_err(|e| RunError(format!("tensor `{}`: {e}", inp.name)))?;
                    Some(c)
                }
                _ => None,
            });
        }
        let dev_t: Vec<Option<&Tensor>> = owned.iter().map(|t| t.as_ref()).collect();
        for (name, t) in tensors {
            let stand_in = prog
                .inputs
                .iter()
                .position(|inp| inp.name == *name)
                .is_some_and(|i| dev_t[i].is_some());
            let ht = if stand_in {
                crate::batch::HostTensor::float(t.dims().to_vec(), vec![0.0; t.elem_count()])
            } else {
                crate::batch::from_candle(name, t)?
            };
            host.push((name.to_string(), ht));
        }
        let bound = crate::batch::bind(prog, &host)?;
        let cdev = tensors
            .iter()
            .map(|(_, t)| t.device())
            .find(|d| d.is_cuda())
            .cloned()
            .ok_or_else(|| RunError("cuda: no tensor is on a CUDA device".into()))?;
        let dev = cdev.as_cuda_device().map_err(|e| cerr("device", e))?;
        let m = module(prog, dtypes.clone())?;
        let on_device: Vec<bool> = dev_t.iter().map(|t| t.is_some()).collect();
        let (mut a, host_inputs) = arena(dev, &m, prog, &bound, params, states, &on_device)?;
        // Host-bound inputs are uploaded as f32; device-bound ones are viewed in place.
        let mut uploads: Vec<Option<CudaSlice<f32>>> = Vec::new();
        for (i, d) in host_inputs.iter().enumerate() {
            uploads.push(match (d, dev_t[i]) {
                (Some(d), None) => Some(upload(dev, d.as_slice())?),
                _ => None,
            });
        }
        let guards: Vec<_> = dev_t
            .iter()
            .map(|t| t.map(|t| t.storage_and_layout()))
            .collect();
        let mut ins: Vec<Arg<'_>> = Vec::new();
        for (i, inp) in prog.inputs.iter().enumerate() {
            if !matches!(inp.kind, InputKind::Value { .. }) {
                continue;
            }
            let arg = match (&guards[i], &uploads[i]) {
                (Some((st, l)), _) => view(&inp.name, st, l, dtypes[i])?,
                (None, Some(u)) => Arg::F32(u.slice(..)),
                (None, None) => {
                    return Err(RunError(format!("tensor `{}`: not bound", inp.name)));
                }
            };
            ins.push(arg);
        }
        launch(dev, &m, &bound, &ins, &mut a)?;
        let mut secs = 0.0;
        if repeat > 0 {
            let sync = |e| cerr("synchronize", e);
            dev.synchronize().map_err(sync)?;
            let t0 = std::time::Instant::now();
            for _ in 0..repeat {
                launch(dev, &m, &bound, &ins, &mut a)?;
            }
            dev.synchronize().map_err(sync)?;
            secs = t0.elapsed().as_secs_f64() / repeat as f64;
        }
        drop(ins);
        drop(guards);
        Ok((results(dev, &m, prog, &bound, &a, &dev_t)?, secs))
    }

    /// A contiguous view of a candle CUDA storage from its layout's offset.
    fn view<'a>(
        name: &str,
        st: &'a Storage,
        l: &candle_core::Layout,
        dt: InputDtype,
    ) -> Result<Arg<'a>, RunError> {
        let Storage::Cuda(cs) = st else {
            return Err(RunError(format!("tensor `{name}`: not on a CUDA device")));
        };
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| RunError(format!("tensor `{name}`: not contiguous")))?;
        let bad = |e| RunError(format!("tensor `{name}`: {e}"));
        let cut = || {
            RunError(format!(
                "tensor `{name}`: offset {start}..{end} out of its storage"
            ))
        };
        Ok(match dt {
            InputDtype::F32 => Arg::F32(
                cs.as_cuda_slice::<f32>()
                    .map_err(bad)?
                    .try_slice(start..end)
                    .ok_or_else(cut)?,
            ),
            InputDtype::F16 => Arg::F16(
                cs.as_cuda_slice::<half::f16>()
                    .map_err(bad)?
                    .try_slice(start..end)
                    .ok_or_else(cut)?,
            ),
            InputDtype::BF16 => Arg::BF16(
                cs.as_cuda_slice::<half::bf16>()
                    .map_err(bad)?
                    .try_slice(start..end)
                    .ok_or_else(cut)?,
            ),
            InputDtype::U8 => Arg::U8(
                cs.as_cuda_slice::<u8>()
                    .map_err(bad)?
                    .try_slice(start..end)
                    .ok_or_else(cut)?,
            ),
        })
    }

    /// A device tensor owning `slice`.
    fn tensor(dev: &CudaDevice, slice: CudaSlice<f32>, shape: &[usize]) -> Tensor {
        let st = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
        Tensor::from_storage(st, shape, BackpropOp::none(), false)
    }

    /// Copies `len` floats of the work arena from `off` into a fresh device buffer.
    fn copy_out(
        dev: &CudaDevice,
        work: &CudaSlice<f32>,
        off: usize,
        len: usize,
    ) -> Result<CudaSlice<f32>, RunError> {
        let src = work
            .try_slice(off..off + len)
            .ok_or_else(|| RunError("cuda: result outside the work arena".into()))?;
        let mut dst = dev
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| cerr("alloc", e))?;
        if len > 0 {
            dev.memcpy_dtod(&src, &mut dst)
                .map_err(|e| cerr("copy", e))?;
        }
        Ok(dst)
    }

    /// The loss and every gradient as device tensors (token gradients scattered into a
    /// zeroed `[B, T]` by `rlobj_scatter`); nothing goes through the host.
    fn results(
        dev: &CudaDevice,
        m: &Module,
        prog: &Program,
        bound: &Bound,
        a: &Arena,
        dev_t: &[Option<&Tensor>],
    ) -> Result<DeviceEval, RunError> {
        let l = &bound.layout;
        let (offs, _) = m.plan.work_layout(l);
        let buf = |n: rlobj_ir::NodeId| {
            m.plan.buffer[n.index()]
                .ok_or_else(|| RunError(format!("cuda: result node %{} has no buffer", n.0)))
        };
        let ln = prog
            .loss
            .ok_or_else(|| RunError(format!("objective `{}` has no loss", prog.name)))?;
        let loss = tensor(dev, copy_out(dev, &a.work, offs[buf(ln)?], 1)?, &[1])
            .squeeze(0)
            .map_err(|e| cerr("loss", e))?;
        let mut grads = Vec::new();
        let (ns, ni) = (prog.spaces.len(), m.plan.index_arrays.len());
        for (i, n) in &prog.grads {
            let b = buf(*n)?;
            let InputKind::Value { space, .. } = prog.inputs[i.index()].kind else {
                return Err(RunError("cuda: gradient of an id input".into()));
            };
            let shape: Vec<usize> = match dev_t.get(i.index()).copied().flatten() {
                Some(t) => t.dims().to_vec(),
                None => vec![l.size(space)],
            };
            let g = if space == SpaceId::TOK {
                let pad = m
                    .plan
                    .index(IndexArray::TokPad)
                    .ok_or_else(|| RunError("cuda: the plan has no token padding index".into()))?;
                let mut dst = dev
                    .alloc_zeros::<f32>((l.rows * l.width).max(1))
                    .map_err(|e| cerr("alloc", e))?;
                let func = dev
                    .get_or_load_custom_func("rlobj_scatter", &m.name, &m.ptx)
                    .map_err(|e| cerr("rlobj_scatter", e))?;
                let (bs, ps) = (
                    header::buffer_offset(ns, ni, b) as i32,
                    header::index_offset(ns, pad) as i32,
                );
                let mut lb = func.builder();
                lb.arg(&a.work);
                lb.arg(&a.idx);
                lb.arg(&mut dst);
                lb.arg(&bs);
                lb.arg(&ps);
                let cfg = LaunchConfig {
                    grid_dim: (
                        l.size(SpaceId::TOK).div_ceil(256).clamp(1, MAX_GROUPS) as u32,
                        1,
                        1,
                    ),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: matches `rlobj_scatter(work, idx, dst, buf_slot, pad_slot)`; `dst`
                // has B*T floats and every padded index is below B*T.
                unsafe { lb.launch(cfg) }.map_err(|e| cerr("rlobj_scatter", e))?;
                tensor(dev, dst, &[l.rows, l.width])
            } else {
                let len = m.plan.buffer_len(b, l);
                tensor(dev, copy_out(dev, &a.work, offs[b], len)?, &[len])
            };
            let g = g.reshape(shape).map_err(|e| cerr("gradient shape", e))?;
            grads.push((*i, g));
        }
        Ok(DeviceEval {
            loss,
            grads,
            layout: l.clone(),
        })
    }
}
