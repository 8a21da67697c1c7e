//! # Kernel plan
//!
//! [`schedule`] partitions a differentiated program (forward and backward together) into
//! fused **phases** that every kernel backend (C-style CUDA/OpenCL writer, Cranelift CPU)
//! executes in order:
//!
//! * [`Phase::Row`] — one pass over the rows of the batch, one worker (block) per row. A row
//!   phase is a list of [`Section`]s; each section computes its per-row uniform values
//!   ([`Section::seq`]), then runs **one loop over the row's tokens** that evaluates the
//!   token-wise nodes ([`Section::tok`]) and accumulates tok→seq reductions
//!   ([`Section::reduce`]) and per-row partials of tok→global reductions
//!   ([`Section::partial`]); after the loop it runs row-local [`Step`]s (scans, shifts,
//!   segment ops, reductions over row segments) over materialised buffers. A section
//!   boundary exists only where a value needs a completed reduction or scan of the row.
//! * [`Phase::Global`] — small work over `seq`/`grp`/`batch`/user group spaces (one block):
//!   a list of [`Step`]s run one after another with a barrier between them, including the
//!   deterministic combination of per-row partials ([`StepKind::Combine`]).
//!
//! Phases alternate (global, row, global, …); only reductions and scans create boundaries.
//! Leaves (constants, params, states, inputs, structural values and **unmasked counts**,
//! which are known from the layout before any data is read) are never computed: backends
//! load them where used. `Broadcast` and `StopGrad` are aliases of their operand, resolved at
//! the load through an index map of the batch layout.
//!
//! ## Memory model shared by all backends
//! * Token inputs are read in padded `[B, T]` form at `tok_pad[k] = r * T + t` (padding is
//!   never touched); other value inputs are dense in their space.
//! * Every node with `plan.buffer[n] = Some(b)` is materialised in the float work arena at
//!   buffer `b`, dense over its space (tok buffers are compact, in `tok` order). Per-row
//!   partial buffers ([`BufferKind::Partial`]) hold `3 × B` floats (an accumulator per row).
//! * Integer index arrays ([`IndexArray`]) are built on the host from the [`Layout`] by
//!   [`IndexArena::build`], which also lays out the header the kernels read sizes and
//!   offsets from.
//!
//! ## Reduction accumulators
//! Every reduction uses a 3-float accumulator `(n, a, b)` combined pairwise in a fixed order
//! (so results are bitwise reproducible): Sum/Mean `(n, Σx, -)`, Max/Min `(n, m, -)`, Count
//! `(n, -, -)`, Var/Std `(n, mean, M2)` (Chan's formula), LogSumExp `(n, m, Σexp(x-m))`.

use crate::{InputKind, Layout, NodeId, Op, Program, ReduceOp, SpaceId, SpaceKind, Structural};
use std::collections::HashMap;
use std::fmt::Write as _;

/// A complete kernel plan for one program.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub phases: Vec<Phase>,
    /// How each node is obtained, indexed by `NodeId`.
    pub roles: Vec<Role>,
    /// The work-arena buffer holding each node, indexed by `NodeId` (`None`: not stored).
    pub buffer: Vec<Option<usize>>,
    pub buffers: Vec<Buffer>,
    /// Integer arrays the host builds from the layout; backends look them up with
    /// [`Plan::index`].
    pub index_arrays: Vec<IndexArray>,
    /// Reads and writes of every phase, parallel to `phases`.
    pub io: Vec<PhaseIo>,
    /// Bytes of token data moved (read + written) per valid token over all phases.
    pub bytes_per_token: f64,
    /// Number of loops over token data (row-phase token loops plus steps over tok members).
    pub token_passes: usize,
}

/// How a node's value is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Loaded where used: `Const`, `Param`, `State`, `Input`, `Structural`, unmasked `Count`.
    Leaf,
    /// Same value as the operand, read through the layout's index map (`Broadcast`,
    /// `StopGrad`).
    Alias(NodeId),
    /// Computed in `phases[phase]`.
    Computed { phase: usize },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Row(RowPhase),
    Global(GlobalPhase),
}

/// One block per row; sections run in order for each row.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RowPhase {
    pub sections: Vec<Section>,
}

/// Uniform row values, then one token loop, then row-local steps.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Section {
    /// `seq`-space elementwise nodes, computed once per row before the loop (every thread
    /// may compute them redundantly; they only read uniform values).
    pub seq: Vec<NodeId>,
    /// `tok`-space elementwise nodes evaluated in the token loop, in dependency order.
    pub tok: Vec<NodeId>,
    /// `tok → seq` reductions accumulated in the loop; their value is usable from the next
    /// section on.
    pub reduce: Vec<NodeId>,
    /// `tok → batch/grp` reductions: the loop accumulates the row's partial, written to the
    /// node's partial buffer; a later global [`StepKind::Combine`] finishes it.
    pub partial: Vec<NodeId>,
    /// Row-local steps run after the loop (over the row's tokens or segments).
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct GlobalPhase {
    pub steps: Vec<Step>,
}

