//! The validator: checks that a [`Program`] obeys the IR's typing rules and returns side
//! tables later passes use. Handles are checked first (like naga's `valid/handles.rs`), so
//! every pass and backend that runs after a successful `validate` may index without checks.

use crate::scalar;
use crate::{
    BinaryOp, Elem, InputKind, NodeId, Op, Program, ReduceOp, ScanOp, SegmentOp, SpaceId,
    SpaceKind, Structural,
};

/// Side tables of a valid program, indexed by `NodeId`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramInfo {
    /// How many times each node is used as an operand or a root.
    pub uses: Vec<u32>,
    /// Whether each node depends on a `@grad` input through a differentiable path (not
    /// through `StopGrad`, bool values or piecewise-constant ops): autodiff only visits these.
    pub grad_dep: Vec<bool>,
    /// Whether each node is reachable from a root (loss, metrics, outputs, updates, grads).
    pub live: Vec<bool>,
}

/// Why a program is not valid. `node` is the offending node when there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidateError {
    pub node: Option<NodeId>,
    pub message: String,
}

impl std::fmt::Display for ValidateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.node {
            Some(n) => write!(f, "invalid IR at %{}: {}", n.0, self.message),
            None => write!(f, "invalid IR: {}", self.message),
        }
    }
}
impl std::error::Error for ValidateError {}

fn err<T>(node: Option<NodeId>, message: String) -> Result<T, ValidateError> {
    Err(ValidateError { node, message })
}

/// Checks `prog` and returns its side tables.
pub fn validate(prog: &Program) -> Result<ProgramInfo, ValidateError> {
    check_declarations(prog)?;
    for id in prog.node_ids() {
        check_node(prog, id)?;
    }
    check_roots(prog)?;
    Ok(info(prog))
}

fn space_name(prog: &Program, s: SpaceId) -> &str {
    prog.spaces
        .get(s.index())
        .map(|s| s.name.as_str())
        .unwrap_or("?")
}

fn check_declarations(prog: &Program) -> Result<(), ValidateError> {
    let builtin = [SpaceKind::Batch, SpaceKind::Seq, SpaceKind::Tok];
    if prog.spaces.len() < 3 || prog.spaces.iter().zip(&builtin).any(|(s, k)| &s.kind != k) {
        return err(None, "spaces 0..3 must be batch, seq, tok".into());
    }
    for (si, space) in prog.spaces.iter().enumerate().skip(3) {
        let input = match &space.kind {
            SpaceKind::RowSegments { input } => *input,
            SpaceKind::RowGroups { input, parent } => {
                let ok = parent.index() < si
                    && matches!(
                        prog.spaces[parent.index()].kind,
                        SpaceKind::Batch | SpaceKind::RowGroups { .. }
                    );
                if !ok {
                    return err(
                        None,
                        format!(
                            "space `{}`: parent must be batch or an earlier group space",
                            space.name
                        ),
                    );
                }
                *input
            }
            _ => {
                return err(
                    None,
                    format!("space `{}`: a built-in kind after index 2", space.name),
                )
            }
        };
        match prog.inputs.get(input.index()).map(|i| &i.kind) {
            Some(InputKind::Ids { space: s }) if s.index() == si => {}
            _ => {
                return err(
                    None,
                    format!(
                        "space `{}` must be declared by an id input that names it",
                        space.name
                    ),
                )
            }
        }
    }
    for (ii, input) in prog.inputs.iter().enumerate() {
        match &input.kind {
            InputKind::Value {
                elem, space, grad, ..
            } => {
                if space.index() >= prog.spaces.len() {
                    return err(None, format!("input `{}`: space out of range", input.name));
                }
                if *grad && *elem != Elem::F32 {
                    return err(
                        None,
                        format!("input `{}`: only f32 inputs can be @grad", input.name),
                    );
                }
            }
            InputKind::Ids { space } => {
                let ok = match prog.spaces.get(space.index()).map(|s| &s.kind) {
                    Some(
                        SpaceKind::RowSegments { input: i } | SpaceKind::RowGroups { input: i, .. },
                    ) => i.index() == ii,
                    _ => false,
                };
                if !ok {
                    return err(
                        None,
                        format!("id input `{}` must define a segment space", input.name),
                    );
                }
            }
        }
    }
    Ok(())
}

/// Whether `s` may be the `within` space of a scan or shift.
pub fn scan_space(prog: &Program, s: SpaceId) -> bool {
    s == SpaceId::SEQ
        || matches!(
            prog.spaces.get(s.index()).map(|x| &x.kind),
            Some(SpaceKind::RowSegments { .. })
        )
}

