//! The optimisation pipeline and the helpers its passes share. Every pass takes a program
//! and returns a new one; nodes are re-pushed in their original order, so operands still
//! come before their users.

use crate::{NodeId, Op, Program};

/// Constant folding, then common subexpression elimination, then dead-code elimination.
/// Run it after [`crate::autodiff::differentiate`] so that gradient nodes are optimised too.
pub fn optimize(prog: &Program) -> Program {
    let p = crate::fold::fold(prog);
    let p = crate::cse::cse(&p);
    // Folding after CSE catches `x - x`-style patterns CSE exposes; cheap, so run twice.
    let p = crate::fold::fold(&p);
    let p = crate::cse::cse(&p);
    dce(&p)
}

/// `op` with every operand replaced by `f(operand)`.
pub fn map_operands(op: &Op, f: impl Fn(NodeId) -> NodeId) -> Op {
    match op {
        Op::Const(_) | Op::Input(_) | Op::Param(_) | Op::State(_) | Op::Structural(_) => op.clone(),
        Op::Unary(u, a) => Op::Unary(*u, f(*a)),
        Op::Binary(b, x, y) => Op::Binary(*b, f(*x), f(*y)),
        Op::Select(c, a, b) => Op::Select(f(*c), f(*a), f(*b)),
        Op::Clamp(x, lo, hi) => Op::Clamp(f(*x), f(*lo), f(*hi)),
        Op::Broadcast(a) => Op::Broadcast(f(*a)),
        Op::Reduce {
            op,
            arg,
            mask,
            empty,
        } => Op::Reduce {
            op: *op,
            arg: f(*arg),
            mask: mask.map(&f),
            empty: *empty,
        },
        Op::Segment {
            op,
            arg,
            mask,
            within,
            k,
        } => Op::Segment {
            op: *op,
            arg: f(*arg),
            mask: mask.map(&f),
            within: *within,
            k: k.map(&f),
        },
        Op::Quantile {
            arg,
            mask,
            q,
            empty,
        } => Op::Quantile {
            arg: f(*arg),
            mask: mask.map(&f),
            q: f(*q),
            empty: *empty,
        },
        Op::Scan {
            op,
            arg,
            coef,
            within,
        } => Op::Scan {
            op: *op,
            arg: f(*arg),
            coef: coef.map(&f),
            within: *within,
        },
        Op::Shift {
            arg,
            offset,
            fill,
            within,
        } => Op::Shift {
            arg: f(*arg),
            offset: *offset,
            fill: *fill,
            within: *within,
        },
        Op::StopGrad(a) => Op::StopGrad(f(*a)),
    }
}

/// A copy of `prog` without nodes, plus the old→new node map a rebuilding pass fills.
pub(crate) fn start(prog: &Program) -> (Program, Vec<NodeId>) {
    let out = Program {
        nodes: Vec::with_capacity(prog.nodes.len()),
        ..prog.clone()
    };
    (out, Vec::with_capacity(prog.nodes.len()))
}

/// Re-points the roots of a rebuilt program through `map`.
pub(crate) fn finish(mut out: Program, map: &[NodeId]) -> Program {
    let m = |n: NodeId| map.get(n.index()).copied().unwrap_or(n);
    out.loss = out.loss.map(m);
    for x in &mut out.metrics {
        x.1 = m(x.1);
    }
    for x in &mut out.outputs {
        x.1 = m(x.1);
    }
    for x in &mut out.updates {
        x.1 = m(x.1);
    }
    for x in &mut out.grads {
        x.1 = m(x.1);
    }
    out
}

/// Dead-code elimination: keeps only nodes reachable from the loss, metrics, outputs,
/// state updates and grads. Declarations (inputs, params, states) are kept as they are.
pub fn dce(prog: &Program) -> Program {
    let mut live = vec![false; prog.nodes.len()];
    for r in crate::validate::roots(prog) {
        if let Some(l) = live.get_mut(r.index()) {
            *l = true;
        }
    }
    for id in (0..prog.nodes.len() as u32).rev().map(NodeId) {
        if live[id.index()] {
            for o in prog.node(id).op.operands() {
                if let Some(l) = live.get_mut(o.index()) {
                    *l = true;
                }
            }
        }
    }
    let (mut out, mut map) = start(prog);
    for (id, node) in prog.node_ids().zip(&prog.nodes) {
        if live[id.index()] {
            let mut n = node.clone();
            n.op = map_operands(&node.op, |o| map.get(o.index()).copied().unwrap_or(o));
            map.push(out.push(n));
        } else {
            // Never read: dead nodes have no live users.
            map.push(id);
        }
    }
    finish(out, &map)
}
