//! `--backend cpu`: runs the kernel plan ([`rlobj_ir::schedule`]) with Cranelift-compiled
//! token loops.
//!
//! * Each row-phase [`Section`] with token work becomes one JIT loop (`rlobj_back::clif`)
//!   over a row's tokens: it streams token inputs, reads per-row values as uniforms,
//!   writes buffered token values, and accumulates `tok → seq` reductions and the per-row
//!   partials of `tok → batch/grp` reductions. Rows are split across rayon threads.
//! * A section's `seq` nodes and every step (row-local or global) run in Rust in `f64` over
//!   whole spaces: they touch `O(rows)` or `O(segments)` data, never a token loop's worth
//!   (scans and segment ops over tokens excepted).
//! * Determinism: every row's loop is independent of how rows are split, and partials are
//!   combined in row order, so results are bit-identical for any thread count.
//!
//! Values are `f32` in the loops (bools as 0.0/1.0) and `f64` elsewhere.

use crate::{Backend, Bound, Evaluation, RunError};
use rayon::prelude::*;
use rlobj_back::clif::{Acc, AccKind, Compiled, Jit, LoopSpec, Source};
use rlobj_ir::schedule::{self, Phase, Plan, Role, Section, Step, StepKind};
use rlobj_ir::{
    scalar, Elem, InputId, InputKind, Layout, NodeId, Op, Program, ReduceOp, SpaceId, SpaceKind,
    Structural,
};
use std::collections::HashMap;

mod reduce;
use crate::interp::{reduce_buckets, scan_runs, segment_op, segment_runs, shift_runs};
use reduce::{combine2, finish_acc, finish_row};

fn rerr(e: impl std::fmt::Display) -> RunError {
    RunError(e.to_string())
}

/// What a loop's pointer slot is bound to for a row.
#[derive(Clone, Copy, Debug, PartialEq)]
enum PtrBind {
    /// A token input (dense, `tok` order).
    Input(InputId),
    /// A buffered token node (read or written).
    Buffer(NodeId),
    TokPos,
    /// Per-thread row scratch (an argument of a reduction the loop cannot accumulate).
    Scratch(usize),
    /// `f32` copy of a row-segment node, gathered through `SegIndex`.
    SegValues(NodeId),
    /// `tok → segment` index map of a row-segment space.
    SegIndex(SpaceId),
}

/// How one reduction of a section is finished after its loop.
#[derive(Clone, Debug)]
struct RedPlan {
    node: NodeId,
    op: ReduceOp,
    empty: f64,
    /// Accumulator slot of the element count; `None` when unmasked (the row's length).
    count: Option<u32>,
    value: Option<u32>,
    /// Scratch slots of (arg, mask) for ops that need the row's values.
    scratch: Option<(usize, Option<usize>)>,
    partial: bool,
}

#[derive(Clone, Debug)]
struct SectionLoop {
    func: usize,
    ptrs: Vec<PtrBind>,
    /// Root nodes whose per-row value fills each uniform slot.
    unis: Vec<NodeId>,
    reds: Vec<RedPlan>,
    n_acc: usize,
    n_scratch: usize,
}

/// A program compiled for the CPU: the plan plus one JIT loop per token section.
pub struct CpuProgram {
    prog: Program,
    plan: Plan,
    code: Compiled,
    /// `loops[phase][section]`.
    loops: Vec<Vec<Option<SectionLoop>>>,
    /// Token nodes the CPU materialises (results and operands of steps); every other token
    /// value the plan buffers between loops is recomputed from its operands where it is read.
    keep: Vec<bool>,
    /// Token buffers kept between runs (so a run neither allocates nor page-faults them).
    pool: std::sync::Mutex<Vec<Vec<f32>>>,
}

/// A run's results with `f32` gradients that reuse memory across runs (see
/// [`CpuProgram::run_into`]).
#[derive(Debug, Default)]
pub struct CpuResults {
    /// Loss, metrics, outputs and states; `eval.grads` holds only non-token gradients.
    pub eval: Evaluation,
    /// Gradients of token inputs, dense in `tok` order.
    pub tok_grads: Vec<(InputId, Vec<f32>)>,
}

/// Whether a node is an elementwise op a loop can recompute.
fn elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(..) | Op::Binary(..) | Op::Select(..) | Op::Clamp(..) | Op::Const(_)
    )
}

/// Which token nodes the CPU stores: results, step outputs and operands of steps or global
/// phases. Elementwise token values only read by later token loops are recomputed there.
fn kept_tok_nodes(prog: &Program, plan: &Plan) -> Vec<bool> {
    let nn = prog.nodes.len();
    let mut keep = vec![false; nn];
    for n in schedule::result_nodes(prog) {
        keep[n.index()] = true;
    }
    let mut in_loop = vec![false; nn];
    for phase in &plan.phases {
        if let Phase::Row(rp) = phase {
            for sec in &rp.sections {
                for &n in sec.tok.iter().chain(&sec.reduce).chain(&sec.partial) {
                    in_loop[n.index()] = true;
                }
            }
        }
    }
    for (i, node) in prog.nodes.iter().enumerate() {
        let live = !matches!(plan.roles[i], Role::Leaf) || keep[i];
        if !live {
            continue;
        }
        if node.space == SpaceId::TOK && !elementwise(&node.op) && !in_loop[i] {
            // A step's own output (scan, shift, segment op) is always stored.
            keep[i] = matches!(plan.roles[i], Role::Computed { .. });
        }
        // Operands of non-loop consumers (steps, global phases) are stored.
        let consumer_in_loop = in_loop[i];
        if !consumer_in_loop && matches!(plan.roles[i], Role::Computed { .. }) {
            for o in node.op.operands() {
                let r = resolve(plan, o);
                if prog.node(r).space == SpaceId::TOK {
                    keep[r.index()] = true;
                }
            }
        }
    }
    // Only what the plan materialises can be kept (leaves are read in place).
    for (i, k) in keep.iter_mut().enumerate() {
        *k = *k && plan.buffer[i].is_some() && prog.nodes[i].space == SpaceId::TOK;
    }
    keep
}