/// One node computed over (a row's part of, in row phases) a space, reading materialised
/// operands; its result is always materialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub node: NodeId,
    pub kind: StepKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Elementwise over the node's space.
    Map,
    /// `Reduce` over the members (CSR arg-space → node-space) of each element.
    Reduce,
    /// Finish a `tok → batch/grp` reduction from its per-row partial accumulators
    /// (members: CSR seq → node space, combined in row order).
    Combine,
    /// `Segment` op within `within` (members: CSR arg-space → within).
    Segment,
    /// `Quantile` over members (CSR arg-space → node space).
    Quantile,
    /// `Scan` in member order (one thread per segment).
    Scan,
    /// `Shift` in member order.
    Shift,
}

/// A materialised value in the work arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub node: NodeId,
    pub space: SpaceId,
    pub kind: BufferKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    /// One float per element of `space`.
    Value,
    /// Three floats per row (the accumulator of a `tok → batch/grp` reduction).
    Partial,
}

/// Integer arrays built from the layout (see [`IndexArena`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexArray {
    /// `n_tok`: `r * T + t` of every valid token (where padded token inputs are read).
    TokPad,
    /// `n_tok`: padded position `t` of every valid token.
    TokPos,
    /// `size(fine)`: the element of `coarse` each element of `fine` lies in.
    Map { fine: SpaceId, coarse: SpaceId },
    /// `size(coarse) + 1`: CSR offsets of the members (elements of `fine`) of each element
    /// of `coarse`. `(TOK, SEQ)` is the row start array.
    CsrOffsets { fine: SpaceId, coarse: SpaceId },
    /// `size(fine)`: the members, grouped by coarse element, in ascending order.
    CsrMembers { fine: SpaceId, coarse: SpaceId },
}

/// What a phase reads and writes (for `--emit plan` and byte accounting).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PhaseIo {
    /// Names such as `logp[tok]`, `%12[seq]`, `idx:tok_pad`.
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    /// Token-data bytes per valid token read and written by this phase.
    pub tok_bytes_read: f64,
    pub tok_bytes_written: f64,
}

/// Why a program cannot be scheduled.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleError {
    pub node: Option<NodeId>,
    pub message: String,
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.node {
            Some(n) => write!(f, "node %{}: {}", n.0, self.message),
            None => f.write_str(&self.message),
        }
    }
}
impl std::error::Error for ScheduleError {}

/// Where a node is placed before phases are compacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Leaf,
    Alias(NodeId),
    Row,
    Global,
    /// `seq` elementwise: either phase kind.
    Any,
}

/// Whether a space lives inside one row (tok, row segments, seq).
pub fn row_local(prog: &Program, s: SpaceId) -> bool {
    matches!(
        prog.spaces[s.index()].kind,
        SpaceKind::Tok | SpaceKind::Seq | SpaceKind::RowSegments { .. }
    )
}

fn is_tok(s: SpaceId) -> bool {
    s == SpaceId::TOK
}

/// The nodes a program returns (loss, metrics, outputs, updates, grads).
pub fn result_nodes(prog: &Program) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = prog.loss.into_iter().collect();
    v.extend(prog.metrics.iter().map(|(_, n)| *n));
    v.extend(prog.outputs.iter().map(|(_, n)| *n));
    v.extend(prog.updates.iter().map(|(_, n)| *n));
    v.extend(prog.grads.iter().map(|(_, n)| *n));
    v
}

/// Nodes that can reach a result (everything else is dead and not scheduled).
fn live_nodes(prog: &Program) -> Vec<bool> {
    let mut live = vec![false; prog.nodes.len()];
    for n in result_nodes(prog) {
        live[n.index()] = true;
    }
    for i in (0..prog.nodes.len()).rev() {
        // An unmasked count is structural: its argument's values are never read.
        if live[i]
            && !matches!(
                prog.nodes[i].op,
                Op::Reduce {
                    op: ReduceOp::Count,
                    mask: None,
                    ..
                }
            )
        {
            for o in prog.nodes[i].op.operands() {
                live[o.index()] = true;
            }
        }
    }
    live
}

fn classify(prog: &Program, id: NodeId, is_result: bool) -> Result<Kind, ScheduleError> {
    let n = prog.node(id);
    let by_space = || -> Kind {
        if n.space == SpaceId::SEQ {
            Kind::Any
        } else if row_local(prog, n.space) {
            Kind::Row
        } else {
            Kind::Global
        }
    };
    let err = |m: &str| ScheduleError {
        node: Some(id),
        message: m.to_string(),
    };
    Ok(match &n.op {
        Op::Const(_) | Op::Param(_) | Op::State(_) | Op::Input(_) | Op::Structural(_) => {
            if is_result {
                by_space()
            } else {
                Kind::Leaf
            }
        }
        Op::Reduce {
            op: ReduceOp::Count,
            mask: None,
            ..
        } => {
            if is_result {
                by_space()
            } else {
                Kind::Leaf
            }
        }
        Op::Broadcast(a) | Op::StopGrad(a) => {
            if is_result {
                by_space()
            } else {
                Kind::Alias(*a)
            }
        }
        Op::Unary(..) | Op::Binary(..) | Op::Select(..) | Op::Clamp(..) => by_space(),
        Op::Reduce { .. } | Op::Quantile { .. } => {
            if row_local(prog, n.space) {
                Kind::Row
            } else {
                Kind::Global
            }
        }
        Op::Segment { within, .. } => {
            if row_local(prog, *within) {
                Kind::Row
            } else {
                Kind::Global
            }
        }
        Op::Scan { within, .. } | Op::Shift { within, .. } => {
            let ok = *within == SpaceId::SEQ
                || matches!(
                    prog.spaces[within.index()].kind,
                    SpaceKind::RowSegments { .. }
                );
            if !ok {
                return Err(err(
                    "scans and shifts must run within `seq` or a row-segment space",
                ));
            }
            if !is_tok(n.space) {
                return Err(err("scans and shifts must be over `tok` values"));
            }
            Kind::Row
        }
    })
}

