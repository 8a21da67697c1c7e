//! Common subexpression elimination by hash-consing: two nodes with the same op, operands
//! (after renaming), element type and space are one node. Spans of the first are kept.

use crate::passes::{finish, map_operands, start};
use crate::{NodeId, Program};
use std::collections::HashMap;

/// Returns `prog` with duplicate nodes merged.
pub fn cse(prog: &Program) -> Program {
    let (mut out, mut map) = start(prog);
    let mut seen: HashMap<String, NodeId> = HashMap::new();
    for node in &prog.nodes {
        let op = map_operands(&node.op, |o| map.get(o.index()).copied().unwrap_or(o));
        // `{:?}` of f64 round-trips exactly, so the key distinguishes every constant
        // (and `-0.0` from `0.0`); all NaNs are one constant, which is harmless.
        let key = format!("{:?}|{:?}|{}", op, node.elem, node.space.0);
        let id = match seen.get(&key) {
            Some(&id) => id,
            None => {
                let mut n = node.clone();
                n.op = op;
                let id = out.push(n);
                seen.insert(key, id);
                id
            }
        };
        map.push(id);
    }
    finish(out, &map)
}
