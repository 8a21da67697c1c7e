//! Lexer, parser and formatter: robustness (random input never panics, deep nesting is an
//! error), round trips (`parse(print(ast)) == ast` for random trees, fmt idempotence on every
//! `.obj` in the repository), error codes and recovery, and the grammar's examples.

use proptest::prelude::*;
use rlobj_front::ast::*;
use rlobj_front::parser::{parse, SyntaxError};
use rlobj_front::printer::print;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn codes(errs: &[SyntaxError]) -> Vec<&'static str> {
    errs.iter().map(|e| e.code).collect()
}

fn show(errs: &[SyntaxError]) -> String {
    errs.iter()
        .map(|e| {
            format!(
                "{} {}..{}: {}\n",
                e.code, e.span.start, e.span.end, e.message
            )
        })
        .collect()
}

/// Parses, prints, re-parses and re-prints; checks the two properties.
fn assert_round_trip(name: &str, src: &str) -> String {
    let (m, errs) = parse(0, src);
    assert!(errs.is_empty(), "{name}: syntax errors:\n{}", show(&errs));
    let p1 = print(&m);
    let (m2, errs2) = parse(0, &p1);
    assert!(
        errs2.is_empty(),
        "{name}: formatted output does not parse:\n{}\n{p1}",
        show(&errs2)
    );
    assert_eq!(
        m.without_spans(),
        m2.without_spans(),
        "{name}: formatting changed the tree:\n{p1}"
    );
    let p2 = print(&m2);
    assert_eq!(p1, p2, "{name}: formatting is not idempotent");
    p1
}

// ---- repository files ------------------------------------------------------------------

fn obj_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            obj_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "obj") {
            out.push(p);
        }
    }
}

#[test]
fn fmt_is_idempotent_on_every_repository_file() {
    let mut files = Vec::new();
    obj_files(&root().join("stdlib"), &mut files);
    obj_files(&root().join("objectives"), &mut files);
    assert!(
        !files.is_empty(),
        "no .obj files found under stdlib/ and objectives/"
    );
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_round_trip(&f.display().to_string(), &src);
    }
}

fn ebnf_examples() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("grammar/obj.ebnf")).expect("grammar/obj.ebnf");
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match &mut cur {
            None if line.trim_start().starts_with("(* example:") => cur = Some(String::new()),
            None => {}
            Some(buf) if line.trim() == "*)" => {
                out.push(std::mem::take(buf));
                cur = None;
            }
            Some(buf) => {
                buf.push_str(line);
                buf.push('\n');
            }
        }
    }
    out
}

#[test]
fn every_ebnf_example_parses() {
    let examples = ebnf_examples();
    assert!(
        examples.len() >= 4,
        "expected the grammar's examples, found {}",
        examples.len()
    );
    for (i, ex) in examples.iter().enumerate() {
        assert_round_trip(&format!("obj.ebnf example {i}"), ex);
    }
}

// ---- snapshots -------------------------------------------------------------------------

const MESSY: &str = r#"//! Messy input.
use std::ppo::{ ratio , clipped_surrogate, }
use std::agg::{agg}
// helpers
/// Doc of f.
fn f(x:f32[S],eps:f32=1e-6)->f32[S]=(x)/((x+eps))
fn g(a: f32, b: f32) -> f32 { let t = a*2  let u = -t
    // the value
    (t - u) * -1 }
/// The objective.
objective demo {
  input logp : f32[tok] @grad // grads here
  input grp: id[seq] as group in batch
  param eps : f32 = 0.2
  const mode : "token-mean"|"token-sum" = "token-mean"
  let r = ratio( logp , sg(logp) , clamp : 20.0 )
  let very_long_name_for_a_value = clipped_surrogate(r, r * 2, 1 - eps, 1 + eps) + clipped_surrogate(r, r, 1 - eps, 1 + eps)
  loss = if mode == "token-mean" { mean[batch](very_long_name_for_a_value where logp > 0) } else { sum[batch](very_long_name_for_a_value) }
  metric clip = mean[batch]( float( r > 1 + eps || r < 1 - eps ) ) // fraction
  // nothing after
}
// end of file
"#;

