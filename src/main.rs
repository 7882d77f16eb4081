//! The `taskstream` binary: every command lives in the library (`src/cli/`, feature `cli`).

/// mimalloc for small blocks, glibc's malloc for large ones: `src/cli/alloc.rs` says why.
#[global_allocator]
static GLOBAL: taskstream::cli::Allocator = taskstream::cli::Allocator;

fn main() -> std::process::ExitCode {
    taskstream::cli::main()
}
