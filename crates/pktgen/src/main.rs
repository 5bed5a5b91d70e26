use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = natgw_bench::cli::Cli::parse();
    match natgw_bench::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natgw-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
