//! User-facing diagnostics: one [`Diagnostic`] type for every stage, and [`Diagnostics`]
//! (the diagnostics plus the source map they point into) rendered as text with ariadne or
//! as JSON for editors and scripts.
//!
//! This is the only module that talks to ariadne, so the rendering style is decided here once.
//! Error codes are listed in [`codes`]; every code has a snapshot test in
//! `tests/cases/diagnostics/`.

use crate::ast::Span;
use crate::sources::SourceMap;
use ariadne::{Config, IndexType, Label, Report, ReportKind};
use serde_json::{json, Value as Json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in the user's program, with where it is and what was expected.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// `E0100`… for front-end errors; parser codes are kept as the parser spells them.
    pub code: String,
    pub severity: Severity,
    pub message: String,
    /// Where the problem is, and a label saying what was expected there.
    pub primary: (Span, String),
    /// Other places involved (the first definition of a duplicate, a call site, …).
    pub secondary: Vec<(Span, String)>,
    pub hint: Option<String>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(
        code: &str,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            code: code.to_string(),
            severity: Severity::Error,
            message: message.into(),
            primary: (span, label.into()),
            secondary: Vec::new(),
            hint: None,
            notes: Vec::new(),
        }
    }

    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Self {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Converts one parser error; the parser already chose code, label and hint.
pub fn from_syntax_error(err: &crate::parser::SyntaxError) -> Diagnostic {
    Diagnostic {
        code: err.code.to_string(),
        severity: Severity::Error,
        message: err.message.to_string(),
        primary: (err.span, err.label.to_string()),
        secondary: Vec::new(),
        hint: err.hint.as_ref().map(|h| h.to_string()),
        notes: Vec::new(),
    }
}

/// All diagnostics of one compilation together with the sources they point into, so they
/// can be rendered after the compiler is done.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    pub sources: SourceMap,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(sources: SourceMap, items: Vec<Diagnostic>) -> Self {
        Diagnostics { sources, items }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Every diagnostic rendered by ariadne, separated by blank lines. `color: false` gives
    /// stable text for snapshot tests.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for diagnostic in &self.items {
            out.push_str(&render_one(&self.sources, diagnostic, color));
        }
        out
    }

    /// `[{file, line, column, end_line, end_column, code, severity, message, labels, hint}]`
    /// with 1-based lines and (character) columns.
    pub fn to_json(&self) -> Json {
        Json::Array(
            self.items
                .iter()
                .map(|d| diagnostic_json(&self.sources, d))
                .collect(),
        )
    }
}

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for Diagnostics {}

