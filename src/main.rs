fn main() -> std::process::ExitCode {
    guestgate::cli::main()
}
