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
