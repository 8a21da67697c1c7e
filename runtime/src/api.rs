//! The library API: an [`Objective`] compiled once from a `.obj` file, holding its runtime
//! parameter and state values between calls.
//!
//! ```no_run
//! # use rlobj_runtime::{api::Objective, backends::backend_by_name};
//! let mut obj = Objective::compile("objectives/dapo.obj".as_ref())?;
//! obj.set("clip_ratio_high", "0.3")?;               // a param: no recompilation
//! obj.set("loss_agg_mode", "seq-mean-token-mean")?; // a const: recompiles
//! let mut backend = backend_by_name("interp")?;
//! let bound = obj.bind_file("batch.safetensors".as_ref())?;
//! let res = obj.evaluate(backend.as_mut(), &bound)?;
//! println!("{:?}", res.eval.loss);
//! # Ok::<(), rlobj_runtime::api::Error>(())
//! ```

use crate::{Backend, Bound, Evaluation, RunError};
use rlobj_ir::{ConstValue, Elem, Layout, Program};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What can go wrong in the API.
#[derive(Debug)]
pub enum Error {
    /// The source did not compile. `rendered` is the ariadne text, `json` the
    /// machine-readable diagnostics.
    Compile {
        rendered: String,
        json: serde_json::Value,
    },
    /// A bad `set` (unknown name, unparsable value) or other misuse.
    Usage(String),
    /// Binding the batch or running the backend failed.
    Run(RunError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Compile { rendered, .. } => f.write_str(rendered.trim_end()),
            Error::Usage(m) => f.write_str(m),
            Error::Run(e) => f.write_str(&e.0),
        }
    }
}
impl std::error::Error for Error {}

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        Error::Run(e)
    }
}

