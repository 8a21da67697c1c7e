//! Calls: which function a name means, binding arguments to parameters (positional,
//! named, defaults), and inlining user functions with their space variables bound.

use super::{BindingKind, CallSite, Frame, Lowerer, Sp, Tensor, Value};
use crate::ast::{Arg, Expr, Ident, Span, TypeExpr, TypeKind};
use crate::diag::{codes, Diagnostic};
use crate::modules::FnId;
use rlobj_ir::{Elem, SpaceId};
use std::collections::HashMap;

/// A parameter as argument binding sees it.
pub(crate) struct ParamSpec<'a> {
    pub name: &'a str,
    pub required: bool,
    pub span: Option<Span>,
}

impl<'a> ParamSpec<'a> {
    /// Specs of a builtin's parameters, `(name, required)`; builtins have no declaration
    /// span.
    pub fn of_builtin(list: &[(&'a str, bool)]) -> Vec<ParamSpec<'a>> {
        list.iter()
            .map(|&(name, required)| ParamSpec {
                name,
                required,
                span: None,
            })
            .collect()
    }
}

impl Lowerer<'_> {
    /// A function callable unqualified in the current module.
    pub fn find_function(&self, name: &str) -> Option<FnId> {
        let module = self.frame()?.module;
        self.world.modules[module]
            .scope
            .get(name)
            .map(|entry| entry.func)
    }

    /// `module::name`; reports unknown qualifiers and names when `report` is set.
    pub fn resolve_qualified(&mut self, path: &[Ident], report: bool) -> Option<FnId> {
        let module = self.frame()?.module;
        let [qualifier, name] = path else {
            if report {
                if let (Some(first), Some(last)) = (path.first(), path.last()) {
                    self.report(
                        Diagnostic::error(
                            codes::UNKNOWN_QUALIFIER,
                            "paths have at most one `module::` qualifier",
                            first.span.join(last.span),
                            "too many `::`",
                        )
                        .with_hint("import the module with `use std::a::b` and call `b::f(…)`"),
                    );
                }
            }
            return None;
        };
        let Some(&(target, _)) = self.world.modules[module].qualified.get(&qualifier.name) else {
            if report
                && !self.world.modules[module]
                    .failed_imports
                    .contains(&qualifier.name)
            {
                self.report(
                    Diagnostic::error(
                        codes::UNKNOWN_QUALIFIER,
                        format!("no module `{}` is imported", qualifier.name),
                        qualifier.span,
                        "unknown module qualifier",
                    )
                    .with_hint(format!(
                        "add `use std::{}` at the top of the file",
                        qualifier.name
                    )),
                );
            }
            return None;
        };
        let found = self.world.modules[target]
            .local_fns
            .iter()
            .copied()
            .find(|&f| self.world.fns[f].decl.name.name == name.name);
        if found.is_none() && report {
            let names: Vec<String> = self.world.modules[target]
                .local_fns
                .iter()
                .map(|&f| self.world.fns[f].decl.name.name.clone())
                .collect();
            let mut diagnostic = Diagnostic::error(
                codes::UNKNOWN_FUNCTION,
                format!(
                    "module `{}` has no function `{}`",
                    qualifier.name, name.name
                ),
                name.span,
                "not defined in that module",
            );
            if let Some(close) = super::closest(&name.name, names.iter().map(String::as_str)) {
                diagnostic =
                    diagnostic.with_hint(format!("did you mean `{}::{close}`?", qualifier.name));
            }
            self.report(diagnostic);
        }
        found
    }

    pub fn call(
        &mut self,
        callee: &[Ident],
        space: Option<&Ident>,
        args: &[Arg],
        span: Span,
    ) -> Value {
        if let ([name], Some(axis)) = (callee, space) {
            if let Some(count) = self.channel_axis(axis) {
                return self.channel_reduce(name, axis, count, args, span);
            }
        }
        if let [name] = callee {
            if super::is_builtin(&name.name) {
                return self.call_builtin(name, space, args, span);
            }
        }
        let func = match callee {
            [name] => match self.find_function(&name.name) {
                Some(func) => {
                    let module = self.frame().map_or(0, |f| f.module);
                    if let Some((first, second)) =
                        self.world.modules[module].ambiguous.get(&name.name)
                    {
                        let (first, second) = (*first, *second);
                        self.report(
                            Diagnostic::error(
                                codes::AMBIGUOUS_GLOB,
                                format!("`{}` is imported by two glob imports", name.name),
                                name.span,
                                "ambiguous name",
                            )
                            .with_secondary(first, "one definition comes from here")
                            .with_secondary(second, "another from here")
                            .with_hint(format!(
                                "import it by name: `use std::module::{{{}}}`",
                                name.name
                            )),
                        );
                        return Value::Poison;
                    }
                    func
                }
                None => return self.unknown_function(name),
            },
            _ => match self.resolve_qualified(callee, true) {
                Some(func) => func,
                None => return Value::Poison,
            },
        };
        if let Some(space) = space {
            self.report(
                Diagnostic::error(
                    codes::UNEXPECTED_SPACE,
                    "only reductions, segment ops and scans take `[space]`",
                    space.span,
                    "unexpected space",
                )
                .with_hint(
                    "pass values in the space you want; functions adapt to their arguments' spaces",
                ),
            );
        }
        self.call_user(func, args, span)
    }

    fn unknown_function(&mut self, name: &Ident) -> Value {
        if let Some(binding) = self.lookup(&name.name) {
            let defined = binding.span;
            self.report(
                Diagnostic::error(
                    codes::NOT_A_FUNCTION,
                    format!("`{}` is a value, not a function", name.name),
                    name.span,
                    "called here",
                )
                .with_secondary(defined, "defined here as a value"),
            );
            return Value::Poison;
        }
        let module = self.frame().map_or(0, |f| f.module);
        let info = &self.world.modules[module];
        if info.failed_glob || info.failed_imports.contains(&name.name) {
            return Value::Poison;
        }
        let mut candidates: Vec<&str> = self.world.modules[module]
            .scope
            .keys()
            .map(String::as_str)
            .collect();
        candidates.extend(super::builtins::BUILTIN_NAMES.iter().copied());
        let mut diagnostic = Diagnostic::error(
            codes::UNKNOWN_FUNCTION,
            format!("unknown function `{}`", name.name),
            name.span,
            "not a builtin or an imported function",
        );
        diagnostic = match super::closest(&name.name, candidates.into_iter()) {
            Some(close) => diagnostic.with_hint(format!("did you mean `{close}`?")),
            None => diagnostic.with_hint(format!(
                "import it, e.g. `use std::module::{{{}}}`",
                name.name
            )),
        };
        self.report(diagnostic);
        Value::Poison
    }

    /// Matches arguments to parameters. Errors: unknown name, duplicate, too many, missing.
    pub fn bind_args<'e>(
        &mut self,
        callee: &str,
        params: &[ParamSpec],
        args: &'e [Arg],
        call_span: Span,
    ) -> Option<Vec<Option<&'e Expr>>> {
        let mut bound: Vec<Option<&'e Expr>> = vec![None; params.len()];
        let mut ok = true;
        let mut next_positional = 0;
        // After an unknown argument name, "missing" parameters are most likely misspelled.
        let mut unknown_name = false;
        for arg in args {
            let slot = match &arg.name {
                None => {
                    if next_positional >= params.len() {
                        self.report(
                            Diagnostic::error(
                                codes::TOO_MANY_ARGUMENTS,
                                format!(
                                    "`{callee}` takes {} argument{}",
                                    params.len(),
                                    if params.len() == 1 { "" } else { "s" }
                                ),
                                arg.value.span,
                                "unexpected argument",
                            )
                            .with_secondary(call_span, "in this call")
                            .with_hint(format!(
                                "parameters: {}",
                                params.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                            )),
                        );
                        ok = false;
                        continue;
                    }
                    next_positional += 1;
                    next_positional - 1
                }
                Some(name) => match params.iter().position(|p| p.name == name.name) {
                    Some(slot) => slot,
                    None => {
                        let mut diagnostic = Diagnostic::error(
                            codes::UNKNOWN_ARGUMENT,
                            format!("`{callee}` has no parameter `{}`", name.name),
                            name.span,
                            "unknown argument name",
                        );
                        diagnostic = match super::closest(&name.name, params.iter().map(|p| p.name))
                        {
                            Some(close) => {
                                diagnostic.with_hint(format!("did you mean `{close}:`?"))
                            }
                            None => diagnostic.with_hint(format!(
                                "parameters: {}",
                                params.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                            )),
                        };
                        self.report(diagnostic);
                        ok = false;
                        unknown_name = true;
                        continue;
                    }
                },
            };
            if let Some(previous) = bound[slot] {
                let label_span = arg
                    .name
                    .as_ref()
                    .map_or(arg.value.span, |n| n.span.join(arg.value.span));
                self.report(
                    Diagnostic::error(
                        codes::DUPLICATE_ARGUMENT,
                        format!(
                            "parameter `{}` of `{callee}` is given twice",
                            params[slot].name
                        ),
                        label_span,
                        "given again here",
                    )
                    .with_secondary(previous.span, "first given here"),
                );
                ok = false;
                continue;
            }
            bound[slot] = Some(&arg.value);
        }
        for (param, value) in params.iter().zip(&bound) {
            if value.is_none() && param.required && !unknown_name {
                let mut diagnostic = Diagnostic::error(
                    codes::MISSING_ARGUMENT,
                    format!(
                        "missing argument `{}` in this call of `{callee}`",
                        param.name
                    ),
                    call_span,
                    format!("`{}` is required", param.name),
                );
                if let Some(span) = param.span {
                    diagnostic = diagnostic.with_secondary(span, "parameter declared here");
                }
                self.report(
                    diagnostic.with_hint(format!("pass it positionally or as `{}: …`", param.name)),
                );
                ok = false;
            }
        }
        ok.then_some(bound)
    }

