use clap::Parser;
use std::process::ExitCode;

// glibc's malloc was a sixth of the server's CPU under load (many small records built and
// dropped per event) and fragments: mimalloc is faster and returns memory when idle.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = recuerda::cli::Cli::parse();
    // The demo and simulate print their own readable lines; their logs show only problems.
    let level = match cli.command {
        recuerda::cli::Command::Demo(_) | recuerda::cli::Command::Simulate(_) => "warn",
        _ => "info",
    };
    let log = recuerda::cli::init_tracing(cli.log_format, level);
    let result = recuerda::cli::run(cli).await;
    // Pending log lines are written before the last word, not after it.
    drop(log);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
