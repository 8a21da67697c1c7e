//! Loading a file and everything it imports, and the name tables of each module.
//!
//! A [`World`] holds every loaded module and every function definition; each module has a
//! `scope` (names callable unqualified: its own functions and imported ones) and a
//! `qualified` table (`use std::kl` makes `kl::f` callable). Import errors (unknown module
//! or name, cycles, duplicates) are reported here with both places involved.

use crate::ast::{FileId, FnDecl, Ident, Item, Module, ObjectiveDecl, Span, UseSource, UseTarget};
use crate::diag::{codes, Diagnostic};
use crate::sources::{self, LoadError, Origin, SourceMap};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub type ModId = usize;
pub type FnId = usize;

/// How a module is identified, so a file imported twice is loaded once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModKey {
    Std(String),
    File(PathBuf),
    Memory(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Local,
    Explicit,
    Glob,
}

/// A name callable unqualified in a module.
#[derive(Clone, Debug)]
pub struct ScopeEntry {
    pub func: FnId,
    /// The definition or the `use` that brought the name in.
    pub introduced: Span,
    pub kind: EntryKind,
}

#[derive(Clone, Debug)]
pub struct ModuleInfo {
    pub key: ModKey,
    pub file: FileId,
    pub ast: Module,
    pub scope: HashMap<String, ScopeEntry>,
    /// Names brought in by two glob imports: (first, second) `use` spans.
    pub ambiguous: HashMap<String, (Span, Span)>,
    pub qualified: HashMap<String, (ModId, Span)>,
    /// Names (and module qualifiers) whose import failed: their uses are not reported again.
    pub failed_imports: std::collections::HashSet<String>,
    /// A glob import failed, so any unknown function may come from it.
    pub failed_glob: bool,
    /// This module's own functions, in source order.
    pub local_fns: Vec<FnId>,
}

