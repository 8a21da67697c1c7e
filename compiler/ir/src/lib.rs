//! # The rlobj IR
//!
//! One intermediate representation that every backend consumes: a dataflow graph of
//! [`Node`]s held in an arena ([`Program::nodes`]), addressed by [`NodeId`]. Operands always
//! come before their users, so a forward walk over `nodes` is a valid evaluation order.
//!
//! ## Values and index spaces
//! Every node has an element type ([`Elem`]: `f32` or `bool`) and lives in an index space
//! ([`SpaceId`]). A value in space `S` holds one element per element of `S`:
//!
//! * [`SpaceId::BATCH`] — one value.
//! * [`SpaceId::SEQ`] — one value per row of the batch (`B`).
//! * [`SpaceId::TOK`] — one value per **valid** response token (where `mask` is set), in
//!   row-major order. Padding is not in the space, so it never enters a reduction.
//! * user segment spaces ([`SpaceKind::RowSegments`], [`SpaceKind::RowGroups`]) declared by
//!   `id` inputs: turns/steps inside rows (`tok ⊂ turn ⊂ seq`), or groups of rows
//!   (`seq ⊂ grp ⊂ parent`).
//!
//! Spaces form a partial order "finer than" ([`Program::within`]). Operands of elementwise
//! ops are always in the node's own space: lowering inserts explicit [`Op::Broadcast`] nodes
//! from coarse to fine, and fine→coarse only happens through [`Op::Reduce`] / [`Op::Quantile`].
//!
//! ## Semantics (the interpreter is the executable definition; these are the rules)
//! * Arithmetic is IEEE; `bool` values are `0.0`/`1.0` when converted ([`UnaryOp::ToF32`]).
//! * `Min`/`Max` (elementwise): if either operand is NaN the result is NaN; otherwise the
//!   smaller/larger. **Tie rule:** when `a == b` the gradient is split half/half between
//!   the operands (as torch's `minimum`/`maximum`).
//! * `Clamp(x, lo, hi)` = `min(max(x, lo), hi)` in value; gradient goes to `x` when
//!   `lo <= x <= hi` (inclusive), to `lo` when `x < lo`, to `hi` when `x > hi` (as
//!   torch's `clamp`, extended to tensor bounds for GPPO). A NaN `x` sends the gradient to
//!   `lo`; when `lo > hi` both bounds may receive it (torch does the same).
//! * Reductions skip elements whose `mask` operand is false. A reduction over an empty
//!   segment yields its `empty` value (0 by default; this applies to `Count` too). `Var`/`Std` divide by `n - ddof` and
//!   yield `empty` when `n - ddof <= 0`. Reduce `Max`/`Min` tie rule: the gradient is split
//!   evenly among all tied maximal/minimal elements.
//! * `Quantile` uses linear interpolation between order statistics (torch.quantile
//!   default), `q` clamped to `[0, 1]`; empty segments yield `empty`.
//! * `Rank` is the 0-based ascending rank within the segment; ties are broken by position
//!   (lower position first). `TopK(k)` is true for the `k` largest (ties: lower position
//!   first), `k` taken as `floor(k)` clamped to `[0, n]`. Masked-out elements rank last and
//!   are never selected; NaN ranks as the largest value. `Softmax`/`LogSoftmax` give 0
//!   (with zero gradient) at masked-out elements. Piecewise-constant ops have zero gradient.
//! * `ColumnSum` takes a `tok` argument and a `within` that is `BATCH` or a `RowGroups`
//!   space: every token (masked-out ones included) gets the sum of the unmasked tokens at
//!   its padded position `t` in the rows of its segment, summed in row order (0 when none
//!   is unmasked). Rows are not re-aligned: position means the padded column. It is linear;
//!   its adjoint is the unmasked `ColumnSum` of the cotangent, kept at unmasked tokens.
//! * Scans run in token order within each segment of `within` (which must be `SEQ` or a
//!   `RowSegments` space); `ScanRev` computes `g_t = x_t + c_t * g_{t+1}` with `g` past the
//!   end 0; `Shift { offset: k }` gives `y_t = x_{t+k}` or `fill` past the segment's ends.
//! * `StopGrad` is the identity in value with zero gradient.
//! * Metrics, outputs and state updates are computed from forward values and never
//!   differentiated.

