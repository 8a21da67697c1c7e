//! `rlobj bench`: forward+backward time per backend on a synthetic full batch, with the
//! plan's bytes per token turned into effective bandwidth and compared with a measured
//! memory-copy bandwidth of the same machine (the roofline ratio).

use crate::cpu::CpuProgram;
use crate::{Backend, Bound, RunError};
use rlobj_ir::{InputKind, Layout, Program, SpaceId, SpaceKind};
use std::path::Path;
use std::time::Instant;

/// One backend's timing.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub backend: String,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub gb_per_s: f64,
}

/// Everything `rlobj bench` reports for one objective.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub objective: String,
    pub rows: usize,
    pub tokens: usize,
    pub bytes_per_token: f64,
    pub copy_gb_per_s: f64,
    pub peak_rss_mb: f64,
    /// Token bytes the CPU backend's JIT loops actually stream per token (values the plan
    /// buffers between loops are recomputed instead).
    pub cpu_loop_bytes_per_token: f64,
    /// Bytes of the batch's token inputs (`f32`) and of the token gradients (`f32`).
    pub input_mb: f64,
    pub output_mb: f64,
    /// Peak memory the CPU backend's runs added on top of inputs already in memory: the
    /// peak RSS during the runs minus the RSS before them (the high-water mark is reset
    /// first through `/proc/self/clear_refs`; `None` where that is not possible).
    pub cpu_extra_mb: Option<f64>,
    pub results: Vec<BenchRow>,
}

impl BenchReport {
    fn secs(&self, b: &str) -> Option<f64> {
        self.results
            .iter()
            .find(|r| r.backend == b)
            .map(|r| r.seconds)
    }

    /// The JSON object of this report (keys are a contract: see `docs/performance.md`).
    pub fn to_json(&self) -> serde_json::Value {
        let cpu = self.secs("cpu");
        let ratio = |other: &str| match (cpu, self.secs(other)) {
            (Some(c), Some(o)) if c > 0.0 => serde_json::json!(o / c),
            _ => serde_json::Value::Null,
        };
        let cpu_row = self.results.iter().find(|r| r.backend == "cpu");
        let roof = cpu_row.map(|r| r.gb_per_s / self.copy_gb_per_s);
        let loop_roof = cpu_row
            .map(|r| self.cpu_loop_bytes_per_token * r.tokens_per_s / 1e9 / self.copy_gb_per_s);
        serde_json::json!({
            "objective": self.objective,
            "rows": self.rows,
            "tokens": self.tokens,
            "bytes_per_token": self.bytes_per_token,
            "copy_gb_per_s": self.copy_gb_per_s,
            "peak_rss_mb": self.peak_rss_mb,
            "speedup_vs_candle": ratio("candle"),
            "speedup_vs_interp": ratio("interp"),
            "roofline_fraction": roof,
            "cpu_loop_bytes_per_token": self.cpu_loop_bytes_per_token,
            "cpu_loop_roofline_fraction": loop_roof,
            "input_mb": self.input_mb,
            "output_mb": self.output_mb,
            "cpu_extra_mb": self.cpu_extra_mb,
            "backends": self.results.iter().map(|r| serde_json::json!({
                "backend": r.backend, "seconds": r.seconds,
                "tokens_per_s": r.tokens_per_s, "gb_per_s": r.gb_per_s,
            })).collect::<Vec<_>>(),
        })
    }

    /// A human-readable table.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}: {}x{} tokens, {:.1} B/token (plan), copy bandwidth {:.2} GB/s, peak RSS {:.0} MB\n",
            self.objective, self.rows, self.tokens, self.bytes_per_token, self.copy_gb_per_s, self.peak_rss_mb
        );
        for r in &self.results {
            s += &format!(
                "  {:<8} {:>10.3} ms {:>12.3e} tok/s {:>7.2} GB/s\n",
                r.backend,
                r.seconds * 1e3,
                r.tokens_per_s,
                r.gb_per_s
            );
        }
        let j = self.to_json();
        s += &format!(
            "  speedup vs candle {}, vs interp {}, roofline fraction {} (plan bytes), {} (cpu loop bytes {:.0} B/token)\n",
            j["speedup_vs_candle"], j["speedup_vs_interp"], j["roofline_fraction"],
            j["cpu_loop_roofline_fraction"], self.cpu_loop_bytes_per_token
        );
        s += &format!(
            "  memory: token inputs {:.1} MB, token grads {:.1} MB, cpu extra peak {}\n",
            self.input_mb,
            self.output_mb,
            self.cpu_extra_mb
                .map(|m| format!("{m:.1} MB"))
                .unwrap_or_else(|| "n/a".into())
        );
        s
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn rss_kb(field: &str) -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
}

/// Resets the peak-RSS mark (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Measured copy bandwidth (read + write bytes per second) over 64 MiB buffers, in GB/s.
pub fn copy_bandwidth_gb_s() -> f64 {
    let n = 16 << 20;
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&mut dst);
    }
    (2.0 * 4.0 * n as f64) / best / 1e9
}