#[test]
fn snapshot_messy_file() {
    let out = assert_round_trip("messy", MESSY);
    insta::assert_snapshot!("messy", out);
}

const WRAPPING: &str = r#"/// Long argument lists, parameter lists and chains wrap; short ones stay on one line.
fn seq_mean_token_sum_norm(x: f32[tok], dp_size: f32 = 1, global_batch_size: f32 = 0, loss_scale_factor: f32 = 0) -> f32[batch] {
    let per_seq = sum[seq](x) / (if loss_scale_factor > 0 { loss_scale_factor } else { width() })
    let t = per_seq
    (-t) * dp_size
}

objective wrap {
    input logp: f32[tok] @grad
    input old_logp: f32[tok]
    input advantages: f32[tok]
    param clip_ratio_low: f32 = 0.2
    param clip_ratio_high: f32 = 0.28
    let r = exp(logp - old_logp)
    let pg = max(-advantages * r, -advantages * clamp(r, 1 - clip_ratio_low, 1 + clip_ratio_high)) + 0 * r
    loss = seq_mean_token_sum_norm(pg, dp_size: 1, global_batch_size: 0, loss_scale_factor: 4096 * 8 - 1)
    metric chain = clip_ratio_low + clip_ratio_high + clip_ratio_low + clip_ratio_high + clip_ratio_low + clip_ratio_high
    output neg = -(r - 1)
}
"#;

#[test]
fn snapshot_wrapping() {
    let out = assert_round_trip("wrapping", WRAPPING);
    insta::assert_snapshot!("wrapping", out);
}

// ---- errors and recovery ---------------------------------------------------------------

#[test]
fn each_error_code_is_reported() {
    let cases: &[(&str, &str)] = &[
        ("objective x { loss = 1 $ }", "E0001"),
        ("objective x { const m = \"abc }", "E0002"),
        ("objective x { const m = \"a\\qb\" }", "E0003"),
        ("objective x { loss = 1e }", "E0004"),
        ("objective x { input a: f32 @grads }", "E0005"),
        ("fn f(x: f32) -> f32 = g(x,,)", "E0016"),
        ("fn f(x: f32) -> f32 = ", "E0011"),
        ("fn f(x: f32) -> f32 = (x", "E0012"),
        ("fn f(x: f32) -> f32 = x)", "E0013"),
        ("fn f(x: f33) -> f32 = x", "E0017"),
        ("objective x { foo = 3 }", "E0018"),
        ("loss = 3", "E0019"),
        ("fn f(x: f32) -> f32 = if x > 0 { x }", "E0011"),
        ("fn f(x: f32) -> f32 { if x > 0 { x } y }", "E0020"),
        ("use foo::bar", "E0021"),
        ("objective x { input a f32 }", "E0010"),
    ];
    for (src, code) in cases {
        let (_, errs) = parse(0, src);
        assert!(
            codes(&errs).contains(code),
            "{src:?}: expected {code}, got:\n{}",
            show(&errs)
        );
        for e in &errs {
            assert!(
                e.span.start <= e.span.end && e.span.end <= src.len(),
                "{src:?}: bad span {e:?}"
            );
            assert!(!e.message.is_empty() && !e.label.is_empty());
        }
    }
}

#[test]
fn independent_errors_are_all_reported() {
    let src = "objective x {\n    input a: f32[tok] )\n    param eps f32 = 0.2\n    let ok = 1\n    metric m = (1 + )\n    loss = ok\n}\nfn g(x: f33) -> f32 = x\n";
    let (m, errs) = parse(0, src);
    let starts: Vec<usize> = errs.iter().map(|e| e.span.start).collect();
    for needle in [")\n", "f32 = 0.2", ")\n    loss", "f33"] {
        let at = src.find(needle).unwrap_or(usize::MAX);
        assert!(
            starts.contains(&at),
            "no error at {needle:?}:\n{}",
            show(&errs)
        );
    }
    // The good declarations survive around the bad ones.
    let Some(Item::Objective(o)) = m.items.first() else {
        panic!("objective lost: {m:?}")
    };
    assert!(o
        .decls
        .iter()
        .any(|d| matches!(&d.kind, DeclKind::Let(l) if l.name.name == "ok")));
    assert!(o.decls.iter().any(|d| matches!(d.kind, DeclKind::Loss(_))));
    assert!(o.decls.iter().any(|d| matches!(d.kind, DeclKind::Error)));
}

