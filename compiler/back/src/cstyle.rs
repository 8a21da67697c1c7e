//! # One C-style kernel writer for CUDA and OpenCL
//!
//! Writes the kernels of a [`Plan`] once; targets differ only by the [`Target`] table
//! (`cuda.rs`, `opencl.rs`: qualifiers, index spellings, barriers, warp shuffles or
//! `__local` trees, half loads), as in tinygrad's `cstyle` renderer. Every phase of the plan
//! becomes one kernel `rlobj_p{N}` (or `rlobj_p{N}_{k}` when a phase needs several):
//!
//! * row phases: one block per row (grid-stride over rows), block-strided token loops,
//!   block reductions by a fixed tree (bitwise reproducible), row steps (scans by one
//!   thread, segment ops block-cooperative);
//! * global phases: one block running steps with a barrier between them, per-row partial
//!   accumulators combined in row order; a batch-wide reduction runs in two phases (many
//!   blocks over fixed chunks, then one block over the partials). No float atomics.
//!
//! All kernels take the same arguments: every value input (`in{i}`, in input order, in its
//! storage type), the scalars `scal` (params then states), the integer arena `idx` (see
//! [`rlobj_ir::schedule::IndexArena`]), the float work arena `work` and the two-phase
//! scratch `part` ([`KernelSource::part_len`]). `rlobj_scatter` copies a compact tok buffer
//! into a padded `[B, T]` tensor (for the candle path).
//!
//! NaN/min/max follow `rlobj_ir::scalar` (compare + select, NaN propagates); bools are
//! floats `0`/`1`. Each node's line carries a `// %N ... @file:start..end` comment and
//! [`KernelSource::lines`] maps source lines back to node spans for compiler errors.

use rlobj_ir::schedule::{
    header, BufferKind, IndexArray, Phase, Plan, Role, Section, Step, StepKind,
};
use rlobj_ir::{
    BinaryOp, Elem, InputKind, Layout, NodeId, Op, Program, ReduceOp, ScanOp, SegmentOp, SpaceId,
    SrcSpan, Structural, UnaryOp,
};
use std::collections::HashSet;
use std::fmt::Write as _;

mod helpers;
use helpers::HELPERS;

/// Threads per block (work-group) of every kernel.
pub const BLOCK: u32 = 256;

/// The spellings that differ between C-style targets.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    /// Macros: `KERNEL`, `DEVICE`, `GLOBAL`, `LOCAL`, `LOCAL_PTR`, `BARRIER()`, `GROUP_ID`,
    /// `NUM_GROUPS`, `LOCAL_ID`, `RL_INF`, `RL_NAN`.
    pub prelude: &'static str,
    pub f16_header: &'static str,
    pub bf16_header: &'static str,
    pub f16_type: &'static str,
    pub bf16_type: &'static str,
    /// Load templates with `{p}` (pointer) and `{i}` (index).
    pub f16_load: &'static str,
    pub bf16_load: &'static str,
    pub u8_type: &'static str,
    /// Emit each step of a global phase as its own kernel instead of one kernel with
    /// barriers between steps.
    pub split_global: bool,
}

/// Storage type of an input tensor as the kernel reads it (computation is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum InputDtype {
    #[default]
    F32,
    F16,
    BF16,
    U8,
}

/// Writer options: input storage types, indexed by `InputId` (missing entries are f32).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteOptions {
    pub dtypes: Vec<InputDtype>,
}

/// Elements per block in phase 1 of a two-phase batch reduction: fixed, so the partials
/// (and the result) do not depend on how many blocks are launched.
pub const CHUNK: u32 = 4 * BLOCK;

/// How many blocks a kernel is launched with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// Row phase: one block per row (rows are grid-strided, so fewer blocks also work).
    Rows,
    /// Global phase: exactly one block.
    One,
    /// Phase 1 of a two-phase batch reduction over `space`: one block per [`CHUNK`]
    /// elements (chunks are grid-strided, so fewer blocks also work).
    Chunks(SpaceId),
}

impl Grid {
    /// Blocks to launch for a batch, capped at `max` (kernels grid-stride past the cap).
    pub fn blocks(self, layout: &Layout, max: usize) -> usize {
        let n = match self {
            Grid::Rows => layout.rows,
            Grid::One => 1,
            Grid::Chunks(s) => layout.size(s).div_ceil(CHUNK as usize),
        };
        n.clamp(1, max.max(1))
    }
}

/// One kernel of the source, in launch order (a global phase may be several kernels).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelEntry {
    pub name: String,
    pub phase: usize,
    pub grid: Grid,
}

/// Generated kernel text and what a launcher needs to know about it.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSource {
    pub text: String,
    pub kernels: Vec<KernelEntry>,
    pub block: u32,
    /// `(1-based line, node, span)` of every node comment, in text order.
    pub lines: Vec<(u32, NodeId, SrcSpan)>,
}

impl KernelSource {
    /// Floats of the `part` argument a batch needs: three per phase-1 chunk of the largest
    /// two-phase reduction (at least 3, so the buffer is never empty).
    pub fn part_len(&self, layout: &Layout) -> usize {
        self.kernels
            .iter()
            .filter_map(|k| match k.grid {
                Grid::Chunks(s) => Some(3 * layout.size(s).div_ceil(CHUNK as usize)),
                _ => None,
            })
            .fold(3, usize::max)
    }

    /// The node whose code is at (or closest above) a 1-based line of `text`.
    pub fn node_at_line(&self, line: u32) -> Option<(NodeId, SrcSpan)> {
        self.lines
            .iter()
            .rev()
            .find(|(l, _, _)| *l <= line)
            .map(|(_, n, s)| (*n, *s))
    }
}

/// A plan the writer cannot express (a bug in the plan, not in the user's program).
#[derive(Clone, Debug, PartialEq)]
pub struct WriteError {
    pub node: Option<NodeId>,
    pub message: String,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.node {
            Some(n) => write!(f, "kernel writer: node %{}: {}", n.0, self.message),
            None => write!(f, "kernel writer: {}", self.message),
        }
    }
}
impl std::error::Error for WriteError {}

type R<T> = Result<T, WriteError>;

fn werr(node: Option<NodeId>, m: impl Into<String>) -> WriteError {
    WriteError {
        node,
        message: m.into(),
    }
}

/// CUDA C for NVRTC (all inputs f32).
pub fn write_cuda(prog: &Program, plan: &Plan) -> R<KernelSource> {
    write(prog, plan, &crate::cuda::TARGET, &WriteOptions::default())
}

/// OpenCL C 1.2 (all inputs f32).
pub fn write_opencl(prog: &Program, plan: &Plan) -> R<KernelSource> {
    write(prog, plan, &crate::opencl::TARGET, &WriteOptions::default())
}

