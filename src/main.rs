//! The `vidkv` binary: see [`vidkv::cli`].

fn main() -> std::process::ExitCode {
    vidkv::cli::main()
}