    /// Inlines a user function: arguments are checked against parameter types (binding
    /// space variables), the body is checked with those spaces, the result against the
    /// declared return type.
    pub fn call_user(&mut self, func: FnId, args: &[Arg], call_span: Span) -> Value {
        let world = self.world;
        let def = &world.fns[func];
        let decl = &def.decl;
        if let Some(position) = self.active_fns.iter().position(|f| *f == func) {
            let mut cycle = self.active_fns[position..].to_vec();
            cycle.sort_unstable();
            if !self.reported_cycles.insert(cycle) {
                return Value::Poison;
            }
            self.report(
                Diagnostic::error(codes::RECURSION, format!("`{}` calls itself", decl.name.name), call_span, "recursive call")
                    .with_secondary(decl.name.span, "in this function")
                    .with_hint("functions are inlined, so recursion is not supported; write the loop as a scan"),
            );
            return Value::Poison;
        }
        let specs: Vec<ParamSpec> = decl
            .params
            .iter()
            .map(|p| ParamSpec {
                name: &p.name.name,
                required: p.default.is_none(),
                span: Some(p.span),
            })
            .collect();
        let Some(bound) = self.bind_args(&decl.name.name, &specs, args, call_span) else {
            return Value::Poison;
        };
        // Arguments are evaluated in the caller's frame.
        let arg_values: Vec<Option<(Value, Span)>> = bound
            .iter()
            .map(|e| e.map(|e| (self.expr(e), e.span)))
            .collect();
        let frame = Frame {
            module: def.module,
            scopes: vec![Vec::new()],
            space_vars: HashMap::new(),
            call: Some(CallSite {
                func,
                span: call_span,
            }),
        };
        self.frames.push(frame);
        self.active_fns.push(func);
        let mut params_ok = true;
        let mut var_typed: Vec<(usize, String)> = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        for (index, (param, arg)) in decl.params.iter().zip(arg_values).enumerate() {
            let (value, span) = match arg {
                Some(arg) => arg,
                None => match &param.default {
                    Some(default) => (self.expr(default), default.span),
                    None => (Value::Poison, param.span),
                },
            };
            let (value, variable) = self.check_param(&param.ty, value, span);
            if value == Value::Poison {
                params_ok = false;
            }
            if let Some(variable) = variable {
                var_typed.push((index, variable));
            }
            values.push(value.clone());
            self.define(&param.name, value, BindingKind::Param);
        }
        // Broadcast every argument typed by a space variable to the variable's final space.
        for (index, variable) in var_typed {
            let Some(space) = self
                .frame()
                .and_then(|f| f.space_vars.get(&variable).copied())
            else {
                continue;
            };
            let value = &values[index];
            let keep = matches!(value, Value::Num(_) | Value::Bool(_))
                && space == Sp::Known(SpaceId::BATCH);
            if keep || !self.concrete {
                continue;
            }
            let span = decl.params[index].span;
            if let (Some(node), Some(elem)) =
                (self.coerce(value, space, span), Self::elem_of(value))
            {
                let broadcast = Value::Tensor(Tensor {
                    elem,
                    space,
                    node: Some(node),
                });
                self.rebind(&decl.params[index].name.name, broadcast);
            }
        }
        let result = if params_ok {
            self.block(&decl.body)
        } else {
            Value::Poison
        };
        let result = match &decl.ret {
            Some(ret) if result != Value::Poison => {
                self.check_return(ret, result, decl.body.value.span)
            }
            _ => result,
        };
        self.frames.pop();
        self.active_fns.pop();
        result
    }