/// Phase index parity: even = global, odd = row.
fn round_row(p: usize) -> usize {
    p | 1
}
fn round_global(p: usize) -> usize {
    p + (p & 1)
}

/// A `tok → batch/grp` reduction finished from per-row partials.
pub fn is_partial_reduce(prog: &Program, id: NodeId) -> bool {
    match &prog.node(id).op {
        Op::Reduce {
            op: ReduceOp::Count,
            mask: None,
            ..
        } => false,
        Op::Reduce { arg, .. } => {
            is_tok(prog.node(*arg).space) && !row_local(prog, prog.node(id).space)
        }
        _ => false,
    }
}

/// Builds the plan. The program should be differentiated and optimised; dead nodes (not
/// reaching any result) are skipped.
pub fn schedule(prog: &Program) -> Result<Plan, ScheduleError> {
    let nn = prog.nodes.len();
    let live = live_nodes(prog);
    let mut is_result = vec![false; nn];
    for n in result_nodes(prog) {
        is_result[n.index()] = true;
    }
    let mut kind = vec![Kind::Leaf; nn];
    for id in prog.node_ids() {
        if live[id.index()] {
            kind[id.index()] = classify(prog, id, is_result[id.index()])?;
        }
    }
    // Consumers (through aliases) decide where `seq` elementwise nodes go.
    let mut consumers: Vec<Vec<NodeId>> = vec![Vec::new(); nn];
    for id in prog.node_ids().filter(|i| live[i.index()]) {
        for o in prog.node(id).op.operands() {
            consumers[o.index()].push(id);
        }
    }
    let only_global_consumers = |id: NodeId, kind: &[Kind]| -> bool {
        let mut stack = vec![id];
        let mut any = false;
        while let Some(x) = stack.pop() {
            for &c in &consumers[x.index()] {
                match kind[c.index()] {
                    Kind::Alias(_) => stack.push(c),
                    Kind::Global => any = true,
                    _ => return false,
                }
            }
        }
        any && !is_result[id.index()]
    };

    // Phase levels (even = global, odd = row) in node order.
    let mut level = vec![0usize; nn];
    let mut partial_level = vec![0usize; nn];
    for id in prog.node_ids().filter(|i| live[i.index()]) {
        let i = id.index();
        let base = prog
            .node(id)
            .op
            .operands()
            .iter()
            .map(|o| level[o.index()])
            .max()
            .unwrap_or(0);
        level[i] = match kind[i] {
            Kind::Leaf => 0,
            Kind::Alias(a) => level[a.index()],
            Kind::Row => round_row(base),
            Kind::Global => {
                if is_partial_reduce(prog, id) {
                    partial_level[i] = round_row(base);
                    partial_level[i] + 1
                } else {
                    round_global(base)
                }
            }
            Kind::Any => {
                if base % 2 == 0 && only_global_consumers(id, &kind) {
                    base
                } else {
                    round_row(base)
                }
            }
        };
    }

    sink_levels(
        prog,
        &live,
        &kind,
        &consumers,
        &mut level,
        &mut partial_level,
    );

    // Compact the used levels into phases.
    let mut used: Vec<usize> = Vec::new();
    for id in prog.node_ids().filter(|i| live[i.index()]) {
        let i = id.index();
        match kind[i] {
            Kind::Leaf | Kind::Alias(_) => {}
            _ => {
                used.push(level[i]);
                if is_partial_reduce(prog, id) {
                    used.push(partial_level[i]);
                }
            }
        }
    }
    used.sort_unstable();
    used.dedup();
    let phase_of_level: HashMap<usize, usize> =
        used.iter().enumerate().map(|(k, &l)| (l, k)).collect();
    let mut phases: Vec<Phase> = used
        .iter()
        .map(|l| {
            if l % 2 == 1 {
                Phase::Row(RowPhase::default())
            } else {
                Phase::Global(GlobalPhase::default())
            }
        })
        .collect();

    let mut roles = vec![Role::Leaf; nn];
    for id in prog.node_ids().filter(|i| live[i.index()]) {
        let i = id.index();
        roles[i] = match kind[i] {
            Kind::Leaf => Role::Leaf,
            Kind::Alias(a) => Role::Alias(a),
            _ => Role::Computed {
                phase: phase_of_level[&level[i]],
            },
        };
    }

    // Sections inside row phases, steps inside global phases.
    // `avail[n]`: the first section of n's own row phase in which its value is usable.
    let mut avail = vec![0usize; nn];
    let mut in_loop = vec![false; nn];
    let mut section_of = vec![usize::MAX; nn];
    let resolve = |mut n: NodeId, roles: &[Role]| -> NodeId {
        while let Role::Alias(a) = roles[n.index()] {
            n = a;
        }
        n
    };
    for id in prog.node_ids().filter(|i| live[i.index()]) {
        let i = id.index();
        let node = prog.node(id);
        if is_partial_reduce(prog, id) {
            let p = phase_of_level[&partial_level[i]];
            let s = sec_of_operands(prog, id, p, &roles, &avail, resolve);
            if let Phase::Row(rp) = &mut phases[p] {
                grow(rp, s).partial.push(id);
            }
            section_of[i] = s;
            let g = phase_of_level[&level[i]];
            if let Phase::Global(gp) = &mut phases[g] {
                gp.steps.push(Step {
                    node: id,
                    kind: StepKind::Combine,
                });
            }
            continue;
        }
        let Role::Computed { phase } = roles[i] else {
            continue;
        };
        let step_kind = step_kind_of(prog, id);
        match &mut phases[phase] {
            Phase::Global(gp) => gp.steps.push(Step {
                node: id,
                kind: step_kind,
            }),
            Phase::Row(_) => {
                let s = sec_of_operands(prog, id, phase, &roles, &avail, resolve);
                section_of[i] = s;
                let Phase::Row(rp) = &mut phases[phase] else {
                    continue;
                };
                let sec = grow(rp, s);
                let elementwise = step_kind == StepKind::Map;
                if elementwise && is_tok(node.space) {
                    sec.tok.push(id);
                    in_loop[i] = true;
                    avail[i] = s;
                } else if elementwise && node.space == SpaceId::SEQ {
                    sec.seq.push(id);
                    avail[i] = s;
                } else if step_kind == StepKind::Reduce
                    && node.space == SpaceId::SEQ
                    && matches!(&node.op, Op::Reduce { arg, .. } if is_tok(prog.node(*arg).space))
                {
                    sec.reduce.push(id);
                    avail[i] = s + 1;
                } else {
                    sec.steps.push(Step {
                        node: id,
                        kind: step_kind,
                    });
                    avail[i] = s + 1;
                }
            }
        }
    }

    // Materialisation: what must live in a buffer.
    let mut buffer: Vec<Option<usize>> = vec![None; nn];
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut need = vec![false; nn];
    for id in prog.node_ids().filter(|i| live[i.index()]) {
        let i = id.index();
        let Role::Computed { phase } = roles[i] else {
            continue;
        };
        if is_result[i] || matches!(phases[phase], Phase::Global(_)) {
            need[i] = true;
        }
        if let Phase::Row(rp) = &phases[phase] {
            if rp
                .sections
                .iter()
                .any(|s| s.steps.iter().any(|st| st.node == id))
            {
                need[i] = true;
            }
        }
        // Consumers elsewhere (through aliases).
        let mut stack = vec![id];
        while let Some(x) = stack.pop() {
            for &c in &consumers[x.index()] {
                match roles[c.index()] {
                    Role::Alias(_) => stack.push(c),
                    Role::Leaf => {}
                    Role::Computed { phase: cp } => {
                        let c_is_step = matches!(&phases[cp], Phase::Row(rp)
                            if rp.sections.iter().any(|s| s.steps.iter().any(|st| st.node == c)))
                            || matches!(phases[cp], Phase::Global(_));
                        let partial_here = is_partial_reduce(prog, c)
                            && section_of[c.index()] == section_of[i]
                            && phase == phase_of_level[&partial_level[c.index()]];
                        if partial_here {
                            continue;
                        }
                        if cp != phase
                            || c_is_step
                            || (in_loop[i] && section_of[c.index()] != section_of[i])
                            // Row values used past a section boundary are re-read from
                            // memory: values live across barriers are fragile on CPU
                            // OpenCL compilers and cost registers on GPUs.
                            || (!in_loop[i] && section_of[c.index()] > section_of[i])
                        {
                            need[i] = true;
                        }
                    }
                }
            }
        }
    }
    for id in prog.node_ids() {
        let i = id.index();
        if need[i] {
            buffer[i] = Some(buffers.len());
            buffers.push(Buffer {
                node: id,
                space: prog.node(id).space,
                kind: BufferKind::Value,
            });
        }
    }
    let mut partial_buffer: HashMap<NodeId, usize> = HashMap::new();
    for id in prog
        .node_ids()
        .filter(|i| live[i.index()] && is_partial_reduce(prog, *i))
    {
        partial_buffer.insert(id, buffers.len());
        buffers.push(Buffer {
            node: id,
            space: SpaceId::SEQ,
            kind: BufferKind::Partial,
        });
    }

    let index_arrays = index_arrays_for(prog, &live);
    let mut plan = Plan {
        phases,
        roles,
        buffer,
        buffers,
        index_arrays,
        io: Vec::new(),
        bytes_per_token: 0.0,
        token_passes: 0,
    };
    account(prog, &mut plan);
    Ok(plan)
}

