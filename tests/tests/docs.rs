//! The code blocks of README.md and docs/*.md, and the generated docs/stdlib.md.
//!
//! * Every fenced block carries an info string: `obj` blocks are checked by the front end
//!   (each must hold an `objective` or a `fn` and check clean), `sh`/`bash`/`console` lines
//!   that run `rlobj …` (or `cargo run … --bin rlobj -- …`) are run in-process from the
//!   repository root when cheap (`check`, `fmt --check`, `compile`, `doc`, `run`/`diff` on
//!   a generated batch), `text` and `rust` are prose/illustration. An untagged block is an
//!   error, so nothing slips past unchecked.
//! * Every `use std::…` line of any block resolves.
//! * `docs/stdlib.md` equals `rlobj doc std`.
//!
//! docs/tutorial.md and docs/architecture.md are run by tests/tests/e2e.rs.

use rlobj_tests::{fenced_blocks, run_cli, FencedBlock};
use std::path::{Path, PathBuf};

const REGENERATE: &str = "cargo run -p rlobj-runtime --bin rlobj -- doc std > docs/stdlib.md";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// Hand-written Markdown files whose blocks this test owns.
fn doc_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // tutorial/architecture: e2e.rs; stdlib.md: generated, compared below.
            !matches!(name, "tutorial.md" | "architecture.md" | "stdlib.md")
        })
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The `rlobj` arguments of a shell line, if it runs rlobj.
fn rlobj_args(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    let line = line.strip_prefix("$ ").unwrap_or(line);
    let line = line.split_once(" #").map_or(line, |(c, _)| c).trim();
    let rest = if let Some(r) = line.strip_prefix("rlobj ") {
        r
    } else if line.starts_with("cargo run") {
        line.split_once("--bin rlobj -- ")?.1
    } else {
        return None;
    };
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Writes the demo's synthetic batch (every conventional tensor) as safetensors.
fn write_batch(path: &Path) {
    use rlobj_runtime::batch::HostData;
    let tensors = rlobj_runtime::cli::demo::synthetic_batch(8, 6);
    let mut bufs: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let (dtype, bytes) = match &t.data {
            HostData::Float(v) => (
                safetensors::Dtype::F32,
                v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
            ),
            HostData::Int(v) => (
                safetensors::Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            HostData::Bool(v) => (safetensors::Dtype::U8, v.iter().map(|b| *b as u8).collect()),
        };
        bufs.push((name, dtype, t.shape.clone(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serialize");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write batch");
}

/// Whether a command is cheap enough to run here; `None` with the reason otherwise.
fn cheap(args: &[String]) -> Result<(), String> {
    let sub = args.first().map(String::as_str).unwrap_or("");
    match sub {
        "check" | "doc" | "run" | "diff" => Ok(()),
        "fmt" if args.iter().any(|a| a == "--check") => Ok(()),
        "fmt" if !args.iter().any(|a| a == "--write") => Ok(()),
        "compile" => {
            let emit = args
                .windows(2)
                .find(|w| w[0] == "--emit")
                .map(|w| w[1].as_str())
                .or_else(|| args.iter().find_map(|a| a.strip_prefix("--emit=")));
            match emit {
                Some("ptx" | "cubin") => Err("needs NVRTC".into()),
                _ => Ok(()),
            }
        }
        other => Err(format!(
            "`{other}` is not a cheap command (training, plotting, demo, golden)"
        )),
    }
}

/// Replaces a `--batch PATH` that does not exist by a generated batch.
fn with_batches(args: &mut [String]) {
    for k in 1..args.len() {
        if args[k - 1] == "--batch" && !root().join(&args[k]).exists() {
            let name = Path::new(&args[k])
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "batch.safetensors".into());
            let gen = root().join("target/docs-batches").join(name);
            write_batch(&gen);
            args[k] = gen.display().to_string();
        }
    }
}

#[derive(Default)]
struct Tally {
    obj: usize,
    commands: usize,
    not_run: Vec<String>,
    uses: usize,
    skipped_blocks: Vec<String>,
    errors: Vec<String>,
}

fn check_block(file: &str, b: &FencedBlock, t: &mut Tally) {
    let at = format!("{file}:{}", b.line);
    // `use std::…` lines resolve, in every kind of block.
    for line in b.body.lines().map(str::trim) {
        if line.starts_with("use std::") {
            let src = line.split("//").next().unwrap_or(line);
            let d = rlobj_front::check_source(&format!("{at} use line"), src);
            if d.has_errors() {
                t.errors.push(format!(
                    "{at}: `{line}` does not resolve:\n{}",
                    d.render(false)
                ));
            }
            t.uses += 1;
        }
    }
    match b.info.as_str() {
        "obj" => {
            let body = &b.body;
            let complete = body.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with("objective ") || l.starts_with("fn ")
            });
            if !complete {
                t.errors.push(format!(
                    "{at}: obj block holds no `objective` or `fn`: complete it or mark it ```text"
                ));
                return;
            }
            let d = rlobj_front::check_source(&format!("{at} (obj block)"), body);
            if d.has_errors() {
                t.errors.push(format!(
                    "{at}: obj block does not check:\n{}\n{body}",
                    d.render(false)
                ));
            }
            t.obj += 1;
        }
        "sh" | "bash" | "console" => {
            for line in b.body.lines() {
                let Some(mut args) = rlobj_args(line) else {
                    if !line.trim().is_empty() {
                        t.not_run.push(format!("{at}: `{}` (not rlobj)", line.trim()));
                    }
                    continue;
                };
                if let Err(why) = cheap(&args) {
                    t.not_run.push(format!("{at}: `{}` ({why})", line.trim()));
                    continue;
                }
                with_batches(&mut args);
                let (code, out, err) = run_cli(&args);
                if code != 0 {
                    t.errors.push(format!(
                        "{at}: `{}` exited {code}:\n{out}\n{err}",
                        line.trim()
                    ));
                }
                t.commands += 1;
            }
        }
        "text" => {}
        "rust" => t
            .skipped_blocks
            .push(format!("{at}: rust (API illustration, not compiled)")),
        "" => t.errors.push(format!(
            "{at}: code block without an info string (tag it obj, sh, text or rust)"
        )),
        other => t.errors.push(format!(
            "{at}: code block with unknown info string `{other}` (use obj, sh, bash, console, text or rust)"
        )),
    }
}

#[test]
fn doc_code_blocks_check_and_run() {
    std::env::set_current_dir(root()).expect("cd");
    let mut t = Tally::default();
    let mut blocks = 0;
    for path in doc_files() {
        let text = std::fs::read_to_string(&path).expect("read doc");
        let name = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        let bs = fenced_blocks(&text);
        blocks += bs.len();
        let before = (t.obj, t.commands);
        for b in &bs {
            check_block(&name, b, &mut t);
        }
        eprintln!(
            "{name}: {} blocks, {} obj checked, {} commands run",
            bs.len(),
            t.obj - before.0,
            t.commands - before.1
        );
    }
    for n in t.not_run.iter().chain(&t.skipped_blocks) {
        eprintln!("not run: {n}");
    }
    eprintln!(
        "{blocks} blocks: {} obj blocks checked, {} commands run, {} `use std::` lines resolved",
        t.obj, t.commands, t.uses
    );
    assert!(
        t.errors.is_empty(),
        "{} problem(s):\n\n{}",
        t.errors.len(),
        t.errors.join("\n\n")
    );
    assert!(blocks > 0 && t.obj > 0, "no doc code block found");
}

/// The checker rejects what it must: a broken obj block, a fragment, an unknown import, an
/// untagged block and a failing command.
#[test]
fn doc_block_checker_can_fail() {
    std::env::set_current_dir(root()).expect("cd");
    let md = "```obj\nobjective x {\n    input logp: f32[tok] @grad\n    loss = logp\n}\n```\n\
              ```obj\nlet x = 1\n```\n\
              ```text\nuse std::ppo::no_such_fn\n```\n\
              ```\nplain\n```\n\
              ```sh\nrlobj check no/such/file.obj\n```\n";
    let mut t = Tally::default();
    for b in fenced_blocks(md) {
        check_block("self-test.md", &b, &mut t);
    }
    assert_eq!(t.errors.len(), 5, "{:#?}", t.errors);
}

/// A `run` command on a batch path that does not exist gets a generated batch.
#[test]
fn doc_run_commands_get_a_generated_batch() {
    std::env::set_current_dir(root()).expect("cd");
    let mut args: Vec<String> = "run objectives/grpo.obj --batch no-such-batch.safetensors"
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(cheap(&args).is_ok());
    with_batches(&mut args);
    let (code, out, err) = run_cli(&args);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn stdlib_md_is_current() {
    let (code, out, err) = run_cli(&["doc".into(), "std".into()]);
    assert_eq!(code, 0, "rlobj doc std failed:\n{err}");
    let path = root().join("docs/stdlib.md");
    if std::env::var_os("RLOBJ_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &out).expect("write docs/stdlib.md");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != out {
        let first = committed
            .lines()
            .zip(out.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(out.lines().count()));
        panic!(
            "docs/stdlib.md is out of date (first difference at line {}); regenerate with\n    {REGENERATE}\n(or RLOBJ_UPDATE_DOCS=1 cargo test -p rlobj-tests --test docs stdlib_md)",
            first + 1
        );
    }
}