use serde::Serialize;

/// A byte range in a source file (`file` indexes the front end's source map). Carried on
/// nodes so that backend errors can point at the `.obj` text that produced a kernel line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize)]
pub struct SrcSpan {
    pub file: u32,
    pub start: u32,
    pub end: u32,
}

macro_rules! handle {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub struct $name(pub u32);
        impl $name {
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

handle!(
    /// Index into [`Program::nodes`].
    NodeId
);
handle!(
    /// Index into [`Program::spaces`].
    SpaceId
);
handle!(
    /// Index into [`Program::inputs`].
    InputId
);
handle!(
    /// Index into [`Program::params`].
    ParamId
);
handle!(
    /// Index into [`Program::states`].
    StateId
);

impl SpaceId {
    pub const BATCH: SpaceId = SpaceId(0);
    pub const SEQ: SpaceId = SpaceId(1);
    pub const TOK: SpaceId = SpaceId(2);
}

/// Element types of values. Ids are not values: they only define spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Elem {
    F32,
    Bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Space {
    pub name: String,
    pub kind: SpaceKind,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum SpaceKind {
    Batch,
    Seq,
    Tok,
    /// Declared by an `id[tok]` input: segments of consecutive-or-not tokens within a row,
    /// keyed by (row, id). `tok ⊂ this ⊂ seq`.
    RowSegments {
        input: InputId,
    },
    /// Declared by an `id[seq]` input: groups of rows keyed by id value.
    /// `seq ⊂ this ⊂ parent` (parent is `BATCH` unless declared `in other`).
    RowGroups {
        input: InputId,
        parent: SpaceId,
    },
}

/// What an input is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum InputKind {
    /// A value tensor: `f32[S]` or `bool[S]`.
    Value {
        elem: Elem,
        space: SpaceId,
        default: Option<f64>,
        grad: bool,
    },
    /// An `id[tok]` / `id[seq]` tensor that defines `space`.
    Ids { space: SpaceId },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Input {
    pub name: String,
    pub kind: InputKind,
    pub span: SrcSpan,
    /// Set for one component of a channelled input (`f32[seq, chan]`): the front end
    /// unrolls the channel axis, so the IR sees `count` ordinary inputs that all read
    /// columns of one batch tensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelSlot>,
}

/// Which batch tensor and which column of its last (channel) dimension an input reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelSlot {
    /// The batch tensor (the declared input name, e.g. `rewards`).
    pub tensor: String,
    /// The const that sizes the channel axis (e.g. `chan`), for messages.
    pub axis: String,
    /// The column this input reads, `0..count`.
    pub index: u32,
    /// The channel count the program was compiled with.
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Param {
    pub name: String,
    pub elem: Elem,
    pub default: f64,
    pub span: SrcSpan,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct State {
    pub name: String,
    pub init: f64,
    pub span: SrcSpan,
}

/// A compile-time value an objective was specialised on (kept so dumps show it and the
/// runtime can recompile with a `--set` override).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ConstValue {
    F32(f64),
    Bool(bool),
    Str(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Log1p,
    Expm1,
    Sqrt,
    Rsqrt,
    Abs,
    Sign,
    Tanh,
    Sigmoid,
    Softplus,
    LogSigmoid,
    Floor,
    Ceil,
    Recip,
    /// bool → bool
    Not,
    /// bool → f32 (0.0 / 1.0)
    ToF32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Min,
    Max,
    /// Comparisons give `bool`; on NaN they are false (`Ne`: true).
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    /// bool × bool → bool
    And,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    /// Number of (unmasked) elements; the argument's values are not read.
    Count,
    Var {
        ddof: u32,
    },
    Std {
        ddof: u32,
    },
    LogSumExp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum SegmentOp {
    Softmax,
    LogSoftmax,
    /// f32 result: 0-based ascending rank.
    Rank,
    /// bool result: in the top `k` of the segment; `k` lives in the `within` space.
    TopK,
    /// f32 `tok` result: for the token at padded position `t` of row `i`, the sum of the
    /// argument over the (unmasked) tokens at position `t` of every row in `i`'s `within`
    /// segment (a `RowGroups` space or `BATCH`). Per-(group, position) statistics such as
    /// verl's optimal token baseline need it: no declared space has those elements.
    ColumnSum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ScanOp {
    /// `y_t = Σ_{s ≤ t} x_s`
    Cumsum,
    /// `y_t = Σ_{s ≥ t} x_s`
    CumsumRev,
    /// `g_t = x_t + c_t · g_{t+1}` (GAE, discounted returns); needs `coef`.
    ScanRev,
    /// `g_t = x_t + c_t · g_{t-1}`; needs `coef`.
    ScanFwd,
    CumMin,
    CumMax,
    /// `y_t = min_{s ≥ t} x_s` (PURE's min-form credit).
    CumMinRev,
    CumMaxRev,
}

/// Values a program reads from the batch layout rather than from tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Structural {
    /// f32[tok]: position `t` of the token in its row (0-based, padded coordinates).
    TokPosition,
    /// f32[seq]: row index.
    RowIndex,
    /// f32[batch]: the padded width `T` of the batch.
    Width,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Op {
    Const(f64),
    Input(InputId),
    Param(ParamId),
    State(StateId),
    Structural(Structural),
    Unary(UnaryOp, NodeId),
    Binary(BinaryOp, NodeId, NodeId),
    /// `cond ? a : b` elementwise (cond is bool).
    Select(NodeId, NodeId, NodeId),
    /// `Clamp(x, lo, hi)`, see the module docs for its gradient rule.
    Clamp(NodeId, NodeId, NodeId),
    /// From the operand's (coarser) space to the node's space.
    Broadcast(NodeId),
    /// From the operand's (finer) space to the node's space.
    Reduce {
        op: ReduceOp,
        arg: NodeId,
        mask: Option<NodeId>,
        empty: f64,
    },
    /// Result in the argument's space, computed within each segment of `within`.
    Segment {
        op: SegmentOp,
        arg: NodeId,
        mask: Option<NodeId>,
        within: SpaceId,
        k: Option<NodeId>,
    },
    /// `q`-quantile of `arg` over each segment of the node's space; `q` is in the node's space.
    Quantile {
        arg: NodeId,
        mask: Option<NodeId>,
        q: NodeId,
        empty: f64,
    },
    /// Scan along token order within each segment of `within`; result in the argument's space.
    Scan {
        op: ScanOp,
        arg: NodeId,
        coef: Option<NodeId>,
        within: SpaceId,
    },
    /// `y_t = x_{t+offset}` within each segment of `within`, `fill` outside.
    Shift {
        arg: NodeId,
        offset: i32,
        fill: f64,
        within: SpaceId,
    },
    StopGrad(NodeId),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub op: Op,
    pub elem: Elem,
    pub space: SpaceId,
    pub span: SrcSpan,
}

/// One compiled objective (or transform): inputs, the graph, and what it produces.
#[derive(Clone, Debug, PartialEq, Serialize, Default)]
pub struct Program {
    pub name: String,
    /// `spaces[0..3]` are always `batch`, `seq`, `tok`.
    pub spaces: Vec<Space>,
    pub inputs: Vec<Input>,
    pub params: Vec<Param>,
    pub states: Vec<State>,
    pub consts: Vec<(String, ConstValue)>,
    pub nodes: Vec<Node>,
    /// The `loss` (a batch f32), if the program has one.
    pub loss: Option<NodeId>,
    pub metrics: Vec<(String, NodeId)>,
    pub outputs: Vec<(String, NodeId)>,
    pub updates: Vec<(StateId, NodeId)>,
    /// `d loss / d input` for every `@grad` input, in the input's space; filled by autodiff.
    pub grads: Vec<(InputId, NodeId)>,
}

impl Program {
    /// An empty program with the three built-in spaces.
    pub fn new(name: impl Into<String>) -> Self {
        Program {
            name: name.into(),
            spaces: vec![
                Space {
                    name: "batch".into(),
                    kind: SpaceKind::Batch,
                },
                Space {
                    name: "seq".into(),
                    kind: SpaceKind::Seq,
                },
                Space {
                    name: "tok".into(),
                    kind: SpaceKind::Tok,
                },
            ],
            ..Default::default()
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// Appends a node and returns its handle. Operands must already exist.
    pub fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        NodeId((self.nodes.len() - 1) as u32)
    }

    /// The spaces directly coarser than `s` (its parents in the nesting order).
    pub fn parents(&self, s: SpaceId) -> Vec<SpaceId> {
        match &self.spaces[s.index()].kind {
            SpaceKind::Batch => vec![],
            SpaceKind::Seq => {
                let mut p: Vec<SpaceId> = self
                    .spaces
                    .iter()
                    .enumerate()
                    .filter(|(_, sp)| matches!(sp.kind, SpaceKind::RowGroups { .. }))
                    .map(|(i, _)| SpaceId(i as u32))
                    .collect();
                p.push(SpaceId::BATCH);
                p
            }
            SpaceKind::Tok => {
                let mut p: Vec<SpaceId> = self
                    .spaces
                    .iter()
                    .enumerate()
                    .filter(|(_, sp)| matches!(sp.kind, SpaceKind::RowSegments { .. }))
                    .map(|(i, _)| SpaceId(i as u32))
                    .collect();
                p.push(SpaceId::SEQ);
                p
            }
            SpaceKind::RowSegments { .. } => vec![SpaceId::SEQ],
            SpaceKind::RowGroups { parent, .. } => vec![*parent],
        }
    }

    /// Whether every element of `fine` lies in exactly one element of `coarse`
    /// (reflexive: a space is within itself).
    pub fn within(&self, fine: SpaceId, coarse: SpaceId) -> bool {
        if fine == coarse || coarse == SpaceId::BATCH {
            return true;
        }
        self.parents(fine)
            .into_iter()
            .any(|p| self.within(p, coarse))
    }

    /// Handles of all nodes, in evaluation order.
    pub fn node_ids(&self) -> impl DoubleEndedIterator<Item = NodeId> + ExactSizeIterator {
        (0..self.nodes.len() as u32).map(NodeId)
    }
}

impl Op {
    /// Operands in a fixed order (the order autodiff and validators use).
    pub fn operands(&self) -> Vec<NodeId> {
        match self {
            Op::Const(_) | Op::Input(_) | Op::Param(_) | Op::State(_) | Op::Structural(_) => vec![],
            Op::Unary(_, a) | Op::Broadcast(a) | Op::StopGrad(a) => vec![*a],
            Op::Binary(_, a, b) => vec![*a, *b],
            Op::Select(c, a, b) | Op::Clamp(c, a, b) => vec![*c, *a, *b],
            Op::Reduce { arg, mask, .. } => std::iter::once(*arg).chain(*mask).collect(),
            Op::Segment { arg, mask, k, .. } => {
                std::iter::once(*arg).chain(*mask).chain(*k).collect()
            }
            Op::Quantile { arg, mask, q, .. } => std::iter::once(*arg)
                .chain(*mask)
                .chain(std::iter::once(*q))
                .collect(),
            Op::Scan { arg, coef, .. } => std::iter::once(*arg).chain(*coef).collect(),
            Op::Shift { arg, .. } => vec![*arg],
        }
    }
}

pub mod autodiff;
pub mod cse;
pub mod dump;
pub mod fold;
pub mod layout;
pub mod passes;
pub mod scalar;
pub mod schedule;
pub mod validate;
pub use layout::{Layout, LayoutError};
