//! Reading a backend's /metrics must not allocate per line (it runs for every backend every
//! poll): count the allocations a 50 KB scrape costs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_50_kb_scrape_is_parsed_without_allocating() {
    let text = mvllm::sim::metrics::SimMetrics::new("Qwen/Qwen3-8B", 5, 16, 8192).render();
    assert!(text.len() > 40_000, "{} bytes", text.len());
    let before = ALLOCATIONS.load(Relaxed);
    let sample = mvllm::scrape::parse_metrics(&text).unwrap();
    let allocations = ALLOCATIONS.load(Relaxed) - before;
    assert_eq!(sample.running, 0.0);
    assert_eq!(allocations, 0);
}
