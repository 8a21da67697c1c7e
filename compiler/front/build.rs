//! Embeds the standard library (`stdlib/**/*.obj` at the repository root) into the binary,
//! so `use std::ppo` works from any directory. Generates `$OUT_DIR/stdlib_table.rs`: a
//! table of (module path such as `ppo` or `a::b`, source text via `include_str!`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let name = if prefix.is_empty() {
            stem.to_string()
        } else {
            format!("{prefix}::{stem}")
        };
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, &name, out);
        } else if path.extension().and_then(|e| e.to_str()) == Some("obj") {
            println!("cargo:rerun-if-changed={}", path.display());
            out.push((name, path));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let stdlib = manifest.join("../../stdlib");
    println!("cargo:rerun-if-changed={}", stdlib.display());
    let mut modules = Vec::new();
    collect(&stdlib, "", &mut modules);
    let mut table = String::from("/// (module path, source) of every embedded stdlib module.\n");
    table.push_str("pub static STDLIB: &[(&str, &str)] = &[\n");
    for (name, path) in &modules {
        let absolute = path.canonicalize().unwrap_or_else(|_| path.clone());
        let _ = writeln!(
            table,
            "    ({name:?}, include_str!({:?})),",
            absolute.display().to_string()
        );
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("stdlib_table.rs");
    if let Err(err) = std::fs::write(&out, table) {
        println!("cargo:warning=cannot write {}: {err}", out.display());
    }
}
