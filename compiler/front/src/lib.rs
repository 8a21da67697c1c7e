//! # rlobj front end
//!
//! `.obj` source → spanned AST ([`ast`], [`parser`]) → checked and lowered to the IR
//! ([`rlobj_ir::Program`]). All user-facing errors become [`diag::Diagnostic`]s here;
//! [`diag`] is the only module that talks to ariadne.
//!
//! Entry points used by the runtime and the CLI:
//! * [`compile_path`] / [`compile_source`] — one objective to an IR program (before autodiff).
//! * [`check_path`] — every diagnostic of a file and its imports.
//! * [`parser::parse`] and [`printer::print`] — for `rlobj fmt`.

#![deny(clippy::unwrap_used)]

pub mod ast;
pub mod lexer;
pub mod parser;
pub mod printer;
pub mod spans;
mod syntax_error;
mod trivia;

// Name resolution, checking, lowering and diagnostics.
mod compile;
pub mod diag;
pub mod lower;
pub mod modules;
pub mod sources;

pub use compile::{DocItem, ModuleDoc};
pub use diag::{Diagnostic, Diagnostics};

use std::path::Path;

/// Compiles the objective in `path` (and its imports) to an IR program before autodiff.
/// `overrides` set consts by name (`loss_agg_mode=token-sum`); names that are not consts
/// are ignored here (the runtime applies them to params).
pub fn compile_path(
    path: &Path,
    overrides: &[(String, String)],
) -> Result<rlobj_ir::Program, Diagnostics> {
    match compile::run(compile::Root::Path(path), overrides, true) {
        (Some(program), _) => Ok(program),
        (None, diagnostics) => Err(diagnostics),
    }
}

/// Like [`compile_path`] for source text; relative imports resolve from the current directory.
pub fn compile_source(
    name: &str,
    src: &str,
    overrides: &[(String, String)],
) -> Result<rlobj_ir::Program, Diagnostics> {
    match compile::run(compile::Root::Source { name, text: src }, overrides, true) {
        (Some(program), _) => Ok(program),
        (None, diagnostics) => Err(diagnostics),
    }
}

/// Every diagnostic of a file and its imports. A file with functions and no objective is valid.
pub fn check_path(path: &Path) -> Diagnostics {
    compile::run(compile::Root::Path(path), &[], false).1
}

/// Like [`check_path`] for source text.
pub fn check_source(name: &str, src: &str) -> Diagnostics {
    compile::run(compile::Root::Source { name, text: src }, &[], false).1
}

/// Names, signatures and `///` docs of the items of a file, for `rlobj doc`.
pub fn doc_items(path: &Path) -> Result<ModuleDoc, Diagnostics> {
    compile::document(compile::Root::Path(path))
}

/// Like [`doc_items`] for an embedded stdlib module (`ppo`, or `a::b`).
pub fn doc_std_module(name: &str) -> Result<ModuleDoc, Diagnostics> {
    let text = sources::stdlib_source(name).unwrap_or_default();
    compile::document(compile::Root::Source {
        name: &sources::stdlib_display_name(name),
        text,
    })
}