#[test]
fn messages_name_what_was_expected() {
    let (_, errs) = parse(0, "objective x {\n    input a: f32[tok] )\n}");
    let msg = &errs
        .iter()
        .find(|e| e.code == "E0018")
        .expect("E0018")
        .message;
    assert!(
        msg.contains("`@grad`") && msg.contains("`=`") && msg.contains("found `)`"),
        "{msg}"
    );
}

#[test]
fn spacing_before_call_paren_matters() {
    // `f (x)` is not a call; in a block that keeps `let t = x` and `(a) * 2` apart.
    let (m, errs) = parse(
        0,
        "fn f(x: f32, a: f32) -> f32 {\n    let t = x\n    (a) * 2\n}",
    );
    assert!(errs.is_empty(), "{}", show(&errs));
    let Some(Item::Fn(f)) = m.items.first() else {
        panic!()
    };
    assert!(matches!(f.body.lets[0].value.kind, ExprKind::Var(_)));
    assert!(matches!(
        f.body.value.kind,
        ExprKind::Binary(BinOp::Mul, ..)
    ));
}

#[test]
fn degenerate_inputs() {
    for src in [
        "",
        " \n\t",
        "// only a comment",
        "//! doc only",
        "\"",
        "\"abc\\",
        "/",
        "///",
        "@",
        "objective",
        "{",
        "}",
        "((",
        "fn",
        "use",
        "use std::",
        "objective x {",
    ] {
        let (m, errs) = parse(0, src);
        let _ = print(&m);
        for e in &errs {
            assert!(e.span.end <= src.len(), "{src:?}: {e:?}");
        }
    }
    let (m, errs) = parse(0, "// c\n//! d\n");
    assert!(errs.is_empty());
    assert_eq!(m.doc, vec![" d".to_string()]);
    assert_eq!(m.trailing_comments, vec![" c".to_string()]);
}

// ---- deep nesting ----------------------------------------------------------------------

fn assert_limit(src: &str, code: &str) {
    let (_, errs) = parse(0, src);
    assert!(
        codes(&errs).contains(&code),
        "expected {code}, got {:?}",
        codes(&errs)
    );
}

const MB: usize = 1 << 20;

#[test]
fn one_megabyte_of_nesting_is_an_error_not_a_crash() {
    let wrap = |body: String| format!("objective x {{ loss = {body} }}");
    assert_limit(&wrap("(".repeat(MB)), "E0014");
    assert_limit(&wrap(format!("{}x", "-".repeat(MB))), "E0015");
    assert_limit(&wrap(format!("{}x", "!".repeat(MB))), "E0015");
    assert_limit(&"[".repeat(MB), "E0014");
    assert_limit(&"{".repeat(MB), "E0014");
    assert_limit(&format!("fn f() -> f32 = {}", "g(".repeat(MB / 2)), "E0014");
    assert_limit(&wrap(format!("{}x", "x + ".repeat(MB / 4))), "E0015");
    assert_limit(
        &format!(
            "fn f() -> f32 = {}{{ 1 }}",
            "if c { 1 } else ".repeat(MB / 16)
        ),
        "E0015",
    );
    // Balanced but deep: still bounded.
    assert_limit(
        &wrap(format!("{}x{}", "(".repeat(200), ")".repeat(200))),
        "E0014",
    );
}