/// A full synthetic batch: every row `tokens` long, groups of 4 rows, turns of 64 tokens.
pub fn synthetic_bound(prog: &Program, rows: usize, tokens: usize) -> Result<Bound, RunError> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut unif = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mask = vec![true; rows * tokens];
    let mut ids = Vec::new();
    for (k, inp) in prog.inputs.iter().enumerate() {
        if let InputKind::Ids { space } = inp.kind {
            let v: Vec<i64> = match prog.spaces[space.index()].kind {
                SpaceKind::RowGroups { .. } => (0..rows).map(|r| (r / 4) as i64).collect(),
                _ => (0..rows * tokens)
                    .map(|i| ((i % tokens) / 64) as i64)
                    .collect(),
            };
            ids.push((rlobj_ir::InputId(k as u32), v));
        }
    }
    let layout =
        Layout::build(prog, rows, tokens, &mask, &ids).map_err(|e| RunError(e.to_string()))?;
    let values = prog
        .inputs
        .iter()
        .map(|inp| match &inp.kind {
            InputKind::Value { elem, space, .. } => Some(
                (0..layout.size(*space))
                    .map(|_| match elem {
                        rlobj_ir::Elem::Bool => f64::from(u8::from(unif() < 0.8)),
                        rlobj_ir::Elem::F32 if inp.name.contains("logp") => {
                            (-0.05 - 2.0 * unif()) as f32 as f64
                        }
                        rlobj_ir::Elem::F32 => (2.0 * unif() - 1.0) as f32 as f64,
                    })
                    .collect(),
            ),
            InputKind::Ids { .. } => None,
        })
        .collect();
    Ok(Bound { layout, values })
}

/// Median of `reps` timed calls after one warm-up.
trait InputSpace {
    fn node_space_of_input(&self, i: rlobj_ir::InputId) -> Option<SpaceId>;
}
impl InputSpace for Program {
    fn node_space_of_input(&self, i: rlobj_ir::InputId) -> Option<SpaceId> {
        match self.inputs.get(i.index())?.kind {
            InputKind::Value { space, .. } => Some(space),
            InputKind::Ids { .. } => None,
        }
    }
}

