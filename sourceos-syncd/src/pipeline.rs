//! Two-stage pipelines over the log on two cores: the calling thread
//! produces items (reads stored events and recomputes their hashes) while
//! one scoped helper thread consumes them in order (decodes, checks the
//! chain, folds). A rebuild's fold and the doctor's log scan both run this
//! way: reading and hashing take about as long as decoding and folding.
//!
//! Reading stays on the calling thread: sled's page copies made on a fresh
//! helper thread's allocator arena cost a page fault each in a process that
//! had already done much other work (3.5 times slower than one thread in
//! the log benchmark), while a fresh process was not affected.

use std::sync::mpsc::{sync_channel, SyncSender};

/// Items per chunk handed to the consuming thread (and between a
/// producer's progress reports): small enough that a chunk's bytes are
/// still in cache when the consumer reaches them.
pub(crate) const CHUNK_ITEMS: usize = 64;
/// Chunks the producer may be ahead of the consumer.
pub(crate) const CHUNKS_AHEAD: usize = 4;

/// The helper thread could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipelineError {
    /// It could not be started.
    #[error("cannot start the {name} thread")]
    Spawn {
        /// The thread's name.
        name: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It panicked.
    #[error("the {name} thread panicked")]
    Panicked {
        /// The thread's name.
        name: &'static str,
    },
}

impl PipelineError {
    /// The error with its cause, for callers that report it as text.
    pub(crate) fn full_text(&self) -> String {
        match std::error::Error::source(self) {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }
}

/// Hands the producer's items to the consuming thread, [`CHUNK_ITEMS`] at
/// a time.
pub(crate) struct Feeder<T> {
    to: Option<SyncSender<Vec<T>>>,
    chunk: Vec<T>,
}

impl<T> Feeder<T> {
    /// Queues one item. `false` once the consumer has stopped: nothing
    /// more will be consumed, and the producer should stop too.
    pub(crate) fn push(&mut self, item: T) -> bool {
        let Some(to) = &self.to else {
            return false;
        };
        self.chunk.push(item);
        if self.chunk.len() >= CHUNK_ITEMS {
            let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_ITEMS));
            if to.send(full).is_err() {
                self.to = None;
            }
        }
        self.to.is_some()
    }

    /// Sends what is queued and closes the feed: the consumer sees the end
    /// of its items.
    fn close(&mut self) {
        if let Some(to) = self.to.take() {
            if !self.chunk.is_empty() {
                let _ = to.send(std::mem::take(&mut self.chunk));
            }
        }
    }
}

/// Runs `produce` on the calling thread and `consume`, over every item
/// produced in order, on a helper thread named `name`. Whatever the
/// producer queued before it returned (also when it returns an error) is
/// consumed; a consumer that returns early stops the feed. Returns what
/// each returned, once the helper has ended.
pub(crate) fn run<T: Send, P, C: Send>(
    name: &'static str,
    produce: impl FnOnce(&mut Feeder<T>) -> P,
    consume: impl FnOnce(&mut dyn Iterator<Item = T>) -> C + Send,
) -> Result<(P, C), PipelineError> {
    std::thread::scope(|scope| {
        let (to, from) = sync_channel::<Vec<T>>(CHUNKS_AHEAD);
        let consumer = std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(scope, move || consume(&mut from.iter().flatten()))
            .map_err(|source| PipelineError::Spawn { name, source })?;
        let mut feeder = Feeder {
            to: Some(to),
            chunk: Vec::with_capacity(CHUNK_ITEMS),
        };
        let produced = produce(&mut feeder);
        feeder.close();
        let consumed = consumer
            .join()
            .map_err(|_| PipelineError::Panicked { name })?;
        Ok((produced, consumed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_consumed_in_order_including_a_last_partial_chunk() {
        let n = CHUNK_ITEMS * 5 + 3;
        let (pushed, seen) = run(
            "test",
            |feed| (0..n).take_while(|i| feed.push(*i)).count(),
            |items| items.collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(pushed, n);
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn what_was_queued_before_a_producer_error_is_consumed() {
        let (produced, seen) = run(
            "test",
            |feed| {
                for i in 0..10 {
                    feed.push(i);
                }
                Err::<(), _>("read error after ten")
            },
            |items| items.count(),
        )
        .unwrap();
        assert_eq!(produced, Err("read error after ten"));
        assert_eq!(seen, 10);
    }

    #[test]
    fn a_consumer_that_stops_early_stops_the_feed() {
        let limit = CHUNK_ITEMS * 2;
        let (pushed, seen) = run(
            "test",
            |feed| (0..usize::MAX).take_while(|i| feed.push(*i)).count(),
            |items| items.take(limit).count(),
        )
        .unwrap();
        assert_eq!(seen, limit);
        // The producer learns it at the latest a few chunks later.
        assert!(
            pushed < limit + CHUNK_ITEMS * (CHUNKS_AHEAD + 2),
            "{pushed}"
        );
    }

    #[test]
    fn a_panicking_consumer_is_reported_not_propagated() {
        let r = run(
            "test-panic",
            |feed| (0..1000).take_while(|i| feed.push(*i)).count(),
            |items| -> usize {
                if items.count() > 0 {
                    panic!("consumer failed");
                }
                0
            },
        );
        assert!(
            matches!(r, Err(PipelineError::Panicked { name: "test-panic" })),
            "{r:?}"
        );
    }

    #[test]
    fn a_start_failure_names_the_thread_and_its_cause() {
        let e = PipelineError::Spawn {
            name: "syncd-fold",
            source: std::io::Error::other("no more threads"),
        };
        assert_eq!(
            e.full_text(),
            "cannot start the syncd-fold thread: no more threads"
        );
    }
}
