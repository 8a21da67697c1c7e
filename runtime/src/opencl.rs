//! `--backend opencl`: runs the C-style kernel text (OpenCL prelude) on any OpenCL device
//! (PoCL on the CPU in tests). This executes the real plan — indexing, barriers, block
//! reductions, row steps — so it is how the CUDA kernels are checked without a GPU.
//!
//! `libOpenCL` is loaded at run time; without it, or without a platform, [`OpenClBackend::new`]
//! returns an error (never panics) and tests skip unless `RLOBJ_REQUIRE_OPENCL=1`.

use crate::{Backend, Bound, Evaluation, RunError};
use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::device::{get_all_devices, Device, CL_DEVICE_TYPE_ALL};
use opencl3::kernel::{ExecuteKernel, Kernel};
use opencl3::memory::{Buffer, CL_MEM_COPY_HOST_PTR, CL_MEM_READ_ONLY, CL_MEM_READ_WRITE};
use opencl3::program::Program as ClProgram;
use opencl3::types::{cl_float, cl_int, CL_BLOCKING};
use rlobj_back::cstyle::{self, InputDtype, KernelSource, WriteOptions};
use rlobj_ir::schedule::{self, IndexArena, Plan};
use rlobj_ir::{Elem, InputKind, Program, SpaceId};
use std::collections::HashMap;
use std::ffi::c_void;

/// Row phases launch at most this many blocks (rows are grid-strided).
const MAX_GROUPS: usize = 1024;
/// Work-group size on OpenCL unless `RLOBJ_OPENCL_BLOCK` says otherwise: small enough for
/// CPU devices, large enough to exercise the cross-thread code paths.
const DEFAULT_BLOCK: usize = 32;

struct Compiled {
    _program: ClProgram,
    kernels: Vec<Kernel>,
    source: KernelSource,
    plan: Plan,
}

/// An OpenCL device with a cache of built programs (keyed by the kernel text).
pub struct OpenClBackend {
    device_name: String,
    context: Context,
    queue: CommandQueue,
    cache: HashMap<String, Compiled>,
    block: usize,
}

fn cl_err(what: &str, e: impl std::fmt::Display) -> RunError {
    RunError(format!("opencl: {what}: {e}"))
}

impl OpenClBackend {
    /// Opens the first OpenCL device of any type.
    pub fn new() -> Result<Self, RunError> {
        let ids = get_all_devices(CL_DEVICE_TYPE_ALL)
            .map_err(|e| cl_err("no OpenCL platform or library (install pocl-opencl-icd)", e))?;
        let id = *ids
            .first()
            .ok_or_else(|| RunError("opencl: no OpenCL device found".into()))?;
        let device = Device::new(id);
        let device_name = device.name().unwrap_or_else(|_| "unknown device".into());
        let context = Context::from_device(&device).map_err(|e| cl_err("creating a context", e))?;
        let queue = CommandQueue::create_default_with_properties(&context, 0, 0)
            .map_err(|e| cl_err("creating a command queue", e))?;
        let block = std::env::var("RLOBJ_OPENCL_BLOCK")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|b| b.is_power_of_two() && *b <= cstyle::BLOCK as usize)
            .unwrap_or(DEFAULT_BLOCK);
        Ok(OpenClBackend {
            device_name,
            context,
            queue,
            cache: HashMap::new(),
            block,
        })
    }

    /// Work-group size (a power of two up to `cstyle::BLOCK`); results do not depend on the
    /// number of groups, only on this size (the reduction tree's shape).
    pub fn with_block(mut self, block: usize) -> Result<Self, RunError> {
        if !block.is_power_of_two() || block > cstyle::BLOCK as usize {
            return Err(RunError(format!(
                "opencl: work-group size {block} is not a power of two <= {}",
                cstyle::BLOCK
            )));
        }
        self.block = block;
        Ok(self)
    }

    /// The device kernels run on (for messages and test logs).
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Builds (or finds) the program's kernels for the input storage types; returns the
    /// cache key.
    fn ensure(&mut self, prog: &Program, opts: &WriteOptions) -> Result<String, RunError> {
        let plan = schedule::schedule(prog).map_err(|e| RunError(format!("schedule: {e}")))?;
        let source = cstyle::write(prog, &plan, &rlobj_back::opencl::TARGET, opts)
            .map_err(|e| RunError(e.to_string()))?;
        let key = source.text.clone();
        if !self.cache.contains_key(&key) {
            let t0 = std::time::Instant::now();
            let program = ClProgram::create_and_build_from_source(&self.context, &source.text, "")
                .map_err(|log| RunError(build_error(&source, &log)))?;
            if trace() {
                eprintln!(
                    "opencl: built {} kernels in {:.2?}",
                    source.kernels.len(),
                    t0.elapsed()
                );
            }
            let mut kernels = Vec::new();
            for k in &source.kernels {
                kernels.push(Kernel::create(&program, &k.name).map_err(|e| cl_err(&k.name, e))?);
            }
            self.cache.insert(
                key.clone(),
                Compiled {
                    _program: program,
                    kernels,
                    source,
                    plan,
                },
            );
        }
        Ok(key)
    }
}

