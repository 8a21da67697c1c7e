//! The pipeline behind the crate's entry points: load a file and its imports, check every
//! function generically, lower the objective, and collect every diagnostic on the way.

use crate::ast::{Item, Span};
use crate::diag::{codes, Diagnostic, Diagnostics};
use crate::modules::{ModId, World};
use rlobj_ir::Program;

/// Where the root module comes from.
pub(crate) enum Root<'a> {
    Path(&'a std::path::Path),
    Source { name: &'a str, text: &'a str },
}

fn load(root: Root) -> (World, Option<ModId>) {
    let mut world = World::default();
    let module = match root {
        Root::Path(path) => world.load_path(path),
        Root::Source { name, text } => Some(world.load_memory(name, text)),
    };
    (world, module)
}

/// Every error of the root file and its imports, plus the lowered program when the root
/// holds an objective and nothing failed. `need_objective` makes a missing objective an
/// error (compiling), rather than a valid library file (checking).
pub(crate) fn run(
    root: Root,
    overrides: &[(String, String)],
    need_objective: bool,
) -> (Option<Program>, Diagnostics) {
    let (world, module) = load(root);
    let mut diags = world.diags.clone();
    diags.extend(crate::lower::check_functions(&world));
    let mut program = None;
    if let Some(module) = module {
        let info = &world.modules[module];
        match info.objective() {
            Some(objective) => {
                let (lowered, errors) = crate::lower::lower_objective(&world, module, objective, overrides);
                diags.extend(errors);
                program = Some(lowered);
            }
            None if need_objective => diags.push(
                Diagnostic::error(
                    codes::NO_OBJECTIVE,
                    format!("`{}` holds no objective to compile", world.sources.display_name(info.file)),
                    Span::new(info.file, 0, 0),
                    "no `objective name { … }` in this file",
                )
                .with_hint("library files (functions only) can be checked with `rlobj check`, not compiled"),
            ),
            None => {}
        }
    }
    let diagnostics = Diagnostics::new(world.sources, diags);
    let program = if diagnostics.has_errors() {
        None
    } else {
        program
    };
    (program, diagnostics)
}

/// One documented item of a module, for `rlobj doc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocItem {
    pub name: String,
    /// `fn name(x: f32[S], eps: f32 = 1e-6) -> f32[S]` or `objective name`.
    pub signature: String,
    /// The `///` lines.
    pub doc: Vec<String>,
}

/// The module documentation (`//!`) and the items of a file, in source order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleDoc {
    pub name: String,
    pub doc: Vec<String>,
    pub items: Vec<DocItem>,
}

pub(crate) fn document(root: Root) -> Result<ModuleDoc, Diagnostics> {
    let (world, module) = load(root);
    let syntax_errors: Vec<Diagnostic> = world
        .diags
        .iter()
        .filter(|d| d.code.as_str() < "E0100")
        .cloned()
        .collect();
    let Some(module) = module.filter(|_| syntax_errors.is_empty()) else {
        return Err(Diagnostics::new(world.sources, world.diags));
    };
    let info = &world.modules[module];
    let text = world.sources.text(info.file);
    let slice = |span: Span| {
        text.get(span.start..span.end)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mut items = Vec::new();
    for item in &info.ast.items {
        match item {
            Item::Fn(decl) => {
                let params: Vec<String> = decl.params.iter().map(|p| slice(p.span)).collect();
                let mut signature = format!("fn {}({})", decl.name.name, params.join(", "));
                if let Some(ret) = &decl.ret {
                    signature.push_str(&format!(" -> {}", slice(ret.span)));
                }
                items.push(DocItem {
                    name: decl.name.name.clone(),
                    signature,
                    doc: decl.doc.clone(),
                });
            }
            Item::Objective(objective) => items.push(DocItem {
                name: objective.name.name.clone(),
                signature: format!("objective {}", objective.name.name),
                doc: objective.doc.clone(),
            }),
            Item::Use(_) | Item::Error(_) => {}
        }
    }
    Ok(ModuleDoc {
        name: world.sources.display_name(info.file),
        doc: info.ast.doc.clone(),
        items,
    })
}
