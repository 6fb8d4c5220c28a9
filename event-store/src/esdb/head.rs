//! The store's last event in `$all`, for `stats()` (readiness, lag, the
//! target of a rebuild).
//!
//! `$all` holds other streams too, and the 4.0 client reads it without a
//! server-side filter, so the last event of the store is found by reading
//! backwards from the end. What a scan examined is remembered: the next one
//! reads only what was written above it, and a first scan through a long
//! run of foreign events (a million of another application's) keeps its
//! progress page by page, so a probe that times out leaves the next one less
//! to read. Positions in `$all` only grow, so nothing appears below a part
//! already examined.

use std::future::Future;
use std::sync::Mutex;

use eventstore::{Position, StreamPosition};

use crate::{LogPosition, StoreError};

/// One event of a backwards page: its place in `$all`, and its log position
/// if it is the store's.
pub(super) type Seen = (Position, Option<LogPosition>);

/// What earlier scans examined: every event from `bottom` (`None`: the
/// start of `$all`) up to `top`; `found` is the store's last among them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Examined {
    top: Position,
    bottom: Option<Position>,
    found: Option<LogPosition>,
}

impl Examined {
    /// Whether it answers for everything up to `top`: the store's last event
    /// is in it, or it reaches down to the start.
    fn answers(&self) -> bool {
        self.found.is_some() || self.bottom.is_none()
    }
}

#[derive(Default)]
pub(super) struct Head {
    examined: Mutex<Option<Examined>>,
}

impl Head {
    /// The store's last event. `read_back(before, count)` reads up to `count`
    /// events of `$all` backwards from `before`, newest first.
    pub async fn find<F, Fut>(&self, page: usize, mut read_back: F) -> Result<Option<LogPosition>, StoreError>
    where
        F: FnMut(StreamPosition<Position>, usize) -> Fut,
        Fut: Future<Output = Result<Vec<Seen>, StoreError>>,
    {
        let mut earlier = *self.examined.lock().expect("never poisoned");
        let mut before = StreamPosition::End;
        let mut top: Option<Position> = None;
        let mut lowest: Option<Position> = None;
        loop {
            let events = read_back(before, page).await?;
            let full = events.len() >= page;
            let mut jumped = false;
            for (position, ours) in events {
                if lowest.is_some_and(|lowest| position >= lowest) {
                    continue; // a read from a position may include it
                }
                if let Some(known) = earlier.filter(|known| position <= known.top) {
                    let top = *top.get_or_insert(known.top);
                    if known.answers() {
                        self.keep(Examined { top, ..known });
                        return Ok(known.found);
                    }
                    // Nothing of the store's down to its bottom: go on below it.
                    let bottom = known.bottom.expect("a part that does not answer has a bottom");
                    self.keep(Examined { top, bottom: Some(bottom), found: None });
                    (lowest, before, jumped) = (Some(bottom), StreamPosition::Position(bottom), true);
                    earlier = None; // what lies below it is new ground
                    break;
                }
                top.get_or_insert(position);
                lowest = Some(position);
                if let Some(found) = ours {
                    self.keep(Examined { top: top.unwrap_or(position), bottom: Some(position), found: Some(found) });
                    return Ok(Some(found));
                }
            }
            if jumped {
                continue;
            }
            let (Some(top), Some(lowest)) = (top, lowest) else {
                return Ok(None); // `$all` is empty
            };
            if !full {
                self.keep(Examined { top, bottom: None, found: None });
                return Ok(None);
            }
            self.keep(Examined { top, bottom: Some(lowest), found: None });
            before = StreamPosition::Position(lowest);
        }
    }

    fn keep(&self, examined: Examined) {
        *self.examined.lock().expect("never poisoned") = Some(examined);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// `$all` as a list, oldest first: `true` where the event is the store's.
    struct All(Vec<bool>);

    impl All {
        fn position(n: usize) -> Position {
            Position { commit: n as u64 * 100, prepare: n as u64 * 100 }
        }

        /// Backwards from `before` (inclusively, as a server may), newest first.
        fn read_back(&self, before: StreamPosition<Position>, count: usize) -> Vec<Seen> {
            let end = match before {
                StreamPosition::End => self.0.len(),
                StreamPosition::Position(p) => (p.commit / 100) as usize + 1,
                StreamPosition::Start => 0,
            };
            (0..end.min(self.0.len()))
                .rev()
                .take(count)
                .map(|n| {
                    let p = Self::position(n);
                    (p, self.0[n].then_some(LogPosition { commit: p.commit, position: p.prepare }))
                })
                .collect()
        }
    }

    /// Finds the head, counting the events read.
    async fn find(head: &Head, all: &All, reads: &Cell<usize>) -> Option<LogPosition> {
        head.find(10, |before, count| {
            let page = all.read_back(before, count);
            reads.set(reads.get() + page.len());
            async move { Ok(page) }
        })
        .await
        .unwrap()
    }

    fn at(n: usize) -> Option<LogPosition> {
        let p = All::position(n);
        Some(LogPosition { commit: p.commit, position: p.prepare })
    }

    #[tokio::test]
    async fn later_probes_read_only_what_was_written_since() {
        let (head, reads) = (Head::default(), Cell::new(0));
        // The store's last event, then a thousand of another application's.
        let mut all = All([vec![true; 5], vec![false; 1_000]].concat());
        assert_eq!(find(&head, &all, &reads).await, at(4));
        assert!(reads.get() > 1_000, "the first probe reads down to it");

        reads.set(0);
        assert_eq!(find(&head, &all, &reads).await, at(4));
        assert!(reads.get() <= 10, "nothing new: one page at most, read {}", reads.get());

        all.0.extend([false; 30]);
        reads.set(0);
        assert_eq!(find(&head, &all, &reads).await, at(4));
        assert!(reads.get() <= 50, "only the 30 new ones and a repeat per page, read {}", reads.get());

        all.0.extend([true, false]);
        assert_eq!(find(&head, &all, &reads).await, at(all.0.len() - 2));
    }

    #[tokio::test]
    async fn an_empty_store_among_foreign_events_is_examined_once() {
        let (head, reads) = (Head::default(), Cell::new(0));
        let mut all = All(vec![false; 2_000]);
        assert_eq!(find(&head, &all, &reads).await, None);
        reads.set(0);
        assert_eq!(find(&head, &all, &reads).await, None);
        assert!(reads.get() <= 10, "read {}", reads.get());
        all.0.push(true);
        assert_eq!(find(&head, &all, &reads).await, at(2_000));
        let empty = All(Vec::new());
        assert_eq!(find(&Head::default(), &empty, &reads).await, None);
    }

    #[tokio::test]
    async fn a_first_scan_cut_short_keeps_its_progress() {
        let (head, reads) = (Head::default(), Cell::new(0));
        let mut all = All([vec![true; 1], vec![false; 1_000]].concat());
        // A probe that gives up (its timeout) after 30 pages.
        let pages = Cell::new(0);
        let cut = head
            .find(10, |before, count| {
                pages.set(pages.get() + 1);
                let page = all.read_back(before, count);
                let cut_short = pages.get() > 30;
                async move {
                    if cut_short {
                        Err(StoreError::Unavailable("no answer within 10s".into()))
                    } else {
                        Ok(page)
                    }
                }
            })
            .await;
        assert!(cut.is_err());
        // Events arrive meanwhile; the next probe reads them and goes on where the last one stopped.
        all.0.extend([false; 5]);
        assert_eq!(find(&head, &all, &reads).await, at(0));
        assert!(reads.get() < 900, "about 740 left, with a repeat per page; from the end, 1,120: read {}", reads.get());
    }
}