fn time<F: FnMut() -> Result<(), RunError>>(reps: usize, mut f: F) -> Result<f64, RunError> {
    f()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

/// Benchmarks the objective in `obj_path` on a `rows × tokens` batch for each backend
/// (`interp`, `cpu`, `candle`); `json` selects the output format.
pub fn bench(
    obj_path: &Path,
    rows: usize,
    tokens: usize,
    backends: &[String],
    json: bool,
) -> Result<String, RunError> {
    let obj = crate::api::Objective::compile(obj_path).map_err(|e| RunError(e.to_string()))?;
    let report = bench_program(
        obj.program(),
        obj.params(),
        obj.states(),
        rows,
        tokens,
        backends,
    )?;
    Ok(if json {
        report.to_json().to_string()
    } else {
        report.to_text()
    })
}

/// [`bench`] on an already compiled program.
pub fn bench_program(
    prog: &Program,
    params: &[f64],
    states: &[f64],
    rows: usize,
    tokens: usize,
    backends: &[String],
) -> Result<BenchReport, RunError> {
    let bound = synthetic_bound(prog, rows, tokens)?;
    let n_tok = bound.layout.size(SpaceId::TOK) as f64;
    let cpu = CpuProgram::compile(prog, false)?;
    let bytes_per_token = cpu.plan().bytes_per_token;
    let mut input_mb = 0.0;
    let mut output_mb = 0.0;
    let mut cpu_extra_mb = None;
    let copy = copy_bandwidth_gb_s();
    let mut results = Vec::new();
    for b in backends {
        let reps = if b == "cpu" { 20 } else { 3 };
        let secs = match b.as_str() {
            "cpu" => {
                let tok32 = crate::cpu::token_inputs_f32(prog, &bound);
                let tok: Vec<Option<&[f32]>> = tok32.iter().map(|v| v.as_deref()).collect();
                let other: Vec<Option<&[f64]>> =
                    bound.values.iter().map(|v| v.as_deref()).collect();
                input_mb = tok32.iter().flatten().map(|v| v.len() * 4).sum::<usize>() as f64 / 1e6;
                output_mb = prog
                    .grads
                    .iter()
                    .filter(|(i, _)| prog.node_space_of_input(*i) == Some(SpaceId::TOK))
                    .count() as f64
                    * n_tok
                    * 4.0
                    / 1e6;
                let mut out = crate::cpu::CpuResults::default();
                let base = rss_kb("VmRSS:");
                let reset = reset_peak_rss();
                let t = time(reps, || {
                    cpu.run_into(&bound.layout, &tok, &other, params, states, None, &mut out)
                })?;
                if let (true, Some(b), Some(p)) = (reset, base, rss_kb("VmHWM:")) {
                    // The gradients live in `out`: count them as outputs, not as extra.
                    cpu_extra_mb = Some(((p - b) * 1024.0 / 1e6 - output_mb).max(0.0));
                }
                t
            }
            "interp" => {
                let mut be = crate::interp::Interpreter::new();
                time(reps, || {
                    be.evaluate(prog, &bound, params, states).map(|_| ())
                })?
            }
            "candle" => {
                let mut be = crate::candle_eager::CandleEager::new();
                time(reps, || {
                    be.evaluate(prog, &bound, params, states).map(|_| ())
                })?
            }
            other => {
                return Err(RunError(format!(
                    "bench: unknown backend `{other}` (interp, cpu, candle)"
                )))
            }
        };
        results.push(BenchRow {
            backend: b.clone(),
            seconds: secs,
            tokens_per_s: n_tok / secs,
            gb_per_s: bytes_per_token * n_tok / secs / 1e9,
        });
    }
    Ok(BenchReport {
        objective: prog.name.clone(),
        rows,
        tokens,
        bytes_per_token,
        copy_gb_per_s: copy,
        peak_rss_mb: peak_rss_mb(),
        cpu_loop_bytes_per_token: cpu.loop_bytes_per_token(),
        input_mb,
        output_mb,
        cpu_extra_mb,
        results,
    })
}

/// Per-phase compile times of one objective (milliseconds, median over the repeats).
#[derive(Clone, Debug)]
pub struct CompileTimings {
    pub objective: String,
    pub repeats: usize,
    /// `(phase, ms)` in pipeline order: parse, check+lower, autodiff, optimize, schedule,
    /// jit, then `total` (one whole compile: source → callable CPU loops, measured as one
    /// span, not the sum of medians).
    pub phases: Vec<(&'static str, f64)>,
}

impl CompileTimings {
    pub fn to_text(&self) -> String {
        let parts: Vec<String> = self
            .phases
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.2} ms"))
            .collect();
        format!(
            "timings ({}, median of {}): {}",
            self.objective,
            self.repeats,
            parts.join(", ")
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("objective".into(), self.objective.clone().into());
        m.insert("repeats".into(), self.repeats.into());
        for (n, ms) in &self.phases {
            m.insert(format!("{n}_ms"), (*ms).into());
        }
        serde_json::Value::Object(m)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Times every compile phase of `path` `repeats` times. `parse` is the root file's parse;
/// `check+lower` is the rest of the front end (`compile_path` minus that parse: imports,
/// name resolution, type checking and lowering, which the front end interleaves);
/// autodiff, optimize, schedule and the Cranelift JIT are timed directly.
pub fn compile_timings(
    path: &Path,
    sets: &[(String, String)],
    repeats: usize,
) -> Result<CompileTimings, RunError> {
    use rlobj_front::sources::{Origin, SourceMap};
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError(format!("{}: cannot read: {e}", path.display())))?;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let names = [
        "parse",
        "check+lower",
        "autodiff",
        "optimize",
        "schedule",
        "jit",
        "total",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut objective = String::new();
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let mut map = SourceMap::new();
        let id = map.add(
            path.display().to_string(),
            Origin::Path(path.to_path_buf()),
            &text,
        );
        std::hint::black_box(rlobj_front::parser::parse(id, &text));
        let parse = ms(t);
        let t = Instant::now();
        let source =
            rlobj_front::compile_path(path, sets).map_err(|d| RunError(d.render(false)))?;
        let front = ms(t);
        let t = Instant::now();
        let mut diffed = source.clone();
        rlobj_ir::autodiff::differentiate(&mut diffed)
            .map_err(|e| RunError(format!("autodiff: {e}")))?;
        let autodiff = ms(t);
        let t = Instant::now();
        let prog = rlobj_ir::passes::optimize(&diffed);
        let optimize = ms(t);
        let t = Instant::now();
        let plan = rlobj_ir::schedule::schedule(&prog).map_err(|e| RunError(e.to_string()))?;
        let schedule = ms(t);
        let t = Instant::now();
        std::hint::black_box(CpuProgram::with_plan(&prog, plan, false)?);
        let jit = ms(t);
        // One whole compile as a user pays it.
        let t = Instant::now();
        let source =
            rlobj_front::compile_path(path, sets).map_err(|d| RunError(d.render(false)))?;
        let mut diffed = source;
        rlobj_ir::autodiff::differentiate(&mut diffed)
            .map_err(|e| RunError(format!("autodiff: {e}")))?;
        let prog = rlobj_ir::passes::optimize(&diffed);
        std::hint::black_box(CpuProgram::compile(&prog, false)?);
        let total = ms(t);
        objective = prog.name.clone();
        let vals = [
            parse,
            (front - parse).max(0.0),
            autodiff,
            optimize,
            schedule,
            jit,
            total,
        ];
        for (s, v) in samples.iter_mut().zip(vals) {
            s.push(v);
        }
    }
    Ok(CompileTimings {
        objective,
        repeats: repeats.max(1),
        phases: names
            .iter()
            .zip(samples.iter_mut())
            .map(|(n, s)| (*n, median(s)))
            .collect(),
    })
}