impl ModuleInfo {
    pub fn objective(&self) -> Option<&ObjectiveDecl> {
        self.ast.items.iter().find_map(|item| match item {
            Item::Objective(objective) => Some(objective),
            _ => None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct FnDef {
    pub module: ModId,
    pub decl: FnDecl,
}

/// Every module and function of one compilation, plus the diagnostics found while loading.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub sources: SourceMap,
    pub modules: Vec<ModuleInfo>,
    pub fns: Vec<FnDef>,
    pub diags: Vec<Diagnostic>,
    by_key: HashMap<ModKey, ModId>,
    /// Modules being loaded, with the `use` that led from each to the next.
    loading: Vec<(ModId, Span)>,
}

impl World {
    /// Loads the file at `path` and its imports; `None` when the file itself cannot be read
    /// (the diagnostic is in `diags`).
    pub fn load_path(&mut self, path: &Path) -> Option<ModId> {
        let key = ModKey::File(canonical(path));
        match sources::read_source(path) {
            Ok(text) => {
                let file = self.sources.add(
                    path.display().to_string(),
                    Origin::Path(path.to_path_buf()),
                    text,
                );
                Some(self.load_module(key, file))
            }
            Err(err) => {
                let file = self.sources.add(
                    path.display().to_string(),
                    Origin::Path(path.to_path_buf()),
                    "",
                );
                let span = Span::new(file, 0, 0);
                self.report_load_error(err, path.display().to_string(), span);
                None
            }
        }
    }

    /// Loads source text handed in directly; relative imports resolve from the current
    /// directory.
    pub fn load_memory(&mut self, name: &str, text: &str) -> ModId {
        let file = self.sources.add(name, Origin::Memory, text);
        self.load_module(ModKey::Memory(name.to_string()), file)
    }

    fn report_load_error(&mut self, err: LoadError, shown: String, span: Span) {
        let diagnostic = match err {
            LoadError::NotFound => Diagnostic::error(
                codes::FILE_NOT_FOUND,
                format!("cannot find file `{shown}`"),
                span,
                "no such file",
            )
            .with_hint("paths in `use \"…\"` are relative to the importing file"),
            LoadError::Unreadable(reason) => Diagnostic::error(
                codes::FILE_NOT_FOUND,
                format!("cannot read file `{shown}`: {reason}"),
                span,
                "cannot be read",
            ),
            LoadError::NotUtf8 { valid_up_to, lossy } => {
                // Show the text up to the bad byte so the label points at it.
                let shown_file =
                    self.sources
                        .add(format!("{shown} (not UTF-8)"), Origin::Memory, lossy);
                Diagnostic::error(
                    codes::NOT_UTF8,
                    format!("file `{shown}` is not valid UTF-8"),
                    Span::new(
                        shown_file,
                        valid_up_to,
                        valid_up_to + char::REPLACEMENT_CHARACTER.len_utf8(),
                    ),
                    "the first byte that is not UTF-8",
                )
                .with_secondary(span, "imported here")
                .with_hint("save the file as UTF-8")
            }
        };
        self.diags.push(diagnostic);
    }

    fn load_module(&mut self, key: ModKey, file: FileId) -> ModId {
        let text = self.sources.text(file).to_string();
        let (ast, errors) = crate::parser::parse(file, &text);
        self.diags
            .extend(errors.iter().map(crate::diag::from_syntax_error));
        let id = self.modules.len();
        self.modules.push(ModuleInfo {
            key: key.clone(),
            file,
            ast,
            scope: HashMap::new(),
            ambiguous: HashMap::new(),
            qualified: HashMap::new(),
            failed_imports: Default::default(),
            failed_glob: false,
            local_fns: Vec::new(),
        });
        self.by_key.insert(key, id);
        self.register_local_items(id);
        let uses: Vec<_> = self.modules[id]
            .ast
            .items
            .iter()
            .filter_map(|item| match item {
                Item::Use(decl) => Some(decl.clone()),
                _ => None,
            })
            .collect();
        for decl in uses {
            let Some(target) = self.resolve_use_source(id, &decl.source, decl.span) else {
                self.record_failed_import(id, &decl.target, &decl.source);
                continue;
            };
            self.bind_use(id, target, &decl.target, decl.span, &decl.source);
        }
        id
    }

    /// Functions and the objective of one module: duplicates and builtin names are errors.
    fn register_local_items(&mut self, id: ModId) {
        let items = self.modules[id].ast.items.clone();
        let mut first_objective: Option<Span> = None;
        for item in items {
            match item {
                Item::Fn(decl) => {
                    let name = decl.name.clone();
                    if crate::lower::is_builtin(&name.name) {
                        self.diags.push(
                            Diagnostic::error(
                                codes::SHADOWS_BUILTIN,
                                format!("`{}` is a builtin and cannot be redefined", name.name),
                                name.span,
                                "builtin name",
                            )
                            .with_hint(format!("rename the function, e.g. `my_{}`", name.name)),
                        );
                        continue;
                    }
                    if let Some(previous) = self.modules[id].scope.get(&name.name) {
                        self.diags.push(
                            Diagnostic::error(
                                codes::DUPLICATE_FN,
                                format!("the function `{}` is defined twice", name.name),
                                name.span,
                                "defined again here",
                            )
                            .with_secondary(previous.introduced, "first defined here"),
                        );
                        continue;
                    }
                    let fn_id = self.fns.len();
                    self.fns.push(FnDef { module: id, decl });
                    self.modules[id].local_fns.push(fn_id);
                    self.modules[id].scope.insert(
                        name.name,
                        ScopeEntry {
                            func: fn_id,
                            introduced: name.span,
                            kind: EntryKind::Local,
                        },
                    );
                }
                Item::Objective(objective) => match first_objective {
                    Some(first) => self.diags.push(
                        Diagnostic::error(
                            codes::MULTIPLE_OBJECTIVES,
                            "a file may hold only one objective",
                            objective.name.span,
                            "second objective",
                        )
                        .with_secondary(first, "first objective")
                        .with_hint("move each objective into its own file"),
                    ),
                    None => first_objective = Some(objective.name.span),
                },
                Item::Use(_) | Item::Error(_) => {}
            }
        }
    }

    /// Finds (loading if needed) the module a `use` refers to.
    fn resolve_use_source(
        &mut self,
        importer: ModId,
        source: &UseSource,
        use_span: Span,
    ) -> Option<ModId> {
        let (key, display, path_span) = match source {
            UseSource::Std(path) => {
                let name = path
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join("::");
                let span = match (path.first(), path.last()) {
                    (Some(first), Some(last)) => first.span.join(last.span),
                    _ => use_span,
                };
                if sources::stdlib_source(&name).is_none() {
                    let available = sources::stdlib_modules().join(", ");
                    self.diags.push(
                        Diagnostic::error(
                            codes::UNKNOWN_STD_MODULE,
                            format!("the standard library has no module `std::{name}`"),
                            span,
                            "unknown module",
                        )
                        .with_hint(format!("available modules: {available}")),
                    );
                    return None;
                }
                (
                    ModKey::Std(name.clone()),
                    sources::stdlib_display_name(&name),
                    span,
                )
            }
            UseSource::File { path, span } => match self.file_key(importer, path) {
                Some(key) => (key, path.clone(), *span),
                None => {
                    self.diags.push(
                        Diagnostic::error(
                            codes::FILE_NOT_FOUND,
                            format!("cannot find file `{path}`"),
                            *span,
                            "no such file",
                        )
                        .with_hint("paths in `use \"…\"` are relative to the importing file"),
                    );
                    return None;
                }
            },
        };
        if let Some(&existing) = self.by_key.get(&key) {
            if let Some(position) = self.loading.iter().position(|(m, _)| *m == existing) {
                let mut diagnostic = Diagnostic::error(
                    codes::IMPORT_CYCLE,
                    format!("import cycle: `{display}` is already being imported"),
                    path_span,
                    "this import closes the cycle",
                );
                if let Some((_, first_use)) = self.loading.get(position) {
                    diagnostic =
                        diagnostic.with_secondary(*first_use, "the cycle starts with this import");
                }
                self.diags.push(
                    diagnostic
                        .with_hint("move the shared functions into a third file both can import"),
                );
            }
            return Some(existing);
        }
        let file = match &key {
            ModKey::Std(name) => {
                let text = sources::stdlib_source(name).unwrap_or_default();
                self.sources.add(
                    sources::stdlib_display_name(name),
                    Origin::Std(name.clone()),
                    text,
                )
            }
            ModKey::File(path) => match sources::read_source(path) {
                Ok(text) => self
                    .sources
                    .add(display_path(path), Origin::Path(path.clone()), text),
                Err(err) => {
                    self.report_load_error(err, display.clone(), path_span);
                    return None;
                }
            },
            ModKey::Memory(_) => return None,
        };
        self.loading.push((importer, path_span));
        let id = self.load_module(key, file);
        self.loading.pop();
        Some(id)
    }

    /// The key of `"rel.obj"` imported from `importer`, or `None` if it does not exist.
    fn file_key(&self, importer: ModId, relative: &str) -> Option<ModKey> {
        match &self.modules[importer].key {
            ModKey::Std(name) => {
                let mut parts: Vec<&str> = name.split("::").collect();
                parts.pop();
                let stem = relative.trim_end_matches(".obj").replace('/', "::");
                let full = if parts.is_empty() {
                    stem
                } else {
                    format!("{}::{stem}", parts.join("::"))
                };
                sources::stdlib_source(&full).map(|_| ModKey::Std(full))
            }
            ModKey::File(path) => {
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let joined = base.join(relative);
                joined.exists().then(|| ModKey::File(canonical(&joined)))
            }
            ModKey::Memory(_) => {
                let joined = PathBuf::from(relative);
                joined.exists().then(|| ModKey::File(canonical(&joined)))
            }
        }
    }

    fn bind_use(
        &mut self,
        importer: ModId,
        target: ModId,
        what: &UseTarget,
        use_span: Span,
        source: &UseSource,
    ) {
        match what {
            UseTarget::Module => {
                let alias = match source {
                    UseSource::Std(path) => path.last().map(|i| i.name.clone()).unwrap_or_default(),
                    UseSource::File { path, .. } => Path::new(path)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                };
                self.modules[importer]
                    .qualified
                    .insert(alias, (target, use_span));
            }
            UseTarget::Names(names) => {
                for name in names {
                    self.bind_explicit(importer, target, name);
                }
            }
            UseTarget::Glob(glob_span) => {
                for fn_id in self.modules[target].local_fns.clone() {
                    let name = self.fns[fn_id].decl.name.name.clone();
                    let scope = &mut self.modules[importer].scope;
                    match scope.get(&name) {
                        None => {
                            scope.insert(
                                name,
                                ScopeEntry {
                                    func: fn_id,
                                    introduced: *glob_span,
                                    kind: EntryKind::Glob,
                                },
                            );
                        }
                        Some(entry) if entry.kind == EntryKind::Glob && entry.func != fn_id => {
                            let first = entry.introduced;
                            self.modules[importer]
                                .ambiguous
                                .insert(name, (first, *glob_span));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }

    fn record_failed_import(&mut self, importer: ModId, target: &UseTarget, source: &UseSource) {
        let module = &mut self.modules[importer];
        match target {
            UseTarget::Names(names) => module
                .failed_imports
                .extend(names.iter().map(|n| n.name.clone())),
            UseTarget::Glob(_) => module.failed_glob = true,
            UseTarget::Module => {
                let alias = match source {
                    UseSource::Std(path) => path.last().map(|i| i.name.clone()).unwrap_or_default(),
                    UseSource::File { path, .. } => Path::new(path)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                };
                module.failed_imports.insert(alias);
            }
        }
    }

    fn bind_explicit(&mut self, importer: ModId, target: ModId, name: &Ident) {
        let found = self.modules[target]
            .local_fns
            .iter()
            .copied()
            .find(|&f| self.fns[f].decl.name.name == name.name);
        let Some(fn_id) = found else {
            let available: Vec<String> = self.modules[target]
                .local_fns
                .iter()
                .map(|&f| self.fns[f].decl.name.name.clone())
                .collect();
            let module_name = self.sources.display_name(self.modules[target].file);
            let mut diagnostic = Diagnostic::error(
                codes::UNKNOWN_IMPORT,
                format!("`{module_name}` has no function `{}`", name.name),
                name.span,
                "not defined there",
            );
            if let Some(close) =
                crate::lower::closest(&name.name, available.iter().map(String::as_str))
            {
                diagnostic = diagnostic.with_hint(format!("did you mean `{close}`?"));
            } else if !available.is_empty() {
                diagnostic = diagnostic.with_hint(format!("it defines: {}", available.join(", ")));
            }
            self.diags.push(diagnostic);
            self.modules[importer]
                .failed_imports
                .insert(name.name.clone());
            return;
        };
        let scope = &mut self.modules[importer].scope;
        match scope.get(&name.name) {
            Some(entry) if entry.func == fn_id => {}
            Some(entry) if entry.kind != EntryKind::Glob => {
                let previous = entry.introduced;
                self.diags.push(
                    Diagnostic::error(
                        codes::DUPLICATE_FN,
                        format!("the name `{}` is defined twice", name.name),
                        name.span,
                        "imported here",
                    )
                    .with_secondary(previous, "already defined here")
                    .with_hint(
                        "import it qualified instead: `use std::module` and `module::name(…)`",
                    ),
                );
            }
            _ => {
                scope.insert(
                    name.name.clone(),
                    ScopeEntry {
                        func: fn_id,
                        introduced: name.span,
                        kind: EntryKind::Explicit,
                    },
                );
            }
        }
    }
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// Paths are shown relative to the current directory when they lie inside it.
fn display_path(path: &Path) -> String {
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