fn check_node(prog: &Program, id: NodeId) -> Result<(), ValidateError> {
    let node = prog.node(id);
    let here = Some(id);
    if node.space.index() >= prog.spaces.len() {
        return err(here, "space out of range".into());
    }
    for o in node.op.operands() {
        if o >= id {
            return err(
                here,
                format!("operand %{} does not come before its user", o.0),
            );
        }
    }
    let el = |n: NodeId| prog.node(n).elem;
    let sp = |n: NodeId| prog.node(n).space;
    let want = |n: NodeId, elem: Elem, space: SpaceId, what: &str| -> Result<(), ValidateError> {
        if el(n) != elem || sp(n) != space {
            return err(
                here,
                format!(
                    "{what} %{} must be {:?}[{}], found {:?}[{}]",
                    n.0,
                    elem,
                    space_name(prog, space),
                    el(n),
                    space_name(prog, sp(n))
                ),
            );
        }
        Ok(())
    };
    let result = |elem: Elem| -> Result<(), ValidateError> {
        if node.elem != elem {
            return err(
                here,
                format!("result must be {elem:?}, found {:?}", node.elem),
            );
        }
        Ok(())
    };
    let mask_ok = |mask: Option<NodeId>, space: SpaceId| -> Result<(), ValidateError> {
        match mask {
            Some(m) => want(m, Elem::Bool, space, "mask"),
            None => Ok(()),
        }
    };
    match &node.op {
        Op::Const(v) => {
            if node.elem == Elem::Bool && *v != 0.0 && *v != 1.0 {
                return err(here, format!("bool constant must be 0 or 1, found {v}"));
            }
        }
        Op::Input(i) => match prog.inputs.get(i.index()).map(|x| &x.kind) {
            Some(InputKind::Value { elem, space, .. }) => {
                if *elem != node.elem || *space != node.space {
                    return err(
                        here,
                        "input node's type differs from the declaration".into(),
                    );
                }
            }
            Some(InputKind::Ids { .. }) => return err(here, "id inputs are not values".into()),
            None => return err(here, format!("input {} out of range", i.0)),
        },
        Op::Param(p) => match prog.params.get(p.index()) {
            Some(param) if param.elem == node.elem && node.space == SpaceId::BATCH => {}
            Some(_) => {
                return err(
                    here,
                    "param node must match its declaration, in batch".into(),
                )
            }
            None => return err(here, format!("param {} out of range", p.0)),
        },
        Op::State(s) => {
            if s.index() >= prog.states.len() {
                return err(here, format!("state {} out of range", s.0));
            }
            if node.elem != Elem::F32 || node.space != SpaceId::BATCH {
                return err(here, "state node must be f32[batch]".into());
            }
        }
        Op::Structural(s) => {
            let space = match s {
                Structural::TokPosition => SpaceId::TOK,
                Structural::RowIndex => SpaceId::SEQ,
                Structural::Width => SpaceId::BATCH,
            };
            result(Elem::F32)?;
            if node.space != space {
                return err(
                    here,
                    format!("{s:?} lives in `{}`", space_name(prog, space)),
                );
            }
        }
        Op::Unary(op, a) => {
            let (arg, res) = scalar::unary_elems(*op);
            want(*a, arg, node.space, "operand")?;
            result(res)?;
        }
        Op::Binary(op, a, b) => {
            want(*a, el(*a), node.space, "operand")?;
            want(*b, el(*a), node.space, "operand")?;
            match scalar::binary_result(*op, el(*a)) {
                Some(r) => result(r)?,
                None => return err(here, format!("{op:?} does not take {:?}", el(*a))),
            }
        }
        Op::Select(c, a, b) => {
            want(*c, Elem::Bool, node.space, "condition")?;
            want(*a, node.elem, node.space, "operand")?;
            want(*b, node.elem, node.space, "operand")?;
        }
        Op::Clamp(x, lo, hi) => {
            result(Elem::F32)?;
            for o in [x, lo, hi] {
                want(*o, Elem::F32, node.space, "operand")?;
            }
        }
        Op::Broadcast(a) => {
            if el(*a) != node.elem || !prog.within(node.space, sp(*a)) {
                return err(
                    here,
                    format!(
                        "broadcast from `{}` to `{}`: the source must be coarser, same element type",
                        space_name(prog, sp(*a)),
                        space_name(prog, node.space)
                    ),
                );
            }
        }
        Op::Reduce { op, arg, mask, .. } => {
            result(Elem::F32)?;
            let arg_ok = el(*arg) == Elem::F32
                || matches!(op, ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Count);
            if !arg_ok || !prog.within(sp(*arg), node.space) {
                return err(
                    here,
                    format!(
                        "reduce {op:?} from {:?}[{}] to `{}`: the source must be finer (f32; bool only for sum/mean/count)",
                        el(*arg),
                        space_name(prog, sp(*arg)),
                        space_name(prog, node.space)
                    ),
                );
            }
            mask_ok(*mask, sp(*arg))?;
        }
        Op::Segment {
            op,
            arg,
            mask,
            within,
            k,
        } => {
            want(*arg, Elem::F32, node.space, "argument")?;
            if within.index() >= prog.spaces.len() || !prog.within(node.space, *within) {
                return err(
                    here,
                    "segment `within` must be coarser than the argument".into(),
                );
            }
            mask_ok(*mask, node.space)?;
            if *op == SegmentOp::ColumnSum {
                if let Some(m) = column_sum_problem(prog, node.space, *within) {
                    return err(here, m);
                }
            }
            result(if *op == SegmentOp::TopK {
                Elem::Bool
            } else {
                Elem::F32
            })?;
            match (op, k) {
                (SegmentOp::TopK, Some(k)) => want(*k, Elem::F32, *within, "k")?,
                (SegmentOp::TopK, None) => return err(here, "topk needs k".into()),
                (_, Some(_)) => return err(here, "only topk takes k".into()),
                (_, None) => {}
            }
        }
        Op::Quantile { arg, mask, q, .. } => {
            result(Elem::F32)?;
            if el(*arg) != Elem::F32 || !prog.within(sp(*arg), node.space) {
                return err(
                    here,
                    "quantile argument must be f32 in a finer space".into(),
                );
            }
            mask_ok(*mask, sp(*arg))?;
            want(*q, Elem::F32, node.space, "q")?;
        }
        Op::Scan {
            op,
            arg,
            coef,
            within,
        } => {
            if node.space != SpaceId::TOK || !scan_space(prog, *within) {
                return err(
                    here,
                    "scans run over tok within seq or a row-segment space".into(),
                );
            }
            result(Elem::F32)?;
            want(*arg, Elem::F32, SpaceId::TOK, "argument")?;
            let needs = matches!(op, ScanOp::ScanRev | ScanOp::ScanFwd);
            match coef {
                Some(c) if needs => want(*c, Elem::F32, SpaceId::TOK, "coef")?,
                None if !needs => {}
                _ => {
                    return err(
                        here,
                        format!("{op:?}: coef only and always on ScanRev/ScanFwd"),
                    )
                }
            }
        }
        Op::Shift {
            arg, within, fill, ..
        } => {
            if node.space != SpaceId::TOK || !scan_space(prog, *within) {
                return err(
                    here,
                    "shifts run over tok within seq or a row-segment space".into(),
                );
            }
            want(*arg, node.elem, SpaceId::TOK, "argument")?;
            if node.elem == Elem::Bool && *fill != 0.0 && *fill != 1.0 {
                return err(here, "bool shift fill must be 0 or 1".into());
            }
        }
        Op::StopGrad(a) => want(*a, node.elem, node.space, "operand")?,
    }
    Ok(())
}