#[test]
fn nesting_just_under_the_limits_parses() {
    let depth = 100;
    let src = format!(
        "objective x {{ loss = {}x{} }}",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    assert_round_trip("deep parens", &src);
    let src = format!("objective x {{ loss = {}x }}", "-".repeat(300));
    assert_round_trip("deep negation", &src);
    let src = format!("objective x {{ loss = x{} }}", " + x".repeat(400));
    assert_round_trip("long sum", &src);
}

#[test]
fn one_megabyte_of_flat_garbage_is_fast_enough() {
    let src = "x = ) foo ( , ] } 1.5 \"s\" let ".repeat(MB / 32);
    let (_, errs) = parse(0, &src);
    assert!(!errs.is_empty());
    let src = "objective x { metric m = 1 + }\n".repeat(MB / 32);
    let (_, errs) = parse(0, &src);
    assert!(!errs.is_empty());
}

// ---- property tests: no panics ---------------------------------------------------------

const VOCAB: &[&str] = &[
    "use",
    "objective",
    "fn",
    "input",
    "param",
    "const",
    "state",
    "let",
    "loss",
    "metric",
    "output",
    "update",
    "if",
    "else",
    "where",
    "as",
    "in",
    "true",
    "false",
    "@grad",
    "::",
    ":",
    "->",
    "|",
    ",",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "+",
    "-",
    "*",
    "/",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "x",
    "std",
    "f32",
    "bool",
    "id",
    "str",
    "tok",
    "seq",
    "mean",
    "0.2",
    "1e-6",
    "3",
    "\"a\"",
    "\"",
    "// c\n",
    "/// d\n",
    "//! m\n",
    "\n",
    "$",
    "1e",
    "@x",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_token_streams_never_panic(toks in proptest::collection::vec((0..VOCAB.len(), any::<bool>()), 0..200)) {
        let src: String = toks.iter().map(|&(i, glue)| if glue { VOCAB[i].to_string() } else { format!("{} ", VOCAB[i]) }).collect();
        let (m, errs) = parse(0, &src);
        for e in &errs {
            prop_assert!(e.span.start <= e.span.end && e.span.end <= src.len());
        }
        let out = print(&m);
        if errs.is_empty() {
            let (m2, errs2) = parse(0, &out);
            prop_assert!(errs2.is_empty(), "{}\n---\n{}", src, out);
            prop_assert_eq!(m.without_spans(), m2.without_spans());
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let src = String::from_utf8_lossy(&bytes);
        let (m, _) = parse(0, &src);
        let _ = print(&m);
    }

    #[test]
    fn random_ascii_never_panics(src in "[ -~\n]{0,300}") {
        let (m, _) = parse(0, &src);
        let _ = print(&m);
    }

    #[test]
    fn random_trees_round_trip(m in module()) {
        let text = print(&m);
        let (parsed, errs) = parse(0, &text);
        prop_assert!(errs.is_empty(), "{}\n{}", show(&errs), text);
        prop_assert_eq!(parsed.without_spans(), m.without_spans(), "{}", text);
        prop_assert_eq!(print(&parsed), text);
    }
}

// ---- random well-formed trees ----------------------------------------------------------

const Z: Span = Span {
    file: 0,
    start: 0,
    end: 0,
};

fn ident() -> impl Strategy<Value = Ident> {
    prop::sample::select(vec![
        "x", "y", "logp", "adv", "r", "m", "eps", "S", "f32", "std", "a_1",
    ])
    .prop_map(|n| Ident {
        name: n.to_string(),
        span: Z,
    })
}

fn space_name() -> impl Strategy<Value = Ident> {
    prop::sample::select(vec!["tok", "seq", "batch", "S", "grp"]).prop_map(|n| Ident {
        name: n.to_string(),
        span: Z,
    })
}

fn string() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "token-mean",
        "a\"b",
        "c\\d",
        "e\nf",
        "",
        "ünï",
        "tab\there",
    ])
    .prop_map(str::to_string)
}

fn comment() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        " a comment",
        " another one",
        "",
        "no space",
        " ü // nested",
    ])
    .prop_map(str::to_string)
}

fn comments() -> impl Strategy<Value = Comments> {
    (
        prop::collection::vec(comment(), 0..2),
        prop::option::of(comment()),
    )
        .prop_map(|(leading, trailing)| Comments { leading, trailing })
}

fn docs() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(vec![" Doc line.", "", " `code` here"]).prop_map(str::to_string),
        0..2,
    )
}

fn e(kind: ExprKind) -> Expr {
    Expr { kind, span: Z }
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        prop::sample::select(vec!["0", "1", "0.2", "1e-6", "2.5E+3", "20.0", "007"]).prop_map(
            |raw| e(ExprKind::Number {
                value: raw.parse().unwrap_or(0.0),
                raw: raw.to_string()
            })
        ),
        any::<bool>().prop_map(|b| e(ExprKind::Bool(b))),
        string().prop_map(|s| e(ExprKind::Str(s))),
        prop::collection::vec(ident(), 1..3).prop_map(|p| e(ExprKind::Var(p))),
    ]
}