/// Moves work to the latest level its consumers allow, among the levels already used (so no
/// phase is added): a `tok → batch` partial or a token value that nothing needs before a later
/// token loop is computed in that loop instead. Then an early loop does only what the next
/// barrier needs (GRPO's first loop sums rewards per row and nothing else) rather than work
/// that a later loop must read back from a buffer or recompute.
fn sink_levels(
    prog: &Program,
    live: &[bool],
    kind: &[Kind],
    consumers: &[Vec<NodeId>],
    level: &mut [usize],
    partial_level: &mut [usize],
) {
    let mut used: Vec<usize> = Vec::new();
    // Row levels with a token loop (elementwise token work) before sinking.
    let mut tok_loop: Vec<usize> = Vec::new();
    for id in prog.node_ids().filter(|i| live[i.index()]) {
        let i = id.index();
        if matches!(kind[i], Kind::Leaf | Kind::Alias(_)) {
            continue;
        }
        used.push(level[i]);
        if is_partial_reduce(prog, id) {
            used.push(partial_level[i]);
        }
        let n = prog.node(id);
        if is_tok(n.space) && step_kind_of(prog, id) == StepKind::Map {
            tok_loop.push(level[i]);
        }
    }
    used.sort_unstable();
    used.dedup();
    let Some(&max_level) = used.last() else {
        return;
    };
    for id in prog.node_ids().rev().filter(|i| live[i.index()]) {
        let i = id.index();
        if matches!(kind[i], Kind::Leaf | Kind::Alias(_)) {
            continue;
        }
        let partial = is_partial_reduce(prog, id);
        let n = prog.node(id);
        // Only token-loop work moves: elementwise token values and `tok → batch`
        // partials, plus the global/seq values between such partials and the results.
        let elementwise_tok = is_tok(n.space) && step_kind_of(prog, id) == StepKind::Map;
        let small = !row_local(prog, n.space) || n.space == SpaceId::SEQ;
        if !(partial || elementwise_tok || (small && level[i].is_multiple_of(2))) {
            continue;
        }
        // The latest level every consumer allows: the consumer's own level when it has the
        // same parity (same phase kind: later in the same phase), else the level before.
        // A token value nothing reads (a gradient, say) stays: moving it would only move
        // its operands' reads into a later loop.
        let mut bound = if elementwise_tok { level[i] } else { max_level };
        let mut seen = false;
        let mut stack = vec![id];
        while let Some(x) = stack.pop() {
            for &c in &consumers[x.index()] {
                let cl = match kind[c.index()] {
                    Kind::Alias(_) => {
                        stack.push(c);
                        continue;
                    }
                    Kind::Leaf => continue,
                    _ if is_partial_reduce(prog, c) => partial_level[c.index()],
                    _ => level[c.index()],
                };
                let b = if cl % 2 == level[i] % 2 { cl } else { cl - 1 };
                bound = if seen { bound.min(b) } else { b };
                seen = true;
            }
        }
        if partial {
            // The row part moves to a token loop whose combine level is within the bound.
            if let Some(&r) = tok_loop
                .iter()
                .filter(|&&r| r >= partial_level[i] && r < bound)
                .max()
            {
                partial_level[i] = r;
                level[i] = r + 1;
            }
        } else if elementwise_tok {
            if let Some(&r) = tok_loop
                .iter()
                .filter(|&&r| r >= level[i] && r <= bound)
                .max()
            {
                level[i] = r;
            }
        } else if let Some(&g) = used
            .iter()
            .filter(|&&g| g % 2 == 0 && g >= level[i] && g <= bound)
            .max()
        {
            level[i] = g;
        }
    }
}

