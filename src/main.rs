//! The `taskstream` binary: every command lives in the library (`src/cli/`, feature `cli`).

fn main() -> std::process::ExitCode {
    taskstream::cli::main()
}
