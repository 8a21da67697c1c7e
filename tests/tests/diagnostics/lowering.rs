//! Positive tests: EXAMPLES.md-style objectives lower to the expected IR shape.

use rlobj_front::compile_source;
use rlobj_ir::{
    BinaryOp, ConstValue, Elem, InputKind, Op, Program, ReduceOp, ScanOp, SegmentOp, SpaceId,
    SpaceKind, UnaryOp,
};

fn lower(src: &str) -> Program {
    match compile_source("example.obj", src, &[]) {
        Ok(program) => program,
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    }
}

fn lower_with(src: &str, overrides: &[(&str, &str)]) -> Program {
    let overrides: Vec<(String, String)> = overrides
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    match compile_source("example.obj", src, &overrides) {
        Ok(program) => program,
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    }
}

fn count(program: &Program, matches: impl Fn(&Op) -> bool) -> usize {
    program.nodes.iter().filter(|n| matches(&n.op)).count()
}

/// Operands come before users, elementwise operands live in the node's space, and
/// broadcasts only go from coarse to fine.
fn assert_well_formed(program: &Program) {
    if let Err(err) = rlobj_ir::validate::validate(program) {
        panic!("invalid IR: {err:?}");
    }
    for (index, node) in program.nodes.iter().enumerate() {
        for operand in node.op.operands() {
            assert!(operand.index() < index, "node {index} uses a later node");
        }
        match &node.op {
            Op::Unary(_, a) => assert_eq!(program.node(*a).space, node.space),
            Op::Binary(_, a, b) | Op::Select(_, a, b) => {
                assert_eq!(program.node(*a).space, node.space);
                assert_eq!(program.node(*b).space, node.space);
            }
            Op::Clamp(x, lo, hi) => {
                for operand in [x, lo, hi] {
                    assert_eq!(program.node(*operand).space, node.space);
                }
            }
            Op::Broadcast(a) => {
                let from = program.node(*a).space;
                assert!(
                    program.within(node.space, from) && from != node.space,
                    "broadcast {index} is not coarse→fine"
                );
            }
            Op::Reduce { arg, .. } => assert!(program.within(program.node(*arg).space, node.space)),
            _ => {}
        }
    }
    if let Some(loss) = program.loss {
        assert_eq!(program.node(loss).space, SpaceId::BATCH);
        assert_eq!(program.node(loss).elem, Elem::F32);
    }
}

#[test]
fn gspo_sequence_ratio_with_token_gradients() {
    let program = lower(
        "objective gspo {
            input logp: f32[tok] @grad
            input old_logp: f32[tok]
            input advantages: f32[tok]
            param clip_ratio_low: f32 = 3e-4
            param clip_ratio_high: f32 = 4e-4
            let s = mean[seq](logp - old_logp)
            let rho = exp(min(logp - sg(logp) + sg(s), 10.0))
            let pg = max(-advantages * rho, -advantages * clamp(rho, 1 - clip_ratio_low, 1 + clip_ratio_high))
            loss = mean[batch](mean[seq](pg))
        }",
    );
    assert_well_formed(&program);
    assert_eq!(program.params.len(), 2);
    assert!(matches!(
        program.inputs[0].kind,
        InputKind::Value {
            grad: true,
            space: SpaceId::TOK,
            ..
        }
    ));
    assert_eq!(count(&program, |op| matches!(op, Op::StopGrad(_))), 2);
    assert_eq!(count(&program, |op| matches!(op, Op::Clamp(..))), 1);
    // mean[seq] of the log-ratio is broadcast back to tokens.
    let broadcasts_to_tok = program
        .nodes
        .iter()
        .filter(|n| {
            matches!(n.op, Op::Broadcast(a) if program.node(a).space == SpaceId::SEQ)
                && n.space == SpaceId::TOK
        })
        .count();
    assert!(broadcasts_to_tok >= 1);
    assert_eq!(
        count(&program, |op| matches!(
            op,
            Op::Reduce {
                op: ReduceOp::Mean,
                ..
            }
        )),
        3
    );
}

#[test]
fn gppo_clip_inlines_a_generic_function() {
    let program = lower(
        "/// Gradient-preserving clip.
        fn gppo_clip(r: f32[S], lo: f32, hi: f32) -> f32[S] =
            clamp(r, lo * r / sg(r), hi * r / sg(r))

        objective gppo {
            input logp: f32[tok] @grad
            input old_logp: f32[tok]
            input advantages: f32[tok]
            param eps: f32 = 0.2
            let r = exp(logp - old_logp)
            loss = mean[batch](-advantages * gppo_clip(r, 1 - eps, 1 + eps))
        }",
    );
    assert_well_formed(&program);
    let clamp = program
        .nodes
        .iter()
        .find(|n| matches!(n.op, Op::Clamp(..)))
        .expect("a clamp");
    assert_eq!(clamp.space, SpaceId::TOK);
    // Tensor bounds: both bounds are token values built from r / sg(r).
    if let Op::Clamp(_, lo, hi) = clamp.op {
        assert!(matches!(program.node(lo).op, Op::Binary(BinaryOp::Div, ..)));
        assert!(matches!(program.node(hi).op, Op::Binary(BinaryOp::Div, ..)));
    }
    // Lowering does not deduplicate: CSE is an IR pass.
    assert_eq!(count(&program, |op| matches!(op, Op::StopGrad(_))), 2);
}

