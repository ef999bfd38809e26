//! Application messages between processes: the seed's `worker.send`, `process.on('message')`
//! and broadcast, typed with serde.
//!
//! From a worker, [`Messenger::broadcast`] reaches every live worker (itself included) through
//! the primary, and [`Messenger::gather`] asks every ready worker a question and collects
//! their answers (each worker answers with the handler set by [`Messenger::on_query`]). The
//! primary can also message one worker or all of them (`herd ctl send` / `broadcast`).
//! Delivery is in order per sender; a message to a worker that dies on the way is lost with it.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use crate::{channel::Channel, proto::ToPrimary};

/// A message as a worker receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The sending worker's slot, or `None` when the primary sent it.
    pub from: Option<usize>,
    /// What was sent.
    pub payload: Value,
}

/// One worker's answer to a [`Messenger::gather`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The answering worker's slot.
    pub slot: usize,
    /// Its process id.
    pub pid: u32,
    /// Its answer.
    pub payload: Value,
}

/// Errors of the messaging API.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// The payload could not be converted to or from JSON.
    #[error("message payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// The primary could not be reached.
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelError),
    /// The primary did not answer in time.
    #[error("no answer from the primary within {0:?}")]
    Timeout(Duration),
}

type QueryHandler = Arc<dyn Fn(Value) -> Value + Send + Sync>;

/// A worker's handle for messaging. Cheap to clone.
#[derive(Clone)]
pub struct Messenger {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    incoming: broadcast::Sender<Message>,
    handler: Mutex<Option<QueryHandler>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Vec<Reply>>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger").finish_non_exhaustive()
    }
}

/// How many received messages a slow subscriber may lag behind before it misses some.
const SUBSCRIBER_BUFFER: usize = 1024;

impl Messenger {
    pub(crate) fn new(channel: Channel) -> Self {
        Self {
            inner: Arc::new(Inner {
                channel,
                incoming: broadcast::channel(SUBSCRIBER_BUFFER).0,
                handler: Mutex::new(None),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Sends `payload` to every live worker, this one included, in order.
    pub async fn broadcast<T: Serialize>(&self, payload: &T) -> Result<(), MessagingError> {
        let payload = serde_json::to_value(payload)?;
        self.inner.channel.send(&ToPrimary::Broadcast { payload }).await?;
        Ok(())
    }

    /// Messages sent to this worker (broadcasts included), from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.inner.incoming.subscribe()
    }

    /// Sets how this worker answers [`Messenger::gather`] questions (by default it does not:
    /// it answers `null`).
    pub fn on_query(&self, handler: impl Fn(Value) -> Value + Send + Sync + 'static) {
        if let Ok(mut slot) = self.inner.handler.lock() {
            *slot = Some(Arc::new(handler));
        }
    }

    /// Asks every ready worker `question` and returns their answers (workers that do not answer
    /// within the primary's one-second limit are left out).
    pub async fn gather<Q: Serialize, A: DeserializeOwned>(
        &self,
        question: &Q,
    ) -> Result<Vec<(Reply, A)>, MessagingError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.insert(id, tx);
        }
        let payload = serde_json::to_value(question)?;
        self.inner.channel.send(&ToPrimary::Gather { id, payload }).await?;
        let limit = GATHER_TIMEOUT + Duration::from_secs(1);
        let replies = match tokio::time::timeout(limit, rx).await {
            Ok(Ok(replies)) => replies,
            _ => {
                if let Ok(mut pending) = self.inner.pending.lock() {
                    pending.remove(&id);
                }
                return Err(MessagingError::Timeout(limit));
            }
        };
        replies
            .into_iter()
            .map(|reply| {
                let answer = serde_json::from_value(reply.payload.clone())?;
                Ok((reply, answer))
            })
            .collect()
    }

    /// An incoming application message: hand it to subscribers.
    pub(crate) fn deliver(&self, from: Option<usize>, payload: Value) {
        // No subscriber is not an error: nobody wanted it.
        let _ = self.inner.incoming.send(Message { from, payload });
    }

    /// A question from another worker's gather: answer it.
    pub(crate) async fn answer(&self, id: u64, question: Value) {
        let handler = self.inner.handler.lock().ok().and_then(|h| h.clone());
        let payload = handler.map_or(Value::Null, |handle| handle(question));
        let _ = self.inner.channel.send(&ToPrimary::Reply { id, payload }).await;
    }

    /// The answers to one of our gathers arrived.
    pub(crate) fn gathered(&self, id: u64, replies: Vec<Reply>) {
        let waiter = self.inner.pending.lock().ok().and_then(|mut p| p.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(replies);
        }
    }
}

/// How long the primary waits for every worker's answer to a gather.
pub(crate) const GATHER_TIMEOUT: Duration = Duration::from_secs(1);