fn check_roots(prog: &Program) -> Result<(), ValidateError> {
    let n = prog.nodes.len();
    let get = |id: NodeId, what: &str| -> Result<(Elem, SpaceId), ValidateError> {
        match prog.nodes.get(id.index()) {
            Some(node) => Ok((node.elem, node.space)),
            None => err(
                None,
                format!("{what}: node %{} out of range ({n} nodes)", id.0),
            ),
        }
    };
    if let Some(l) = prog.loss {
        if get(l, "loss")? != (Elem::F32, SpaceId::BATCH) {
            return err(Some(l), "the loss must be f32[batch]".into());
        }
    }
    for (name, m) in &prog.metrics {
        if get(*m, name)?.1 != SpaceId::BATCH {
            return err(Some(*m), format!("metric `{name}` must be a batch scalar"));
        }
    }
    for (name, o) in &prog.outputs {
        get(*o, name)?;
    }
    for (s, u) in &prog.updates {
        let Some(state) = prog.states.get(s.index()) else {
            return err(Some(*u), format!("update of state {} out of range", s.0));
        };
        if get(*u, &state.name)? != (Elem::F32, SpaceId::BATCH) {
            return err(
                Some(*u),
                format!("update `{}` must be f32[batch]", state.name),
            );
        }
    }
    for (k, (i, g)) in prog.grads.iter().enumerate() {
        let Some(input) = prog.inputs.get(i.index()) else {
            return err(Some(*g), format!("grad of input {} out of range", i.0));
        };
        let InputKind::Value {
            space, grad: true, ..
        } = input.kind
        else {
            return err(
                Some(*g),
                format!("grad of `{}`, which is not @grad", input.name),
            );
        };
        if get(*g, &input.name)? != (Elem::F32, space) {
            return err(
                Some(*g),
                format!("grad of `{}` must be f32 in its space", input.name),
            );
        }
        if prog.grads[..k].iter().any(|(j, _)| j == i) {
            return err(Some(*g), format!("two grads of `{}`", input.name));
        }
    }
    Ok(())
}