    fn rebind(&mut self, name: &str, value: Value) {
        if let Some(binding) = self.frames.last_mut().and_then(|f| {
            f.scopes
                .iter_mut()
                .flat_map(|s| s.iter_mut())
                .find(|b| b.name == name)
        }) {
            binding.value = value;
        }
    }

    /// Checks a value against a parameter type; returns the value to bind and the space
    /// variable that types it (for broadcasting once all arguments are seen).
    fn check_param(&mut self, ty: &TypeExpr, value: Value, span: Span) -> (Value, Option<String>) {
        if value == Value::Poison {
            return (Value::Poison, None);
        }
        let (elem, space) = match &ty.kind {
            TypeKind::F32(space) => (Elem::F32, space),
            TypeKind::Bool(space) => (Elem::Bool, space),
            TypeKind::Str => {
                if !matches!(value, Value::Str(_) | Value::AnyStr) {
                    self.report_expected_string(&value, span, ty.span);
                    return (Value::Poison, None);
                }
                return (value, None);
            }
            TypeKind::Enum(options) => {
                match &value {
                    Value::Str(s) if !options.iter().any(|(o, _)| o == s) => {
                        self.report_not_in_enum(s, options, span, ty.span);
                        return (Value::Poison, None);
                    }
                    Value::Str(_) | Value::AnyStr => {}
                    _ => {
                        self.report_expected_string(&value, span, ty.span);
                        return (Value::Poison, None);
                    }
                }
                return (value, None);
            }
            TypeKind::Id(_) | TypeKind::Error => return (Value::Poison, None),
        };
        let elem_ok = match elem {
            Elem::F32 => self.expect_f32(&value, span, "this parameter"),
            Elem::Bool => self.expect_bool(&value, span, "this parameter"),
        };
        if !elem_ok {
            return (Value::Poison, None);
        }
        let Some(space_ident) = space else {
            return (value, None);
        };
        let Some(value_space) = Self::space_of(&value) else {
            return (value, None);
        };
        match self.lookup_space(&space_ident.name) {
            Some(Sp::Any) => (value, None),
            Some(declared)
                if self
                    .frame()
                    .is_some_and(|f| f.space_vars.contains_key(&space_ident.name)) =>
            {
                // A space variable already bound by an earlier argument: keep the finer.
                if self.within(value_space, declared) {
                    if let Some(frame) = self.frames.last_mut() {
                        frame
                            .space_vars
                            .insert(space_ident.name.clone(), value_space);
                    }
                } else if !self.within(declared, value_space) {
                    let (a, b) = (self.space_name(declared), self.space_name(value_space));
                    self.report(
                        Diagnostic::error(
                            codes::SPACE_VARIABLE_CONFLICT,
                            format!(
                                "space `{}` cannot be both `{a}` and `{b}`",
                                space_ident.name
                            ),
                            span,
                            format!("this is in `{b}`"),
                        )
                        .with_secondary(
                            ty.span,
                            format!(
                                "`{}` is already `{a}` from an earlier argument",
                                space_ident.name
                            ),
                        )
                        .with_hint("pass values whose spaces nest (one within the other)"),
                    );
                    return (Value::Poison, None);
                }
                (value, Some(space_ident.name.clone()))
            }
            Some(declared) => {
                if self.within(declared, value_space) {
                    if declared == value_space || !self.concrete {
                        return (value, None);
                    }
                    let node = self.coerce(&value, declared, span);
                    return (
                        Value::Tensor(Tensor {
                            elem,
                            space: declared,
                            node,
                        }),
                        None,
                    );
                }
                self.report_finer_than_expected(&value, declared, span, ty.span);
                (Value::Poison, None)
            }
            None => {
                if self.concrete {
                    if let Some(frame) = self.frames.last_mut() {
                        frame
                            .space_vars
                            .insert(space_ident.name.clone(), value_space);
                    }
                    (value, Some(space_ident.name.clone()))
                } else {
                    (value, None)
                }
            }
        }
    }