/// A build log with each `<source>:LINE:` mapped back to the `.obj` span of its node.
fn build_error(src: &KernelSource, log: &str) -> String {
    let mut out = format!("opencl: kernel build failed: {log}");
    for l in log.lines() {
        if let Some(line) = l
            .split(':')
            .nth(1)
            .and_then(|x| x.trim().parse::<u32>().ok())
        {
            if let Some((n, sp)) = src.node_at_line(line) {
                out.push_str(&format!(
                    "\n  line {line}: node %{} from .obj bytes {}..{} (file {})",
                    n.0, sp.start, sp.end, sp.file
                ));
            }
        }
    }
    out
}

/// `RLOBJ_OPENCL_TRACE=1`: print build and per-kernel times to stderr.
fn trace() -> bool {
    std::env::var("RLOBJ_OPENCL_TRACE").is_ok_and(|v| v == "1")
}

/// Host-side arrays for one evaluation, shared with the CUDA launcher.
pub struct HostBatch {
    /// One array per value input (padded `[B, T]` for tok inputs, NaN in padding), in input
    /// order; `None` for id inputs.
    pub inputs: Vec<Option<Vec<f32>>>,
    pub scal: Vec<f32>,
    pub arena: IndexArena,
}

/// Lays a bound batch out the way the kernels read it.
pub fn host_batch(
    prog: &Program,
    plan: &Plan,
    bound: &Bound,
    params: &[f64],
    states: &[f64],
) -> Result<HostBatch, RunError> {
    host_batch_except(prog, plan, bound, params, states, &[])
}

