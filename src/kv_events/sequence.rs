//! A publisher's live sequence numbers, as a subscriber sees them: in order, with a gap
//! (messages were lost: fetch them from the replay socket), or going back (the publisher
//! started again: the server restarted, its cache is gone, and so is what the index knew).
//! Replayed messages come on their own socket, for a range the subscriber asked for, and are
//! not observed here.

/// What a live message's sequence number says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The expected one (or the first one seen).
    InOrder,
    /// Messages `from..to` were missed; this one is `to`.
    Gap { from: u64, to: u64 },
    /// Not above the last one: the publisher numbers from 0 again.
    Restarted,
}

/// The next sequence number expected from one publisher.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sequence {
    next: Option<u64>,
}

impl Sequence {
    /// Takes a live message's sequence number.
    pub fn observe(&mut self, seq: u64) -> Next {
        let verdict = match self.next {
            None => Next::InOrder,
            Some(next) if seq == next => Next::InOrder,
            Some(next) if seq > next => Next::Gap {
                from: next,
                to: seq,
            },
            Some(_) => Next::Restarted,
        };
        self.next = Some(seq.wrapping_add(1));
        verdict
    }

    /// The next number expected, if any message was seen.
    pub fn expected(&self) -> Option<u64> {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_gaps_and_restarts() {
        let mut s = Sequence::default();
        assert_eq!(s.observe(5), Next::InOrder, "the first one seen");
        assert_eq!(s.observe(6), Next::InOrder);
        assert_eq!(s.observe(9), Next::Gap { from: 7, to: 9 });
        assert_eq!(s.expected(), Some(10));
        assert_eq!(
            s.observe(3),
            Next::Restarted,
            "a restarted publisher seen mid-way"
        );
        assert_eq!(s.observe(4), Next::InOrder);
        assert_eq!(s.observe(0), Next::Restarted);
    }
}