fn grow(rp: &mut RowPhase, s: usize) -> &mut Section {
    while rp.sections.len() <= s {
        rp.sections.push(Section::default());
    }
    &mut rp.sections[s]
}

fn sec_of_operands(
    prog: &Program,
    id: NodeId,
    phase: usize,
    roles: &[Role],
    avail: &[usize],
    resolve: impl Fn(NodeId, &[Role]) -> NodeId,
) -> usize {
    prog.node(id)
        .op
        .operands()
        .into_iter()
        .map(|o| {
            let o = resolve(o, roles);
            match roles[o.index()] {
                Role::Computed { phase: p } if p == phase => avail[o.index()],
                _ => 0,
            }
        })
        .max()
        .unwrap_or(0)
}

fn step_kind_of(prog: &Program, id: NodeId) -> StepKind {
    match &prog.node(id).op {
        Op::Reduce {
            op: ReduceOp::Count,
            mask: None,
            ..
        } => StepKind::Map,
        Op::Reduce { .. } => StepKind::Reduce,
        Op::Segment { .. } => StepKind::Segment,
        Op::Quantile { .. } => StepKind::Quantile,
        Op::Scan { .. } => StepKind::Scan,
        Op::Shift { .. } => StepKind::Shift,
        _ => StepKind::Map,
    }
}