fn block_of(expr: BoxedStrategy<Expr>) -> impl Strategy<Value = Block> {
    let let_ = (ident(), expr.clone()).prop_map(|(name, value)| Let {
        comments: Comments::default(),
        name,
        value,
        span: Z,
    });
    (prop::collection::vec(let_, 0..2), expr).prop_map(|(lets, value)| Block {
        lets,
        value: Box::new(value),
        span: Z,
    })
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 48, 4, |inner| {
        let binop = prop::sample::select(vec![
            BinOp::Add,
            BinOp::Sub,
            BinOp::Mul,
            BinOp::Div,
            BinOp::Lt,
            BinOp::Le,
            BinOp::Gt,
            BinOp::Ge,
            BinOp::Eq,
            BinOp::Ne,
            BinOp::And,
            BinOp::Or,
        ]);
        let arg = (prop::option::of(ident()), inner.clone())
            .prop_map(|(name, value)| Arg { name, value });
        let if_ = (
            inner.clone(),
            block_of(inner.clone()),
            block_of(inner.clone()),
            prop::option::of((inner.clone(), block_of(inner.clone()))),
        )
            .prop_map(|(cond, then, last, elif)| {
                let otherwise = match elif {
                    Some((c2, t2)) => Else::If(e(ExprKind::If {
                        cond: Box::new(c2),
                        then: t2,
                        otherwise: Box::new(Else::Block(last)),
                    })),
                    None => Else::Block(last),
                };
                e(ExprKind::If {
                    cond: Box::new(cond),
                    then,
                    otherwise: Box::new(otherwise),
                })
            });
        prop_oneof![
            (
                prop::sample::select(vec![UnOp::Neg, UnOp::Not]),
                inner.clone()
            )
                .prop_map(|(op, x)| e(ExprKind::Unary(op, Box::new(x)))),
            (binop, inner.clone(), inner.clone()).prop_map(|(op, l, r)| e(ExprKind::Binary(
                op,
                Box::new(l),
                Box::new(r)
            ))),
            (inner.clone(), inner.clone())
                .prop_map(|(l, r)| e(ExprKind::Where(Box::new(l), Box::new(r)))),
            (
                prop::collection::vec(ident(), 1..3),
                prop::option::of(space_name()),
                prop::collection::vec(arg, 0..4)
            )
                .prop_map(|(callee, space, args)| e(ExprKind::Call {
                    callee,
                    space,
                    args
                })),
            if_,
        ]
    })
}

fn ty() -> impl Strategy<Value = TypeExpr> {
    let kind = prop_oneof![
        prop::option::of(space_name()).prop_map(TypeKind::F32),
        prop::option::of(space_name()).prop_map(TypeKind::Bool),
        space_name().prop_map(TypeKind::Id),
        Just(TypeKind::Str),
        prop::collection::vec(string().prop_map(|s| (s, Z)), 1..3).prop_map(TypeKind::Enum),
    ];
    // A channel axis (`f32[seq, chan]`) exists only after a space.
    (kind, prop::option::of(ident())).prop_map(|(kind, axis)| {
        let channel = match kind {
            TypeKind::F32(Some(_)) | TypeKind::Bool(Some(_)) => axis,
            _ => None,
        };
        TypeExpr {
            kind,
            channel,
            span: Z,
        }
    })
}

