//! Snapshot tests of every front-end diagnostic (one case file per error code, in
//! `tests/cases/diagnostics/`), JSON output, and lowering of EXAMPLES.md-style objectives.
//!
//! A case file is checked with `check_path`; a first line `// compile` compiles it instead
//! and `// set: name=value` compiles it with that const override. Snapshots hold the source
//! and the rendered (colourless) diagnostics.

use rlobj_front::diag::codes;
use rlobj_front::{check_path, compile_path, compile_source, Diagnostics};
use std::path::{Path, PathBuf};

#[path = "diagnostics/lowering.rs"]
mod lowering;

#[path = "diagnostics/channels.rs"]
mod channels;

fn case_path(name: &str) -> PathBuf {
    Path::new("cases/diagnostics").join(format!("{name}.obj"))
}

/// Runs one case file the way its header asks.
fn diagnostics_of(path: &Path) -> Diagnostics {
    let source = std::fs::read_to_string(path).unwrap_or_default();
    let first_line = source.lines().next().unwrap_or_default();
    if let Some(setting) = first_line.strip_prefix("// set: ") {
        let (name, value) = setting.split_once('=').expect("name=value");
        return compile_path(path, &[(name.trim().to_string(), value.trim().to_string())])
            .expect_err("should fail");
    }
    if first_line == "// compile" {
        return compile_path(path, &[]).expect_err("should fail");
    }
    check_path(path)
}

fn snapshot_text(name: &str) -> (String, Diagnostics) {
    let path = case_path(name);
    let source = String::from_utf8_lossy(&std::fs::read(&path).expect("case file")).into_owned();
    let diagnostics = diagnostics_of(&path);
    (
        format!(
            "----- SOURCE CODE\n{source}\n----- ERROR\n{}",
            diagnostics.render(false)
        ),
        diagnostics,
    )
}

macro_rules! diagnostic_case {
    ($name:ident) => {
        #[test]
        fn $name() {
            let name = stringify!($name);
            let (text, diagnostics) = snapshot_text(name);
            let expected = name[..5].to_uppercase();
            assert!(
                diagnostics.items.iter().any(|d| d.code == expected),
                "{name}: expected a diagnostic {expected}, got:\n{}",
                diagnostics.render(false)
            );
            insta::assert_snapshot!(name, text);
        }
    };
}

diagnostic_case!(e0100_unknown_std_module);
diagnostic_case!(e0101_file_not_found);
diagnostic_case!(e0102_not_utf8);
diagnostic_case!(e0103_import_cycle);
diagnostic_case!(e0104_unknown_import);
diagnostic_case!(e0105_duplicate_fn);
diagnostic_case!(e0106_unknown_name);
diagnostic_case!(e0107_unknown_function);
diagnostic_case!(e0108_unknown_qualifier);
diagnostic_case!(e0109_not_a_function);
diagnostic_case!(e0110_function_as_value);
diagnostic_case!(e0111_ambiguous_glob);
diagnostic_case!(e0112_shadows_builtin);
diagnostic_case!(e0113_multiple_objectives);
diagnostic_case!(e0114_duplicate_name);
diagnostic_case!(e0115_recursion);
diagnostic_case!(e0116_unknown_space);
diagnostic_case!(e0117_id_as_value);
diagnostic_case!(e0118_no_objective);
diagnostic_case!(e0200_expected_f32);
diagnostic_case!(e0201_expected_bool);
diagnostic_case!(e0202_string_as_value);
diagnostic_case!(e0203_unrelated_spaces);
diagnostic_case!(e0204_fine_to_coarse);
diagnostic_case!(e0205_branch_mismatch);
diagnostic_case!(e0206_space_variable_conflict);
diagnostic_case!(e0207_return_mismatch);
diagnostic_case!(e0208_not_in_enum);
diagnostic_case!(e0209_expected_string);
diagnostic_case!(e0210_invalid_type);
diagnostic_case!(e0211_compare_mismatch);
diagnostic_case!(e0300_unknown_argument);
diagnostic_case!(e0301_missing_argument);
diagnostic_case!(e0302_duplicate_argument);
diagnostic_case!(e0303_too_many_arguments);
diagnostic_case!(e0304_unexpected_space);
diagnostic_case!(e0305_missing_space);
diagnostic_case!(e0306_misplaced_where);
diagnostic_case!(e0307_reduce_to_finer);
diagnostic_case!(e0308_bad_scan_space);
diagnostic_case!(e0309_scan_not_tokens);
diagnostic_case!(e0310_expected_const_int);
diagnostic_case!(e0311_expected_const_number);
diagnostic_case!(e0312_too_few_arguments);
diagnostic_case!(e0313_error_reached);
diagnostic_case!(e0314_bad_colsum_space);
diagnostic_case!(e0315_colsum_not_tokens);
diagnostic_case!(e0400_no_loss_or_output);
diagnostic_case!(e0401_multiple_losses);
diagnostic_case!(e0402_loss_not_scalar);
diagnostic_case!(e0403_loss_not_f32);
diagnostic_case!(e0404_metric_not_scalar);
diagnostic_case!(e0405_grad_not_f32);
diagnostic_case!(e0406_update_not_state);
diagnostic_case!(e0407_state_updated_twice);
diagnostic_case!(e0408_update_not_scalar);
diagnostic_case!(e0409_bad_param_type);
diagnostic_case!(e0410_const_not_compile_time);
diagnostic_case!(e0411_const_type_mismatch);
diagnostic_case!(e0412_bad_override);
diagnostic_case!(e0413_bad_id_space);
diagnostic_case!(e0414_bad_space_parent);
diagnostic_case!(e0415_space_redefined);
diagnostic_case!(e0416_grad_without_loss);
diagnostic_case!(e0417_bad_state_type);
diagnostic_case!(e0418_bad_input_default);
diagnostic_case!(e0419_output_not_tensor);
diagnostic_case!(e0420_channel_not_const);
diagnostic_case!(e0421_channel_bad_size);
diagnostic_case!(e0422_channel_not_reduced);
diagnostic_case!(e0423_channel_mismatch);
diagnostic_case!(e0424_channel_grad);
diagnostic_case!(e0425_channel_in_signature);
diagnostic_case!(e0426_channel_op);

