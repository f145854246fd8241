//! The `balancer` executable: daemon and CLI in one binary.

fn main() -> std::process::ExitCode {
    balancer::cli::main()
}
