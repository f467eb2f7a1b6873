//! `versifier`: opens the desktop app, or runs headless commands (generate,
//! info, bench). Thin on purpose: everything lives in the library.
// Windows: a GUI-subsystem program, so a double-click opens no console
// window; from a terminal, the command line attaches to it (see main).
#![cfg_attr(all(windows, not(debug_assertions)), windows_subsystem = "windows")]

mod cli;

use clap::Parser;

use cli::{init_logging, run, Cli};

/// Windows: reuse the console of the terminal that started us, if any, so the
/// command line prints there although the program has no console of its own.
#[cfg(windows)]
fn attach_parent_console() {
    #[link(name = "kernel32")]
    extern "system" {
        fn AttachConsole(process_id: u32) -> i32;
    }
    const ATTACH_PARENT_PROCESS: u32 = u32::MAX;
    // SAFETY: a plain Win32 call with a constant argument; failure (no parent
    // console, e.g. started from Explorer) is harmless and ignored.
    unsafe {
        AttachConsole(ATTACH_PARENT_PROCESS);
    }
}

fn main() {
    #[cfg(windows)]
    attach_parent_console();
    let cli = Cli::parse();
    versifier::device::pin_cpu_threads();
    let log_note = init_logging(&cli.log_level, cli.log_dir.as_deref());
    if let Some(note) = log_note {
        eprintln!("note: {note}");
    }
    if let Err(e) = run(cli) {
        let cause: &(dyn std::error::Error + 'static) = e.as_ref();
        eprintln!("error: {}", versifier::error_chain_text(cause));
        std::process::exit(1);
    }
}