/// Every code in the table has a case file named after it.
#[test]
fn every_code_has_a_case() {
    let files: Vec<String> = std::fs::read_dir("cases/diagnostics")
        .expect("cases folder")
        .filter_map(|e| {
            e.ok()
                .map(|e| e.file_name().to_string_lossy().to_lowercase())
        })
        .collect();
    let missing: Vec<&str> = codes::ALL
        .iter()
        .map(|(code, _)| *code)
        .filter(|code| !files.iter().any(|f| f.starts_with(&code.to_lowercase())))
        .collect();
    assert!(missing.is_empty(), "codes without a case: {missing:?}");
    assert!(codes::ALL.len() >= 45);
}

#[test]
fn json_format_has_positions_labels_and_hint() {
    let diagnostics = diagnostics_of(&case_path("e0203_unrelated_spaces"));
    let json = diagnostics.to_json();
    insta::assert_snapshot!(
        "json_unrelated_spaces",
        serde_json::to_string_pretty(&json).expect("json")
    );
    let first = &json[0];
    assert_eq!(first["code"], "E0203");
    assert_eq!(first["severity"], "error");
    assert_eq!(first["line"], 7);
    assert_eq!(first["labels"].as_array().map(Vec::len), Some(3));
    assert!(first["hint"].is_string());
}

#[test]
fn json_format_multi_file() {
    let diagnostics = diagnostics_of(&case_path("e0103_import_cycle"));
    let json = diagnostics.to_json();
    insta::assert_snapshot!(
        "json_import_cycle",
        serde_json::to_string_pretty(&json).expect("json")
    );
}

#[test]
fn json_of_memory_source_is_one_based() {
    let err = compile_source(
        "mem.obj",
        "objective o {\n  input x: f32[tok]\n  loss = y\n}\n",
        &[],
    )
    .expect_err("unknown y");
    let json = err.to_json();
    assert_eq!(json[0]["file"], "mem.obj");
    assert_eq!(json[0]["line"], 3);
    assert_eq!(json[0]["column"], 10);
    assert_eq!(json[0]["end_column"], 11);
}

#[test]
fn missing_root_file_is_a_diagnostic() {
    let diagnostics = check_path(Path::new("cases/diagnostics/does_not_exist.obj"));
    assert_eq!(diagnostics.items.len(), 1);
    assert_eq!(diagnostics.items[0].code, codes::FILE_NOT_FOUND);
    assert!(diagnostics.render(false).contains("does_not_exist.obj"));
}

#[test]
fn library_file_without_objective_is_valid() {
    let diagnostics = check_path(Path::new("cases/diagnostics/support/helpers.obj"));
    assert!(diagnostics.is_empty(), "{}", diagnostics.render(false));
}

/// The embedded standard library checks without diagnostics.
#[test]
fn stdlib_modules_check_clean() {
    for name in rlobj_front::sources::stdlib_modules() {
        let source = rlobj_front::sources::stdlib_source(name).unwrap_or_default();
        let diagnostics =
            rlobj_front::check_source(&rlobj_front::sources::stdlib_display_name(name), source);
        assert!(
            diagnostics.is_empty(),
            "std::{name}:\n{}",
            diagnostics.render(false)
        );
    }
}

/// Every catalog objective in `objectives/` compiles to a program the IR validator accepts.
#[test]
fn catalog_objectives_compile() {
    let mut failures = Vec::new();
    for dir in ["../objectives", "../objectives/verl", "../objectives/trl"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "obj") {
                match compile_path(&path, &[]) {
                    Ok(program) => {
                        if let Err(err) = rlobj_ir::validate::validate(&program) {
                            failures.push(format!("{}: invalid IR: {err:?}", path.display()));
                        }
                    }
                    Err(diagnostics) => failures.push(diagnostics.render(false)),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
