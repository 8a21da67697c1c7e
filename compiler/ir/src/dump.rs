//! A stable, readable text dump of a program (`rlobj compile --emit ir` and snapshot tests).
//! One line per node, `%12: f32[tok] = mul %3, %11`, after the declarations and before the
//! roots. Numbers print with `{:?}` (exact round trip, exponent for tiny/huge values).

use crate::{
    BinaryOp, ConstValue, Elem, InputKind, Op, Program, ReduceOp, ScanOp, SegmentOp, SpaceId,
    SpaceKind, Structural, UnaryOp,
};
use std::fmt::Write;

fn elem(e: Elem) -> &'static str {
    match e {
        Elem::F32 => "f32",
        Elem::Bool => "bool",
    }
}

fn space(p: &Program, s: SpaceId) -> String {
    p.spaces
        .get(s.index())
        .map(|s| s.name.clone())
        .unwrap_or_else(|| format!("?{}", s.0))
}

fn input_name(p: &Program, i: crate::InputId) -> String {
    p.inputs
        .get(i.index())
        .map(|x| x.name.clone())
        .unwrap_or_else(|| format!("?{}", i.0))
}

pub fn unary_name(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "neg",
        UnaryOp::Exp => "exp",
        UnaryOp::Log => "log",
        UnaryOp::Log1p => "log1p",
        UnaryOp::Expm1 => "expm1",
        UnaryOp::Sqrt => "sqrt",
        UnaryOp::Rsqrt => "rsqrt",
        UnaryOp::Abs => "abs",
        UnaryOp::Sign => "sign",
        UnaryOp::Tanh => "tanh",
        UnaryOp::Sigmoid => "sigmoid",
        UnaryOp::Softplus => "softplus",
        UnaryOp::LogSigmoid => "log_sigmoid",
        UnaryOp::Floor => "floor",
        UnaryOp::Ceil => "ceil",
        UnaryOp::Recip => "recip",
        UnaryOp::Not => "not",
        UnaryOp::ToF32 => "float",
    }
}

pub fn binary_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Pow => "pow",
        BinaryOp::Min => "min",
        BinaryOp::Max => "max",
        BinaryOp::Lt => "lt",
        BinaryOp::Le => "le",
        BinaryOp::Gt => "gt",
        BinaryOp::Ge => "ge",
        BinaryOp::Eq => "eq",
        BinaryOp::Ne => "ne",
        BinaryOp::And => "and",
        BinaryOp::Or => "or",
    }
}

pub fn reduce_name(op: ReduceOp) -> String {
    match op {
        ReduceOp::Sum => "sum".into(),
        ReduceOp::Mean => "mean".into(),
        ReduceOp::Max => "max".into(),
        ReduceOp::Min => "min".into(),
        ReduceOp::Count => "count".into(),
        ReduceOp::Var { ddof } => format!("var(ddof={ddof})"),
        ReduceOp::Std { ddof } => format!("std(ddof={ddof})"),
        ReduceOp::LogSumExp => "logsumexp".into(),
    }
}

pub fn segment_name(op: SegmentOp) -> &'static str {
    match op {
        SegmentOp::Softmax => "softmax",
        SegmentOp::LogSoftmax => "log_softmax",
        SegmentOp::Rank => "rank",
        SegmentOp::TopK => "topk",
        SegmentOp::ColumnSum => "colsum",
    }
}

pub fn scan_name(op: ScanOp) -> &'static str {
    match op {
        ScanOp::Cumsum => "cumsum",
        ScanOp::CumsumRev => "cumsum_rev",
        ScanOp::ScanRev => "scan_rev",
        ScanOp::ScanFwd => "scan",
        ScanOp::CumMin => "cummin",
        ScanOp::CumMax => "cummax",
        ScanOp::CumMinRev => "cummin_rev",
        ScanOp::CumMaxRev => "cummax_rev",
    }
}

