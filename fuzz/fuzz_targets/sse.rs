//! A server's answer as it streams past the router, split into chunks anywhere: the token
//! counts read from it do not depend on where it was split, and the stream-resumption
//! transcript (which holds back a partial event until its end) passes on exactly the bytes it
//! got, in order, never more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvllm::resume::{Api, Transcript};
use mvllm::usage::UsageScanner;

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the split points; the rest is the body.
    if data.len() < 3 {
        return;
    }
    let (cuts, body) = data.split_at(2);
    let step = usize::from(cuts[0]).max(1);
    let api = if cuts[1] & 1 == 0 {
        Api::Chat
    } else {
        Api::Completions
    };

    let mut whole = UsageScanner::default();
    whole.feed(body);
    let mut split = UsageScanner::default();
    let mut transcript = Transcript::new(api);
    let mut passed = Vec::with_capacity(body.len());
    for chunk in body.chunks(step) {
        split.feed(chunk);
        passed.extend(transcript.feed(chunk));
    }
    assert_eq!(whole.usage, split.usage, "split every {step} bytes");
    assert!(
        body.starts_with(&passed),
        "the transcript changed the bytes it passed on"
    );
});