/// Follows `Alias` roles (broadcasts, stop-grads) to the node that holds the value.
fn resolve(plan: &Plan, mut n: NodeId) -> NodeId {
    while let Role::Alias(a) = plan.roles[n.index()] {
        n = a;
    }
    n
}

impl CpuProgram {
    /// Schedules and JIT-compiles `prog` (differentiated and optimised).
    pub fn compile(prog: &Program, keep_text: bool) -> Result<Self, RunError> {
        let plan = schedule::schedule(prog).map_err(rerr)?;
        Self::with_plan(prog, plan, keep_text)
    }

    /// JIT-compiles the token loops of an already scheduled `plan` of `prog`.
    pub fn with_plan(prog: &Program, plan: Plan, keep_text: bool) -> Result<Self, RunError> {
        let keep = kept_tok_nodes(prog, &plan);
        let mut jit = Jit::new(keep_text).map_err(rerr)?;
        let mut loops = Vec::new();
        for (pi, phase) in plan.phases.iter().enumerate() {
            let mut v = Vec::new();
            if let Phase::Row(rp) = phase {
                for (si, sec) in rp.sections.iter().enumerate() {
                    v.push(build_loop(
                        prog,
                        &plan,
                        &keep,
                        sec,
                        &mut jit,
                        &format!("p{pi}s{si}"),
                    )?);
                }
            }
            loops.push(v);
        }
        let code = jit.finish().map_err(rerr)?;
        Ok(CpuProgram {
            prog: prog.clone(),
            plan,
            code,
            loops,
            keep,
            pool: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Token bytes the JIT loops actually stream per valid token (inputs read and buffers
    /// read or written, 4 bytes each per loop; recomputed values cost nothing). Steps over
    /// token buffers (scans, segment ops) are not counted.
    pub fn loop_bytes_per_token(&self) -> f64 {
        self.loops
            .iter()
            .flatten()
            .flatten()
            .map(|lp| {
                lp.ptrs
                    .iter()
                    .filter(|b| !matches!(b, PtrBind::Scratch(_) | PtrBind::SegValues(_)))
                    .count() as f64
                    * 4.0
            })
            .sum()
    }

    /// Number of JIT token loops a run executes.
    pub fn loop_count(&self) -> usize {
        self.loops.iter().flatten().flatten().count()
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn program(&self) -> &Program {
        &self.prog
    }

    /// CLIF text of every loop (empty unless compiled with `keep_text`).
    pub fn clif_text(&self) -> String {
        self.code.text.join("\n")
    }

    /// Runs on a batch. `tok` holds `f32` data (dense, `tok` order) of token inputs; every
    /// other value input comes from `other` in its own space. `pool` picks the threads.
    pub fn run(
        &self,
        layout: &Layout,
        tok: &[Option<&[f32]>],
        other: &[Option<&[f64]>],
        params: &[f64],
        states: &[f64],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Evaluation, RunError> {
        let mut ex = Exec::new(self, layout, tok, other, params, states)?;
        match pool {
            Some(p) => p.install(|| ex.run_all())?,
            None => ex.run_all()?,
        }
        let out = ex.finish(None);
        ex.recycle();
        out
    }

    /// Like [`CpuProgram::run`], but token gradients stay `f32` and are swapped into
    /// `out.tok_grads` (whose previous vectors are recycled for the next run), so a
    /// steady-state training loop allocates no token-sized memory.
    #[allow(clippy::too_many_arguments)]
    pub fn run_into(
        &self,
        layout: &Layout,
        tok: &[Option<&[f32]>],
        other: &[Option<&[f64]>],
        params: &[f64],
        states: &[f64],
        pool: Option<&rayon::ThreadPool>,
        out: &mut CpuResults,
    ) -> Result<(), RunError> {
        // The caller's gradient vectors become this run's buffers (no second copy).
        if let Ok(mut pool) = self.pool.lock() {
            pool.extend(out.tok_grads.iter_mut().map(|(_, v)| std::mem::take(v)));
        }
        let mut ex = Exec::new(self, layout, tok, other, params, states)?;
        match pool {
            Some(p) => p.install(|| ex.run_all())?,
            None => ex.run_all()?,
        }
        let r = ex.finish(Some(&mut out.tok_grads));
        ex.recycle();
        out.eval = r?;
        Ok(())
    }
}

fn build_loop(
    prog: &Program,
    plan: &Plan,
    keep: &[bool],
    sec: &Section,
    jit: &mut Jit,
    name: &str,
) -> Result<Option<SectionLoop>, RunError> {
    if sec.tok.is_empty() && sec.reduce.is_empty() && sec.partial.is_empty() {
        return Ok(None);
    }
    let mut spec = SpecBuilder {
        name: name.into(),
        ..Default::default()
    };
    let mut ptrs: Vec<PtrBind> = Vec::new();
    let mut unis: Vec<NodeId> = Vec::new();
    let in_loop: Vec<NodeId> = sec.tok.clone();
    let mut have: HashMap<NodeId, ()> = HashMap::new();
    let slot = |ptrs: &mut Vec<PtrBind>, b: PtrBind| -> u32 {
        match ptrs.iter().position(|x| *x == b) {
            Some(k) => k as u32,
            None => {
                ptrs.push(b);
                (ptrs.len() - 1) as u32
            }
        }
    };
    let mut cx = NeedCx {
        prog,
        plan,
        keep,
        in_loop: &in_loop,
    };
    let mut need = |o: NodeId,
                    spec: &mut SpecBuilder,
                    ptrs: &mut Vec<PtrBind>,
                    unis: &mut Vec<NodeId>,
                    have: &mut HashMap<NodeId, ()>|
     -> Result<(), RunError> { cx.need(o, spec, ptrs, unis, have) };
    for &n in &sec.tok {
        let node = prog.node(n);
        match node.op {
            Op::Input(_)
            | Op::Structural(_)
            | Op::Param(_)
            | Op::State(_)
            | Op::Broadcast(_)
            | Op::StopGrad(_) => {
                // A result that is a leaf or alias: read it like an operand.
                let inner = match node.op {
                    Op::Broadcast(a) | Op::StopGrad(a) => a,
                    _ => n,
                };
                if inner != n {
                    need(inner, &mut spec, &mut ptrs, &mut unis, &mut have)?;
                    spec.body_alias(n, resolve(plan, inner));
                } else {
                    // Leaf result: source itself without buffer lookup.
                    let r = n;
                    have.insert(r, ());
                    let src = match node.op {
                        Op::Input(i) => Source::Stream(slot(&mut ptrs, PtrBind::Input(i))),
                        Op::Structural(Structural::TokPosition) => {
                            Source::Stream(slot(&mut ptrs, PtrBind::TokPos))
                        }
                        _ => {
                            unis.push(r);
                            Source::Uniform((unis.len() - 1) as u32)
                        }
                    };
                    spec.sources.push((r, src));
                }
            }
            _ => {
                for o in node.op.operands() {
                    need(o, &mut spec, &mut ptrs, &mut unis, &mut have)?;
                }
                spec.body.push(n);
            }
        }
        if keep[n.index()] {
            let k = slot(&mut ptrs, PtrBind::Buffer(n));
            spec.sinks.push((n, k));
        }
    }
    let mut reds = Vec::new();
    let mut n_acc = 0u32;
    let mut n_scratch = 0usize;
    for (&n, partial) in sec
        .reduce
        .iter()
        .map(|n| (n, false))
        .chain(sec.partial.iter().map(|n| (n, true)))
    {
        let Op::Reduce {
            op,
            arg,
            mask,
            empty,
        } = prog.node(n).op
        else {
            return Err(RunError(format!(
                "cpu: node %{} in a reduce list is not a reduction",
                n.0
            )));
        };
        need(arg, &mut spec, &mut ptrs, &mut unis, &mut have)?;
        if let Some(m) = mask {
            need(m, &mut spec, &mut ptrs, &mut unis, &mut have)?;
        }
        // Reductions over the same values share accumulators (a masked mean and a masked
        // sum of one value, the counts of one mask): each one costs a loop-carried register.
        let mut acc_slot = |spec: &mut SpecBuilder, value: NodeId, kind: AccKind| -> u32 {
            let same = |a: &Acc| {
                a.kind == kind && a.mask == mask && (kind == AccKind::Count || a.value == value)
            };
            if let Some(a) = spec.accs.iter().find(|a| same(a)) {
                return a.slot;
            }
            let slot = n_acc;
            n_acc += 1;
            spec.accs.push(Acc {
                value,
                mask,
                kind,
                slot,
            });
            slot
        };
        // An unmasked count is the row's length: no accumulator.
        let count = mask.map(|_| acc_slot(&mut spec, arg, AccKind::Count));
        let kind = match op {
            ReduceOp::Sum | ReduceOp::Mean => Some(AccKind::Sum),
            ReduceOp::Max => Some(AccKind::Max),
            ReduceOp::Min => Some(AccKind::Min),
            _ => None,
        };
        let (value, scratch) = match kind {
            Some(kind) => (Some(acc_slot(&mut spec, arg, kind)), None),
            None if op == ReduceOp::Count => (None, None),
            None => {
                let a = n_scratch;
                n_scratch += 1;
                let k = slot(&mut ptrs, PtrBind::Scratch(a));
                spec.sinks.push((arg, k));
                let m = mask.map(|m| {
                    let s = n_scratch;
                    n_scratch += 1;
                    let k = slot(&mut ptrs, PtrBind::Scratch(s));
                    spec.sinks.push((m, k));
                    s
                });
                (None, Some((a, m)))
            }
        };
        reds.push(RedPlan {
            node: n,
            op,
            empty,
            count,
            value,
            scratch,
            partial,
        });
    }
    if spec.sinks.is_empty() && spec.accs.is_empty() && reds.is_empty() {
        // Everything this loop computed is recomputed where it is read.
        return Ok(None);
    }
    let mut body = std::mem::take(&mut spec.consts);
    body.append(&mut spec.body);
    spec.body = body;
    let func = jit.add_loop(prog, &spec.finish()).map_err(rerr)?;
    Ok(Some(SectionLoop {
        func,
        ptrs,
        unis,
        reds,
        n_acc: n_acc as usize,
        n_scratch,
    }))
}

/// Context of [`NeedCx::need`]: makes a node readable in one section's loop.
struct NeedCx<'a> {
    prog: &'a Program,
    plan: &'a Plan,
    keep: &'a [bool],
    in_loop: &'a [NodeId],
}

fn slot_of(ptrs: &mut Vec<PtrBind>, b: PtrBind) -> u32 {
    match ptrs.iter().position(|x| *x == b) {
        Some(k) => k as u32,
        None => {
            ptrs.push(b);
            (ptrs.len() - 1) as u32
        }
    }
}

impl NeedCx<'_> {
    /// Makes `o` readable in the loop (as itself or through an alias): a stream, a uniform,
    /// a gather, or — for an elementwise token value that is not stored — recomputed in the
    /// loop body from its own operands.
    fn need(
        &mut self,
        o: NodeId,
        spec: &mut SpecBuilder,
        ptrs: &mut Vec<PtrBind>,
        unis: &mut Vec<NodeId>,
        have: &mut HashMap<NodeId, ()>,
    ) -> Result<(), RunError> {
        let (prog, plan) = (self.prog, self.plan);
        let r = resolve(plan, o);
        if r != o {
            spec.body_alias(o, r);
        }
        if have.contains_key(&r) || self.in_loop.contains(&r) {
            return Ok(());
        }
        have.insert(r, ());
        let node = prog.node(r);
        if let Op::Const(_) = node.op {
            spec.consts.push(r);
            return Ok(());
        }
        let recompute = node.space == SpaceId::TOK
            && !self.keep[r.index()]
            && elementwise(&node.op)
            && matches!(plan.roles[r.index()], Role::Computed { .. });
        if recompute {
            for a in node.op.operands() {
                self.need(a, spec, ptrs, unis, have)?;
            }
            spec.body.push(r);
            return Ok(());
        }
        let src = if node.space == SpaceId::TOK {
            let b = match node.op {
                Op::Input(i) if plan.buffer[r.index()].is_none() => PtrBind::Input(i),
                Op::Structural(Structural::TokPosition) if plan.buffer[r.index()].is_none() => {
                    PtrBind::TokPos
                }
                _ => {
                    if !self.keep[r.index()] {
                        return Err(RunError(format!(
                            "cpu: tok node %{} is neither stored nor computable in the loop",
                            r.0
                        )));
                    }
                    PtrBind::Buffer(r)
                }
            };
            Source::Stream(slot_of(ptrs, b))
        } else if matches!(
            prog.spaces[node.space.index()].kind,
            SpaceKind::RowSegments { .. }
        ) {
            let values = slot_of(ptrs, PtrBind::SegValues(r));
            let index = slot_of(ptrs, PtrBind::SegIndex(node.space));
            Source::Gather { values, index }
        } else {
            unis.push(r);
            Source::Uniform((unis.len() - 1) as u32)
        };
        spec.sources.push((r, src));
        Ok(())
    }
}

/// A `LoopSpec` under construction (consts go first in the body; aliases resolved late).
#[derive(Default)]
struct SpecBuilder {
    name: String,
    body: Vec<NodeId>,
    consts: Vec<NodeId>,
    sources: Vec<(NodeId, Source)>,
    sinks: Vec<(NodeId, u32)>,
    accs: Vec<Acc>,
    alias: Vec<(NodeId, NodeId)>,
}

impl SpecBuilder {
    fn body_alias(&mut self, n: NodeId, root: NodeId) {
        if !self.alias.iter().any(|(a, _)| *a == n) {
            self.alias.push((n, root));
        }
    }
    fn finish(&self) -> LoopSpec {
        LoopSpec {
            name: self.name.clone(),
            body: self.body.clone(),
            sources: self.sources.clone(),
            sinks: self.sinks.clone(),
            accs: self.accs.clone(),
            alias: self.alias.clone(),
        }
    }
}

/// A raw base address that may cross threads (rows write disjoint ranges).
#[derive(Clone, Copy)]
struct Addr(usize);

/// Per-evaluation state.
struct Exec<'a> {
    cp: &'a CpuProgram,
    layout: &'a Layout,
    tok: Vec<Option<std::borrow::Cow<'a, [f32]>>>,
    other: &'a [Option<&'a [f64]>],
    params: &'a [f64],
    states: &'a [f64],
    vals: Vec<Option<Vec<f64>>>,
    tokbuf: Vec<Option<Vec<f32>>>,
    partials: HashMap<NodeId, Vec<[f64; 3]>>,
    maps: HashMap<(SpaceId, SpaceId), std::sync::Arc<Vec<u32>>>,
}

impl<'a> Exec<'a> {
    fn new(
        cp: &'a CpuProgram,
        layout: &'a Layout,
        tok: &[Option<&'a [f32]>],
        other: &'a [Option<&'a [f64]>],
        params: &'a [f64],
        states: &'a [f64],
    ) -> Result<Self, RunError> {
        let prog = &cp.prog;
        crate::batch::check_layout(prog, layout)?;
        let n_tok = layout.size(SpaceId::TOK);
        let mut toks = Vec::with_capacity(prog.inputs.len());
        for (k, inp) in prog.inputs.iter().enumerate() {
            let t = match &inp.kind {
                InputKind::Value { space, default, .. } if *space == SpaceId::TOK => {
                    match (tok.get(k).copied().flatten(), default) {
                        (Some(d), _) if d.len() == n_tok => Some(std::borrow::Cow::Borrowed(d)),
                        (Some(d), _) => {
                            return Err(RunError(format!(
                                "tensor `{}`: expected {n_tok} values in its space, found {}",
                                inp.name,
                                d.len()
                            )))
                        }
                        (None, Some(d)) => Some(std::borrow::Cow::Owned(vec![*d as f32; n_tok])),
                        (None, None) => None,
                    }
                }
                _ => None,
            };
            toks.push(t);
        }
        let mut tokbuf: Vec<Option<Vec<f32>>> = vec![None; prog.nodes.len()];
        {
            // Reused buffers: every element is written (by its loop or step) before it is
            // read, so stale contents never leak into results.
            let mut pool = cp
                .pool
                .lock()
                .map_err(|_| RunError("cpu: pool poisoned".into()))?;
            for b in &cp.plan.buffers {
                if b.kind == schedule::BufferKind::Value && cp.keep[b.node.index()] {
                    let mut v = pool.pop().unwrap_or_default();
                    if v.len() != n_tok {
                        v.resize(n_tok, 0.0);
                    }
                    tokbuf[b.node.index()] = Some(v);
                }
            }
        }
        Ok(Exec {
            cp,
            layout,
            tok: toks,
            other,
            params,
            states,
            vals: vec![None; prog.nodes.len()],
            tokbuf,
            partials: HashMap::new(),
            maps: HashMap::new(),
        })
    }

    fn prog(&self) -> &'a Program {
        &self.cp.prog
    }

    fn map(
        &mut self,
        fine: SpaceId,
        coarse: SpaceId,
    ) -> Result<std::sync::Arc<Vec<u32>>, RunError> {
        if let Some(m) = self.maps.get(&(fine, coarse)) {
            return Ok(m.clone());
        }
        let m = if coarse == SpaceId::BATCH {
            vec![0; self.layout.size(fine)]
        } else {
            self.layout.map(self.prog(), fine, coarse).ok_or_else(|| {
                RunError(format!(
                    "space `{}` is not laid out within `{}`",
                    self.prog().spaces[fine.index()].name,
                    self.prog().spaces[coarse.index()].name
                ))
            })?
        };
        let n_coarse = self.layout.size(coarse);
        if m.iter().any(|&i| i as usize >= n_coarse) {
            return Err(RunError("layout map out of range".into()));
        }
        let m = std::sync::Arc::new(m);
        self.maps.insert((fine, coarse), m.clone());
        Ok(m)
    }

    fn buckets(&mut self, fine: SpaceId, coarse: SpaceId) -> Result<Vec<Vec<usize>>, RunError> {
        let m = self.map(fine, coarse)?;
        let mut b = vec![Vec::new(); self.layout.size(coarse)];
        for (i, &c) in m.iter().enumerate() {
            b[c as usize].push(i);
        }
        Ok(b)
    }

    /// The values of `n` over its whole space, in `f64`.
    fn full(&mut self, n: NodeId) -> Result<Vec<f64>, RunError> {
        if let Some(v) = &self.vals[n.index()] {
            return Ok(v.clone());
        }
        if let Some(v) = &self.tokbuf[n.index()] {
            if self.cp.keep[n.index()] {
                return Ok(v.iter().map(|&x| f64::from(x)).collect());
            }
        }
        let prog = self.prog();
        let node = prog.node(n);
        let size = self.layout.size(node.space);
        Ok(match &node.op {
            Op::Const(c) => vec![*c; size],
            Op::Param(p) => vec![
                self.params.get(p.index()).copied().ok_or_else(|| RunError(
                    format!("param `{}`: no value given", prog.params[p.index()].name)
                ))?;
                size
            ],
            Op::State(s) => vec![
                self.states.get(s.index()).copied().ok_or_else(|| RunError(
                    format!("state `{}`: no value given", prog.states[s.index()].name)
                ))?;
                size
            ],
            Op::Structural(Structural::TokPosition) => {
                self.layout.tok_pos.iter().map(|&t| f64::from(t)).collect()
            }
            Op::Structural(Structural::RowIndex) => (0..size).map(|r| r as f64).collect(),
            Op::Structural(Structural::Width) => vec![self.layout.width as f64; size],
            Op::Input(i) => {
                let inp = &prog.inputs[i.index()];
                let InputKind::Value { elem, .. } = &inp.kind else {
                    return Err(RunError(format!(
                        "input `{}`: ids are not values",
                        inp.name
                    )));
                };
                let raw: Vec<f64> = if node.space == SpaceId::TOK {
                    match &self.tok[i.index()] {
                        Some(d) => d.iter().map(|&x| f64::from(x)).collect(),
                        None => {
                            return Err(RunError(format!(
                                "tensor `{}`: missing from the batch",
                                inp.name
                            )))
                        }
                    }
                } else {
                    let given = self.other.get(i.index()).copied().flatten();
                    match crate::batch::input_values(inp, given, size)? {
                        crate::batch::InputValues::Given(d) => d.to_vec(),
                        crate::batch::InputValues::Default(d) => vec![d; size],
                    }
                };
                match elem {
                    Elem::Bool => raw
                        .iter()
                        .map(|&x| scalar::from_bool(scalar::to_bool(x)))
                        .collect(),
                    Elem::F32 => raw,
                }
            }
            Op::Broadcast(a) => {
                let m = self.map(node.space, prog.node(*a).space)?;
                let src = self.full(*a)?;
                m.iter().map(|&j| src[j as usize]).collect()
            }
            Op::StopGrad(a) => self.full(*a)?,
            Op::Reduce {
                op: ReduceOp::Count,
                mask: None,
                arg,
                empty,
            } => {
                let a = prog.node(*arg).space;
                let mut counts = vec![0usize; size];
                let layout = self.layout;
                let row_len = |r: usize| layout.row_start[r + 1] - layout.row_start[r];
                if a == SpaceId::TOK && node.space == SpaceId::SEQ {
                    for (r, c) in counts.iter_mut().enumerate() {
                        *c = row_len(r);
                    }
                } else if a == SpaceId::TOK && !schedule::row_local(prog, node.space) {
                    // Tokens per row from the row offsets, summed into the coarse space:
                    // O(rows), never a token-sized index map (4 B/token of peak memory).
                    let m = self.map(SpaceId::SEQ, node.space)?;
                    for (r, &c) in m.iter().enumerate() {
                        counts[c as usize] += row_len(r);
                    }
                } else {
                    for &c in self.map(a, node.space)?.iter() {
                        counts[c as usize] += 1;
                    }
                }
                counts
                    .iter()
                    .map(|&c| if c == 0 { *empty } else { c as f64 })
                    .collect()
            }
            Op::Unary(..) | Op::Binary(..) | Op::Select(..) | Op::Clamp(..) => self.map_full(n)?,
            _ => {
                return Err(RunError(format!(
                    "cpu: node %{} read before it was computed",
                    n.0
                )))
            }
        })
    }

    /// An elementwise node over its whole space.
    fn map_full(&mut self, n: NodeId) -> Result<Vec<f64>, RunError> {
        let node = self.prog().node(n);
        Ok(match &node.op {
            Op::Unary(op, a) => self
                .full(*a)?
                .into_iter()
                .map(|x| scalar::unary(*op, x))
                .collect(),
            Op::Binary(op, a, b) => {
                let (a, b) = (self.full(*a)?, self.full(*b)?);
                a.iter()
                    .zip(&b)
                    .map(|(&x, &y)| scalar::binary(*op, x, y))
                    .collect()
            }
            Op::Select(c, a, b) => {
                let (c, a, b) = (self.full(*c)?, self.full(*a)?, self.full(*b)?);
                (0..c.len())
                    .map(|i| scalar::select(c[i], a[i], b[i]))
                    .collect()
            }
            Op::Clamp(x, lo, hi) => {
                let (x, lo, hi) = (self.full(*x)?, self.full(*lo)?, self.full(*hi)?);
                (0..x.len())
                    .map(|i| scalar::clamp(x[i], lo[i], hi[i]))
                    .collect()
            }
            // Leaves and aliases that are results.
            _ => self.full_leaf(n)?,
        })
    }

    fn full_leaf(&mut self, n: NodeId) -> Result<Vec<f64>, RunError> {
        // `full` without the stored-value shortcut (used for result leaves).
        let saved = self.tokbuf[n.index()].take();
        let r = self.full(n);
        self.tokbuf[n.index()] = saved;
        r
    }

    fn store(&mut self, n: NodeId, v: Vec<f64>) {
        if self.prog().node(n).space == SpaceId::TOK {
            match &mut self.tokbuf[n.index()] {
                Some(b) if b.len() == v.len() => {
                    b.iter_mut().zip(&v).for_each(|(d, &x)| *d = x as f32)
                }
                slot => *slot = Some(v.iter().map(|&x| x as f32).collect()),
            }
        } else {
            self.vals[n.index()] = Some(v);
        }
    }

    fn run_all(&mut self) -> Result<(), RunError> {
        let plan = &self.cp.plan;
        for (pi, phase) in plan.phases.iter().enumerate() {
            match phase {
                Phase::Global(gp) => {
                    for st in &gp.steps {
                        self.step(*st)?;
                    }
                }
                Phase::Row(rp) => {
                    for (si, sec) in rp.sections.iter().enumerate() {
                        for &n in &sec.seq {
                            let v = self.map_full(n)?;
                            self.store(n, v);
                        }
                        if let Some(lp) = &self.cp.loops[pi][si] {
                            self.run_loop(lp)?;
                        }
                        for st in &sec.steps {
                            self.step(*st)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One section's JIT loop over every row, rows in parallel.
    fn run_loop(&mut self, lp: &SectionLoop) -> Result<(), RunError> {
        let layout = self.layout;
        let rows = layout.rows;
        let mut unis: Vec<(Vec<f64>, std::sync::Arc<Vec<u32>>)> = Vec::new();
        for &u in &lp.unis {
            let sp = self.prog().node(u).space;
            let vals = self.full(u)?;
            let m = self.map(SpaceId::SEQ, sp)?;
            unis.push((vals, m));
        }
        // Per-row uniform table, row-major (so threads only read).
        let nu = lp.unis.len();
        let mut uni_rows = vec![0f32; rows * nu.max(1)];
        for (k, (vals, m)) in unis.iter().enumerate() {
            for r in 0..rows {
                uni_rows[r * nu.max(1) + k] = vals[m[r] as usize] as f32;
            }
        }
        let mut keep_f32: Vec<Vec<f32>> = Vec::new();
        let mut keep_u32: Vec<std::sync::Arc<Vec<u32>>> = Vec::new();
        let mut bases: Vec<(Addr, bool)> = Vec::new(); // (base, offset by row start)
        for b in &lp.ptrs {
            let e = match *b {
                PtrBind::Input(i) => match &self.tok[i.index()] {
                    Some(d) => (Addr(d.as_ptr() as usize), true),
                    None => {
                        return Err(RunError(format!(
                            "tensor `{}`: missing from the batch",
                            self.prog().inputs[i.index()].name
                        )))
                    }
                },
                PtrBind::Buffer(n) => match &mut self.tokbuf[n.index()] {
                    Some(v) => (Addr(v.as_mut_ptr() as usize), true),
                    None => return Err(RunError(format!("cpu: buffer of %{} missing", n.0))),
                },
                PtrBind::TokPos => {
                    keep_f32.push(layout.tok_pos.iter().map(|&t| t as f32).collect());
                    (Addr(keep_f32[keep_f32.len() - 1].as_ptr() as usize), true)
                }
                PtrBind::Scratch(_) => (Addr(0), false),
                PtrBind::SegValues(n) => {
                    keep_f32.push(self.full(n)?.iter().map(|&x| x as f32).collect());
                    (Addr(keep_f32[keep_f32.len() - 1].as_ptr() as usize), false)
                }
                PtrBind::SegIndex(s) => {
                    let m = self.map(SpaceId::TOK, s)?;
                    let a = Addr(m.as_ptr() as usize);
                    keep_u32.push(m);
                    (a, true)
                }
            };
            bases.push(e);
        }
        let max_len = (0..rows)
            .map(|r| layout.row_start[r + 1] - layout.row_start[r])
            .max()
            .unwrap_or(0);
        let f = self.cp.code.fns[lp.func];
        let reds = &lp.reds;
        let ptr_binds = &lp.ptrs;
        let n_acc = lp.n_acc.max(1);
        let n_scr = lp.n_scratch;
        let uni_rows = &uni_rows;
        let bases = &bases;
        let row_start = &layout.row_start;
        let out: Vec<Vec<[f64; 3]>> = (0..rows)
            .into_par_iter()
            .with_min_len(4)
            .map_init(
                || {
                    (
                        vec![vec![0f32; max_len.max(1)]; n_scr],
                        vec![0usize; ptr_binds.len()],
                        vec![0f32; n_acc],
                    )
                },
                |(scratch, ptrs, acc), r| {
                    let (s, e) = (row_start[r], row_start[r + 1]);
                    for (k, b) in ptr_binds.iter().enumerate() {
                        ptrs[k] = match *b {
                            PtrBind::Scratch(j) => scratch[j].as_mut_ptr() as usize,
                            _ => {
                                let (Addr(a), off) = bases[k];
                                if off {
                                    a + 4 * s
                                } else {
                                    a
                                }
                            }
                        };
                    }
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    let uni = &uni_rows[r * nu.max(1)..];
                    // SAFETY: every pointer slot addresses at least `e - s` elements from this
                    // row's start (streams, buffers, scratch of `max_len`), gathers index
                    // within their segment arrays, and rows write disjoint buffer ranges.
                    unsafe {
                        f(
                            (e - s) as i64,
                            ptrs.as_ptr() as *const *mut u8,
                            uni.as_ptr(),
                            acc.as_mut_ptr(),
                        )
                    };
                    reds.iter()
                        .map(|rp| finish_row(rp, acc, scratch, e - s))
                        .collect()
                },
            )
            .collect();
        for (k, rp) in lp.reds.iter().enumerate() {
            if rp.partial {
                self.partials
                    .insert(rp.node, out.iter().map(|o| o[k]).collect());
            } else {
                self.vals[rp.node.index()] = Some(out.iter().map(|o| o[k][0]).collect());
            }
        }
        Ok(())
    }

    fn step(&mut self, st: Step) -> Result<(), RunError> {
        let n = st.node;
        let v = match st.kind {
            StepKind::Map => self.map_full(n)?,
            StepKind::Combine => self.combine(n)?,
            _ => self.structured(n)?,
        };
        self.store(n, v);
        Ok(())
    }

    /// Finishes a `tok → batch/grp` reduction from per-row partials, rows in order.
    fn combine(&mut self, n: NodeId) -> Result<Vec<f64>, RunError> {
        let node = self.prog().node(n);
        let Op::Reduce { op, empty, .. } = node.op else {
            return Err(RunError(format!("cpu: combine of non-reduction %{}", n.0)));
        };
        let parts = self
            .partials
            .remove(&n)
            .ok_or_else(|| RunError(format!("cpu: partials of %{} missing", n.0)))?;
        let m = self.map(SpaceId::SEQ, node.space)?;
        let size = self.layout.size(node.space);
        let mut acc = vec![[0f64; 3]; size];
        let mut seen = vec![false; size];
        for (r, p) in parts.iter().enumerate() {
            let c = m[r] as usize;
            if p[0] == 0.0 {
                continue;
            }
            if !seen[c] {
                acc[c] = *p;
                seen[c] = true;
            } else {
                acc[c] = combine2(op, acc[c], *p);
            }
        }
        Ok(acc.iter().map(|a| finish_acc(op, *a, empty)).collect())
    }

    /// Reductions over non-token members, segment ops, quantiles, scans and shifts (f64).
    fn structured(&mut self, id: NodeId) -> Result<Vec<f64>, RunError> {
        let prog = self.prog();
        let node = prog.node(id);
        let n = self.layout.size(node.space);
        let mask_of = |me: &mut Self, m: Option<NodeId>| -> Result<Option<Vec<f64>>, RunError> {
            m.map(|m| me.full(m)).transpose()
        };
        let on =
            |mask: &Option<Vec<f64>>, i: usize| mask.as_ref().is_none_or(|m| scalar::to_bool(m[i]));
        Ok(match &node.op {
            Op::Reduce {
                op,
                arg,
                mask,
                empty,
            } => {
                let b = self.buckets(prog.node(*arg).space, node.space)?;
                let x = self.full(*arg)?;
                let mk = mask_of(self, *mask)?;
                reduce_buckets(
                    &b,
                    &x,
                    |i| on(&mk, i),
                    |_, seg| scalar::reduce(*op, seg, *empty),
                )
            }
            Op::Quantile {
                arg,
                mask,
                q,
                empty,
            } => {
                let b = self.buckets(prog.node(*arg).space, node.space)?;
                let x = self.full(*arg)?;
                let qs = self.full(*q)?;
                let mk = mask_of(self, *mask)?;
                reduce_buckets(
                    &b,
                    &x,
                    |i| on(&mk, i),
                    |c, seg| scalar::quantile(seg, qs[c], *empty),
                )
            }
            Op::Segment {
                op,
                arg,
                mask,
                within,
                k,
            } => {
                let b = self.buckets(node.space, *within)?;
                let x = self.full(*arg)?;
                let mk = mask_of(self, *mask)?;
                let ks = k.map(|k| self.full(k)).transpose()?;
                let k = |c: usize| ks.as_ref().map(|k| k[c]).unwrap_or(0.0);
                let pos = &self.layout.tok_pos;
                segment_op(*op, &x, |i| on(&mk, i), k, &b, pos, n)
            }
            Op::Scan {
                op,
                arg,
                coef,
                within,
            } => {
                let runs = self.runs(*within)?;
                let x = self.full(*arg)?;
                let c = coef.map(|c| self.full(c)).transpose()?;
                scan_runs(*op, &x, c.as_deref(), &runs)
            }
            Op::Shift {
                arg,
                offset,
                fill,
                within,
            } => {
                let runs = self.runs(*within)?;
                shift_runs(&self.full(*arg)?, i64::from(*offset), *fill, &runs)
            }
            _ => self.map_full(id)?,
        })
    }

    fn runs(&mut self, within: SpaceId) -> Result<Vec<std::ops::Range<usize>>, RunError> {
        if !self.layout.contiguous(self.prog(), within) {
            return Err(RunError(format!(
                "scan/shift within `{}`: its segments are not contiguous in token order",
                self.prog().spaces[within.index()].name
            )));
        }
        let m = self.map(SpaceId::TOK, within)?;
        Ok(segment_runs(&m))
    }

    /// Returns the token buffers to the program's pool.
    fn recycle(self) {
        if let Ok(mut pool) = self.cp.pool.lock() {
            pool.extend(self.tokbuf.into_iter().flatten());
        }
    }

    /// Collects the results. With `f32_grads`, gradients of token inputs that the loops
    /// stored are swapped out as `f32` (the vectors they replace go back to the pool).
    fn finish(
        &mut self,
        mut f32_grads: Option<&mut Vec<(InputId, Vec<f32>)>>,
    ) -> Result<Evaluation, RunError> {
        let prog = self.prog();
        let mut out = Evaluation::default();
        let scalar_of = |me: &mut Self, n: NodeId| -> Result<f64, RunError> {
            Ok(me.full(n)?.first().copied().unwrap_or(f64::NAN))
        };
        out.loss = match prog.loss {
            Some(l) => Some(scalar_of(self, l)?),
            None => None,
        };
        for (name, n) in &prog.metrics {
            let v = scalar_of(self, *n)?;
            out.metrics.push((name.clone(), v));
        }
        for (name, n) in &prog.outputs {
            let v = self.full(*n)?;
            out.outputs.push((name.clone(), prog.node(*n).space, v));
        }
        if let Some(g) = f32_grads.as_deref_mut() {
            g.truncate(prog.grads.len());
        }
        let mut k32 = 0usize;
        let mut swapped: Vec<(NodeId, usize)> = Vec::new();
        for (i, n) in &prog.grads {
            if let Some(g) = f32_grads.as_deref_mut() {
                if let Some(&(_, j)) = swapped.iter().find(|(m, _)| m == n) {
                    // Two inputs share one gradient node: copy the first one's vector.
                    let v = g[j].1.clone();
                    if g.len() <= k32 {
                        g.push((*i, Vec::new()));
                    }
                    g[k32] = (*i, v);
                    k32 += 1;
                    continue;
                }
                if self.cp.keep[n.index()] {
                    if let Some(buf) = self.tokbuf[n.index()].as_mut() {
                        if g.len() <= k32 {
                            g.push((*i, Vec::new()));
                        }
                        g[k32].0 = *i;
                        std::mem::swap(&mut g[k32].1, buf);
                        if buf.is_empty() {
                            self.tokbuf[n.index()] = None;
                        }
                        swapped.push((*n, k32));
                        k32 += 1;
                        continue;
                    }
                }
            }
            let v = self.full(*n)?;
            out.grads.push((*i, v));
        }
        if let Some(g) = f32_grads {
            g.truncate(k32);
        }
        for (k, st) in prog.states.iter().enumerate() {
            let updated = prog.updates.iter().rev().find(|(s, _)| s.index() == k);
            let v = match updated {
                Some((_, n)) => scalar_of(self, *n)?,
                None => self.states.get(k).copied().unwrap_or(st.init),
            };
            out.states.push((st.name.clone(), v));
        }
        Ok(out)
    }
}

/// The `cpu` backend: compiles on first use (cached per program) and runs on a thread pool.
pub struct CpuBackend {
    cache: Option<(Program, CpuProgram)>,
    pool: Option<rayon::ThreadPool>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// Uses rayon's global pool.
    pub fn new() -> Self {
        CpuBackend {
            cache: None,
            pool: None,
        }
    }

    /// Uses a private pool of `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Self, RunError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(rerr)?;
        Ok(CpuBackend {
            cache: None,
            pool: Some(pool),
        })
    }

    /// The compiled form of `prog`, compiling it when it changed.
    pub fn compiled(&mut self, prog: &Program) -> Result<&CpuProgram, RunError> {
        let stale = !matches!(&self.cache, Some((p, _)) if p == prog);
        if stale {
            let c = CpuProgram::compile(prog, false)?;
            self.cache = Some((prog.clone(), c));
        }
        match &self.cache {
            Some((_, c)) => Ok(c),
            None => Err(RunError("cpu: compile cache empty".into())),
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn evaluate(
        &mut self,
        prog: &Program,
        bound: &Bound,
        params: &[f64],
        states: &[f64],
    ) -> Result<Evaluation, RunError> {
        self.compiled(prog)?;
        let tok32 = token_inputs_f32(prog, bound);
        let tok: Vec<Option<&[f32]>> = tok32.iter().map(|v| v.as_deref()).collect();
        let other: Vec<Option<&[f64]>> = bound.values.iter().map(|v| v.as_deref()).collect();
        let (cache, pool) = (&self.cache, self.pool.as_ref());
        match cache {
            Some((_, c)) => c.run(&bound.layout, &tok, &other, params, states, pool),
            None => Err(RunError("cpu: compile cache empty".into())),
        }
    }
}

/// The token-space value inputs of `bound` narrowed to f32 (what the JIT loops stream);
/// `None` for inputs in other spaces and for id inputs.
pub fn token_inputs_f32(prog: &Program, bound: &Bound) -> Vec<Option<Vec<f32>>> {
    prog.inputs
        .iter()
        .enumerate()
        .map(|(k, inp)| match &inp.kind {
            InputKind::Value { space, .. } if *space == SpaceId::TOK => bound
                .values
                .get(k)
                .and_then(|v| v.as_ref())
                .map(|v| v.iter().map(|&x| x as f32).collect()),
            _ => None,
        })
        .collect()
}
