// regorus' interpreter allocates and frees on every step of an evaluation, and the proxy
// path allocates per request: with glibc's allocator malloc/free were a quarter of an
// uncached decision's time (perf, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages: backed by 2 MiB pages, a partly used heap is resident
    // whole (an idle gateway 41 MB instead of 22, 10,000 idle connections 50-60 MB instead
    // of 36-40), and no request or decision was measurably faster with them
    // (docs/BENCHMARKS.md, "Huge pages"). mimalloc is built not to ask for them (its
    // `no_thp` feature); this covers hosts whose kernel gives them unasked
    // (`transparent_hugepage=always`). Inherited by anything the process starts.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("guestgate: transparent huge pages stay on ({error}): idle memory is higher");
    }
    guestgate::cli::main()
}
