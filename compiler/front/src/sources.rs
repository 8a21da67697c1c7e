//! The source map of one compilation (every loaded file: its name and text, addressed by
//! [`FileId`]) and the embedded standard library.
//!
//! Files are read here and nowhere else, so a missing, unreadable or non-UTF-8 file becomes
//! a [`LoadError`] the caller turns into a diagnostic instead of a panic.

use crate::ast::FileId;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/stdlib_table.rs"));

/// Where a loaded file came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A file on disk (the path as it was reached: given, or joined to the importer's folder).
    Path(PathBuf),
    /// An embedded stdlib module (`ppo`, `a::b`).
    Std(String),
    /// Text handed in directly (tests, `compile_source`).
    Memory,
}

#[derive(Clone, Debug)]
pub struct SourceFile {
    /// How diagnostics name the file: the path, or `<std>/ppo.obj`.
    pub name: String,
    pub origin: Origin,
    pub text: String,
}

/// Every file loaded in one compilation.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> Self {
        SourceMap::default()
    }

    pub fn add(
        &mut self,
        name: impl Into<String>,
        origin: Origin,
        text: impl Into<String>,
    ) -> FileId {
        self.files.push(SourceFile {
            name: name.into(),
            origin,
            text: text.into(),
        });
        (self.files.len() - 1) as FileId
    }

    pub fn get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id as usize)
    }

    /// The text of a file; empty for an unknown id so rendering never fails.
    pub fn text(&self, id: FileId) -> &str {
        self.get(id).map_or("", |f| f.text.as_str())
    }

    /// The name diagnostics show; unique per file so the renderer never mixes two sources up.
    pub fn display_name(&self, id: FileId) -> String {
        let name = self.get(id).map_or("<unknown>", |f| f.name.as_str());
        let first = self.files.iter().position(|f| f.name == name);
        match first {
            Some(index) if index as FileId != id => format!("{name} ({id})"),
            _ => name.to_string(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().enumerate().map(|(i, f)| (i as FileId, f))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Why a file could not be loaded.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadError {
    NotFound,
    /// The bytes up to `valid_up_to` are UTF-8; `lossy` is the whole file with replacement
    /// characters, so the diagnostic can point at the offending byte.
    NotUtf8 {
        valid_up_to: usize,
        lossy: String,
    },
    Unreadable(String),
}

/// Reads a file as UTF-8 text.
pub fn read_source(path: &Path) -> Result<String, LoadError> {
    let bytes = std::fs::read(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound,
        _ => LoadError::Unreadable(err.to_string()),
    })?;
    String::from_utf8(bytes).map_err(|err| LoadError::NotUtf8 {
        valid_up_to: err.utf8_error().valid_up_to(),
        lossy: String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

/// The source of the embedded stdlib module `name` (`ppo`, or `a::b` for `stdlib/a/b.obj`).
pub fn stdlib_source(name: &str) -> Option<&'static str> {
    STDLIB
        .iter()
        .find(|(module, _)| *module == name)
        .map(|(_, src)| *src)
}

/// The names of all embedded stdlib modules, sorted.
pub fn stdlib_modules() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = STDLIB.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names
}

/// How diagnostics name a stdlib module: `<std>/ppo.obj`, `<std>/a/b.obj`.
pub fn stdlib_display_name(name: &str) -> String {
    format!("<std>/{}.obj", name.replace("::", "/"))
}