/// The writer for any target and input storage types.
pub fn write(prog: &Program, plan: &Plan, t: &Target, opts: &WriteOptions) -> R<KernelSource> {
    let mut w = W {
        prog,
        plan,
        t,
        opts,
        out: String::new(),
        line: 1,
        lines: Vec::new(),
        indent: 0,
        locals: HashSet::new(),
        entries: Vec::new(),
    };
    w.file()?;
    let kernels = w.entries;
    Ok(KernelSource {
        text: w.out,
        kernels,
        block: BLOCK,
        lines: w.lines,
    })
}

/// Index context: which element of which space the code is at.
#[derive(Clone, Debug)]
struct Ctx {
    known: Vec<(SpaceId, String)>,
    base: SpaceId,
}

impl Ctx {
    fn new(base: SpaceId, var: &str) -> Ctx {
        Ctx {
            known: vec![(base, var.to_string())],
            base,
        }
    }
    fn with(mut self, s: SpaceId, var: &str) -> Ctx {
        if !self.known.iter().any(|(k, _)| *k == s) {
            self.known.push((s, var.to_string()));
        }
        self
    }
    fn var(&self) -> &str {
        &self.known[0].1
    }
}

/// What a global-phase kernel runs: a run of steps `[a, b)`, or phase 1 / phase 2 of the
/// two-phase reduction at step `a`.
#[derive(Clone, Copy, Debug)]
enum Piece {
    Steps(usize, usize),
    Partials(usize),
    Finish(usize),
}

struct W<'a> {
    prog: &'a Program,
    plan: &'a Plan,
    t: &'a Target,
    opts: &'a WriteOptions,
    out: String,
    line: u32,
    lines: Vec<(u32, NodeId, SrcSpan)>,
    indent: usize,
    locals: HashSet<NodeId>,
    entries: Vec<KernelEntry>,
}

fn lit(v: f64) -> String {
    let f = v as f32;
    if f.is_nan() {
        "RL_NAN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "RL_INF".into()
        } else {
            "(-RL_INF)".into()
        }
    } else {
        let s = format!("{f:?}");
        let s = if s.contains('.') || s.contains('e') {
            s
        } else {
            format!("{s}.0")
        };
        if f < 0.0 || s.starts_with('-') {
            format!("({s}f)")
        } else {
            format!("{s}f")
        }
    }
}

fn acc_op(op: ReduceOp) -> u8 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Count => 0,
        ReduceOp::Max => 1,
        ReduceOp::Min => 2,
        ReduceOp::Var { .. } | ReduceOp::Std { .. } => 3,
        ReduceOp::LogSumExp => 4,
    }
}

fn finish_kind(op: ReduceOp) -> (u8, u32) {
    match op {
        ReduceOp::Sum => (0, 0),
        ReduceOp::Mean => (1, 0),
        ReduceOp::Max => (2, 0),
        ReduceOp::Min => (3, 0),
        ReduceOp::Count => (4, 0),
        ReduceOp::Var { ddof } => (5, ddof),
        ReduceOp::Std { ddof } => (6, ddof),
        ReduceOp::LogSumExp => (7, 0),
    }
}

