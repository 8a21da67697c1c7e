//! Constant folding and exact algebraic identities, evaluated with [`crate::scalar`] so a
//! folded value always equals the interpreter's. Only rewrites that are exact for every
//! input (NaN, infinities and signed zeros included) are applied: `x * 1`, `x / 1`,
//! `x - 0`, `x + (-0)`, `--x`, `!!x`, `x && true`, `x || false`, `select` on a constant
//! condition or with equal branches, and identity broadcasts. `x * 0` is not folded.

use crate::passes::{finish, map_operands, start};
use crate::{scalar, BinaryOp, Node, NodeId, Op, Program, UnaryOp};

/// What folding does with one node.
enum Folded {
    /// Replace by a new op (usually `Const`).
    Op(Op),
    /// Replace by an existing (already rebuilt) node of the same type.
    Alias(NodeId),
}

/// Returns `prog` with constants folded. Gradients are unaffected: a constant has none.
pub fn fold(prog: &Program) -> Program {
    let (mut out, mut map) = start(prog);
    for node in &prog.nodes {
        let op = map_operands(&node.op, |o| map.get(o.index()).copied().unwrap_or(o));
        let id = match fold_op(&out, node, &op) {
            Some(Folded::Alias(id)) => id,
            Some(Folded::Op(op)) => out.push(Node { op, ..node.clone() }),
            None => out.push(Node { op, ..node.clone() }),
        };
        map.push(id);
    }
    finish(out, &map)
}

fn konst(p: &Program, id: NodeId) -> Option<f64> {
    match p.nodes.get(id.index())?.op {
        Op::Const(c) => Some(c),
        _ => None,
    }
}

fn is_const(p: &Program, id: NodeId, v: f64) -> bool {
    konst(p, id).is_some_and(|c| c.to_bits() == v.to_bits())
}

fn fold_op(p: &Program, node: &Node, op: &Op) -> Option<Folded> {
    let c = |id: NodeId| konst(p, id);
    let same_type = |id: NodeId| {
        p.nodes
            .get(id.index())
            .is_some_and(|n| n.elem == node.elem && n.space == node.space)
    };
    let alias = |id: NodeId| same_type(id).then_some(Folded::Alias(id));
    match *op {
        Op::Unary(u, a) => {
            if let Some(x) = c(a) {
                return Some(Folded::Op(Op::Const(scalar::unary(u, x))));
            }
            match (u, &p.nodes.get(a.index())?.op) {
                (UnaryOp::Neg, Op::Unary(UnaryOp::Neg, x))
                | (UnaryOp::Not, Op::Unary(UnaryOp::Not, x)) => alias(*x),
                _ => None,
            }
        }
        Op::Binary(b, x, y) => {
            if let (Some(u), Some(v)) = (c(x), c(y)) {
                return Some(Folded::Op(Op::Const(scalar::binary(b, u, v))));
            }
            match b {
                BinaryOp::Mul if is_const(p, y, 1.0) => alias(x),
                BinaryOp::Mul if is_const(p, x, 1.0) => alias(y),
                BinaryOp::Div if is_const(p, y, 1.0) => alias(x),
                BinaryOp::Sub if is_const(p, y, 0.0) => alias(x),
                BinaryOp::Add if is_const(p, y, -0.0) => alias(x),
                BinaryOp::Add if is_const(p, x, -0.0) => alias(y),
                BinaryOp::And if is_const(p, y, 1.0) => alias(x),
                BinaryOp::And if is_const(p, x, 1.0) => alias(y),
                BinaryOp::Or if is_const(p, y, 0.0) => alias(x),
                BinaryOp::Or if is_const(p, x, 0.0) => alias(y),
                _ => None,
            }
        }
        Op::Select(cond, a, b) => {
            if let Some(k) = c(cond) {
                return alias(if scalar::to_bool(k) { a } else { b });
            }
            if a == b {
                return alias(a);
            }
            None
        }
        Op::Clamp(x, lo, hi) => match (c(x), c(lo), c(hi)) {
            (Some(x), Some(lo), Some(hi)) => Some(Folded::Op(Op::Const(scalar::clamp(x, lo, hi)))),
            _ => None,
        },
        Op::Broadcast(a) => {
            if let Some(k) = c(a) {
                return Some(Folded::Op(Op::Const(k)));
            }
            if same_type(a) {
                return alias(a);
            }
            match p.nodes.get(a.index())?.op {
                Op::Broadcast(inner) => Some(Folded::Op(Op::Broadcast(inner))),
                _ => None,
            }
        }
        Op::StopGrad(a) => {
            if let Some(k) = c(a) {
                return Some(Folded::Op(Op::Const(k)));
            }
            match p.nodes.get(a.index())?.op {
                Op::StopGrad(_) => alias(a),
                _ => None,
            }
        }
        _ => None,
    }
}
