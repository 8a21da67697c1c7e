//! The `rlobj` command line, as a library so tests drive it in-process: [`main_with`] takes
//! the arguments and the two output streams and returns the exit code. The binary only
//! installs the panic hook and calls it.
//!
//! Exit codes: 0 success, 1 a user error (bad file, batch, `--set`, usage), 101 a bug
//! (the panic hook, a last resort).

use crate::api::{Error, Objective};
use crate::output;
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

pub mod demo;
pub mod diff;

/// Where the CLI writes.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// Colour diagnostics (the binary sets it when stderr is a terminal).
    pub color: bool,
}

/// A failed command: its message (already printed when empty).
#[derive(Debug)]
pub struct Fail(pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(e.to_string())
    }
}
impl From<crate::RunError> for Fail {
    fn from(e: crate::RunError) -> Self {
        Fail(e.0)
    }
}

type CmdResult = Result<(), Fail>;

#[derive(Parser, Debug)]
#[command(
    name = "rlobj",
    version,
    about = "Typed objectives for LLM reinforcement learning, compiled to fused forward+backward kernels",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check `.obj` files and print their diagnostics (exit 1 on any error).
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// `human` (ariadne reports on stderr) or `json` (one object on stdout).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Format `.obj` files (to stdout, or in place with --write).
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Do not print; exit 1 if any file is not formatted.
        #[arg(long)]
        check: bool,
        /// Rewrite the files in place.
        #[arg(long, conflicts_with = "check")]
        write: bool,
    },
    /// Run an objective on a safetensors batch: loss, metrics, gradients, outputs, state.
    Run {
        /// The objective (`.obj`).
        file: PathBuf,
        #[command(flatten)]
        common: RunArgs,
        /// Print `{"loss", "metrics", "grads", "outputs", "state"}` as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the results as f32 tensors (`loss`, `grad.<input>`, `metric.<name>`,
        /// `output.<name>`, `state.<name>`).
        #[arg(long, value_name = "OUT.safetensors")]
        out: Option<PathBuf>,
    },
    /// Print a compilation artifact.
    Compile {
        file: PathBuf,
        /// What to print.
        #[arg(long, value_enum)]
        emit: Emit,
        /// GPU architecture for ptx/cubin (`sm_XX`).
        #[arg(long, default_value = "sm_80")]
        arch: String,
        /// Print the time of every compilation phase to stderr (parse, check, lower,
        /// autodiff, optimise, schedule, JIT).
        #[arg(long)]
        timings: bool,
        /// With --timings: compile this many times and print the median of each phase.
        #[arg(long, default_value_t = 1, requires = "timings")]
        repeat: usize,
        /// Const overrides (`name=value`), applied before compiling.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
    },
    /// Forward+backward time per backend on a synthetic full batch: tokens/s, the plan's
    /// bytes per token, effective GB/s against a measured copy bandwidth, peak memory.
    Bench {
        /// Objectives (`.obj`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Rows of the batch (B).
        #[arg(long, default_value_t = 64)]
        rows: usize,
        /// Tokens per row (T); every row is full.
        #[arg(long, default_value_t = 4096)]
        tokens: usize,
        /// Comma-separated backends: interp, cpu, candle.
        #[arg(long, default_value = "interp,cpu,candle", value_delimiter = ',')]
        backends: Vec<String>,
        /// One JSON object per objective (keys `speedup_vs_candle`, `speedup_vs_interp`,
        /// `roofline_fraction`, `bytes_per_token`, ...).
        #[arg(long)]
        json: bool,
    },
    /// Compare two objectives (or settings) on one batch: loss, metrics, gradients.
    Diff {
        a: PathBuf,
        b: PathBuf,
        #[command(flatten)]
        common: RunArgs,
        /// How many of the largest per-token gradient differences to list.
        #[arg(long, default_value_t = 5)]
        top: usize,
    },
    /// Run the objective catalog on a built-in synthetic batch.
    Demo {
        #[arg(long, default_value = "interp")]
        backend: String,
        /// Rows of the synthetic batch.
        #[arg(long, default_value_t = 16)]
        rows: usize,
        /// Padded width of the synthetic batch.
        #[arg(long, default_value_t = 48)]
        width: usize,
    },
    /// Train a small candle policy on a toy addition task with an objective; prints the
    /// reward per step.
    Train {
        /// The objective (`.obj`); also accepted as `--objective FILE`.
        #[arg(required_unless_present = "objective", conflicts_with = "objective")]
        file: Option<PathBuf>,
        #[arg(long, value_name = "FILE.obj")]
        objective: Option<PathBuf>,
        #[arg(long, default_value_t = 200)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Set a param or const of the objective (`NAME=VALUE`).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
        #[arg(long, default_value = "interp")]
        backend: String,
        /// Backpropagate through the objective's candle op instead of the surrogate
        /// `sum(logp · dL/dlogp)` (both give the same gradient).
        #[arg(long)]
        candle_op: bool,
    },
    /// Train with several objectives on the same seeds; writes `compare.svg` and
    /// `compare.md` (reward, clip fraction, KL, entropy, gradient norm curves).
    Compare {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value_t = 100)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
        /// Output directory of the report.
        #[arg(long, default_value = "compare")]
        out: PathBuf,
    },
    /// Plot the surrogate and its gradient against the ratio, for positive and negative
    /// advantages (SVG).
    Plot {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
        /// Output file (default `<first file>.surrogate.svg`).
        #[arg(long, value_name = "FILE.svg")]
        out: Option<PathBuf>,
    },
    /// Record or check golden snapshots (loss, metrics, gradient summaries) of objectives on
    /// a fixed batch; exit 1 when a snapshot changed (review it, or pass --accept).
    Golden {
        files: Vec<PathBuf>,
        #[arg(long, default_value = "tests/snapshots")]
        dir: PathBuf,
        #[arg(long)]
        accept: bool,
    },
    /// Markdown documentation from `///` comments of a file, a stdlib module
    /// (`std::ppo`), or `std` for the whole standard library.
    Doc {
        /// `FILE.obj`, `std::module` or `std`.
        target: String,
    },
}