/// The byte range of `span`, clamped into its file so a stale span can never make the
/// renderer panic.
fn clamped_range(sources: &SourceMap, span: Span) -> std::ops::Range<usize> {
    let text = sources.text(span.file);
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = span.end.clamp(start, text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

fn render_one(sources: &SourceMap, diagnostic: &Diagnostic, color: bool) -> String {
    let kind = match diagnostic.severity {
        Severity::Error => ReportKind::Error,
        Severity::Warning => ReportKind::Warning,
    };
    let primary_span = diagnostic.primary.0;
    let primary_id = sources.display_name(primary_span.file);
    let config = Config::default()
        .with_index_type(IndexType::Byte)
        .with_color(color);
    let mut builder = Report::build(
        kind,
        (primary_id.clone(), clamped_range(sources, primary_span)),
    )
    .with_code(&diagnostic.code)
    .with_message(&diagnostic.message)
    .with_config(config)
    .with_label(
        Label::new((primary_id, clamped_range(sources, primary_span)))
            .with_message(&diagnostic.primary.1)
            .with_order(label_order(diagnostic, primary_span)),
    );
    for (span, label) in &diagnostic.secondary {
        builder = builder.with_label(
            Label::new((
                sources.display_name(span.file),
                clamped_range(sources, *span),
            ))
            .with_message(label)
            .with_order(label_order(diagnostic, *span)),
        );
    }
    if let Some(hint) = &diagnostic.hint {
        builder = builder.with_help(hint);
    }
    for note in &diagnostic.notes {
        builder = builder.with_note(note);
    }
    let cache = ariadne::sources(
        sources
            .iter()
            .map(|(id, file)| (sources.display_name(id), file.text.clone())),
    );
    let mut buffer = Vec::new();
    match builder.finish().write(cache, &mut buffer) {
        Ok(()) => String::from_utf8_lossy(&buffer).into_owned(),
        // The renderer only fails on an unknown source; fall back to a plain line.
        Err(_) => format!("error[{}]: {}\n", diagnostic.code, diagnostic.message),
    }
}

/// Labels are drawn file by file (the primary's file first), in source order within a
/// file: ariadne starts a new snippet whenever the order goes back up the file.
fn label_order(diagnostic: &Diagnostic, span: Span) -> i32 {
    let mut files = vec![diagnostic.primary.0.file];
    for (other, _) in &diagnostic.secondary {
        if !files.contains(&other.file) {
            files.push(other.file);
        }
    }
    let rank = files
        .iter()
        .position(|f| *f == span.file)
        .unwrap_or(files.len());
    (rank as i32)
        .saturating_mul(100_000_000)
        .saturating_add(span.start.min(99_999_999) as i32)
}

/// 1-based (line, column) of a byte offset; columns count characters.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut safe = offset;
    while !text.is_char_boundary(safe) {
        safe -= 1;
    }
    let before = &text[..safe];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn location_json(sources: &SourceMap, span: Span) -> serde_json::Map<String, Json> {
    let text = sources.text(span.file);
    let range = clamped_range(sources, span);
    let (line, column) = line_column(text, range.start);
    let (end_line, end_column) = line_column(text, range.end);
    let mut map = serde_json::Map::new();
    map.insert("file".into(), json!(sources.display_name(span.file)));
    map.insert("line".into(), json!(line));
    map.insert("column".into(), json!(column));
    map.insert("end_line".into(), json!(end_line));
    map.insert("end_column".into(), json!(end_column));
    map
}

fn diagnostic_json(sources: &SourceMap, diagnostic: &Diagnostic) -> Json {
    let mut object = location_json(sources, diagnostic.primary.0);
    object.insert("code".into(), json!(diagnostic.code));
    let severity = match diagnostic.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    object.insert("severity".into(), json!(severity));
    object.insert("message".into(), json!(diagnostic.message));
    let mut labels = Vec::new();
    let all_labels = std::iter::once((&diagnostic.primary, true))
        .chain(diagnostic.secondary.iter().map(|label| (label, false)));
    for ((span, message), primary) in all_labels {
        let mut label = location_json(sources, *span);
        label.insert("message".into(), json!(message));
        label.insert("primary".into(), json!(primary));
        labels.push(Json::Object(label));
    }
    object.insert("labels".into(), Json::Array(labels));
    object.insert("hint".into(), json!(diagnostic.hint));
    object.insert("notes".into(), json!(diagnostic.notes));
    Json::Object(object)
}

/// Every front-end error code, with a one-line meaning (shown by `rlobj explain` and
/// checked by the test suite: each code has a snapshot case).
pub mod codes {
    macro_rules! codes {
        ($($name:ident = $code:literal : $meaning:literal;)*) => {
            $(#[doc = $meaning] pub const $name: &str = $code;)*
            /// `(code, meaning)` for every code.
            pub const ALL: &[(&str, &str)] = &[$(($code, $meaning)),*];
        };
    }

    codes! {
        UNKNOWN_STD_MODULE = "E0100": "`use std::x` names a module the standard library does not have";
        FILE_NOT_FOUND = "E0101": "a source file (imported or given) cannot be read";
        NOT_UTF8 = "E0102": "a source file is not valid UTF-8";
        IMPORT_CYCLE = "E0103": "modules import each other in a cycle";
        UNKNOWN_IMPORT = "E0104": "`use m::{name}` names something `m` does not define";
        DUPLICATE_FN = "E0105": "a function name is defined or imported twice in one module";
        UNKNOWN_NAME = "E0106": "a name is not a let, parameter or declaration in scope";
        UNKNOWN_FUNCTION = "E0107": "a call names no builtin, no local and no imported function";
        UNKNOWN_QUALIFIER = "E0108": "`m::f` where `m` is not a module imported with `use std::m`";
        NOT_A_FUNCTION = "E0109": "a value is called like a function";
        FUNCTION_AS_VALUE = "E0110": "a function is used as a value without calling it";
        AMBIGUOUS_GLOB = "E0111": "a name comes from two glob imports";
        SHADOWS_BUILTIN = "E0112": "a function is named like a builtin";
        MULTIPLE_OBJECTIVES = "E0113": "a file holds more than one objective";
        DUPLICATE_NAME = "E0114": "a let, declaration or parameter name is defined twice";
        RECURSION = "E0115": "functions call themselves (directly or through others)";
        UNKNOWN_SPACE = "E0116": "an index space name is not declared";
        ID_AS_VALUE = "E0117": "an `id` input is used as a value";
        NO_OBJECTIVE = "E0118": "a file compiled as an objective holds none";
        EXPECTED_F32 = "E0200": "an operation needs `f32` and got `bool`";
        EXPECTED_BOOL = "E0201": "an operation needs `bool` and got `f32`";
        STRING_AS_VALUE = "E0202": "a compile-time string is used where a tensor is needed";
        UNRELATED_SPACES = "E0203": "two values live in spaces of which neither contains the other";
        FINE_TO_COARSE = "E0204": "a finer value is used where a coarser one is expected without a reduction";
        BRANCH_MISMATCH = "E0205": "the branches of an `if` have different element types";
        SPACE_VARIABLE_CONFLICT = "E0206": "a space variable is bound to two unrelated spaces at one call";
        RETURN_MISMATCH = "E0207": "a function body does not have its declared return type";
        NOT_IN_ENUM = "E0208": "a string is not one of the enum's values";
        EXPECTED_STRING = "E0209": "a `str`/enum parameter or comparison needs a compile-time string";
        INVALID_TYPE = "E0210": "a type is not allowed in this position";
        COMPARE_MISMATCH = "E0211": "`==`/`!=` compare a string with a number or bool";
        UNKNOWN_ARGUMENT = "E0300": "a named argument matches no parameter";
        MISSING_ARGUMENT = "E0301": "a parameter without default gets no argument";
        DUPLICATE_ARGUMENT = "E0302": "a parameter gets two arguments";
        TOO_MANY_ARGUMENTS = "E0303": "more positional arguments than parameters";
        UNEXPECTED_SPACE = "E0304": "`f[space](…)` on a function that takes no space";
        MISSING_SPACE = "E0305": "a reduction, segment op or scan without `[space]`";
        MISPLACED_WHERE = "E0306": "`where` outside the first argument of a reduction or segment op";
        REDUCE_TO_FINER = "E0307": "a reduction targets a space finer than its argument";
        BAD_SCAN_SPACE = "E0308": "a scan runs along a space that is not `seq` or an `id[tok]` space";
        SCAN_NOT_TOKENS = "E0309": "a scan's operand is not a token (`tok`) value";
        EXPECTED_CONST_INT = "E0310": "`ddof` / shift offsets must be compile-time integers";
        EXPECTED_CONST_NUMBER = "E0311": "a value (empty:, fill:, defaults) must be a compile-time number";
        TOO_FEW_ARGUMENTS = "E0312": "`min`/`max` need at least two arguments";
        ERROR_REACHED = "E0313": "`error(\"…\")` is reached for these compile-time values";
        BAD_COLSUM_SPACE = "E0314": "`colsum[C]` where `C` is not `batch` or an `id[seq]` group space";
        COLSUM_NOT_TOKENS = "E0315": "`colsum`'s operand is not a token (`tok`) value";
        NO_LOSS_OR_OUTPUT = "E0400": "an objective has neither a `loss` nor an `output`";
        MULTIPLE_LOSSES = "E0401": "an objective has more than one `loss`";
        LOSS_NOT_SCALAR = "E0402": "the loss is not a `batch` scalar";
        LOSS_NOT_F32 = "E0403": "the loss is not `f32`";
        METRIC_NOT_SCALAR = "E0404": "a metric is not an `f32` batch scalar";
        GRAD_NOT_F32 = "E0405": "`@grad` on an input that is not `f32`";
        UPDATE_NOT_STATE = "E0406": "`update x` where `x` is not a `state`";
        STATE_UPDATED_TWICE = "E0407": "a state is updated more than once";
        UPDATE_NOT_SCALAR = "E0408": "an update value is not an `f32` batch scalar";
        BAD_PARAM_TYPE = "E0409": "a `param` is not a scalar `f32` or `bool`";
        CONST_NOT_COMPILE_TIME = "E0410": "a `const` value is not known at compile time";
        CONST_TYPE_MISMATCH = "E0411": "a `const` value does not match its declared type";
        BAD_OVERRIDE = "E0412": "a `--set` override does not fit the const's type";
        BAD_ID_SPACE = "E0413": "an `id` input indexes something other than `tok` or `seq`";
        BAD_SPACE_PARENT = "E0414": "`as s in p` where `p` is not a group space declared before";
        SPACE_REDEFINED = "E0415": "an `id` input declares a space whose name is taken";
        GRAD_WITHOUT_LOSS = "E0416": "`@grad` in an objective without a loss";
        BAD_STATE_TYPE = "E0417": "a `state` is not an `f32` scalar";
        BAD_INPUT_DEFAULT = "E0418": "an input default is not a compile-time value of the input's type";
        OUTPUT_NOT_TENSOR = "E0419": "an output is a compile-time string";
        CHANNEL_NOT_CONST = "E0420": "a channel axis (`f32[seq, chan]`) is not an integer `const` declared before";
        CHANNEL_BAD_SIZE = "E0421": "a channel axis const is not an integer from 1 to 256";
        CHANNEL_NOT_REDUCED = "E0422": "a loss, metric, output, update or state is channelled";
        CHANNEL_MISMATCH = "E0423": "one expression combines values over two different channel axes";
        CHANNEL_GRAD = "E0424": "`@grad` on a channelled input";
        CHANNEL_IN_SIGNATURE = "E0425": "a function parameter or return type has a channel axis";
        CHANNEL_OP = "E0426": "an operation over a channel axis that is not a channel reduction";
    }
}