/// Index arrays: every map between a space and its strict non-batch ancestors, the CSR of
/// every (fine, coarse) pair a reduction, count, segment op or scan uses, and token
/// positions.
fn index_arrays_for(prog: &Program, live: &[bool]) -> Vec<IndexArray> {
    let mut v = vec![IndexArray::TokPad, IndexArray::TokPos];
    let ns = prog.spaces.len() as u32;
    for f in 1..ns {
        for c in 1..ns {
            let (f, c) = (SpaceId(f), SpaceId(c));
            if f != c && prog.within(f, c) {
                v.push(IndexArray::Map { fine: f, coarse: c });
            }
        }
    }
    let mut csr = vec![(SpaceId::TOK, SpaceId::SEQ)];
    for id in prog.node_ids().filter(|i| live[i.index()]) {
        let n = prog.node(id);
        match &n.op {
            Op::Reduce { arg, .. } => {
                let a = prog.node(*arg).space;
                if is_partial_reduce(prog, id) {
                    csr.push((SpaceId::SEQ, n.space));
                } else {
                    csr.push((a, n.space));
                }
                if matches!(
                    &n.op,
                    Op::Reduce {
                        op: ReduceOp::Count,
                        mask: None,
                        ..
                    }
                ) {
                    csr.push((a, n.space));
                }
            }
            Op::Quantile { arg, .. } => csr.push((prog.node(*arg).space, n.space)),
            Op::Segment { arg, within, .. } => csr.push((prog.node(*arg).space, *within)),
            Op::Scan { arg, within, .. } | Op::Shift { arg, within, .. } => {
                csr.push((prog.node(*arg).space, *within))
            }
            _ => {}
        }
    }
    // Row-local steps over row segments iterate the segments of each row.
    for (si, s) in prog.spaces.iter().enumerate() {
        if matches!(s.kind, SpaceKind::RowSegments { .. }) {
            csr.push((SpaceId(si as u32), SpaceId::SEQ));
        }
    }
    csr.sort_by_key(|(a, b)| (a.0, b.0));
    csr.dedup();
    for (f, c) in csr {
        v.push(IndexArray::CsrOffsets { fine: f, coarse: c });
        v.push(IndexArray::CsrMembers { fine: f, coarse: c });
    }
    v
}

impl Plan {
    /// Position of an index array in [`Plan::index_arrays`].
    pub fn index(&self, a: IndexArray) -> Option<usize> {
        self.index_arrays.iter().position(|x| *x == a)
    }

    /// Number of row phases (= kernel passes that walk the batch's tokens row by row).
    pub fn row_phases(&self) -> usize {
        self.phases
            .iter()
            .filter(|p| matches!(p, Phase::Row(_)))
            .count()
    }

    /// Element count of a buffer for a batch.
    pub fn buffer_len(&self, b: usize, layout: &Layout) -> usize {
        let buf = &self.buffers[b];
        match buf.kind {
            BufferKind::Value => layout.size(buf.space),
            BufferKind::Partial => 3 * layout.rows,
        }
    }

    /// Offsets of every buffer in the float work arena and its total length.
    pub fn work_layout(&self, layout: &Layout) -> (Vec<usize>, usize) {
        let mut offs = Vec::with_capacity(self.buffers.len());
        let mut at = 0usize;
        for b in 0..self.buffers.len() {
            offs.push(at);
            at += self.buffer_len(b, layout);
        }
        (offs, at.max(1))
    }
}

/// The integer arena every kernel reads: a header followed by the index arrays.
///
/// Header (all `i32`): `[0]` = `T` (padded width); `[1 + s]` = size of space `s` for every
/// space; then the offset (into this arena) of every index array, in
/// [`Plan::index_arrays`] order; then the offset (into the float work arena) of every
/// buffer, in [`Plan::buffers`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexArena {
    pub data: Vec<i32>,
    /// Length of the float work arena.
    pub work_len: usize,
}

/// Header slot helpers, shared by the writer and the host.
pub mod header {
    /// Slot of the padded width `T`.
    pub const WIDTH: usize = 0;
    /// Slot of the size of space `s`.
    pub fn space_size(s: usize) -> usize {
        1 + s
    }
    /// Slot of the offset of index array `j`.
    pub fn index_offset(n_spaces: usize, j: usize) -> usize {
        1 + n_spaces + j
    }
    /// Slot of the work offset of buffer `b`.
    pub fn buffer_offset(n_spaces: usize, n_index: usize, b: usize) -> usize {
        1 + n_spaces + n_index + b
    }
}

impl IndexArena {
    /// Builds the arena for one batch. Fails when a size does not fit the kernels' `int`.
    pub fn build(
        prog: &Program,
        plan: &Plan,
        layout: &Layout,
    ) -> Result<IndexArena, ScheduleError> {
        let ns = prog.spaces.len();
        let ni = plan.index_arrays.len();
        let nb = plan.buffers.len();
        let mut data: Vec<i64> = vec![0; 1 + ns + ni + nb];
        data[header::WIDTH] = layout.width as i64;
        for s in 0..ns {
            data[header::space_size(s)] = layout.sizes[s] as i64;
        }
        let map = |f: SpaceId, c: SpaceId| -> Result<Vec<u32>, ScheduleError> {
            if c == SpaceId::BATCH {
                return Ok(vec![0; layout.size(f)]);
            }
            layout.map(prog, f, c).ok_or_else(|| ScheduleError {
                node: None,
                message: format!(
                    "layout has no map from `{}` to `{}`",
                    prog.spaces[f.index()].name,
                    prog.spaces[c.index()].name
                ),
            })
        };
        for (j, a) in plan.index_arrays.iter().enumerate() {
            data[header::index_offset(ns, j)] = data.len() as i64;
            match *a {
                IndexArray::TokPad => {
                    let rows = map(SpaceId::TOK, SpaceId::SEQ)?;
                    for (k, &t) in layout.tok_pos.iter().enumerate() {
                        data.push(rows[k] as i64 * layout.width as i64 + t as i64);
                    }
                }
                IndexArray::TokPos => data.extend(layout.tok_pos.iter().map(|&t| t as i64)),
                IndexArray::Map { fine, coarse } => {
                    data.extend(map(fine, coarse)?.iter().map(|&x| x as i64))
                }
                IndexArray::CsrOffsets { fine, coarse } => {
                    let m = map(fine, coarse)?;
                    let mut counts = vec![0i64; layout.size(coarse) + 1];
                    for &c in &m {
                        counts[c as usize + 1] += 1;
                    }
                    for k in 1..counts.len() {
                        counts[k] += counts[k - 1];
                    }
                    data.extend(counts);
                }
                IndexArray::CsrMembers { fine, coarse } => {
                    let m = map(fine, coarse)?;
                    let mut order: Vec<u32> = (0..m.len() as u32).collect();
                    order.sort_by_key(|&e| m[e as usize]);
                    data.extend(order.iter().map(|&e| e as i64));
                }
            }
        }
        let (offs, work_len) = plan.work_layout(layout);
        for (b, o) in offs.iter().enumerate() {
            data[header::buffer_offset(ns, ni, b)] = *o as i64;
        }
        let too_big = data.iter().any(|&x| x > i32::MAX as i64) || work_len > i32::MAX as usize;
        if too_big {
            return Err(ScheduleError {
                node: None,
                message: "batch too large for 32-bit kernel indices".into(),
            });
        }
        Ok(IndexArena {
            data: data.iter().map(|&x| x as i32).collect(),
            work_len,
        })
    }
}