#[test]
fn rs_grpo_logsumexp_within_groups() {
    let program = lower(
        "fn rs_advantage(reward: f32[seq], beta: f32) -> f32[seq] =
            (exp(beta * reward - logsumexp[grp](beta * reward) + log(count[grp]())) - 1) / beta

        objective rs_grpo {
            input logp: f32[tok] @grad
            input reward: f32[seq]
            input group: id[seq] as grp
            param beta: f32 = 2.0
            let adv = rs_advantage(reward, beta)
            loss = -mean[batch](adv * logp)
            output advantages = adv
        }",
    );
    assert_well_formed(&program);
    let grp = SpaceId(3);
    assert_eq!(program.spaces[3].name, "grp");
    assert!(matches!(
        program.spaces[3].kind,
        SpaceKind::RowGroups {
            parent: SpaceId::BATCH,
            ..
        }
    ));
    assert!(program.nodes.iter().any(|n| matches!(
        n.op,
        Op::Reduce {
            op: ReduceOp::LogSumExp,
            ..
        }
    ) && n.space == grp));
    let counted = program
        .nodes
        .iter()
        .find(|n| {
            matches!(
                n.op,
                Op::Reduce {
                    op: ReduceOp::Count,
                    ..
                }
            )
        })
        .expect("count");
    if let Op::Reduce { arg, .. } = counted.op {
        assert_eq!(
            program.node(arg).space,
            SpaceId::SEQ,
            "count[grp]() counts rows"
        );
    }
    assert_eq!(program.outputs.len(), 1);
    assert_eq!(program.node(program.outputs[0].1).space, SpaceId::SEQ);
}

#[test]
fn capo_quantile_threshold_and_where() {
    let program = lower(
        "objective capo_curvature {
            input logp: f32[tok] @grad
            input advantages: f32[tok]
            input curvature: f32[tok]
            param reject_budget: f32 = 0.08
            let pg = -advantages * logp
            let keep = curvature <= quantile[batch](curvature, 1 - reject_budget)
            loss = mean[batch](pg where keep)
            metric rejected_fraction = mean[batch](!keep)
        }",
    );
    assert_well_formed(&program);
    assert_eq!(count(&program, |op| matches!(op, Op::Quantile { .. })), 1);
    let loss = program.node(program.loss.expect("loss"));
    assert!(matches!(
        loss.op,
        Op::Reduce {
            op: ReduceOp::Mean,
            mask: Some(_),
            ..
        }
    ));
    let metric = program.node(program.metrics[0].1);
    if let Op::Reduce { arg, .. } = metric.op {
        assert!(
            matches!(program.node(arg).op, Op::Unary(UnaryOp::ToF32, _)),
            "mean of a bool converts it"
        );
    }
}

#[test]
fn st_ppo_turn_level_ratio() {
    let program = lower(
        "objective st_ppo {
            input logp: f32[tok] @grad
            input old_logp: f32[tok]
            input adv: f32[tok]
            input turn: id[tok] as turn
            param eps: f32 = 0.2
            let r_turn = exp(mean[turn](logp - old_logp))
            let pg = max(-adv * r_turn, -adv * clamp(r_turn, 1 - eps, 1 + eps))
            loss = mean[batch](pg)
        }",
    );
    assert_well_formed(&program);
    assert!(matches!(
        program.spaces[3].kind,
        SpaceKind::RowSegments { .. }
    ));
    let turn = SpaceId(3);
    assert!(program
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Unary(UnaryOp::Exp, _)) && n.space == turn));
    assert!(program
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Broadcast(a) if program.node(a).space == turn)));
}

