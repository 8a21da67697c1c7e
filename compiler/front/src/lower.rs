//! Type checking and lowering to the IR, in one pass.
//!
//! Checking and lowering are the same walk because functions are space-polymorphic and
//! checked concretely at every call by inlining: the [`Lowerer`] evaluates each expression
//! to a [`Value`] — a compile-time number/bool/string (consts fold here, and `if` on them
//! lowers only the taken branch) or a tensor with an element type and an index space and
//! its IR node. Every function is also checked once *generically* (`concrete: false`):
//! spaces that depend on the caller are [`Sp::Any`], no IR is built, and only names and
//! element types can fail.
//!
//! * [`expr`] — values, coercion (explicit `Broadcast` nodes), operators, `if`, blocks.
//! * [`calls`] — argument binding and inlining of user functions.
//! * [`builtins`] — elementwise builtins, reductions, segment ops, scans.
//! * [`objective`] — declarations of an objective and the program they make.
//! * [`channel`] — channel (ensemble) axes: `f32[seq, chan]` values are unrolled here into
//!   one ordinary value per channel, so the IR never sees the axis.

mod builtins;
mod calls;
mod channel;
mod expr;
mod objective;

pub use builtins::is_builtin;
pub(crate) use objective::{check_functions, lower_objective};

use crate::ast::{Ident, Span};
use crate::diag::Diagnostic;
use crate::modules::{FnId, ModId, World};
use rlobj_ir::{Elem, NodeId, Program, SpaceId, StateId};
use std::collections::{HashMap, HashSet};

/// The index space of a value; `Any` only during the generic check of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sp {
    Known(SpaceId),
    Any,
}

/// A runtime value: element type, space and (when lowering concretely) its IR node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Tensor {
    pub elem: Elem,
    pub space: Sp,
    pub node: Option<NodeId>,
}

/// What an expression evaluates to during checking.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Num(f64),
    Bool(bool),
    Str(String),
    /// A compile-time string whose value is not known (a `str` parameter, generic check).
    AnyStr,
    Tensor(Tensor),
    /// A channelled value (`f32[seq, chan]`): one ordinary value per channel.
    Chan(Chan),
    /// An error was already reported; everything built from it stays silent.
    Poison,
}

/// The components of a channelled value; `parts.len()` is the channel count of `axis`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Chan {
    pub axis: String,
    pub parts: Vec<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum BindingKind {
    Let,
    Param,
    Input,
    /// An `id` input: it declares a space and has no value.
    Ids,
    Const,
    RuntimeParam,
    State(StateId),
}

#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub name: String,
    pub value: Value,
    pub span: Span,
    pub kind: BindingKind,
}

/// An inlined call, kept so errors inside the body also point at the call site.
#[derive(Clone, Debug)]
pub(crate) struct CallSite {
    pub func: FnId,
    pub span: Span,
}

/// The lexical environment of one objective or one (inlined) function body.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub module: ModId,
    pub scopes: Vec<Vec<Binding>>,
    pub space_vars: HashMap<String, Sp>,
    pub call: Option<CallSite>,
}

pub(crate) struct Lowerer<'w> {
    pub world: &'w World,
    pub prog: Program,
    /// false: the generic check of a function (no IR, spaces may be `Any`).
    pub concrete: bool,
    pub diags: Vec<Diagnostic>,
    pub frames: Vec<Frame>,
    /// Spaces declared by the objective being lowered, by name.
    pub objective_spaces: HashMap<String, SpaceId>,
    /// Where each objective space was declared (for redefinition errors).
    pub space_decl_spans: HashMap<String, Span>,
    /// Functions being inlined (or checked), to detect recursion.
    pub active_fns: Vec<FnId>,
    /// Recursive cycles already reported (sorted function ids), so each is reported once.
    pub reported_cycles: HashSet<Vec<FnId>>,
    /// Channel axes declared by inputs/params of the objective: name → channel count.
    pub channel_axes: HashMap<String, usize>,
    /// The channel each enclosing unrolled axis is at while one component is lowered.
    pub channel_at: Vec<(String, usize)>,
    const_nodes: HashMap<(u64, bool), NodeId>,
    broadcast_nodes: HashMap<(NodeId, SpaceId), NodeId>,
    reported: HashSet<(String, Span)>,
}

