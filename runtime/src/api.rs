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
use rlobj_ir::{ConstValue, Elem, InputKind, Layout, Program, SpaceKind};
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
    /// Channel-axis consts in `overrides` that `fit_channels` set (not the user), so the
    /// next batch may change them again.
    fitted: Vec<String>,
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
            fitted: Vec::new(),
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

    /// Whether `name` is a param (per-channel ones by their own name), state or const of
    /// this objective.
    pub fn knows(&self, name: &str) -> bool {
        self.program.params.iter().any(|p| p.name == name)
            || self.program.states.iter().any(|s| s.name == name)
            || self.source.consts.iter().any(|(c, _)| c == name)
            || self.channel_param(name).is_some()
    }

    /// Sets a param, state or const from text, as `--set name=value` does. A const
    /// recompiles the objective (param and state values are kept by name).
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        self.set_many(&[(name.to_string(), value.to_string())])
    }

    /// Applies several settings with at most one recompilation. Consts are applied first,
    /// so `chan=2` and `weights=1,0.5` can go together. A per-channel param
    /// (`param weights: f32[chan]`) takes exactly K comma-separated values, or one channel
    /// at a time as `weights[1]=0.5`. Nothing changes when any setting fails.
    pub fn set_many(&mut self, sets: &[(String, String)]) -> Result<()> {
        let mut const_sets = Vec::new();
        let mut runtime = Vec::new();
        for (name, value) in sets {
            match self.source.consts.iter().find(|(c, _)| c == name) {
                Some((_, c)) => const_sets.push((name.clone(), check_const(name, c, value)?)),
                None => runtime.push((name, value)),
            }
        }
        let mut next = if const_sets.is_empty() {
            self.clone()
        } else {
            let mut overrides = self.overrides.clone();
            let mut fitted = self.fitted.clone();
            for (n, v) in const_sets {
                overrides.retain(|(o, _)| *o != n);
                fitted.retain(|f| *f != n);
                overrides.push((n, v));
            }
            let mut fresh = Self::from_origin(self.origin.clone(), overrides)?;
            fresh.fitted = fitted;
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
            fresh
        };
        for (name, value) in runtime {
            if let Some(p) = next.program.params.iter().find(|p| &p.name == name) {
                let v = parse_scalar(name, p.elem, value, "param")?;
                next.set_param(name, v)?;
            } else if next.program.states.iter().any(|s| &s.name == name) {
                let v = parse_scalar(name, Elem::F32, value, "state")?;
                next.set_state(name, v)?;
            } else if let Some(elem) = next.channel_param(name) {
                let count = next.channel_count(name);
                let values: Vec<&str> = value.split(',').collect();
                if values.len() != count {
                    return Err(Error::Usage(format!(
                        "param `{name}` has {count} channels (`{name}[0]`…`{name}[{}]`): give {count} comma-separated values, found {} in `{value}`, or set one channel with `{name}[k]=v`",
                        count - 1,
                        values.len()
                    )));
                }
                for (k, text) in values.iter().enumerate() {
                    let part = format!("{name}[{k}]");
                    let v = parse_scalar(&part, elem, text, "param")?;
                    next.set_param(&part, v)?;
                }
            } else {
                return Err(next.unknown(name));
            }
        }
        *self = next;
        Ok(())
    }

    /// The element type of per-channel param `name` (its parts are `name[0]`, …).
    fn channel_param(&self, name: &str) -> Option<Elem> {
        let first = format!("{name}[0]");
        self.program
            .params
            .iter()
            .find(|p| p.name == first)
            .map(|p| p.elem)
    }

    /// How many channels per-channel param `name` has.
    fn channel_count(&self, name: &str) -> usize {
        (0..)
            .take_while(|k| {
                let part = format!("{name}[{k}]");
                self.program.params.iter().any(|p| p.name == part)
            })
            .count()
    }

    /// Recompiles with the channel counts of the batch: for each channel axis whose tensor
    /// is present with the expected rank but another last dimension K, sets the axis const
    /// to K. Axes given explicitly with `set` are left alone (binding then reports the
    /// mismatch). Returns the axes it changed, as `(const, K)`.
    pub fn fit_channels(
        &mut self,
        src: &dyn crate::batch::TensorSource,
    ) -> Result<Vec<(String, usize)>> {
        let mut sets: Vec<(String, String)> = Vec::new();
        let mut changed = Vec::new();
        for input in &self.source.inputs {
            let (Some(slot), InputKind::Value { space, .. }) = (&input.channel, &input.kind) else {
                continue;
            };
            let fixed = self.overrides.iter().any(|(n, _)| *n == slot.axis)
                && !self.fitted.contains(&slot.axis);
            if fixed || sets.iter().any(|(n, _)| *n == slot.axis) {
                continue;
            }
            let Some(t) = src.get(&slot.tensor)? else {
                continue;
            };
            let rank = match self.source.spaces.get(space.index()).map(|s| &s.kind) {
                Some(SpaceKind::Seq | SpaceKind::RowGroups { .. }) => 2,
                Some(SpaceKind::Tok | SpaceKind::RowSegments { .. }) => 3,
                _ => continue,
            };
            match t.shape.last() {
                Some(&k) if t.shape.len() == rank && k >= 1 && k != slot.count as usize => {
                    sets.push((slot.axis.clone(), k.to_string()));
                    changed.push((slot.axis.clone(), k));
                }
                _ => {}
            }
        }
        if !sets.is_empty() {
            self.set_many(&sets)?;
            self.fitted.extend(sets.into_iter().map(|(n, _)| n));
        }
        Ok(changed)
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
        crate::batch::check_empty_batch_result(&self.program, &bound.layout, &eval)?;
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