/// [`host_batch`] without the host arrays of the inputs marked in `on_device` (indexed by
/// input; their entries are `None`): the CUDA path binds those from device storage.
pub fn host_batch_except(
    prog: &Program,
    plan: &Plan,
    bound: &Bound,
    params: &[f64],
    states: &[f64],
    on_device: &[bool],
) -> Result<HostBatch, RunError> {
    let layout = &bound.layout;
    let arena = IndexArena::build(prog, plan, layout).map_err(|e| RunError(e.to_string()))?;
    let rows = layout
        .map(prog, SpaceId::TOK, SpaceId::SEQ)
        .unwrap_or_default();
    let mut inputs = Vec::with_capacity(prog.inputs.len());
    for (i, inp) in prog.inputs.iter().enumerate() {
        let InputKind::Value { elem, space, .. } = &inp.kind else {
            inputs.push(None);
            continue;
        };
        if on_device.get(i).copied().unwrap_or(false) {
            inputs.push(None);
            continue;
        }
        let n = layout.size(*space);
        let given = bound.values.get(i).and_then(|v| v.as_deref());
        let vals: Vec<f64> = match crate::batch::input_values(inp, given, n)? {
            crate::batch::InputValues::Given(v) => v.to_vec(),
            crate::batch::InputValues::Default(d) => vec![d; n],
        };
        let conv = |x: f64| -> f32 {
            match elem {
                Elem::Bool => {
                    if x != 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Elem::F32 => x as f32,
            }
        };
        let data = if *space == SpaceId::TOK {
            let mut pad = vec![f32::NAN; (layout.rows * layout.width).max(1)];
            for (k, &x) in vals.iter().enumerate() {
                pad[rows[k] as usize * layout.width + layout.tok_pos[k] as usize] = conv(x);
            }
            pad
        } else {
            let mut d: Vec<f32> = vals.iter().map(|&x| conv(x)).collect();
            if d.is_empty() {
                d.push(f32::NAN);
            }
            d
        };
        inputs.push(Some(data));
    }
    if params.len() != prog.params.len() || states.len() != prog.states.len() {
        return Err(RunError(format!(
            "expected {} params and {} states, got {} and {}",
            prog.params.len(),
            prog.states.len(),
            params.len(),
            states.len()
        )));
    }
    let mut scal: Vec<f32> = params.iter().chain(states).map(|&x| x as f32).collect();
    scal.push(0.0);
    Ok(HostBatch {
        inputs,
        scal,
        arena,
    })
}

/// Reads every result of the program out of the float work arena.
pub fn extract(
    prog: &Program,
    plan: &Plan,
    bound: &Bound,
    work: &[f32],
    states: &[f64],
) -> Result<Evaluation, RunError> {
    let (offs, _) = plan.work_layout(&bound.layout);
    let get = |n: rlobj_ir::NodeId| -> Result<Vec<f64>, RunError> {
        let b = plan.buffer[n.index()]
            .ok_or_else(|| RunError(format!("opencl: result node %{} has no buffer", n.0)))?;
        let len = plan.buffer_len(b, &bound.layout);
        Ok(work[offs[b]..offs[b] + len]
            .iter()
            .map(|&x| x as f64)
            .collect())
    };
    let scalar = |n| -> Result<f64, RunError> {
        get(n)?
            .first()
            .copied()
            .ok_or_else(|| RunError("opencl: empty scalar result".into()))
    };
    let mut ev = Evaluation::default();
    if let Some(l) = prog.loss {
        ev.loss = Some(scalar(l)?);
    }
    for (name, n) in &prog.metrics {
        ev.metrics.push((name.clone(), scalar(*n)?));
    }
    for (name, n) in &prog.outputs {
        ev.outputs
            .push((name.clone(), prog.node(*n).space, get(*n)?));
    }
    for (i, n) in &prog.grads {
        ev.grads.push((*i, get(*n)?));
    }
    for (k, st) in prog.states.iter().enumerate() {
        let v = match prog.updates.iter().find(|(s, _)| s.index() == k) {
            Some((_, n)) => scalar(*n)?,
            None => states.get(k).copied().unwrap_or(st.init),
        };
        ev.states.push((st.name.clone(), v));
    }
    Ok(ev)
}

fn buffer<T>(ctx: &Context, data: &mut [T], write: bool) -> Result<Buffer<T>, RunError> {
    let flags = if write {
        CL_MEM_READ_WRITE
    } else {
        CL_MEM_READ_ONLY
    };
    // SAFETY: `data` outlives the call and CL_MEM_COPY_HOST_PTR copies it at creation.
    unsafe {
        Buffer::<T>::create(
            ctx,
            flags | CL_MEM_COPY_HOST_PTR,
            data.len(),
            data.as_mut_ptr() as *mut c_void,
        )
    }
    .map_err(|e| cl_err("allocating a buffer", e))
}

impl OpenClBackend {
    /// Evaluates with token/row inputs stored as `dtypes` (indexed by input; missing entries
    /// are f32): f16 and bf16 inputs are uploaded as their 16-bit patterns and widened to
    /// f32 by the kernels, so the values seen are the bound values rounded to that type.
    pub fn evaluate_typed(
        &mut self,
        prog: &Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
        dtypes: &[InputDtype],
    ) -> Result<Evaluation, RunError> {
        let opts = WriteOptions {
            dtypes: dtypes.to_vec(),
        };
        let key = self.ensure(prog, &opts)?;
        let (context, queue) = (&self.context, &self.queue);
        let c = self
            .cache
            .get(&key)
            .ok_or_else(|| RunError("opencl: program cache".into()))?;
        let hb = host_batch(prog, &c.plan, bound, params, states)?;
        let mut in_bufs: Vec<InBuf> = Vec::new();
        for (i, d) in hb.inputs.into_iter().enumerate() {
            let Some(mut d) = d else { continue };
            let dt = dtypes.get(i).copied().unwrap_or_default();
            in_bufs.push(match dt {
                InputDtype::F32 => InBuf::F32(buffer(context, &mut d, false)?),
                InputDtype::F16 | InputDtype::BF16 => {
                    let bits = |x: f32| match dt {
                        InputDtype::F16 => half::f16::from_f32(x).to_bits(),
                        _ => half::bf16::from_f32(x).to_bits(),
                    };
                    let mut h: Vec<u16> = d.iter().map(|&x| bits(x)).collect();
                    InBuf::U16(buffer(context, &mut h, false)?)
                }
                InputDtype::U8 => {
                    let mut h: Vec<u8> = d.iter().map(|&x| x as u8).collect();
                    InBuf::U8(buffer(context, &mut h, false)?)
                }
            });
        }
        let mut scal = hb.scal;
        let scal_b = buffer(context, &mut scal, false)?;
        let mut idx: Vec<cl_int> = hb.arena.data;
        let idx_b = buffer(context, &mut idx, false)?;
        let mut work = vec![f32::NAN; hb.arena.work_len];
        let work_b = buffer(context, &mut work, true)?;
        let mut part = vec![f32::NAN; c.source.part_len(&bound.layout)];
        let part_b = buffer(context, &mut part, true)?;
        let block = self.block;
        for (entry, kernel) in c.source.kernels.iter().zip(&c.kernels) {
            let g = entry.grid.blocks(&bound.layout, MAX_GROUPS);
            let mut ex = ExecuteKernel::new(kernel);
            // SAFETY: argument order and types match the kernel signature written by
            // `cstyle::W::args` (inputs, scal, idx, work, part); buffers outlive the launch
            // because the queue is finished before they drop.
            unsafe {
                for b in &in_bufs {
                    match b {
                        InBuf::F32(b) => ex.set_arg(b),
                        InBuf::U16(b) => ex.set_arg(b),
                        InBuf::U8(b) => ex.set_arg(b),
                    };
                }
                ex.set_arg(&scal_b)
                    .set_arg(&idx_b)
                    .set_arg(&work_b)
                    .set_arg(&part_b);
                ex.set_global_work_size(g * block)
                    .set_local_work_size(block)
                    .enqueue_nd_range(queue)
                    .map_err(|e| cl_err(&entry.name, e))?;
            }
            if trace() {
                let t0 = std::time::Instant::now();
                queue.finish().map_err(|e| cl_err("finishing", e))?;
                eprintln!(
                    "opencl: {} ({} groups) ran in {:.2?}",
                    entry.name,
                    g,
                    t0.elapsed()
                );
            }
        }
        // SAFETY: blocking read into a slice of the buffer's length.
        unsafe { queue.enqueue_read_buffer(&work_b, CL_BLOCKING, 0, &mut work, &[]) }
            .map_err(|e| cl_err("reading results", e))?;
        queue.finish().map_err(|e| cl_err("finishing", e))?;
        if trace() {
            let (offs, _) = c.plan.work_layout(&bound.layout);
            for (b, o) in offs.iter().enumerate() {
                let len = c.plan.buffer_len(b, &bound.layout);
                let nan = work[*o..*o + len].iter().filter(|x| x.is_nan()).count();
                if nan > 0 {
                    eprintln!(
                        "opencl: buffer {b} (node %{}): {nan}/{len} NaN",
                        c.plan.buffers[b].node.0
                    );
                }
            }
        }
        extract(prog, &c.plan, bound, &work, states)
    }
}

impl Backend for OpenClBackend {
    fn name(&self) -> &'static str {
        "opencl"
    }

    fn evaluate(
        &mut self,
        prog: &Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
    ) -> Result<Evaluation, RunError> {
        self.evaluate_typed(prog, bound, params, states, &[])
    }
}

/// A device input buffer in its storage type.
enum InBuf {
    F32(Buffer<cl_float>),
    U16(Buffer<u16>),
    U8(Buffer<u8>),
}

/// Registry entry for `--backend opencl`.
pub fn factory() -> Result<Box<dyn Backend>, RunError> {
    Ok(Box::new(OpenClBackend::new()?))
}
