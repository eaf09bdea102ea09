//! A publisher's live sequence numbers, as a subscriber sees them: in order, a gap (messages
//! were lost: fetch them from the replay socket), one already applied from a replay, or going
//! back (the publisher started again: the server restarted, its cache is gone, and so is what
//! the index knew).

/// What a live message's sequence number says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The expected one (or the first one seen).
    InOrder,
    /// Messages `from..to` were missed; this one is `to`.
    Gap { from: u64, to: u64 },
    /// Already applied: it came in the replay made when subscribing.
    Duplicate,
    /// Below what was expected and not from the replay: the publisher numbers from 0 again.
    Restarted,
}

/// Classifies live message `seq` when `expected` is the next number expected (none: nothing
/// seen yet) and the replay made on subscribing started at `replayed_from`.
pub fn classify(expected: Option<u64>, seq: u64, replayed_from: Option<u64>) -> Next {
    match expected {
        None => Next::InOrder,
        Some(next) if seq == next => Next::InOrder,
        Some(next) if seq > next => Next::Gap {
            from: next,
            to: seq,
        },
        Some(_) if replayed_from.is_some_and(|from| seq >= from) => Next::Duplicate,
        Some(_) => Next::Restarted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_gaps_duplicates_and_restarts() {
        assert_eq!(classify(None, 5, None), Next::InOrder, "the first one seen");
        assert_eq!(classify(Some(6), 6, None), Next::InOrder);
        assert_eq!(classify(Some(7), 9, None), Next::Gap { from: 7, to: 9 });
        assert_eq!(
            classify(Some(10), 8, Some(4)),
            Next::Duplicate,
            "published while the replay was answered: in both"
        );
        assert_eq!(classify(Some(10), 3, Some(4)), Next::Restarted);
        assert_eq!(classify(Some(10), 0, None), Next::Restarted);
    }
}