/// Why a `ColumnSum` over `space` within `within` is ill-formed, if it is: the argument must
/// be tokens and `within` a set of whole rows coarser than `seq` (a row group or `BATCH`),
/// so that "the same padded position in the segment's rows" names a set of tokens.
pub fn column_sum_problem(prog: &Program, space: SpaceId, within: SpaceId) -> Option<String> {
    if space != SpaceId::TOK {
        return Some(format!(
            "colsum runs over `tok` values, not `{}`",
            space_name(prog, space)
        ));
    }
    let whole_rows = within == SpaceId::BATCH
        || matches!(
            prog.spaces.get(within.index()).map(|s| &s.kind),
            Some(SpaceKind::RowGroups { .. })
        );
    if !whole_rows {
        return Some(format!(
            "colsum within `{}`: must be `batch` or an `id[seq]` group space",
            space_name(prog, within)
        ));
    }
    None
}

/// All root nodes of a program, in a fixed order.
pub fn roots(prog: &Program) -> Vec<NodeId> {
    prog.loss
        .iter()
        .copied()
        .chain(prog.metrics.iter().map(|m| m.1))
        .chain(prog.outputs.iter().map(|m| m.1))
        .chain(prog.updates.iter().map(|m| m.1))
        .chain(prog.grads.iter().map(|m| m.1))
        .collect()
}

/// Whether gradient can flow from a node's value into operand number `k` (in
/// [`Op::operands`] order). False for bool operands, masks, `k`, `q`, and the operands of
/// piecewise-constant ops.
pub fn differentiable_operand(prog: &Program, id: NodeId, k: usize) -> bool {
    let node = prog.node(id);
    if node.elem == Elem::Bool {
        return false;
    }
    match &node.op {
        Op::Unary(op, _) => !scalar::unary_is_piecewise_constant(*op),
        Op::Binary(op, ..) => matches!(
            op,
            BinaryOp::Add
                | BinaryOp::Sub
                | BinaryOp::Mul
                | BinaryOp::Div
                | BinaryOp::Pow
                | BinaryOp::Min
                | BinaryOp::Max
        ),
        Op::Select(..) => k > 0,
        Op::Clamp(..) | Op::Broadcast(_) | Op::Shift { .. } => true,
        Op::Reduce { op, .. } => k == 0 && *op != ReduceOp::Count,
        Op::Segment { op, .. } => {
            k == 0
                && matches!(
                    op,
                    SegmentOp::Softmax | SegmentOp::LogSoftmax | SegmentOp::ColumnSum
                )
        }
        Op::Quantile { .. } | Op::StopGrad(_) => false,
        // Operand 0 is the argument, 1 the coef.
        Op::Scan { .. } => true,
        Op::Const(_) | Op::Input(_) | Op::Param(_) | Op::State(_) | Op::Structural(_) => false,
    }
}

fn info(prog: &Program) -> ProgramInfo {
    let n = prog.nodes.len();
    let mut uses = vec![0u32; n];
    let mut grad_dep = vec![false; n];
    let mut live = vec![false; n];
    for id in prog.node_ids() {
        let node = prog.node(id);
        let ops = node.op.operands();
        for o in &ops {
            uses[o.index()] += 1;
        }
        grad_dep[id.index()] = match node.op {
            Op::Input(i) => matches!(
                prog.inputs[i.index()].kind,
                InputKind::Value { grad: true, .. }
            ),
            _ => ops
                .iter()
                .enumerate()
                .any(|(k, o)| grad_dep[o.index()] && differentiable_operand(prog, id, k)),
        };
    }
    let roots = roots(prog);
    for r in &roots {
        uses[r.index()] += 1;
        live[r.index()] = true;
    }
    for id in (0..prog.nodes.len() as u32).rev().map(NodeId) {
        if live[id.index()] {
            for o in prog.node(id).op.operands() {
                live[o.index()] = true;
            }
        }
    }
    ProgramInfo {
        uses,
        grad_dep,
        live,
    }
}
