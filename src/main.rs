// regorus' interpreter allocates and frees on every step of an evaluation, and the proxy
// path allocates per request: with glibc's allocator malloc/free were a quarter of an
// uncached decision's time (perf, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    guestgate::cli::main()
}