impl<'w> Lowerer<'w> {
    pub fn new(world: &'w World, name: &str, concrete: bool) -> Self {
        Lowerer {
            world,
            prog: Program::new(name),
            concrete,
            diags: Vec::new(),
            frames: Vec::new(),
            objective_spaces: HashMap::new(),
            space_decl_spans: HashMap::new(),
            active_fns: Vec::new(),
            reported_cycles: HashSet::new(),
            channel_axes: HashMap::new(),
            channel_at: Vec::new(),
            const_nodes: HashMap::new(),
            broadcast_nodes: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// Records an error, adding the call sites of the inlined functions it happened in.
    /// The same error (code and place) is reported once, however often a body is inlined.
    pub fn report(&mut self, mut diagnostic: Diagnostic) {
        let key = (diagnostic.code.clone(), diagnostic.primary.0);
        if !self.reported.insert(key) {
            return;
        }
        let calls: Vec<CallSite> = self
            .frames
            .iter()
            .rev()
            .filter_map(|f| f.call.clone())
            .take(3)
            .collect();
        for call in calls {
            let name = &self.world.fns[call.func].decl.name.name;
            diagnostic = diagnostic.with_secondary(call.span, format!("in this call of `{name}`"));
        }
        self.diags.push(diagnostic);
    }

    pub fn frame(&self) -> Option<&Frame> {
        self.frames.last()
    }

    pub fn space_name(&self, space: Sp) -> String {
        match space {
            Sp::Known(id) => self
                .prog
                .spaces
                .get(id.index())
                .map_or("?".into(), |s| s.name.clone()),
            Sp::Any => "S".into(),
        }
    }

    /// `fine` lies within `coarse` (unknown spaces are compatible with everything).
    pub fn within(&self, fine: Sp, coarse: Sp) -> bool {
        match (fine, coarse) {
            (Sp::Known(f), Sp::Known(c)) => self.prog.within(f, c),
            _ => true,
        }
    }

    /// The type of a value as the user writes it: `f32[tok]`, `bool`, `str`.
    pub fn type_name(&self, value: &Value) -> String {
        match value {
            Value::Num(_) => "f32".into(),
            Value::Bool(_) => "bool".into(),
            Value::Str(s) => format!("str \"{s}\""),
            Value::AnyStr => "str".into(),
            Value::Tensor(t) => format!("{}[{}]", elem_name(t.elem), self.space_name(t.space)),
            Value::Chan(c) => {
                let inner = c.parts.first().map_or("?".into(), |p| self.type_name(p));
                match inner.strip_suffix(']') {
                    Some(head) => format!("{head}, {}]", c.axis),
                    None => format!("{inner}[batch, {}]", c.axis),
                }
            }
            Value::Poison => "?".into(),
        }
    }

    /// Looks a space name up: a space variable of the current function, a built-in space,
    /// or a space the objective declares. `None` when unknown.
    pub fn lookup_space(&self, name: &str) -> Option<Sp> {
        if let Some(frame) = self.frame() {
            if let Some(space) = frame.space_vars.get(name) {
                return Some(*space);
            }
        }
        match name {
            "batch" => Some(Sp::Known(SpaceId::BATCH)),
            "seq" => Some(Sp::Known(SpaceId::SEQ)),
            "tok" => Some(Sp::Known(SpaceId::TOK)),
            _ => self.objective_spaces.get(name).map(|s| Sp::Known(*s)),
        }
    }

    /// Resolves `op[space]`; in the generic check an unknown name may be declared by the
    /// caller's objective, so it is `Any` rather than an error.
    pub fn resolve_space(&mut self, ident: &Ident) -> Option<Sp> {
        if let Some(space) = self.lookup_space(&ident.name) {
            return Some(space);
        }
        if !self.concrete {
            return Some(Sp::Any);
        }
        let declared: Vec<String> = self.prog.spaces.iter().map(|s| s.name.clone()).collect();
        let mut diagnostic = Diagnostic::error(
            crate::diag::codes::UNKNOWN_SPACE,
            format!("unknown index space `{}`", ident.name),
            ident.span,
            "not a declared space",
        );
        diagnostic = match closest(&ident.name, declared.iter().map(String::as_str)) {
            Some(close) => diagnostic.with_hint(format!("did you mean `{close}`?")),
            None => diagnostic.with_hint(format!(
                "spaces are `batch`, `seq`, `tok` and those declared by id inputs, e.g. \
                 `input group: id[seq] as {}`",
                ident.name
            )),
        };
        self.report(diagnostic);
        None
    }
}

pub(crate) fn elem_name(elem: Elem) -> &'static str {
    match elem {
        Elem::F32 => "f32",
        Elem::Bool => "bool",
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.len() / 3).max(1);
    candidates
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
