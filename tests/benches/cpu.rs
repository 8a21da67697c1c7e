//! Criterion benches of forward+backward per backend (interp, cpu, candle) on a synthetic
//! full batch (`rlobj_runtime::bench::synthetic_bound`). Not run in CI:
//! `cargo bench -p rlobj-tests --bench cpu` (`BENCH_ROWS` / `BENCH_TOKENS` override 64 × 4096).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rlobj_ir::SpaceId;
use rlobj_runtime::cpu::{CpuProgram, CpuResults};
use rlobj_runtime::Backend;
use std::path::PathBuf;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn fwd_bwd(c: &mut Criterion) {
    let rows = env("BENCH_ROWS", 64);
    let tokens = env("BENCH_TOKENS", 4096);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../objectives");
    for name in ["verl/vanilla", "grpo", "dapo", "gspo"] {
        let Ok(obj) = rlobj_runtime::api::Objective::compile(&dir.join(format!("{name}.obj")))
        else {
            continue;
        };
        let prog = obj.program();
        let (params, states) = (obj.params(), obj.states());
        let Ok(bound) = rlobj_runtime::bench::synthetic_bound(prog, rows, tokens) else {
            continue;
        };
        let mut g = c.benchmark_group(format!("{name}/{rows}x{tokens}"));
        g.throughput(Throughput::Elements(bound.layout.size(SpaceId::TOK) as u64));
        g.sample_size(10);
        if let Ok(cpu) = CpuProgram::compile(prog, false) {
            let tok32 = rlobj_runtime::cpu::token_inputs_f32(prog, &bound);
            let tok: Vec<Option<&[f32]>> = tok32.iter().map(|v| v.as_deref()).collect();
            let other: Vec<Option<&[f64]>> = bound.values.iter().map(|v| v.as_deref()).collect();
            let mut out = CpuResults::default();
            g.bench_function("cpu", |b| {
                b.iter(|| cpu.run_into(&bound.layout, &tok, &other, params, states, None, &mut out))
            });
        }
        let mut interp = rlobj_runtime::interp::Interpreter::new();
        g.bench_function("interp", |b| {
            b.iter(|| interp.evaluate(prog, &bound, params, states))
        });
        let mut candle = rlobj_runtime::candle_eager::CandleEager::new();
        g.bench_function("candle", |b| {
            b.iter(|| candle.evaluate(prog, &bound, params, states))
        });
        g.finish();
    }
}

criterion_group!(benches, fwd_bwd);
criterion_main!(benches);