/// Arguments shared by `run` and `diff`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The batch (safetensors); tensors bind to inputs by name, `mask` defines the tokens.
    #[arg(long, value_name = "B.safetensors")]
    pub batch: PathBuf,
    /// Which backend runs it: interp (the f64 reference), cpu, opencl, cuda, candle — an
    /// unknown name lists the ones in this build.
    #[arg(long, default_value = "interp")]
    pub backend: String,
    /// Set a param, state (initial value) or const (recompiles): `--set clip_ratio_high=0.28`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The IR as lowered by the front end (before autodiff).
    Ir,
    /// The IR after autodiff and optimisation.
    IrGrad,
    /// The kernel plan (phases, reads, writes).
    Plan,
    Cuda,
    Ptx,
    Cubin,
    Opencl,
    Clif,
}

/// Runs the CLI with `args` (including the program name) and returns the exit code.
pub fn main_with<I, T>(args: I, io: &mut Io) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let text = e.render().to_string();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = io.out.write_all(text.as_bytes());
                    0
                }
                _ => {
                    let _ = io.err.write_all(text.as_bytes());
                    1
                }
            };
        }
    };
    let result = match cli.command {
        Command::Check { files, format } => check(&files, format, io),
        Command::Fmt {
            files,
            check,
            write,
        } => fmt(&files, check, write, io),
        Command::Run {
            file,
            common,
            json,
            out,
        } => run(&file, &common, json, out.as_deref(), io),
        Command::Compile {
            file,
            emit,
            arch,
            timings,
            repeat,
            sets,
        } => compile(&file, emit, &arch, timings, repeat, &sets, io),
        Command::Bench {
            files,
            rows,
            tokens,
            backends,
            json,
        } => bench(&files, rows, tokens, &backends, json, io),
        Command::Diff { a, b, common, top } => diff::diff(&a, &b, &common, top, io),
        Command::Demo {
            backend,
            rows,
            width,
        } => demo::demo(&backend, rows, width, io),
        Command::Doc { target } => doc(&target, io),
        Command::Train {
            file,
            objective,
            steps,
            seed,
            sets,
            backend,
            candle_op,
        } => {
            let file = file.or(objective).unwrap_or_default();
            research(io, |out| {
                let sets = parse_sets(&sets).map_err(|f| f.0)?;
                crate::train::commands::train_command(
                    &file, steps, seed, &sets, &backend, candle_op, out,
                )
            })
        }
        Command::Compare {
            files,
            steps,
            seed,
            sets,
            out,
        } => research(io, |w| {
            let sets = parse_sets(&sets).map_err(|f| f.0)?;
            crate::train::commands::compare_command(&files, steps, seed, &sets, &out, w)
        }),
        Command::Plot { files, sets, out } => research(io, |w| {
            let sets = parse_sets(&sets).map_err(|f| f.0)?;
            crate::train::commands::plot_command(&files, &sets, out.as_deref(), w)
        }),
        Command::Golden { files, dir, accept } => research(io, |w| {
            crate::train::commands::golden_command(&files, &dir, accept, w)
        }),
    };
    match result {
        Ok(()) => 0,
        Err(Fail(msg)) => {
            if !msg.is_empty() {
                let msg = msg.trim_end();
                if msg.contains('\n')
                    || msg.starts_with("error")
                    || msg.starts_with("Error")
                    || msg.starts_with('[')
                {
                    let _ = writeln!(io.err, "{msg}");
                } else {
                    let _ = writeln!(io.err, "error: {msg}");
                }
            }
            1
        }
    }
}

