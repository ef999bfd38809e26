//! A tiny one-shot, many-waiter shutdown signal (mini-redis's `Shutdown`, on a `watch`).

use tokio::sync::watch;

/// Fires the signal. Cheap to clone; firing twice is harmless.
#[derive(Clone)]
pub(crate) struct Trigger(watch::Sender<bool>);

/// Waits for the signal. Once fired it stays fired.
#[derive(Clone)]
pub(crate) struct Signal(watch::Receiver<bool>);

pub(crate) fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    pub(crate) fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Signal {
    pub(crate) fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the trigger fired (immediately if it already has). If every trigger is
    /// dropped without firing, it never resolves: nobody can ask for shutdown any more.
    pub(crate) async fn wait(&mut self) {
        if self.0.wait_for(|fired| *fired).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
