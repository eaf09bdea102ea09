//! Reading a backend's /metrics must not allocate per line (it runs for every backend every
//! poll): count the allocations a 50 KB scrape costs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Allocations made by this thread: the test harness's other threads allocate too (its
    /// output capture, its timers), and a process-wide count made this test flaky.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: a thread being torn down has no counter left, and that is fine.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn a_50_kb_scrape_is_parsed_without_allocating() {
    let text = mvllm::sim::metrics::SimMetrics::new("Qwen/Qwen3-8B", 5, 16, 8192).render();
    assert!(text.len() > 40_000, "{} bytes", text.len());
    let before = allocations();
    let sample = mvllm::scrape::parse_metrics(&text).unwrap();
    let made = allocations() - before;
    assert_eq!(sample.running, 0.0);
    assert_eq!(made, 0);
    // The counter counts: rendering the text again allocates.
    let before = allocations();
    let _ = std::hint::black_box(text.clone());
    assert!(allocations() > before);
}