/// Runs one of the training/plotting commands, which report an exit code of their own
/// (1 for "a golden snapshot changed") or an error message.
fn research(io: &mut Io, command: impl FnOnce(&mut dyn Write) -> Result<i32, String>) -> CmdResult {
    match command(&mut *io.out) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Fail(String::new())),
        Err(msg) => Err(Fail(msg)),
    }
}

/// Splits `name=value` settings.
pub fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>, Fail> {
    sets.iter()
        .map(|s| match s.split_once('=') {
            Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_string(), v.to_string())),
            _ => Err(Fail(format!(
                "--set `{s}`: expected NAME=VALUE (e.g. --set clip_ratio_high=0.28)"
            ))),
        })
        .collect()
}

/// Compiles `file` and applies `sets`; errors are prefixed with the file name.
pub fn load(file: &Path, sets: &[(String, String)]) -> Result<Objective, Fail> {
    let mut obj = Objective::compile(file).map_err(|e| in_file(file, e))?;
    obj.set_many(sets).map_err(|e| in_file(file, e))?;
    Ok(obj)
}

fn in_file(file: &Path, e: Error) -> Fail {
    match e {
        // Rendered diagnostics already name the file.
        Error::Compile { rendered, .. } => Fail(rendered),
        other => Fail(format!("{}: {other}", file.display())),
    }
}

fn check(files: &[PathBuf], format: Format, io: &mut Io) -> CmdResult {
    let mut failed = 0usize;
    let mut json_files = Vec::new();
    for f in files {
        // Text that is not UTF-8 is reported here, before the front end sees it.
        if let Some(msg) = not_utf8(f) {
            failed += 1;
            match format {
                Format::Human => {
                    let _ = writeln!(io.err, "error: {msg}");
                }
                Format::Json => json_files.push(serde_json::json!({
                    "file": f.display().to_string(),
                    "errors": 1,
                    "warnings": 0,
                    "diagnostics": [{"file": f.display().to_string(), "severity": "error", "code": "io", "message": msg}],
                })),
            }
            continue;
        }
        let diags = rlobj_front::check_path(f);
        let errors = diags.items.iter().filter(|d| d.is_error()).count();
        if errors > 0 {
            failed += 1;
        }
        match format {
            Format::Human => {
                if !diags.is_empty() {
                    let _ = write!(io.err, "{}", diags.render(io.color));
                }
            }
            Format::Json => json_files.push(serde_json::json!({
                "file": f.display().to_string(),
                "errors": errors,
                "warnings": diags.len() - errors,
                "diagnostics": diags.to_json(),
            })),
        }
    }
    match format {
        Format::Json => {
            let v = serde_json::json!({ "ok": failed == 0, "files": json_files });
            let _ = writeln!(io.out, "{v}");
        }
        Format::Human if failed == 0 => {
            let _ = writeln!(
                io.out,
                "ok: {} file{} checked",
                files.len(),
                if files.len() == 1 { "" } else { "s" }
            );
        }
        Format::Human => {
            let _ = writeln!(
                io.err,
                "error: {failed} of {} file{} failed to check",
                files.len(),
                if files.len() == 1 { "" } else { "s" }
            );
        }
    }
    if failed > 0 {
        Err(Fail(String::new()))
    } else {
        Ok(())
    }
}

/// `Some(message)` when `f` exists but is not UTF-8 text.
fn not_utf8(f: &Path) -> Option<String> {
    let bytes = std::fs::read(f).ok()?;
    let e = std::str::from_utf8(&bytes).err()?;
    Some(format!(
        "{}: not UTF-8 text (invalid byte at offset {})",
        f.display(),
        e.valid_up_to()
    ))
}