fn space_name(prog: &Program, s: SpaceId) -> &str {
    &prog.spaces[s.index()].name
}

/// Token inputs read by a node's loads (through aliases), and other reads.
fn account(prog: &Program, plan: &mut Plan) {
    let mut io = vec![PhaseIo::default(); plan.phases.len()];
    let mut passes = 0usize;
    for (p, phase) in plan.phases.iter().enumerate() {
        let mut reads: Vec<String> = Vec::new();
        let mut writes: Vec<String> = Vec::new();
        let mut rd = 0.0f64;
        let mut wr = 0.0f64;
        let note = |v: &mut Vec<String>, s: String| {
            if !v.contains(&s) {
                v.push(s);
            }
        };
        // Leaves/buffers a group of nodes reads; tok data counted once per loop.
        let group_reads = |nodes: &[NodeId],
                           plan: &Plan,
                           reads: &mut Vec<String>,
                           rd: &mut f64,
                           in_phase: usize| {
            let mut seen: Vec<String> = Vec::new();
            let mut tok = false;
            for &n in nodes {
                for o in prog.node(n).op.operands() {
                    let mut o = o;
                    while let Role::Alias(a) = plan.roles[o.index()] {
                        o = a;
                    }
                    let sp = prog.node(o).space;
                    let name = match (
                        &prog.node(o).op,
                        plan.roles[o.index()],
                        plan.buffer[o.index()],
                    ) {
                        (Op::Input(i), Role::Leaf, _) => Some(format!(
                            "{}[{}]",
                            prog.inputs[i.index()].name,
                            space_name(prog, sp)
                        )),
                        (_, Role::Computed { phase }, Some(b))
                            if phase != in_phase || !plan_local(plan, o, in_phase) =>
                        {
                            Some(format!("%{}[{}] (buf {b})", o.0, space_name(prog, sp)))
                        }
                        _ => None,
                    };
                    if let Some(name) = name {
                        if !seen.contains(&name) {
                            if is_tok(sp) {
                                *rd += 4.0;
                                tok = true;
                            }
                            seen.push(name.clone());
                        }
                    }
                }
            }
            if tok {
                *rd += 4.0; // tok_pad / members index
            }
            for s in seen {
                if !reads.contains(&s) {
                    reads.push(s);
                }
            }
            tok
        };
        match phase {
            Phase::Row(rp) => {
                for sec in &rp.sections {
                    let mut loop_nodes: Vec<NodeId> = sec.tok.clone();
                    loop_nodes.extend(&sec.reduce);
                    loop_nodes.extend(&sec.partial);
                    if !loop_nodes.is_empty() {
                        passes += 1;
                        group_reads(&loop_nodes, plan, &mut reads, &mut rd, p);
                    }
                    group_reads(&sec.seq, plan, &mut reads, &mut rd, p);
                    for st in &sec.steps {
                        if group_reads(&[st.node], plan, &mut reads, &mut rd, p) {
                            passes += 1;
                        }
                    }
                    for &n in sec
                        .tok
                        .iter()
                        .chain(&sec.seq)
                        .chain(&sec.reduce)
                        .chain(sec.steps.iter().map(|s| &s.node))
                    {
                        if let Some(b) = plan.buffer[n.index()] {
                            let sp = prog.node(n).space;
                            if is_tok(sp) {
                                wr += 4.0;
                            }
                            note(
                                &mut writes,
                                format!("%{}[{}] (buf {b})", n.0, space_name(prog, sp)),
                            );
                        }
                    }
                    for &n in &sec.partial {
                        note(&mut writes, format!("%{}.partial[seq]", n.0));
                    }
                }
            }
            Phase::Global(gp) => {
                for st in &gp.steps {
                    if st.kind == StepKind::Combine {
                        note(&mut reads, format!("%{}.partial[seq]", st.node.0));
                    } else if group_reads(&[st.node], plan, &mut reads, &mut rd, p) {
                        passes += 1;
                    }
                    if let Some(b) = plan.buffer[st.node.index()] {
                        let sp = prog.node(st.node).space;
                        if is_tok(sp) {
                            wr += 4.0;
                        }
                        note(
                            &mut writes,
                            format!("%{}[{}] (buf {b})", st.node.0, space_name(prog, sp)),
                        );
                    }
                }
            }
        }
        io[p] = PhaseIo {
            reads,
            writes,
            tok_bytes_read: rd,
            tok_bytes_written: wr,
        };
    }
    plan.bytes_per_token = io
        .iter()
        .map(|x| x.tok_bytes_read + x.tok_bytes_written)
        .sum();
    plan.token_passes = passes;
    plan.io = io;
}