/// The right-hand side of a node's line, e.g. `mul %3, %11`.
pub fn write_op(p: &Program, op: &Op) -> String {
    let mask =
        |m: &Option<crate::NodeId>| m.map(|m| format!(" where %{}", m.0)).unwrap_or_default();
    match op {
        Op::Const(c) => format!("const {c:?}"),
        Op::Input(i) => format!("input {}", input_name(p, *i)),
        Op::Param(i) => format!(
            "param {}",
            p.params
                .get(i.index())
                .map(|x| x.name.clone())
                .unwrap_or_else(|| format!("?{}", i.0))
        ),
        Op::State(i) => format!(
            "state {}",
            p.states
                .get(i.index())
                .map(|x| x.name.clone())
                .unwrap_or_else(|| format!("?{}", i.0))
        ),
        Op::Structural(s) => match s {
            Structural::TokPosition => "position".into(),
            Structural::RowIndex => "row_index".into(),
            Structural::Width => "width".into(),
        },
        Op::Unary(u, a) => format!("{} %{}", unary_name(*u), a.0),
        Op::Binary(b, x, y) => format!("{} %{}, %{}", binary_name(*b), x.0, y.0),
        Op::Select(c, a, b) => format!("select %{}, %{}, %{}", c.0, a.0, b.0),
        Op::Clamp(x, lo, hi) => format!("clamp %{}, %{}, %{}", x.0, lo.0, hi.0),
        Op::Broadcast(a) => format!("broadcast %{}", a.0),
        Op::Reduce {
            op,
            arg,
            mask: m,
            empty,
        } => {
            format!(
                "reduce.{} %{}{} empty={empty:?}",
                reduce_name(*op),
                arg.0,
                mask(m)
            )
        }
        Op::Segment {
            op,
            arg,
            mask: m,
            within,
            k,
        } => format!(
            "{}[{}] %{}{}{}",
            segment_name(*op),
            space(p, *within),
            arg.0,
            mask(m),
            k.map(|k| format!(" k=%{}", k.0)).unwrap_or_default()
        ),
        Op::Quantile {
            arg,
            mask: m,
            q,
            empty,
        } => {
            format!("quantile %{}{} q=%{} empty={empty:?}", arg.0, mask(m), q.0)
        }
        Op::Scan {
            op,
            arg,
            coef,
            within,
        } => format!(
            "{}[{}] %{}{}",
            scan_name(*op),
            space(p, *within),
            arg.0,
            coef.map(|c| format!(" coef=%{}", c.0)).unwrap_or_default()
        ),
        Op::Shift {
            arg,
            offset,
            fill,
            within,
        } => {
            format!(
                "shift[{}] %{} by {offset} fill={fill:?}",
                space(p, *within),
                arg.0
            )
        }
        Op::StopGrad(a) => format!("sg %{}", a.0),
    }
}

/// The whole program as text.
pub fn dump(p: &Program) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_program(p, &mut s);
    s
}

fn write_program(p: &Program, s: &mut String) -> std::fmt::Result {
    writeln!(s, "program {}", p.name)?;
    writeln!(s, "spaces:")?;
    for sp in &p.spaces {
        match &sp.kind {
            SpaceKind::Batch | SpaceKind::Seq | SpaceKind::Tok => writeln!(s, "  {}", sp.name)?,
            SpaceKind::RowSegments { input } => writeln!(
                s,
                "  {} = segments({}) in seq",
                sp.name,
                input_name(p, *input)
            )?,
            SpaceKind::RowGroups { input, parent } => writeln!(
                s,
                "  {} = groups({}) in {}",
                sp.name,
                input_name(p, *input),
                space(p, *parent)
            )?,
        }
    }
    if !p.inputs.is_empty() {
        writeln!(s, "inputs:")?;
    }
    for i in &p.inputs {
        match &i.kind {
            InputKind::Value {
                elem: e,
                space: sp,
                default,
                grad,
            } => writeln!(
                s,
                "  {}: {}[{}]{}{}{}",
                i.name,
                elem(*e),
                space(p, *sp),
                default.map(|d| format!(" = {d:?}")).unwrap_or_default(),
                if *grad { " @grad" } else { "" },
                i.channel
                    .as_ref()
                    .map(|c| format!(
                        " <- {}[.., {} of {} = {}]",
                        c.tensor, c.index, c.axis, c.count
                    ))
                    .unwrap_or_default()
            )?,
            InputKind::Ids { space: sp } => writeln!(s, "  {}: id -> {}", i.name, space(p, *sp))?,
        }
    }
    if !p.params.is_empty() {
        writeln!(s, "params:")?;
    }
    for x in &p.params {
        writeln!(s, "  {}: {} = {:?}", x.name, elem(x.elem), x.default)?;
    }
    if !p.consts.is_empty() {
        writeln!(s, "consts:")?;
    }
    for (name, v) in &p.consts {
        match v {
            ConstValue::F32(x) => writeln!(s, "  {name} = {x:?}")?,
            ConstValue::Bool(b) => writeln!(s, "  {name} = {b}")?,
            ConstValue::Str(t) => writeln!(s, "  {name} = {t:?}")?,
        }
    }
    if !p.states.is_empty() {
        writeln!(s, "states:")?;
    }
    for x in &p.states {
        writeln!(s, "  {} = {:?}", x.name, x.init)?;
    }
    writeln!(s, "nodes:")?;
    for (k, n) in p.nodes.iter().enumerate() {
        writeln!(
            s,
            "  %{k}: {}[{}] = {}",
            elem(n.elem),
            space(p, n.space),
            write_op(p, &n.op)
        )?;
    }
    writeln!(s, "roots:")?;
    if let Some(l) = p.loss {
        writeln!(s, "  loss = %{}", l.0)?;
    }
    for (name, n) in &p.metrics {
        writeln!(s, "  metric {name} = %{}", n.0)?;
    }
    for (name, n) in &p.outputs {
        writeln!(s, "  output {name} = %{}", n.0)?;
    }
    for (st, n) in &p.updates {
        let name = p
            .states
            .get(st.index())
            .map(|x| x.name.clone())
            .unwrap_or_default();
        writeln!(s, "  update {name} = %{}", n.0)?;
    }
    for (i, n) in &p.grads {
        writeln!(s, "  grad {} = %{}", input_name(p, *i), n.0)?;
    }
    Ok(())
}