/// Formats one file's text, or returns its rendered syntax errors.
pub fn format_text(path: &Path, text: &str, color: bool) -> Result<String, Fail> {
    use rlobj_front::sources::{Origin, SourceMap};
    let mut map = SourceMap::new();
    let id = map.add(
        path.display().to_string(),
        Origin::Path(path.to_path_buf()),
        text,
    );
    let (module, errors) = rlobj_front::parser::parse(id, text);
    if !errors.is_empty() {
        let items = errors
            .iter()
            .map(rlobj_front::diag::from_syntax_error)
            .collect();
        return Err(Fail(
            rlobj_front::Diagnostics::new(map, items).render(color),
        ));
    }
    Ok(rlobj_front::printer::print(&module))
}

fn fmt(files: &[PathBuf], check: bool, write: bool, io: &mut Io) -> CmdResult {
    let mut bad = 0usize;
    for f in files {
        let text = match std::fs::read(f) {
            Err(e) => {
                let _ = writeln!(io.err, "error: {}: cannot read: {e}", f.display());
                bad += 1;
                continue;
            }
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    let _ = writeln!(
                        io.err,
                        "error: {}",
                        not_utf8(f).unwrap_or_else(|| format!("{}: not UTF-8 text", f.display()))
                    );
                    bad += 1;
                    continue;
                }
            },
        };
        let formatted = match format_text(f, &text, io.color) {
            Ok(s) => s,
            Err(Fail(m)) => {
                let _ = write!(io.err, "{m}");
                bad += 1;
                continue;
            }
        };
        if check {
            if formatted != text {
                let _ = writeln!(io.out, "{}: not formatted", f.display());
                bad += 1;
            }
        } else if write {
            if formatted != text {
                if let Err(e) = std::fs::write(f, &formatted) {
                    let _ = writeln!(io.err, "error: {}: cannot write: {e}", f.display());
                    bad += 1;
                }
            }
        } else {
            let _ = write!(io.out, "{formatted}");
        }
    }
    if bad > 0 {
        Err(Fail(String::new()))
    } else {
        Ok(())
    }
}

fn run(file: &Path, args: &RunArgs, json: bool, out: Option<&Path>, io: &mut Io) -> CmdResult {
    let sets = parse_sets(&args.sets)?;
    let mut obj = Objective::compile(file).map_err(|e| in_file(file, e))?;
    let mut backend = crate::backends::backend_by_name(&args.backend)?;
    // Channel counts follow the batch (`rewards` of shape [B, K] sets `chan = K`) before
    // the --set values apply, so `--set weights=1,0` fits K = 2 and an explicit
    // `--set chan=…` still wins (binding then names the mismatch).
    let what = format!("batch `{}`", args.batch.display());
    let bytes =
        std::fs::read(&args.batch).map_err(|e| Fail(format!("{what}: cannot read: {e}")))?;
    let src = crate::batch::parse_bytes(&bytes, &what)?;
    obj.fit_channels(&src).map_err(|e| in_file(file, e))?;
    obj.set_many(&sets).map_err(|e| in_file(file, e))?;
    let bound = obj.bind(&src)?;
    let res = obj
        .evaluate(backend.as_mut(), &bound)
        .map_err(|e| in_file(file, e))?;
    let rep = output::report(&res)?;
    if let Some(p) = out {
        output::write_safetensors(&rep, p)?;
    }
    if json {
        let _ = writeln!(io.out, "{}", output::to_json(&rep));
    } else {
        let _ = write!(io.out, "{}", output::table(obj.name(), &rep));
    }
    Ok(())
}

fn compile(
    file: &Path,
    emit: Emit,
    arch: &str,
    timings: bool,
    repeat: usize,
    sets: &[String],
    io: &mut Io,
) -> CmdResult {
    let sets = parse_sets(sets)?;
    let source = rlobj_front::compile_path(file, &sets).map_err(|d| Fail(d.render(io.color)))?;
    let program = crate::api::finish(&source).map_err(|e| in_file(file, e))?;
    let text = emit_artifact(emit, &source, &program, arch)
        .map_err(|m| Fail(format!("{}: {m}", file.display())))?;
    let _ = io.out.write_all(&text);
    if emit != Emit::Cubin && !text.ends_with(b"\n") {
        let _ = writeln!(io.out);
    }
    if timings {
        // Timings re-run the pipeline through the CPU JIT; a program the JIT cannot take
        // still gets its artifact, with a note instead of the timings.
        match crate::bench::compile_timings(file, &sets, repeat.max(1)) {
            Ok(t) => {
                let _ = writeln!(io.err, "{}", t.to_text());
            }
            Err(e) => {
                let _ = writeln!(io.err, "timings: unavailable: {e}");
            }
        }
    }
    Ok(())
}

