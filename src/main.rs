//! The `lcm` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    lcm::cli::main()
}