impl<'a> W<'a> {
    fn ln(&mut self, s: &str) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
        self.out.push_str(s);
        self.out.push('\n');
        self.line += 1 + s.matches('\n').count() as u32;
    }

    fn comment(&mut self, n: NodeId) {
        let node = self.prog.node(n);
        let sp = node.span;
        let what = match &node.op {
            Op::Const(_) => "const".to_string(),
            Op::Input(i) => format!("input {}", self.prog.inputs[i.index()].name),
            Op::Param(p) => format!("param {}", self.prog.params[p.index()].name),
            Op::State(s) => format!("state {}", self.prog.states[s.index()].name),
            Op::Structural(s) => format!("{s:?}"),
            Op::Unary(op, _) => format!("{op:?}"),
            Op::Binary(op, _, _) => format!("{op:?}"),
            Op::Select(..) => "select".into(),
            Op::Clamp(..) => "clamp".into(),
            Op::Broadcast(_) => "broadcast".into(),
            Op::StopGrad(_) => "stop_grad".into(),
            Op::Reduce { op, .. } => format!("reduce {op:?}"),
            Op::Segment { op, .. } => format!("segment {op:?}"),
            Op::Quantile { .. } => "quantile".into(),
            Op::Scan { op, .. } => format!("scan {op:?}"),
            Op::Shift { offset, .. } => format!("shift {offset}"),
        };
        let space = &self.prog.spaces[node.space.index()].name;
        self.lines.push((self.line, n, sp));
        self.ln(&format!(
            "// %{} = {what} [{space}] @{}:{}..{}",
            n.0, sp.file, sp.start, sp.end
        ));
    }

    fn ix(&self, a: IndexArray) -> R<String> {
        self.plan
            .index(a)
            .map(|j| format!("x{j}"))
            .ok_or_else(|| werr(None, format!("the plan lacks index array {a:?}")))
    }

    fn buf(&self, n: NodeId) -> R<String> {
        self.plan.buffer[n.index()]
            .map(|b| format!("b{b}"))
            .ok_or_else(|| werr(Some(n), "value is not materialised"))
    }

    fn size(&self, s: SpaceId) -> String {
        format!("idx[{}]", header::space_size(s.index()))
    }

    fn idx_of(&self, ctx: &Ctx, s: SpaceId) -> R<String> {
        if let Some((_, v)) = ctx.known.iter().find(|(k, _)| *k == s) {
            return Ok(v.clone());
        }
        if s == SpaceId::BATCH {
            return Ok("0".into());
        }
        let m = self.ix(IndexArray::Map {
            fine: ctx.base,
            coarse: s,
        })?;
        Ok(format!("{m}[{}]", ctx.var()))
    }

    fn resolve(&self, mut n: NodeId) -> NodeId {
        while let Role::Alias(a) = self.plan.roles[n.index()] {
            n = a;
        }
        n
    }

    /// The value of `n` at the context's element.
    fn load(&self, n: NodeId, ctx: &Ctx) -> R<String> {
        let n = self.resolve(n);
        if self.locals.contains(&n) {
            return Ok(format!("v{}", n.0));
        }
        match self.plan.roles[n.index()] {
            Role::Leaf => self.leaf(n, ctx),
            Role::Alias(_) => Err(werr(Some(n), "unresolved alias")),
            Role::Computed { .. } => {
                let b = self.buf(n)?;
                Ok(format!(
                    "{b}[{}]",
                    self.idx_of(ctx, self.prog.node(n).space)?
                ))
            }
        }
    }

    fn input_load(&self, i: usize, at: &str) -> String {
        let p = format!("in{i}");
        match self.opts.dtypes.get(i).copied().unwrap_or_default() {
            InputDtype::F32 => format!("{p}[{at}]"),
            InputDtype::U8 => format!("((float){p}[{at}])"),
            InputDtype::F16 => self.t.f16_load.replace("{p}", &p).replace("{i}", at),
            InputDtype::BF16 => self.t.bf16_load.replace("{p}", &p).replace("{i}", at),
        }
    }

    fn leaf(&self, n: NodeId, ctx: &Ctx) -> R<String> {
        let node = self.prog.node(n);
        Ok(match &node.op {
            Op::Const(c) => lit(*c),
            Op::Param(p) => format!("scal[{}]", p.0),
            Op::State(s) => format!("scal[{}]", self.prog.params.len() + s.index()),
            Op::Input(i) => {
                let InputKind::Value { elem, space, .. } = &self.prog.inputs[i.index()].kind else {
                    return Err(werr(Some(n), "id inputs are not values"));
                };
                let at = if *space == SpaceId::TOK {
                    format!(
                        "{}[{}]",
                        self.ix(IndexArray::TokPad)?,
                        self.idx_of(ctx, SpaceId::TOK)?
                    )
                } else {
                    self.idx_of(ctx, *space)?
                };
                let v = self.input_load(i.index(), &at);
                if *elem == Elem::Bool {
                    format!("({v} != 0.0f ? 1.0f : 0.0f)")
                } else {
                    v
                }
            }
            Op::Structural(Structural::TokPosition) => format!(
                "((float){}[{}])",
                self.ix(IndexArray::TokPos)?,
                self.idx_of(ctx, SpaceId::TOK)?
            ),
            Op::Structural(Structural::RowIndex) => {
                format!("((float)({}))", self.idx_of(ctx, SpaceId::SEQ)?)
            }
            Op::Structural(Structural::Width) => "((float)T)".into(),
            Op::Reduce {
                op: ReduceOp::Count,
                mask: None,
                arg,
                empty,
            } => {
                let off = self.ix(IndexArray::CsrOffsets {
                    fine: self.prog.node(*arg).space,
                    coarse: node.space,
                })?;
                let y = self.idx_of(ctx, node.space)?;
                format!(
                    "(({off}[({y}) + 1] - {off}[{y}]) > 0 ? (float)({off}[({y}) + 1] - {off}[{y}]) : {})",
                    lit(*empty)
                )
            }
            _ => return Err(werr(Some(n), "not a leaf")),
        })
    }

    /// Expression computing an elementwise node (or a copied leaf/alias result).
    fn compute(&self, n: NodeId, ctx: &Ctx) -> R<String> {
        let node = self.prog.node(n);
        let l = |x: &NodeId| self.load(*x, ctx);
        Ok(match &node.op {
            Op::Unary(op, a) => {
                let a = l(a)?;
                match op {
                    UnaryOp::Neg => format!("(-{a})"),
                    UnaryOp::Exp => format!("exp({a})"),
                    UnaryOp::Log => format!("log({a})"),
                    UnaryOp::Log1p => format!("log1p({a})"),
                    UnaryOp::Expm1 => format!("expm1({a})"),
                    UnaryOp::Sqrt => format!("sqrt({a})"),
                    UnaryOp::Rsqrt => format!("(1.0f / sqrt({a}))"),
                    UnaryOp::Abs => format!("fabs({a})"),
                    UnaryOp::Sign => format!("rl_sign({a})"),
                    UnaryOp::Tanh => format!("tanh({a})"),
                    UnaryOp::Sigmoid => format!("rl_sigmoid({a})"),
                    UnaryOp::Softplus => format!("rl_softplus({a})"),
                    UnaryOp::LogSigmoid => format!("(-rl_softplus(-{a}))"),
                    UnaryOp::Floor => format!("floor({a})"),
                    UnaryOp::Ceil => format!("ceil({a})"),
                    UnaryOp::Recip => format!("(1.0f / {a})"),
                    UnaryOp::Not => format!("({a} != 0.0f ? 0.0f : 1.0f)"),
                    UnaryOp::ToF32 => format!("({a} != 0.0f ? 1.0f : 0.0f)"),
                }
            }
            Op::Binary(op, a, b) => {
                let (a, b) = (l(a)?, l(b)?);
                let cmp = |o: &str| format!("({a} {o} {b} ? 1.0f : 0.0f)");
                match op {
                    BinaryOp::Add => format!("({a} + {b})"),
                    BinaryOp::Sub => format!("({a} - {b})"),
                    BinaryOp::Mul => format!("({a} * {b})"),
                    BinaryOp::Div => format!("({a} / {b})"),
                    BinaryOp::Pow => format!("pow({a}, {b})"),
                    BinaryOp::Min => format!("rl_min({a}, {b})"),
                    BinaryOp::Max => format!("rl_max({a}, {b})"),
                    BinaryOp::Lt => cmp("<"),
                    BinaryOp::Le => cmp("<="),
                    BinaryOp::Gt => cmp(">"),
                    BinaryOp::Ge => cmp(">="),
                    BinaryOp::Eq => cmp("=="),
                    BinaryOp::Ne => cmp("!="),
                    BinaryOp::And => format!("(({a} != 0.0f && {b} != 0.0f) ? 1.0f : 0.0f)"),
                    BinaryOp::Or => format!("(({a} != 0.0f || {b} != 0.0f) ? 1.0f : 0.0f)"),
                }
            }
            Op::Select(c, a, b) => format!("({} != 0.0f ? {} : {})", l(c)?, l(a)?, l(b)?),
            Op::Clamp(x, lo, hi) => format!("rl_min(rl_max({}, {}), {})", l(x)?, l(lo)?, l(hi)?),
            Op::Broadcast(a) | Op::StopGrad(a) => l(a)?,
            Op::Const(_) | Op::Param(_) | Op::State(_) | Op::Input(_) | Op::Structural(_) => {
                self.leaf(n, ctx)?
            }
            Op::Reduce {
                op: ReduceOp::Count,
                mask: None,
                ..
            } => self.leaf(n, ctx)?,
            _ => return Err(werr(Some(n), "not an elementwise node")),
        })
    }

    fn file(&mut self) -> R<()> {
        let dt = |d: InputDtype| self.opts.dtypes.contains(&d);
        let (f16, bf16) = (dt(InputDtype::F16), dt(InputDtype::BF16));
        let _ = writeln!(
            self.out,
            "// rlobj kernels for `{}` ({}), generated; {} phases, {} bytes/token",
            self.prog.name,
            self.t.name,
            self.plan.phases.len(),
            self.plan.bytes_per_token
        );
        if f16 {
            self.out.push_str(self.t.f16_header);
        }
        if bf16 {
            self.out.push_str(self.t.bf16_header);
        }
        self.out.push_str(self.t.prelude);
        let _ = writeln!(self.out, "#define RL_BLOCK {BLOCK}");
        let _ = writeln!(self.out, "#define RL_CHUNK {CHUNK}");
        self.out.push_str(HELPERS);
        self.line = 1 + self.out.matches('\n').count() as u32;
        for p in 0..self.plan.phases.len() {
            self.kernel(p)?;
        }
        self.scatter();
        Ok(())
    }

    fn args(&self) -> String {
        let mut a = Vec::new();
        for (i, inp) in self.prog.inputs.iter().enumerate() {
            if let InputKind::Value { .. } = inp.kind {
                let ty = match self.opts.dtypes.get(i).copied().unwrap_or_default() {
                    InputDtype::F32 => "float",
                    InputDtype::F16 => self.t.f16_type,
                    InputDtype::BF16 => self.t.bf16_type,
                    InputDtype::U8 => self.t.u8_type,
                };
                a.push(format!("GLOBAL const {ty}* in{i}"));
            }
        }
        a.push("GLOBAL const float* scal".into());
        a.push("GLOBAL const int* idx".into());
        a.push("GLOBAL float* work".into());
        a.push("GLOBAL float* part".into());
        a.join(", ")
    }

    fn open_kernel(&mut self, name: &str) {
        let args = self.args();
        self.ln("");
        self.ln(&format!("KERNEL {name}({args}) {{"));
        self.indent = 1;
        self.ln("LOCAL float red[3 * RL_BLOCK];");
        self.ln("LOCAL float shq[2];");
        self.ln("const int tid = LOCAL_ID;");
        self.ln("const int NT = LOCAL_SIZE; /* a power of two <= RL_BLOCK */");
        self.ln(&format!("const int T = idx[{}];", header::WIDTH));
        let ns = self.prog.spaces.len();
        let ni = self.plan.index_arrays.len();
        for j in 0..ni {
            self.ln(&format!(
                "GLOBAL const int* x{j} = idx + idx[{}]; /* {:?} */",
                header::index_offset(ns, j),
                self.plan.index_arrays[j]
            ));
        }
        for b in 0..self.plan.buffers.len() {
            self.ln(&format!(
                "GLOBAL float* b{b} = work + idx[{}];",
                header::buffer_offset(ns, ni, b)
            ));
        }
        self.ln("(void)tid; (void)NT; (void)T; (void)scal; (void)red; (void)shq; (void)part;");
    }

    fn close_kernel(&mut self) {
        self.indent = 0;
        self.ln("}");
    }

    fn kernel(&mut self, p: usize) -> R<()> {
        match &self.plan.phases[p] {
            Phase::Row(rp) => {
                let name = format!("rlobj_p{p}");
                self.open_kernel(&name);
                self.entries.push(KernelEntry {
                    name,
                    phase: p,
                    grid: Grid::Rows,
                });
                let rs = self.ix(IndexArray::CsrOffsets {
                    fine: SpaceId::TOK,
                    coarse: SpaceId::SEQ,
                })?;
                self.ln(&format!(
                    "for (int r = GROUP_ID; r < {}; r += NUM_GROUPS) {{",
                    self.size(SpaceId::SEQ)
                ));
                self.indent += 1;
                self.ln(&format!("const int k0 = {rs}[r], k1 = {rs}[r + 1];"));
                self.ln("(void)k0; (void)k1;");
                self.locals.clear();
                for (k, sec) in rp.sections.iter().enumerate() {
                    // Row values of earlier sections are read back from their buffers.
                    self.locals.clear();
                    self.ln(&format!("/* section {k} */"));
                    self.section(sec)?;
                }
                self.locals.clear();
                self.indent -= 1;
                self.ln("}");
                self.close_kernel();
            }
            Phase::Global(gp) => {
                let kernels = self.global_kernels(&gp.steps);
                let many = kernels.len() > 1;
                for (g, (grid, pieces)) in kernels.into_iter().enumerate() {
                    let name = if many {
                        format!("rlobj_p{p}_{g}")
                    } else {
                        format!("rlobj_p{p}")
                    };
                    self.open_kernel(&name);
                    self.entries.push(KernelEntry {
                        name,
                        phase: p,
                        grid,
                    });
                    if grid == Grid::One {
                        self.ln("if (GROUP_ID != 0) return;");
                    }
                    for piece in pieces {
                        match piece {
                            Piece::Steps(a, b) if b > a + 1 => self.map_run(&gp.steps[a..b])?,
                            Piece::Steps(a, _) => self.step(gp.steps[a], false)?,
                            Piece::Partials(a) => self.two_phase(gp.steps[a].node, true)?,
                            Piece::Finish(a) => self.two_phase(gp.steps[a].node, false)?,
                        }
                    }
                    self.close_kernel();
                }
            }
        }
        Ok(())
    }

    /// Whether a global step is a batch-wide reduction, run in two phases.
    fn is_two_phase(&self, st: Step) -> bool {
        st.kind == StepKind::Reduce && self.prog.node(st.node).space == SpaceId::BATCH
    }

    /// The kernels of a global phase and what each runs. Consecutive elementwise steps over
    /// one space share a loop; a batch-wide reduction ends the kernel before it, runs its
    /// phase 1 as a kernel of its own (many blocks) and its phase 2 at the start of the next
    /// one-block kernel. Split targets also give every other run of steps its own kernel
    /// (kernel boundaries replace barriers, which CPU OpenCL compilers handle slowly inside
    /// loops).
    fn global_kernels(&self, steps: &[Step]) -> Vec<(Grid, Vec<Piece>)> {
        let mut out: Vec<(Grid, Vec<Piece>)> = Vec::new();
        let mut i = 0;
        while i < steps.len() {
            let piece = if self.is_two_phase(steps[i]) {
                out.push((
                    Grid::Chunks(self.reduce_fine(steps[i].node)),
                    vec![Piece::Partials(i)],
                ));
                Piece::Finish(i)
            } else {
                let sp = self.prog.node(steps[i].node).space;
                let mut j = i;
                while j < steps.len()
                    && steps[j].kind == StepKind::Map
                    && self.prog.node(steps[j].node).space == sp
                {
                    j += 1;
                }
                Piece::Steps(i, j.max(i + 1))
            };
            i = match piece {
                Piece::Steps(_, j) => j,
                _ => i + 1,
            };
            match out.last_mut() {
                Some((Grid::One, pieces)) if !self.t.split_global => pieces.push(piece),
                _ => out.push((Grid::One, vec![piece])),
            }
        }
        out
    }

    /// The space a reduction node reduces over.
    fn reduce_fine(&self, n: NodeId) -> SpaceId {
        match &self.prog.node(n).op {
            Op::Reduce { arg, .. } => self.prog.node(*arg).space,
            _ => SpaceId::BATCH,
        }
    }

    /// A batch-wide reduction in two deterministic phases. Phase 1 (`partials`, many
    /// blocks): block `c` reduces members `[c * RL_CHUNK, (c + 1) * RL_CHUNK)` to the triple
    /// `part[3c..3c+3]`. Phase 2 (one block): the partials are folded in chunk order by the
    /// block tree and finished. No float atomics; the result depends on neither the number
    /// of blocks nor timing.
    fn two_phase(&mut self, n: NodeId, partials: bool) -> R<()> {
        let Op::Reduce { op, empty, .. } = &self.prog.node(n).op else {
            return Err(werr(Some(n), "two-phase step on a non-reduction"));
        };
        let (ac, (kind, ddof), empty) = (acc_op(*op), finish_kind(*op), lit(*empty));
        let x = self.reduce_fine(n);
        self.comment(n);
        self.open_coarse(SpaceId::BATCH, false)?;
        let mem = self.members(x, SpaceId::BATCH)?;
        self.ln("const int nch = (m1 - m0 + RL_CHUNK - 1) / RL_CHUNK;");
        self.ln("float an = 0.0f, aa = 0.0f, ab = 0.0f;");
        if partials {
            self.ln("for (int c = GROUP_ID; c < nch; c += NUM_GROUPS) {");
            self.indent += 1;
            self.ln("const int c0 = m0 + c * RL_CHUNK;");
            self.ln("const int c1 = m1 - c0 < RL_CHUNK ? m1 : c0 + RL_CHUNK;");
            self.ln("an = 0.0f; aa = 0.0f; ab = 0.0f;");
            self.ln(&format!(
                "for (int m = c0 + tid; m < c1; m += NT) {{ const int e = {mem}[m];"
            ));
            self.indent += 1;
            self.acc_add(n, x, SpaceId::BATCH, false, false)?;
            self.close();
            self.ln(&format!("RL_REDUCE({ac}, an, aa, ab)"));
            self.ln(
                "if (tid == 0) { part[3 * c] = an; part[3 * c + 1] = aa; part[3 * c + 2] = ab; }",
            );
            self.close();
        } else {
            let out = self.buf(n)?;
            self.ln("for (int c = tid; c < nch; c += NT) {");
            self.ln(&format!(
                "  rl_acc_combine({ac}, &an, &aa, &ab, part[3 * c], part[3 * c + 1], part[3 * c + 2]);"
            ));
            self.ln("}");
            self.ln(&format!("RL_REDUCE({ac}, an, aa, ab)"));
            self.ln(&format!(
                "if (tid == 0) {out}[y] = rl_finish({kind}, an, aa, ab, {ddof}.0f, {empty});"
            ));
        }
        self.close();
        self.ln("BARRIER();");
        Ok(())
    }

    /// `rl_acc_add` of reduction `n` for the member `e` of `x` (under the element `y` of
    /// `y_space`); `combine` folds a row partial instead.
    fn acc_add(
        &mut self,
        n: NodeId,
        x: SpaceId,
        y_space: SpaceId,
        in_row: bool,
        combine: bool,
    ) -> R<()> {
        let Op::Reduce { op, arg, mask, .. } = &self.prog.node(n).op else {
            return Err(werr(Some(n), "accumulating a non-reduction"));
        };
        let ac = acc_op(*op);
        if combine {
            let pb = self.partial_buf(n)?;
            self.ln(&format!(
                "rl_acc_combine({ac}, &an, &aa, &ab, {pb}[3 * e], {pb}[3 * e + 1], {pb}[3 * e + 2]);"
            ));
            return Ok(());
        }
        let mut ctx = Ctx::new(x, "e").with(y_space, "y");
        if in_row {
            ctx = ctx.with(SpaceId::SEQ, "r");
        }
        let v = if *op == ReduceOp::Count {
            "0.0f".into()
        } else {
            self.load(*arg, &ctx)?
        };
        let add = format!("rl_acc_add({ac}, &an, &aa, &ab, {v});");
        match mask {
            Some(mk) => {
                let mk = self.load(*mk, &ctx)?;
                self.ln(&format!("if ({mk} != 0.0f) {add}"));
            }
            None => self.ln(&add),
        }
        Ok(())
    }

    fn section(&mut self, sec: &Section) -> R<()> {
        let seq_ctx = Ctx::new(SpaceId::SEQ, "r");
        for &n in &sec.seq {
            self.comment(n);
            let e = self.compute(n, &seq_ctx)?;
            self.ln(&format!("const float v{} = {e};", n.0));
            self.locals.insert(n);
            if self.plan.buffer[n.index()].is_some() {
                let b = self.buf(n)?;
                self.ln(&format!(
                    "{b}[r] = v{}; /* uniform: every thread stores the same value */",
                    n.0
                ));
            }
        }
        let accs: Vec<NodeId> = sec.reduce.iter().chain(&sec.partial).copied().collect();
        for &n in &accs {
            self.ln(&format!(
                "float n{0} = 0.0f, a{0} = 0.0f, c{0} = 0.0f;",
                n.0
            ));
        }
        let tok_ctx = Ctx::new(SpaceId::TOK, "k").with(SpaceId::SEQ, "r");
        if !sec.tok.is_empty() || !accs.is_empty() {
            self.ln("for (int k = k0 + tid; k < k1; k += NT) {");
            self.indent += 1;
            for &n in &sec.tok {
                self.comment(n);
                let e = self.compute(n, &tok_ctx)?;
                self.ln(&format!("const float v{} = {e};", n.0));
                self.locals.insert(n);
                if self.plan.buffer[n.index()].is_some() {
                    let b = self.buf(n)?;
                    self.ln(&format!("{b}[k] = v{};", n.0));
                }
            }
            for &n in &accs {
                self.comment(n);
                let Op::Reduce { op, arg, mask, .. } = &self.prog.node(n).op else {
                    return Err(werr(Some(n), "row accumulator on a non-reduction"));
                };
                let x = if *op == ReduceOp::Count {
                    "0.0f".into()
                } else {
                    self.load(*arg, &tok_ctx)?
                };
                let add = format!(
                    "rl_acc_add({}, &n{1}, &a{1}, &c{1}, {x});",
                    acc_op(*op),
                    n.0
                );
                match mask {
                    Some(m) => {
                        let m = self.load(*m, &tok_ctx)?;
                        self.ln(&format!("if ({m} != 0.0f) {add}"));
                    }
                    None => self.ln(&add),
                }
            }
            self.indent -= 1;
            self.ln("}");
            for &n in &sec.tok {
                self.locals.remove(&n);
            }
        }
        for &n in &sec.reduce {
            let Op::Reduce { op, empty, .. } = &self.prog.node(n).op else {
                continue;
            };
            let (kind, ddof) = finish_kind(*op);
            self.ln(&format!(
                "RL_REDUCE({}, n{1}, a{1}, c{1})",
                acc_op(*op),
                n.0
            ));
            self.ln(&format!(
                "const float v{0} = rl_finish({kind}, n{0}, a{0}, c{0}, {ddof}.0f, {1});",
                n.0,
                lit(*empty)
            ));
            self.locals.insert(n);
            if self.plan.buffer[n.index()].is_some() {
                let b = self.buf(n)?;
                self.ln(&format!("if (tid == 0) {b}[r] = v{};", n.0));
            }
        }
        for &n in &sec.partial {
            let Op::Reduce { op, .. } = &self.prog.node(n).op else {
                continue;
            };
            let b = self.partial_buf(n)?;
            self.ln(&format!(
                "RL_REDUCE({}, n{1}, a{1}, c{1})",
                acc_op(*op),
                n.0
            ));
            self.ln(&format!(
                "if (tid == 0) {{ {b}[3 * r] = n{0}; {b}[3 * r + 1] = a{0}; {b}[3 * r + 2] = c{0}; }}",
                n.0
            ));
        }
        self.ln("BARRIER();");
        for st in &sec.steps {
            self.step(*st, true)?;
        }
        Ok(())
    }

    /// Several elementwise global steps over one space in one loop; values computed in the
    /// loop are read as locals by later nodes of the run.
    fn map_run(&mut self, steps: &[Step]) -> R<()> {
        let x = self.prog.node(steps[0].node).space;
        self.ln(&format!(
            "for (int e = tid; e < {}; e += NT) {{",
            self.size(x)
        ));
        self.indent += 1;
        let ctx = Ctx::new(x, "e");
        for st in steps {
            let n = st.node;
            self.comment(n);
            let e = self.compute(n, &ctx)?;
            let out = self.buf(n)?;
            self.ln(&format!("const float v{} = {e};", n.0));
            self.ln(&format!("{out}[e] = v{};", n.0));
            self.locals.insert(n);
        }
        for st in steps {
            self.locals.remove(&st.node);
        }
        self.close();
        self.ln("BARRIER();");
        Ok(())
    }

    fn partial_buf(&self, n: NodeId) -> R<String> {
        self.plan
            .buffers
            .iter()
            .position(|b| b.node == n && b.kind == BufferKind::Partial)
            .map(|b| format!("b{b}"))
            .ok_or_else(|| werr(Some(n), "no partial buffer"))
    }

    /// Offsets and members of the CSR (fine → seq): the elements of `fine` in row `r`.
    fn row_csr(&self, fine: SpaceId) -> R<(String, String)> {
        Ok((
            self.ix(IndexArray::CsrOffsets {
                fine,
                coarse: SpaceId::SEQ,
            })?,
            self.ix(IndexArray::CsrMembers {
                fine,
                coarse: SpaceId::SEQ,
            })?,
        ))
    }

    /// Opens a loop over the elements `y` of `coarse` (this row's, in row phases).
    fn open_coarse(&mut self, coarse: SpaceId, in_row: bool) -> R<()> {
        if in_row && coarse == SpaceId::SEQ {
            self.ln("{ const int y = r;");
        } else if in_row {
            let (o, m) = self.row_csr(coarse)?;
            self.ln(&format!(
                "for (int ym = {o}[r]; ym < {o}[r + 1]; ++ym) {{ const int y = {m}[ym];"
            ));
        } else {
            self.ln(&format!(
                "for (int y = 0; y < {}; ++y) {{",
                self.size(coarse)
            ));
        }
        self.indent += 1;
        Ok(())
    }

    fn close(&mut self) {
        self.indent -= 1;
        self.ln("}");
    }

    /// `m0`/`m1` and the member array of CSR (fine → coarse) at `y`.
    fn members(&mut self, fine: SpaceId, coarse: SpaceId) -> R<String> {
        let o = self.ix(IndexArray::CsrOffsets { fine, coarse })?;
        let m = self.ix(IndexArray::CsrMembers { fine, coarse })?;
        self.ln(&format!("const int m0 = {o}[y], m1 = {o}[y + 1];"));
        Ok(m)
    }

    fn step(&mut self, st: Step, in_row: bool) -> R<()> {
        let n = st.node;
        let node = self.prog.node(n);
        self.comment(n);
        let elem_ctx = |x: SpaceId, var: &str, y: Option<SpaceId>| {
            let mut c = Ctx::new(x, var);
            if let Some(y) = y {
                c = c.with(y, "y");
            }
            if in_row {
                c = c.with(SpaceId::SEQ, "r");
            }
            c
        };
        match st.kind {
            StepKind::Map => {
                let out = self.buf(n)?;
                let x = node.space;
                if in_row {
                    let (o, m) = self.row_csr(x)?;
                    self.ln(&format!(
                        "for (int em = {o}[r] + tid; em < {o}[r + 1]; em += NT) {{ const int e = {m}[em];"
                    ));
                } else {
                    self.ln(&format!(
                        "for (int e = tid; e < {}; e += NT) {{",
                        self.size(x)
                    ));
                }
                self.indent += 1;
                let e = self.compute(n, &elem_ctx(x, "e", None))?;
                self.ln(&format!("{out}[e] = {e};"));
                self.close();
            }
            StepKind::Reduce | StepKind::Combine => {
                let Op::Reduce { op, empty, arg, .. } = &node.op else {
                    return Err(werr(Some(n), "reduce step on a non-reduction"));
                };
                let (ac, (kind, ddof), empty) = (acc_op(*op), finish_kind(*op), lit(*empty));
                let out = self.buf(n)?;
                let y_space = node.space;
                let combine = st.kind == StepKind::Combine;
                let x = if combine {
                    SpaceId::SEQ
                } else {
                    self.prog.node(*arg).space
                };
                self.open_coarse(y_space, in_row)?;
                let mem = self.members(x, y_space)?;
                self.ln("float an = 0.0f, aa = 0.0f, ab = 0.0f;");
                self.ln(&format!(
                    "for (int m = m0 + tid; m < m1; m += NT) {{ const int e = {mem}[m];"
                ));
                self.indent += 1;
                self.acc_add(n, x, y_space, in_row, combine)?;
                self.close();
                self.ln(&format!("RL_REDUCE({ac}, an, aa, ab)"));
                self.ln(&format!(
                    "if (tid == 0) {out}[y] = rl_finish({kind}, an, aa, ab, {ddof}.0f, {empty});"
                ));
                self.close();
            }
            StepKind::Segment => self.segment_step(n, in_row)?,
            StepKind::Quantile => self.quantile_step(n, in_row)?,
            StepKind::Scan => self.scan_step(n, in_row)?,
            StepKind::Shift => {
                let Op::Shift {
                    arg,
                    offset,
                    fill,
                    within,
                } = &node.op
                else {
                    return Err(werr(Some(n), "shift step on a non-shift"));
                };
                let out = self.buf(n)?;
                let x = self.prog.node(*arg).space;
                self.open_coarse(*within, in_row)?;
                let mem = self.members(x, *within)?;
                self.ln(&format!(
                    "for (int m = m0 + tid; m < m1; m += NT) {{ const int e = {mem}[m];"
                ));
                self.indent += 1;
                self.ln(&format!(
                    "const int s = m + ({offset}); float v = {};",
                    lit(*fill)
                ));
                let ld = self.load(*arg, &elem_ctx(x, "es", Some(*within)))?;
                self.ln(&format!(
                    "if (s >= m0 && s < m1) {{ const int es = {mem}[s]; v = {ld}; }}"
                ));
                self.ln(&format!("{out}[e] = v;"));
                self.close();
                self.close();
            }
        }
        self.ln("BARRIER();");
        Ok(())
    }

    /// Context of member `var` of an `x` element under the current `y` (and row `r`).
    fn member_ctx(x: SpaceId, y_space: SpaceId, var: &str, in_row: bool) -> Ctx {
        let mut c = Ctx::new(x, var).with(y_space, "y");
        if in_row {
            c = c.with(SpaceId::SEQ, "r");
        }
        c
    }

    /// Opens the loop over `y_space` for a segment/quantile step over the members of `arg`;
    /// returns the member array and the loads `[x(e), x(ej), on(e), on(ej)]` (`on` is the
    /// mask test, `1` without a mask).
    fn open_members(
        &mut self,
        arg: NodeId,
        mask: Option<NodeId>,
        y_space: SpaceId,
        in_row: bool,
    ) -> R<(String, [String; 4])> {
        let x = self.prog.node(arg).space;
        let on = |w: &Self, var: &str| -> R<String> {
            match mask {
                Some(m) => Ok(format!(
                    "({} != 0.0f)",
                    w.load(m, &Self::member_ctx(x, y_space, var, in_row))?
                )),
                None => Ok("1".into()),
            }
        };
        self.open_coarse(y_space, in_row)?;
        let mem = self.members(x, y_space)?;
        let loads = [
            self.load(arg, &Self::member_ctx(x, y_space, "e", in_row))?,
            self.load(arg, &Self::member_ctx(x, y_space, "ej", in_row))?,
            on(self, "e")?,
            on(self, "ej")?,
        ];
        Ok((mem, loads))
    }

    fn segment_step(&mut self, n: NodeId, in_row: bool) -> R<()> {
        let node = self.prog.node(n);
        let Op::Segment {
            op,
            arg,
            mask,
            within,
            k,
        } = &node.op
        else {
            return Err(werr(Some(n), "segment step on a non-segment op"));
        };
        if *op == SegmentOp::ColumnSum {
            return self.column_sum_step(n, *arg, *mask, *within, in_row);
        }
        let out = self.buf(n)?;
        let x = self.prog.node(*arg).space;
        let ctx_of = |var: &str| Self::member_ctx(x, *within, var, in_row);
        let (mem, [xe, xj, one, onj]) = self.open_members(*arg, *mask, *within, in_row)?;
        // Count (and log-sum-exp for softmax) of the unmasked members.
        let lse = matches!(op, SegmentOp::Softmax | SegmentOp::LogSoftmax);
        self.ln("float an = 0.0f, aa = 0.0f, ab = 0.0f;");
        self.ln(&format!(
            "for (int m = m0 + tid; m < m1; m += NT) {{ const int e = {mem}[m];"
        ));
        let v = if lse { xe.clone() } else { "0.0f".into() };
        self.ln(&format!(
            "  if ({one}) rl_acc_add({}, &an, &aa, &ab, {v});",
            if lse { 4 } else { 0 }
        ));
        self.ln("}");
        self.ln(&format!(
            "RL_REDUCE({}, an, aa, ab)",
            if lse { 4 } else { 0 }
        ));
        if lse {
            self.ln("const float lse = aa + log(ab);");
        }
        if *op == SegmentOp::TopK {
            let kv = match k {
                Some(k) => self.load(*k, &ctx_of("e").with(*within, "y"))?,
                None => "0.0f".into(),
            };
            self.ln(&format!("float kk = {kv};"));
            self.ln("kk = kk != kk ? 0.0f : rl_min(rl_max(floor(kk), 0.0f), an);");
        }
        self.ln(&format!(
            "for (int m = m0 + tid; m < m1; m += NT) {{ const int e = {mem}[m];"
        ));
        self.indent += 1;
        match op {
            SegmentOp::Softmax => self.ln(&format!("{out}[e] = ({one}) ? exp({xe} - lse) : 0.0f;")),
            SegmentOp::LogSoftmax => self.ln(&format!("{out}[e] = ({one}) ? ({xe} - lse) : 0.0f;")),
            SegmentOp::ColumnSum => {
                return Err(werr(Some(n), "column sums are written by column_sum_step"))
            }
            SegmentOp::Rank | SegmentOp::TopK => {
                let before = if *op == SegmentOp::Rank {
                    "rl_before"
                } else {
                    "rl_before_desc"
                };
                self.ln(&format!("const float xi = {xe}; int cnt = 0;"));
                self.ln(&format!("if ({one}) {{"));
                self.ln(&format!(
                    "  for (int j = m0; j < m1; ++j) {{ const int ej = {mem}[j]; if (({onj}) && {before}({xj}, ej, xi, e)) cnt++; }}"
                ));
                self.ln("} else {");
                self.ln(&format!(
                    "  cnt = (int)an; for (int j = m0; j < m; ++j) {{ const int ej = {mem}[j]; if (!({onj})) cnt++; }}"
                ));
                self.ln("}");
                if *op == SegmentOp::Rank {
                    self.ln(&format!("{out}[e] = (float)cnt;"));
                } else {
                    self.ln(&format!(
                        "{out}[e] = (({one}) && (float)cnt < kk) ? 1.0f : 0.0f;"
                    ));
                }
            }
        }
        self.close();
        self.close();
        Ok(())
    }

    /// `ColumnSum`: every token of a `within` segment sums the unmasked members at its
    /// padded position, in member (= row) order, so the result is bitwise reproducible.
    /// Quadratic in the segment's tokens, like `Rank`: fine for group-sized segments.
    fn column_sum_step(
        &mut self,
        n: NodeId,
        arg: NodeId,
        mask: Option<NodeId>,
        within: SpaceId,
        in_row: bool,
    ) -> R<()> {
        let out = self.buf(n)?;
        let x = self.prog.node(arg).space;
        let mut ctx = Ctx::new(x, "ej").with(within, "y");
        if in_row {
            ctx = ctx.with(SpaceId::SEQ, "r");
        }
        let pos = self.ix(IndexArray::TokPos)?;
        self.open_coarse(within, in_row)?;
        let mem = self.members(x, within)?;
        let xj = self.load(arg, &ctx)?;
        let onj = match mask {
            Some(m) => format!("({} != 0.0f)", self.load(m, &ctx)?),
            None => "1".into(),
        };
        self.ln(&format!(
            "for (int m = m0 + tid; m < m1; m += NT) {{ const int e = {mem}[m];"
        ));
        self.indent += 1;
        self.ln(&format!("const int pe = {pos}[e]; float acc = 0.0f;"));
        self.ln(&format!(
            "for (int j = m0; j < m1; ++j) {{ const int ej = {mem}[j]; if ({pos}[ej] == pe && ({onj})) acc += {xj}; }}"
        ));
        self.ln(&format!("{out}[e] = acc;"));
        self.close();
        self.close();
        Ok(())
    }

    fn quantile_step(&mut self, n: NodeId, in_row: bool) -> R<()> {
        let node = self.prog.node(n);
        let Op::Quantile {
            arg,
            mask,
            q,
            empty,
        } = &node.op
        else {
            return Err(werr(Some(n), "quantile step on a non-quantile"));
        };
        let out = self.buf(n)?;
        let y_space = node.space;
        let (mem, [xe, xj, one, onj]) = self.open_members(*arg, *mask, y_space, in_row)?;
        let mut yc = Ctx::new(y_space, "y");
        if in_row {
            yc = yc.with(SpaceId::SEQ, "r");
        }
        let qv = self.load(*q, &yc)?;
        self.ln("float an = 0.0f, aa = 0.0f, ab = 0.0f;");
        self.ln(&format!(
            "for (int m = m0 + tid; m < m1; m += NT) {{ const int e = {mem}[m];"
        ));
        self.ln(&format!(
            "  if ({one}) rl_acc_add(0, &an, &aa, &ab, ({xe} != {xe}) ? 1.0f : 0.0f);"
        ));
        self.ln("}");
        self.ln("RL_REDUCE(0, an, aa, ab)");
        self.ln(&format!("const float q = {qv};"));
        self.ln("const float pos = rl_min(rl_max(q, 0.0f), 1.0f) * (an - 1.0f);");
        self.ln("const int lo = (int)floor(pos); const int hi = (int)ceil(pos) < (int)an - 1 ? (int)ceil(pos) : (int)an - 1;");
        self.ln("if (an > 0.0f && aa == 0.0f && q == q) {");
        self.indent += 1;
        self.ln(&format!(
            "for (int m = m0 + tid; m < m1; m += NT) {{ const int e = {mem}[m];"
        ));
        self.indent += 1;
        self.ln(&format!(
            "if ({one}) {{ const float xi = {xe}; int cnt = 0;"
        ));
        self.ln(&format!(
            "  for (int j = m0; j < m1; ++j) {{ const int ej = {mem}[j]; if (({onj}) && rl_before({xj}, ej, xi, e)) cnt++; }}"
        ));
        self.ln("  if (cnt == lo) shq[0] = xi;");
        self.ln("  if (cnt == hi) shq[1] = xi;");
        self.ln("}");
        self.close();
        self.close();
        self.ln("BARRIER();");
        self.ln("if (tid == 0) {");
        self.ln(&format!(
            "  {out}[y] = an == 0.0f ? {} : ((aa != 0.0f || q != q) ? RL_NAN : (lo == hi ? shq[0] : shq[0] + (shq[1] - shq[0]) * (pos - (float)lo)));",
            lit(*empty)
        ));
        self.ln("}");
        self.ln("BARRIER();");
        self.close();
        Ok(())
    }

    fn scan_step(&mut self, n: NodeId, in_row: bool) -> R<()> {
        let node = self.prog.node(n);
        let Op::Scan {
            op,
            arg,
            coef,
            within,
        } = &node.op
        else {
            return Err(werr(Some(n), "scan step on a non-scan"));
        };
        let out = self.buf(n)?;
        let x = self.prog.node(*arg).space;
        let mut ctx = Ctx::new(x, "e").with(*within, "y");
        if in_row {
            ctx = ctx.with(SpaceId::SEQ, "r");
        }
        self.open_coarse(*within, in_row)?;
        let mem = self.members(x, *within)?;
        let rev = matches!(
            op,
            ScanOp::CumsumRev | ScanOp::ScanRev | ScanOp::CumMinRev | ScanOp::CumMaxRev
        );
        let init = match op {
            ScanOp::CumMin | ScanOp::CumMinRev => "RL_INF",
            ScanOp::CumMax | ScanOp::CumMaxRev => "(-RL_INF)",
            _ => "0.0f",
        };
        let xv = self.load(*arg, &ctx)?;
        let cv = match coef {
            Some(c) => self.load(*c, &ctx)?,
            None => "0.0f".into(),
        };
        let upd = match op {
            ScanOp::Cumsum | ScanOp::CumsumRev => format!("acc = acc + {xv};"),
            ScanOp::ScanRev | ScanOp::ScanFwd => format!("acc = {xv} + {cv} * acc;"),
            ScanOp::CumMin | ScanOp::CumMinRev => format!("acc = rl_min(acc, {xv});"),
            ScanOp::CumMax | ScanOp::CumMaxRev => format!("acc = rl_max(acc, {xv});"),
        };
        self.ln("if (tid == 0) {");
        self.indent += 1;
        self.ln(&format!("float acc = {init};"));
        if rev {
            self.ln(&format!(
                "for (int m = m1 - 1; m >= m0; --m) {{ const int e = {mem}[m];"
            ));
        } else {
            self.ln(&format!(
                "for (int m = m0; m < m1; ++m) {{ const int e = {mem}[m];"
            ));
        }
        self.ln(&format!("  {upd}"));
        self.ln(&format!("  {out}[e] = acc;"));
        self.ln("}");
        self.close();
        self.close();
        Ok(())
    }

    fn scatter(&mut self) {
        self.ln("");
        self.ln("/* Copies compact tok buffer at work slot `buf_slot` into padded dst via index array slot `pad_slot`. */");
        self.ln("KERNEL rlobj_scatter(GLOBAL const float* work, GLOBAL const int* idx, GLOBAL float* dst, const int buf_slot, const int pad_slot) {");
        self.ln(&format!(
            "  const int n = idx[{}];",
            header::space_size(SpaceId::TOK.index())
        ));
        self.ln("  GLOBAL const float* src = work + idx[buf_slot];");
        self.ln("  GLOBAL const int* pad = idx + idx[pad_slot];");
        self.ln("  for (int k = GROUP_ID * LOCAL_SIZE + LOCAL_ID; k < n; k += NUM_GROUPS * LOCAL_SIZE) dst[pad[k]] = src[k];");
        self.ln("}");
    }
}