fn bench(
    files: &[PathBuf],
    rows: usize,
    tokens: usize,
    backends: &[String],
    json: bool,
    io: &mut Io,
) -> CmdResult {
    for f in files {
        let s = crate::bench::bench(f, rows, tokens, backends, json)
            .map_err(|e| Fail(format!("{}: {e}", f.display())))?;
        let _ = if json {
            writeln!(io.out, "{}", s.trim_end())
        } else {
            write!(io.out, "{s}")
        };
    }
    Ok(())
}

/// Every `--emit` artifact, in one place: code generators register here. `cubin` is
/// binary; everything else is text.
pub fn emit_artifact(
    emit: Emit,
    source: &rlobj_ir::Program,
    program: &rlobj_ir::Program,
    arch: &str,
) -> Result<Vec<u8>, String> {
    let kind = match emit {
        Emit::Ir => return Ok(rlobj_ir::dump::dump(source).into_bytes()),
        Emit::IrGrad => return Ok(rlobj_ir::dump::dump(program).into_bytes()),
        Emit::Clif => {
            return crate::cpu::CpuProgram::compile(program, true)
                .map(|c| c.clif_text().into_bytes())
                .map_err(|e| e.0)
        }
        Emit::Plan => "plan",
        Emit::Cuda => "cuda",
        Emit::Opencl => "opencl",
        Emit::Ptx => "ptx",
        Emit::Cubin => "cubin",
    };
    let sm = parse_arch(arch)?;
    crate::emit::emit(program, kind, sm).map_err(|e| e.0)
}

/// `sm_90` / `compute_90` / `90` → 90.
fn parse_arch(arch: &str) -> Result<u32, String> {
    let digits = arch
        .trim_start_matches("sm_")
        .trim_start_matches("compute_");
    digits
        .parse::<u32>()
        .map_err(|_| format!("--arch `{arch}`: expected sm_XX (e.g. sm_80, sm_90)"))
}

fn doc(target: &str, io: &mut Io) -> CmdResult {
    let render = |d: rlobj_front::Diagnostics| Fail(d.render(false));
    let mut md = String::new();
    if target == "std" {
        md.push_str("# The rlobj standard library\n\n");
        for m in rlobj_front::sources::stdlib_modules() {
            let d = rlobj_front::doc_std_module(m).map_err(render)?;
            md.push_str(&markdown(&format!("std::{m}"), &d, 2));
        }
    } else if let Some(m) = target.strip_prefix("std::") {
        if rlobj_front::sources::stdlib_source(m).is_none() {
            return Err(Fail(format!(
                "no stdlib module `{target}`; available: {}",
                rlobj_front::sources::stdlib_modules()
                    .iter()
                    .map(|m| format!("std::{m}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let d = rlobj_front::doc_std_module(m).map_err(render)?;
        md.push_str(&markdown(target, &d, 1));
    } else {
        let d = rlobj_front::doc_items(Path::new(target)).map_err(render)?;
        md.push_str(&markdown(target, &d, 1));
    }
    let _ = write!(io.out, "{md}");
    Ok(())
}

/// One module as Markdown: a heading, the `//!` text, then every item's signature and docs.
fn markdown(title: &str, d: &rlobj_front::ModuleDoc, level: usize) -> String {
    let h = "#".repeat(level);
    let mut s = format!("{h} `{title}`\n\n");
    for line in &d.doc {
        s.push_str(line.strip_prefix(' ').unwrap_or(line));
        s.push('\n');
    }
    if !d.doc.is_empty() {
        s.push('\n');
    }
    for item in &d.items {
        s.push_str(&format!(
            "{h}# `{}`\n\n```\n{}\n```\n\n",
            item.name, item.signature
        ));
        for line in &item.doc {
            s.push_str(line.strip_prefix(' ').unwrap_or(line));
            s.push('\n');
        }
        if !item.doc.is_empty() {
            s.push('\n');
        }
    }
    s
}
