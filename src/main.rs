//! The `lcm` binary: parses the command line and hands over to the library.

/// Many small, short-lived allocations on several threads (requests, journal rows): mimalloc
/// serves them from per-thread pages, where the system allocator kept consolidating.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lcm::cli::main()
}
