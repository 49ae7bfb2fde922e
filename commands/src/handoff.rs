//! [`Handoff`]: the events an in-process sequencer just numbered, kept
//! for the in-process relay so it need not read them back from Postgres.
//!
//! Only ever an optimisation: the relay takes events from here only when
//! they continue exactly where it stands (the next position is the first
//! one held), and reads the log otherwise. So a handoff that dropped
//! events (it is bounded), missed a step (a sequencer in another process
//! led) or holds nothing gives the same stream as the read would. What
//! it holds is always right: only committed steps are offered, and a
//! committed position never changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::log::LoggedEvent;

/// Events held at most; beyond it the oldest go (the relay reads them).
pub const DEFAULT_CAPACITY: usize = 4096;

pub struct Handoff {
    /// Set once a relay takes from it: until then a sequencer has no
    /// reason to fetch its events.
    wanted: AtomicBool,
    capacity: usize,
    /// Consecutive positions, oldest first.
    events: Mutex<VecDeque<LoggedEvent>>,
}

impl Default for Handoff {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Handoff {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            wanted: AtomicBool::new(false),
            capacity,
            events: Mutex::new(VecDeque::new()),
        }
    }

    /// A relay will take from here.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    pub fn is_wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// Adds one step's events (consecutive positions, in order). Events
    /// that do not continue what is held replace it, so what is held is
    /// always one run of consecutive positions.
    pub fn offer(&self, step: Vec<LoggedEvent>) {
        let Some(first) = step.first().map(|e| e.position) else {
            return;
        };
        let mut events = self.lock();
        if events.back().is_some_and(|last| last.position + 1 != first) {
            events.clear();
        }
        events.extend(step);
        let excess = events.len().saturating_sub(self.capacity);
        events.drain(..excess);
    }

    /// Up to `limit` events from position `after + 1` on, if that position
    /// is held; `None` if it is not (the caller reads the log). Events up
    /// to `after` are dropped: the caller is past them.
    pub fn take_after(&self, after: i64, limit: usize) -> Option<Vec<LoggedEvent>> {
        let mut events = self.lock();
        while events.front().is_some_and(|e| e.position <= after) {
            events.pop_front();
        }
        if events.front()?.position != after + 1 {
            return None;
        }
        let n = limit.min(events.len());
        Some(events.drain(..n).collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<LoggedEvent>> {
        // The queue is valid after any panic mid-operation (each one either
        // completes or leaves whole events behind).
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64) -> LoggedEvent {
        LoggedEvent {
            position,
            event_id: uuid::Uuid::new_v4(),
            aggregate_type: "Project".into(),
            aggregate_id: "p".into(),
            sequence: position,
            event_type: "ProjectCreated".into(),
            event_version: "1".into(),
            payload: serde_json::json!({}),
            metadata: serde_json::json!({}),
            recorded_at: chrono::Utc::now(),
            project_id: None,
        }
    }

    fn events(positions: std::ops::RangeInclusive<i64>) -> Vec<LoggedEvent> {
        positions.map(event).collect()
    }

    fn positions(events: &[LoggedEvent]) -> Vec<i64> {
        events.iter().map(|e| e.position).collect()
    }

    #[test]
    fn takes_only_what_continues_from_the_callers_position() {
        let handoff = Handoff::default();
        handoff.offer(events(5..=8));
        assert!(handoff.take_after(2, 10).is_none(), "3 and 4 are not held");
        assert_eq!(positions(&handoff.take_after(4, 2).unwrap()), [5, 6]);
        assert_eq!(positions(&handoff.take_after(6, 10).unwrap()), [7, 8]);
        assert!(handoff.take_after(8, 10).is_none(), "nothing left");
    }

    #[test]
    fn drops_what_the_caller_is_past() {
        let handoff = Handoff::default();
        handoff.offer(events(1..=6));
        // The caller read 1..=4 from the log meanwhile.
        assert_eq!(positions(&handoff.take_after(4, 10).unwrap()), [5, 6]);
    }

    #[test]
    fn a_step_that_does_not_continue_replaces_what_is_held() {
        let handoff = Handoff::default();
        handoff.offer(events(1..=3));
        handoff.offer(events(7..=8));
        assert!(handoff.take_after(3, 10).is_none(), "4..=6 went elsewhere");
        assert_eq!(positions(&handoff.take_after(6, 10).unwrap()), [7, 8]);
    }

    #[test]
    fn keeps_the_newest_within_its_capacity() {
        let handoff = Handoff::with_capacity(3);
        handoff.offer(events(1..=2));
        handoff.offer(events(3..=5));
        assert!(handoff.take_after(0, 10).is_none(), "1 and 2 were dropped");
        assert_eq!(positions(&handoff.take_after(2, 10).unwrap()), [3, 4, 5]);
    }
}