impl From<rlobj_front::Diagnostics> for Error {
    fn from(d: rlobj_front::Diagnostics) -> Self {
        Error::Compile {
            rendered: d.render(false),
            json: d.to_json(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the source of an objective comes from (kept so a const override can recompile).
#[derive(Clone, Debug)]
enum Origin {
    Path(PathBuf),
    Source { name: String, text: String },
}

/// The result of one [`Objective::evaluate`]: the backend's [`Evaluation`] plus what is
/// needed to shape it for output (the program and the batch layout).
#[derive(Clone, Debug)]
pub struct Results {
    pub program: Arc<Program>,
    pub layout: Layout,
    pub eval: Evaluation,
}

/// A compiled objective with its current parameter and state values.
#[derive(Clone, Debug)]
pub struct Objective {
    origin: Origin,
    overrides: Vec<(String, String)>,
    /// As lowered by the front end, before autodiff (what `--emit ir` shows).
    source: Arc<Program>,
    /// Differentiated and optimised: what backends run.
    program: Arc<Program>,
    params: Vec<f64>,
    states: Vec<f64>,
}

/// Front end → autodiff → optimise.
fn build(origin: &Origin, overrides: &[(String, String)]) -> Result<(Program, Program)> {
    let source = match origin {
        Origin::Path(p) => rlobj_front::compile_path(p, overrides)?,
        Origin::Source { name, text } => rlobj_front::compile_source(name, text, overrides)?,
    };
    let program = finish(&source)?;
    Ok((source, program))
}

/// The middle end on a lowered program: autodiff, then the optimisation passes.
pub fn finish(source: &Program) -> Result<Program> {
    let mut diffed = source.clone();
    rlobj_ir::autodiff::differentiate(&mut diffed)
        .map_err(|e| Error::Usage(format!("objective `{}`: autodiff failed: {e}", source.name)))?;
    Ok(rlobj_ir::passes::optimize(&diffed))
}

impl Objective {
    /// Compiles the objective in `path` with default consts.
    pub fn compile(path: &Path) -> Result<Objective> {
        Self::from_origin(Origin::Path(path.to_path_buf()), Vec::new())
    }

    /// Compiles source text (`name` is used in diagnostics; relative imports resolve from
    /// the current directory).
    pub fn compile_source(name: &str, text: &str) -> Result<Objective> {
        Self::from_origin(
            Origin::Source {
                name: name.into(),
                text: text.into(),
            },
            Vec::new(),
        )
    }

    fn from_origin(origin: Origin, overrides: Vec<(String, String)>) -> Result<Objective> {
        let (source, program) = build(&origin, &overrides)?;
        let params = program.params.iter().map(|p| p.default).collect();
        let states = program.states.iter().map(|s| s.init).collect();
        Ok(Objective {
            origin,
            overrides,
            source: Arc::new(source),
            program: Arc::new(program),
            params,
            states,
        })
    }

    /// The program before autodiff.
    pub fn source_program(&self) -> &Program {
        &self.source
    }

    /// The program backends run (differentiated, optimised).
    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn name(&self) -> &str {
        &self.program.name
    }

    /// Current parameter values, indexed like `Program::params`.
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// Current state values, indexed like `Program::states`.
    pub fn states(&self) -> &[f64] {
        &self.states
    }

    /// Sets a runtime parameter by name.
    pub fn set_param(&mut self, name: &str, value: f64) -> Result<()> {
        match self.program.params.iter().position(|p| p.name == name) {
            Some(i) => {
                self.params[i] = value;
                Ok(())
            }
            None => Err(self.unknown(name)),
        }
    }

    /// Sets a state's current value by name (its initial value when called before the first
    /// evaluation).
    pub fn set_state(&mut self, name: &str, value: f64) -> Result<()> {
        match self.program.states.iter().position(|s| s.name == name) {
            Some(i) => {
                self.states[i] = value;
                Ok(())
            }
            None => Err(self.unknown(name)),
        }
    }

    /// Whether `name` is a param, state or const of this objective.
    pub fn knows(&self, name: &str) -> bool {
        self.program.params.iter().any(|p| p.name == name)
            || self.program.states.iter().any(|s| s.name == name)
            || self.source.consts.iter().any(|(c, _)| c == name)
    }

    /// Sets a param, state or const from text, as `--set name=value` does. A const
    /// recompiles the objective (param and state values are kept by name).
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        self.set_many(&[(name.to_string(), value.to_string())])
    }

    /// Applies several settings with at most one recompilation.
    pub fn set_many(&mut self, sets: &[(String, String)]) -> Result<()> {
        let mut const_sets = Vec::new();
        let mut runtime_sets = Vec::new();
        for (name, value) in sets {
            if let Some((_, c)) = self.source.consts.iter().find(|(c, _)| c == name) {
                const_sets.push((name.clone(), check_const(name, c, value)?));
            } else if let Some(p) = self.program.params.iter().find(|p| &p.name == name) {
                runtime_sets.push((name.clone(), parse_scalar(name, p.elem, value, "param")?));
            } else if self.program.states.iter().any(|s| &s.name == name) {
                runtime_sets.push((name.clone(), parse_scalar(name, Elem::F32, value, "state")?));
            } else {
                return Err(self.unknown(name));
            }
        }
        if !const_sets.is_empty() {
            let mut overrides = self.overrides.clone();
            for (n, v) in const_sets {
                overrides.retain(|(o, _)| *o != n);
                overrides.push((n, v));
            }
            let mut fresh = Self::from_origin(self.origin.clone(), overrides)?;
            for (i, p) in self.program.params.iter().enumerate() {
                if let Some(j) = fresh.program.params.iter().position(|q| q.name == p.name) {
                    fresh.params[j] = self.params[i];
                }
            }
            for (i, s) in self.program.states.iter().enumerate() {
                if let Some(j) = fresh.program.states.iter().position(|q| q.name == s.name) {
                    fresh.states[j] = self.states[i];
                }
            }
            *self = fresh;
        }
        for (name, v) in runtime_sets {
            if self.program.params.iter().any(|p| p.name == name) {
                self.set_param(&name, v)?;
            } else {
                self.set_state(&name, v)?;
            }
        }
        Ok(())
    }

    fn unknown(&self, name: &str) -> Error {
        let list = |v: Vec<&str>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let p = self
            .program
            .params
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let c = self.source.consts.iter().map(|(c, _)| c.as_str()).collect();
        let s = self
            .program
            .states
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        Error::Usage(format!(
            "`{name}` is not a param, const or state of objective `{}` (params: {}; consts: {}; states: {})",
            self.program.name,
            list(p),
            list(c),
            list(s)
        ))
    }

    /// Reads and binds a safetensors batch to this objective's inputs.
    pub fn bind_file(&self, path: &Path) -> Result<Bound> {
        Ok(crate::batch::bind_file(&self.program, path)?)
    }

    /// Binds in-memory candle tensors to this objective's inputs.
    pub fn bind_tensors(&self, tensors: &[(&str, &candle_core::Tensor)]) -> Result<Bound> {
        Ok(crate::batch::bind_tensors(&self.program, tensors)?)
    }

    /// Binds host tensors (any [`crate::batch::TensorSource`]).
    pub fn bind(&self, src: &dyn crate::batch::TensorSource) -> Result<Bound> {
        Ok(crate::batch::bind(&self.program, src)?)
    }

    /// Runs the objective on a bound batch and keeps the updated states for the next call.
    pub fn evaluate(&mut self, backend: &mut dyn Backend, bound: &Bound) -> Result<Results> {
        let eval = backend.evaluate(&self.program, bound, &self.params, &self.states)?;
        for (name, v) in &eval.states {
            if let Some(i) = self.program.states.iter().position(|s| &s.name == name) {
                self.states[i] = *v;
            }
        }
        Ok(Results {
            program: self.program.clone(),
            layout: bound.layout.clone(),
            eval,
        })
    }
}

/// Parses a runtime scalar: a number, or `true`/`false` for bool params.
fn parse_scalar(name: &str, elem: Elem, value: &str, what: &str) -> Result<f64> {
    let v = value.trim();
    if elem == Elem::Bool {
        return parse_bool(v)
            .map(|b| f64::from(u8::from(b)))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{what} `{name}` is a bool: expected true or false, found `{value}`"
                ))
            });
    }
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(Error::Usage(format!(
            "{what} `{name}`: the value must be finite, found `{value}`"
        ))),
        Err(_) => match parse_bool(v) {
            Some(b) => Ok(f64::from(u8::from(b))),
            None => Err(Error::Usage(format!(
                "{what} `{name}` is an f32: expected a number, found `{value}`"
            ))),
        },
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "True" | "1" => Some(true),
        "false" | "False" | "0" => Some(false),
        _ => None,
    }
}

/// Checks a const override against the const's current type and normalises it to the
/// spelling the front end parses (`True`/`1` → `true`; the front end checks enum
/// membership and reports it as a diagnostic).
fn check_const(name: &str, current: &ConstValue, value: &str) -> Result<String> {
    let v = value.trim();
    match current {
        ConstValue::F32(_) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(v.to_string()),
            _ => Err(Error::Usage(format!(
                "const `{name}` is an f32: expected a number, found `{value}`"
            ))),
        },
        ConstValue::Bool(_) => parse_bool(v).map(|b| b.to_string()).ok_or_else(|| {
            Error::Usage(format!(
                "const `{name}` is a bool: expected true or false, found `{value}`"
            ))
        }),
        ConstValue::Str(_) => Ok(value.to_string()),
    }
}