#[test]
fn r2vpo_state_update() {
    let program = lower(
        "objective r2vpo {
            input logp: f32[tok] @grad
            input old_logp: f32[tok]
            input adv: f32[tok]
            state lam: f32 = 0.0
            param delta: f32 = 0.05
            param eta: f32 = 0.01
            let r = exp(logp - old_logp)
            let v = var[batch](r, ddof: 1)
            loss = -mean[batch](r * adv) + lam * (v - delta)
            update lam = max(0.0, lam + eta * (v - delta))
            metric variance = v
        }",
    );
    assert_well_formed(&program);
    assert_eq!(program.states.len(), 1);
    assert_eq!(program.updates.len(), 1);
    assert_eq!(program.node(program.updates[0].1).space, SpaceId::BATCH);
    assert_eq!(
        count(&program, |op| matches!(
            op,
            Op::Reduce {
                op: ReduceOp::Var { ddof: 1 },
                ..
            }
        )),
        1
    );
}

#[test]
fn gae_transform_with_scan_and_shift() {
    let program = lower(
        "fn whiten(x: f32[S], eps: f32 = 1e-8) -> f32[S] =
            (x - mean[batch](x)) / (std[batch](x, ddof: 1) + eps)

        objective adv_gae {
            input token_rewards: f32[tok]
            input values: f32[tok]
            param gamma: f32 = 1.0
            param lam: f32 = 1.0
            let delta = token_rewards + gamma * shift[seq](values, 1, fill: 0.0) - values
            let g = scan_rev[seq](delta, decay: gamma * lam)
            output returns = g + values
            output advantages = whiten(g)
        }",
    );
    assert_well_formed(&program);
    assert!(program.loss.is_none());
    assert_eq!(program.outputs.len(), 2);
    assert!(program.nodes.iter().any(|n| matches!(
        n.op,
        Op::Shift {
            offset: 1,
            within: SpaceId::SEQ,
            ..
        }
    )));
    let scan = program
        .nodes
        .iter()
        .find(|n| {
            matches!(
                n.op,
                Op::Scan {
                    op: ScanOp::ScanRev,
                    ..
                }
            )
        })
        .expect("scan");
    if let Op::Scan {
        coef: Some(coef), ..
    } = scan.op
    {
        assert_eq!(
            program.node(coef).space,
            SpaceId::TOK,
            "the decay is broadcast to tokens"
        );
    }
}

#[test]
fn const_enum_folds_and_overrides() {
    let src = r#"
        fn agg(x: f32[tok], mode: "token-mean" | "token-sum") -> f32 =
            if mode == "token-mean" { mean[batch](x) } else if mode == "token-sum" { sum[batch](x) } else { error("unknown mode") }

        objective o {
            input logp: f32[tok] @grad
            const loss_agg_mode: "token-mean" | "token-sum" = "token-mean"
            const scale = 2
            loss = agg(logp, loss_agg_mode) * scale
        }"#;
    let program = lower(src);
    assert_eq!(
        count(&program, |op| matches!(
            op,
            Op::Reduce {
                op: ReduceOp::Mean,
                ..
            }
        )),
        1
    );
    assert_eq!(
        count(&program, |op| matches!(
            op,
            Op::Reduce {
                op: ReduceOp::Sum,
                ..
            }
        )),
        0
    );
    assert!(program
        .consts
        .contains(&("loss_agg_mode".into(), ConstValue::Str("token-mean".into()))));
    let summed = lower_with(
        src,
        &[
            ("loss_agg_mode", "token-sum"),
            ("scale", "3"),
            ("not_a_const", "1"),
        ],
    );
    assert_eq!(
        count(&summed, |op| matches!(
            op,
            Op::Reduce {
                op: ReduceOp::Sum,
                ..
            }
        )),
        1
    );
    assert!(summed
        .consts
        .contains(&("scale".into(), ConstValue::F32(3.0))));
    let bad = compile_source(
        "example.obj",
        src,
        &[("loss_agg_mode".into(), "median".into())],
    );
    assert!(bad.is_err());
}

#[test]
fn runtime_if_selects_and_segment_ops() {
    let program = lower(
        "objective o {
            input logp: f32[tok] @grad
            input reward: f32[seq]
            input group: id[seq] as grp
            input sub: id[seq] as sub in grp
            param hard: bool = true
            let w = if hard { 1.0 } else { sigmoid(logp) }
            let best = topk[grp](reward, 1)
            let p = softmax[sub](reward)
            loss = mean[batch](w * logp * float(best) * p)
        }",
    );
    assert_well_formed(&program);
    assert_eq!(count(&program, |op| matches!(op, Op::Select(..))), 1);
    assert!(matches!(
        program.spaces[4].kind,
        SpaceKind::RowGroups {
            parent: SpaceId(3),
            ..
        }
    ));
    assert_eq!(
        count(&program, |op| matches!(
            op,
            Op::Segment {
                op: SegmentOp::TopK,
                k: Some(_),
                ..
            }
        )),
        1
    );
    assert_eq!(
        count(&program, |op| matches!(
            op,
            Op::Segment {
                op: SegmentOp::Softmax,
                within: SpaceId(4),
                ..
            }
        )),
        1
    );
}
