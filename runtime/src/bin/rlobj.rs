//! The `rlobj` binary: a thin layer over [`rlobj_runtime::cli`].

use std::io::IsTerminal;

fn main() {
    // Last resort only: every user error is a message and exit 1. A panic is a bug.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "rlobj: internal error (this is a bug; please report it with the command line and input files): {info}"
        );
        std::process::exit(101);
    }));
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let color = stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let code = rlobj_runtime::cli::main_with(
        std::env::args_os(),
        &mut rlobj_runtime::cli::Io {
            out: &mut out,
            err: &mut err,
            color,
        },
    );
    drop(out);
    drop(err);
    std::process::exit(code);
}
