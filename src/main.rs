//! The `clsnorm` command line.
mod cli;

use clap::{CommandFactory, FromArgMatches};

fn main() -> std::process::ExitCode {
    let matches = cli::Cli::command().get_matches();
    let args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::openmp_wait_policy(&args);
    cli::init_logging(args.verbose);
    // CLSNORM_CPU_ALLOCATOR=system keeps libtorch's own (glibc's), for comparison.
    if std::env::var_os("CLSNORM_CPU_ALLOCATOR").is_none_or(|v| v != "system")
        && !clsnorm::device::install_cpu_cache()
    {
        tracing::warn!("the caching CPU allocator could not be installed; using libtorch's");
    }
    // A panic inside the tokenizer (a hostile tokenizer.json) is caught and reported as an
    // error naming the file and line; printing it as well would read as a crash.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !clsnorm::tokenize::quiet_panic(info) {
            default_hook(info)
        }
    }));
    let result = cli::run(args, &matches);
    if let Some(kib) = peak_resident_kib() {
        let cache = clsnorm::device::cpu_cache_stats();
        tracing::debug!(peak_resident_mib = kib / 1024, ?cache, "exiting");
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A last bound: the library cuts every excerpt of input, this cuts the whole.
            eprintln!("error: {}", clsnorm::excerpt::message(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The process's peak resident memory (`VmHWM` of /proc/self/status, Linux), for `-v`: unlike
/// `getrusage`, it counts only this program, not the memory of the process that started it.
fn peak_resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
