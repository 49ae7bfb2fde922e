//! [`Batcher`]: gathers requests that arrive while earlier batches are in
//! flight and hands them to one flush, so many concurrent callers share one
//! database round trip instead of paying one each.
//!
//! An idle batcher flushes a lone request at once (no timer, no added
//! latency); under load, the requests that queue up behind the busy slots
//! become the next batch. Flushes run in the batcher's task (one at a time)
//! or in tasks of their own (several), never in a caller's: a caller that
//! goes away mid-flush cannot take other callers' work with it.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

/// The sending end; cheap to clone. Dropping every clone stops the task.
pub struct Batcher<T> {
    queue: mpsc::UnboundedSender<T>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// How a batcher cuts its batches.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Batches in flight at once; while all are busy, requests gather.
    pub parallel: usize,
    /// A batch closes once its items weigh this much.
    pub max_weight: usize,
}

impl<T: Send + 'static> Batcher<T> {
    /// Spawns the gathering task on the current runtime. `weight` measures
    /// an item against `limits.max_weight`; `flush` gets every batch.
    pub fn spawn<F, Fut>(limits: BatchLimits, weight: fn(&T) -> usize, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (queue, incoming) = mpsc::unbounded_channel();
        tokio::spawn(gather(limits, weight, flush, incoming));
        Self { queue }
    }

    /// Queues `item`; `Err` gives it back if the task has stopped.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.queue.send(item).map_err(|e| e.0)
    }
}

async fn gather<T, F, Fut>(
    limits: BatchLimits,
    weight: fn(&T) -> usize,
    flush: F,
    mut incoming: mpsc::UnboundedReceiver<T>,
) where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.parallel.max(1)));
    while let Some(first) = incoming.recv().await {
        // Waiting for a slot first lets the batch fill up meanwhile.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut size = weight(&first);
        let mut batch = vec![first];
        while size < limits.max_weight {
            match incoming.try_recv() {
                Ok(next) => {
                    size += weight(&next);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let flushing = flush(batch);
        if limits.parallel <= 1 {
            // One at a time: flush here, and the next batch is gathered the
            // moment this one is done, without a task spawned per batch
            // and a wake-up through the semaphore.
            flushing.await;
            drop(slot);
            continue;
        }
        tokio::spawn(async move {
            flushing.await;
            drop(slot);
        });
    }
}