/// Whether `n` (computed in `phase`) is read as a local there (never true for steps).
fn plan_local(plan: &Plan, n: NodeId, phase: usize) -> bool {
    match &plan.phases[phase] {
        Phase::Row(rp) => rp
            .sections
            .iter()
            .any(|s| s.tok.contains(&n) || s.seq.contains(&n) || s.reduce.contains(&n)),
        Phase::Global(_) => false,
    }
}

impl Plan {
    /// Text for `rlobj compile --emit plan`: phases (kernels), what each computes, reads and
    /// writes, and bytes moved per token.
    pub fn render(&self, prog: &Program) -> String {
        let mut s = String::new();
        let rows = self.row_phases();
        let _ = writeln!(
            s,
            "plan {}: {} kernels ({} row, {} global), {} token loops, {} bytes/token",
            prog.name,
            self.phases.len(),
            rows,
            self.phases.len() - rows,
            self.token_passes,
            self.bytes_per_token
        );
        let node = |n: NodeId| -> String {
            let nd = prog.node(n);
            format!("%{}:{}", n.0, space_name(prog, nd.space))
        };
        let list = |v: &[NodeId]| v.iter().map(|&n| node(n)).collect::<Vec<_>>().join(" ");
        for (p, phase) in self.phases.iter().enumerate() {
            let io = &self.io[p];
            match phase {
                Phase::Row(rp) => {
                    let _ = writeln!(
                        s,
                        "kernel {p}: row (block per row), {} sections",
                        rp.sections.len()
                    );
                    for (k, sec) in rp.sections.iter().enumerate() {
                        let _ = writeln!(s, "  section {k}:");
                        if !sec.seq.is_empty() {
                            let _ = writeln!(s, "    row values: {}", list(&sec.seq));
                        }
                        if !sec.tok.is_empty() {
                            let _ = writeln!(s, "    token loop: {}", list(&sec.tok));
                        }
                        if !sec.reduce.is_empty() {
                            let _ = writeln!(s, "    row reductions: {}", list(&sec.reduce));
                        }
                        if !sec.partial.is_empty() {
                            let _ = writeln!(s, "    row partials: {}", list(&sec.partial));
                        }
                        for st in &sec.steps {
                            let _ = writeln!(s, "    step {:?} {}", st.kind, node(st.node));
                        }
                    }
                }
                Phase::Global(gp) => {
                    let _ = writeln!(
                        s,
                        "kernel {p}: global (one block), {} steps",
                        gp.steps.len()
                    );
                    for st in &gp.steps {
                        let _ = writeln!(s, "    step {:?} {}", st.kind, node(st.node));
                    }
                }
            }
            let _ = writeln!(
                s,
                "  reads: {}",
                if io.reads.is_empty() {
                    "-".into()
                } else {
                    io.reads.join(", ")
                }
            );
            let _ = writeln!(
                s,
                "  writes: {}",
                if io.writes.is_empty() {
                    "-".into()
                } else {
                    io.writes.join(", ")
                }
            );
            let _ = writeln!(
                s,
                "  token bytes: {} read, {} written per token",
                io.tok_bytes_read, io.tok_bytes_written
            );
        }
        for (name, value_node) in results_named(prog) {
            let _ = writeln!(s, "result {name} = {}", node(value_node));
        }
        s
    }
}

/// Named results for the rendering.
fn results_named(prog: &Program) -> Vec<(String, NodeId)> {
    let mut v = Vec::new();
    if let Some(l) = prog.loss {
        v.push(("loss".to_string(), l));
    }
    for (n, id) in &prog.metrics {
        v.push((format!("metric {n}"), *id));
    }
    for (n, id) in &prog.outputs {
        v.push((format!("output {n}"), *id));
    }
    for (st, id) in &prog.updates {
        v.push((format!("state {}", prog.states[st.index()].name), *id));
    }
    for (i, id) in &prog.grads {
        v.push((format!("grad {}", prog.inputs[i.index()].name), *id));
    }
    v
}

/// Whether any value input is in `tok` space (the plan then reads padded token tensors).
pub fn has_token_inputs(prog: &Program) -> bool {
    prog.inputs
        .iter()
        .any(|i| matches!(i.kind, InputKind::Value { space, .. } if space == SpaceId::TOK))
}

/// Whether the program reads the `TokPosition` structural value.
pub fn uses_tok_position(prog: &Program) -> bool {
    prog.nodes
        .iter()
        .any(|n| matches!(n.op, Op::Structural(Structural::TokPosition)))
}