fn decl() -> impl Strategy<Value = Decl> {
    let x = || expr().boxed();
    let kind = prop_oneof![
        (
            ident(),
            ty(),
            any::<bool>(),
            prop::option::of((space_name(), prop::option::of(space_name()))),
            prop::option::of(x())
        )
            .prop_map(|(name, ty, grad, declares, default)| DeclKind::Input {
                name,
                ty,
                grad: grad.then_some(Z),
                declares: declares.map(|(name, parent)| SpaceDecl { name, parent }),
                default,
            }),
        (ident(), ty(), x()).prop_map(|(name, ty, default)| DeclKind::Param { name, ty, default }),
        (ident(), prop::option::of(ty()), x()).prop_map(|(name, ty, value)| DeclKind::Const {
            name,
            ty,
            value
        }),
        (ident(), ty(), x()).prop_map(|(name, ty, init)| DeclKind::State { name, ty, init }),
        (ident(), x()).prop_map(|(name, value)| DeclKind::Let(Let {
            comments: Comments::default(),
            name,
            value,
            span: Z
        })),
        x().prop_map(DeclKind::Loss),
        (ident(), x()).prop_map(|(name, value)| DeclKind::Metric { name, value }),
        (ident(), x()).prop_map(|(name, value)| DeclKind::Output { name, value }),
        (ident(), x()).prop_map(|(name, value)| DeclKind::Update { name, value }),
    ];
    (comments(), docs(), kind).prop_map(|(comments, doc, kind)| Decl {
        comments,
        doc,
        kind,
        span: Z,
    })
}

fn use_decl() -> impl Strategy<Value = UseDecl> {
    let names = || prop::collection::vec(ident(), 0..3);
    let std_ = (
        ident(),
        prop::option::of(ident()),
        prop_oneof![
            Just(None),
            names().prop_map(|n| Some(UseTarget::Names(n))),
            Just(Some(UseTarget::Glob(Z))),
        ],
    )
        .prop_map(|(first, second, target)| {
            let mut path = vec![first];
            path.extend(second);
            // `use std::a::b` means name `b` of `a`: a module target has one segment.
            let target = target.unwrap_or_else(|| {
                path.truncate(1);
                UseTarget::Module
            });
            (UseSource::Std(path), target)
        });
    let file = (
        prop::sample::select(vec!["helpers.obj", "a/b c.obj"]),
        prop_oneof![
            Just(UseTarget::Module),
            names().prop_map(UseTarget::Names),
            Just(UseTarget::Glob(Z)),
        ],
    )
        .prop_map(|(p, target)| {
            (
                UseSource::File {
                    path: p.to_string(),
                    span: Z,
                },
                target,
            )
        });
    (comments(), prop_oneof![std_, file]).prop_map(|(comments, (source, target))| UseDecl {
        comments,
        source,
        target,
        span: Z,
    })
}

fn fn_decl() -> impl Strategy<Value = FnDecl> {
    let param = (ident(), ty(), prop::option::of(expr())).prop_map(|(name, ty, default)| FnParam {
        name,
        ty,
        default,
        span: Z,
    });
    let let_ = (comments(), ident(), expr()).prop_map(|(comments, name, value)| Let {
        comments,
        name,
        value,
        span: Z,
    });
    (
        comments(),
        docs(),
        ident(),
        prop::collection::vec(param, 0..4),
        prop::option::of(ty()),
        any::<bool>(),
        prop::collection::vec(let_, 0..3),
        expr(),
    )
        .prop_map(
            |(comments, doc, name, params, ret, expr_body, lets, value)| {
                let lets = if expr_body { Vec::new() } else { lets };
                FnDecl {
                    comments,
                    doc,
                    name,
                    params,
                    ret,
                    body: Block {
                        lets,
                        value: Box::new(value),
                        span: Z,
                    },
                    expr_body,
                    span: Z,
                }
            },
        )
}

fn objective() -> impl Strategy<Value = ObjectiveDecl> {
    (
        comments(),
        docs(),
        ident(),
        prop::collection::vec(decl(), 0..6),
        prop::collection::vec(comment(), 0..2),
    )
        .prop_map(
            |(comments, doc, name, decls, trailing_comments)| ObjectiveDecl {
                comments,
                doc,
                name,
                decls,
                span: Z,
                trailing_comments,
            },
        )
}

fn module() -> impl Strategy<Value = Module> {
    let item = prop_oneof![
        use_decl().prop_map(Item::Use),
        fn_decl().prop_map(Item::Fn),
        objective().prop_map(Item::Objective)
    ];
    (
        prop::collection::vec(
            prop::sample::select(vec![" Module doc.", "", "! bang"]).prop_map(str::to_string),
            0..2,
        ),
        prop::collection::vec(item, 0..4),
        prop::collection::vec(comment(), 0..2),
    )
        .prop_map(|(doc, items, trailing_comments)| Module {
            doc,
            items,
            trailing_comments,
        })
}