    pub fn report_finer_than_expected(
        &mut self,
        value: &Value,
        expected: Sp,
        span: Span,
        declared_span: Span,
    ) {
        let found = self.type_name(value);
        let expected_name = self.space_name(expected);
        let related = Self::space_of(value).is_some_and(|s| self.within(s, expected));
        let (code, message, hint) = if related {
            (
                codes::FINE_TO_COARSE,
                format!("expected a value in `{expected_name}`, found `{found}`"),
                format!("reduce it explicitly, e.g. `mean[{expected_name}](…)`"),
            )
        } else {
            (
                codes::UNRELATED_SPACES,
                format!(
                    "expected a value in `{expected_name}`, found `{found}` (unrelated spaces)"
                ),
                "reduce it to a space both share, e.g. `mean[batch](…)`".to_string(),
            )
        };
        self.report(
            Diagnostic::error(code, message, span, format!("this is `{found}`"))
                .with_secondary(declared_span, format!("expected `[{expected_name}]` here"))
                .with_hint(hint),
        );
    }

    fn report_expected_string(&mut self, value: &Value, span: Span, declared: Span) {
        let found = self.type_name(value);
        self.report(
            Diagnostic::error(
                codes::EXPECTED_STRING,
                format!("expected a compile-time string, found `{found}`"),
                span,
                "expected a string",
            )
            .with_secondary(declared, "parameter type")
            .with_hint("strings come from literals, `const`s and `str` parameters"),
        );
    }

