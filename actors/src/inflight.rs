//! Counts one actor's batches that were submitted but not yet committed.
//!
//! A Mailbox actor lets appends pipeline (many wait for the same group commit) but must run a
//! read-modify-write such as a flag store against committed state. It therefore waits until its
//! inflight count is zero. The commit group, not the actor, lowers the count: an actor blocked in
//! an atomic handler does not poll its own futures, so a count lowered there would never reach
//! zero.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Inflight(Arc<watch::Sender<usize>>);

impl Default for Inflight {
    fn default() -> Self {
        Inflight(Arc::new(watch::channel(0).0))
    }
}

impl Inflight {
    pub fn begin(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    pub fn end(&self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }

    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves once nothing is inflight.
    pub fn idle(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.0.subscribe();
        async move {
            // The sender lives as long as any clone of this handle; an error means the node is
            // gone and there is nothing left to wait for.
            let _ = rx.wait_for(|n| *n == 0).await;
        }
    }
}
