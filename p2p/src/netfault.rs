//! The network faults of the test-only fault file (debug builds only; see
//! `plexi_util::faults`), as they apply to this node's outgoing messages:
//! the random draws for one message, and the bound on messages held back
//! by a fault at once. The swarm and [`crate::P2pHandle::request`] ask here
//! and act on the answer; with no network fault in force every function
//! returns "clean" after one read of the faults.
//!
//! What is faulted: application requests this node sends (delay, loss of
//! the request or of its response, duplication), membership exchanges it
//! starts (the same, except that a lost exchange always loses its request,
//! which carries our records), the responses it sends to application calls,
//! exchanges and pushes (delay, loss), and its gossip publishes (loss).
//! Gossip it relays for others and the leave pushes are left alone.

use std::sync::Arc;

use plexi_util::faults::{self, Faults, Outgoing, Rolls};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bound on messages held back by a fault at once (delayed, or a caller
/// waiting out a lost message): the same as the swarm's bound on pending
/// requests. Past it a faulted request fails as busy and a faulted
/// exchange or response goes out at once.
pub const MAX_HELD_BACK: usize = 1024;

/// Counts the messages held back (one permit each).
#[derive(Clone)]
pub(crate) struct HeldBack(Arc<Semaphore>);

impl HeldBack {
    pub(crate) fn new() -> Self {
        HeldBack(Arc::new(Semaphore::new(MAX_HELD_BACK)))
    }

    /// A slot for one more held-back message, `None` at the bound.
    pub(crate) fn try_hold(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// The faults in force when some network fault is on.
pub(crate) fn active() -> Option<Faults> {
    let f = faults::current();
    f.net_active().then_some(f)
}

/// The fate of one outgoing request under `f`.
pub(crate) fn roll_outgoing(f: &Faults) -> Outgoing {
    let mut rng = rand::thread_rng();
    faults::outgoing(
        f,
        Rolls {
            loss: rng.gen_range(0..100),
            response_half: rng.gen(),
            duplicate: rng.gen_range(0..100),
            delay: rng.gen(),
        },
    )
}

/// The fate of one response this node sends: `None` lost, else its delay
/// in ms (0 when no network fault is on).
pub(crate) fn roll_response() -> Option<u64> {
    let Some(f) = active() else { return Some(0) };
    let mut rng = rand::thread_rng();
    faults::response(&f, rng.gen_range(0..100), rng.gen())
}

/// Whether one gossip publish of ours is lost.
pub(crate) fn gossip_lost() -> bool {
    let percent = faults::current().net_loss_percent;
    percent > 0 && faults::should_fail(percent, rand::thread_rng().gen_range(0..100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_messages_stop_at_the_bound_and_free_their_slot() {
        let held = HeldBack::new();
        let permits: Vec<_> = (0..MAX_HELD_BACK)
            .map(|_| held.try_hold().expect("below the bound"))
            .collect();
        assert!(held.try_hold().is_none());
        drop(permits);
        assert!(held.try_hold().is_some());
    }
}