    pub fn report_not_in_enum(
        &mut self,
        found: &str,
        options: &[(String, Span)],
        span: Span,
        declared: Span,
    ) {
        let allowed: Vec<String> = options.iter().map(|(o, _)| format!("\"{o}\"")).collect();
        let mut diagnostic = Diagnostic::error(
            codes::NOT_IN_ENUM,
            format!("\"{found}\" is not one of {}", allowed.join(" | ")),
            span,
            "not an allowed value",
        )
        .with_secondary(declared, "allowed values");
        if let Some(close) = super::closest(found, options.iter().map(|(o, _)| o.as_str())) {
            diagnostic = diagnostic.with_hint(format!("did you mean \"{close}\"?"));
        }
        self.report(diagnostic);
    }

    fn check_return(&mut self, ret: &TypeExpr, result: Value, body_span: Span) -> Value {
        let (elem, space) = match &ret.kind {
            TypeKind::F32(space) => (Elem::F32, space),
            TypeKind::Bool(space) => (Elem::Bool, space),
            TypeKind::Str | TypeKind::Enum(_) => {
                if !matches!(result, Value::Str(_) | Value::AnyStr) {
                    self.report_return_mismatch(ret, &result, body_span);
                    return Value::Poison;
                }
                return result;
            }
            TypeKind::Id(_) | TypeKind::Error => return result,
        };
        if Self::elem_of(&result) != Some(elem) {
            self.report_return_mismatch(ret, &result, body_span);
            return Value::Poison;
        }
        let (Some(space_ident), Some(result_space)) = (space, Self::space_of(&result)) else {
            return result;
        };
        let Some(declared) = self.lookup_space(&space_ident.name) else {
            return result;
        };
        if declared == Sp::Any || declared == result_space {
            return result;
        }
        if !self.within(declared, result_space) {
            self.report_return_mismatch(ret, &result, body_span);
            return Value::Poison;
        }
        if !self.concrete {
            return result;
        }
        let node = self.coerce(&result, declared, body_span);
        Value::Tensor(Tensor {
            elem,
            space: declared,
            node,
        })
    }

    fn report_return_mismatch(&mut self, ret: &TypeExpr, result: &Value, body_span: Span) {
        let found = self.type_name(result);
        self.report(
            Diagnostic::error(
                codes::RETURN_MISMATCH,
                format!("the body is `{found}`, but the function declares another return type"),
                body_span,
                format!("this is `{found}`"),
            )
            .with_secondary(ret.span, "declared return type")
            .with_hint("fix the declared type, or reduce/convert the result"),
        );
    }
}
