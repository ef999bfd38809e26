//! Application messages between processes: the seed's `worker.send`, `process.on('message')`
//! and broadcast, typed with serde.
//!
//! From a worker, [`Messenger::broadcast`] reaches every live worker (itself included) through
//! the primary, and [`Messenger::gather`] asks every ready worker a question and collects
//! their answers (each worker answers with the handler set by [`Messenger::on_query`]). The
//! primary can also message one worker or all of them (`herd ctl send` / `broadcast`).
//! Delivery is in order per sender; a message to a worker that dies on the way is lost with it.
//!
//! Each payload (a broadcast, a question, one worker's answer) must encode to at most
//! [`MAX_PAYLOAD`] bytes of JSON: a bigger one is refused at the sender with
//! [`MessagingError::TooLarge`] and never reaches the IPC socket, so it cannot disturb the
//! links that carry heartbeats and connections. A gather's reply set may be as big as the
//! cluster makes it: the primary sends it in parts.

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
    /// A payload does not fit in one IPC message.
    #[error("message payload of {bytes} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// [`MAX_PAYLOAD`].
        limit: usize,
    },
    /// A worker could not answer a gather (e.g. its answer exceeded [`MAX_PAYLOAD`]).
    #[error("worker {slot} could not answer: {reason}")]
    Unanswered {
        /// Its slot.
        slot: usize,
        /// Why.
        reason: String,
    },
}

/// Largest application payload (a broadcast, a message, a gather's question or one worker's
/// answer), as encoded JSON: one IPC message less room for the envelope around it.
pub const MAX_PAYLOAD: usize = crate::channel::MAX_MESSAGE - 1024;

/// `payload` as JSON, if it fits in [`MAX_PAYLOAD`].
pub(crate) fn checked_payload<T: Serialize>(payload: &T) -> Result<Value, MessagingError> {
    let value = serde_json::to_value(payload)?;
    check_size(&value)?;
    Ok(value)
}

/// Refuses a payload that would not fit in [`MAX_PAYLOAD`].
pub(crate) fn check_size(value: &Value) -> Result<(), MessagingError> {
    let bytes = serde_json::to_vec(value)?.len();
    if bytes > MAX_PAYLOAD {
        return Err(MessagingError::TooLarge { bytes, limit: MAX_PAYLOAD });
    }
    Ok(())
}

type QueryHandler = Arc<dyn Fn(Value) -> Value + Send + Sync>;

/// A worker's handle for messaging. Cheap to clone.
#[derive(Clone)]
pub struct Messenger {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    incoming: broadcast::Sender<Message>,
    handler: Mutex<Option<QueryHandler>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
}

/// Where this worker's broadcasts and gathers go.
enum Link {
    /// The primary, which relays them to every worker.
    Primary(Channel),
    /// Nowhere: a worker on its own (tests, embedding) is the whole cluster, so it receives its
    /// own broadcasts and answers its own gathers.
    Alone { slot: usize, pid: u32 },
}

/// A gather of ours waiting for its answers, which may arrive in parts.
struct Pending {
    done: oneshot::Sender<Result<Vec<Reply>, MessagingError>>,
    replies: Vec<Reply>,
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
        Self::with_link(Link::Primary(channel))
    }

    /// The messenger of a worker that runs without a primary (see
    /// [`WorkerContext::standalone`](crate::WorkerContext::standalone)): a cluster of one.
    pub(crate) fn alone(slot: usize, pid: u32) -> Self {
        Self::with_link(Link::Alone { slot, pid })
    }

    fn with_link(link: Link) -> Self {
        Self {
            inner: Arc::new(Inner {
                link,
                incoming: broadcast::channel(SUBSCRIBER_BUFFER).0,
                handler: Mutex::new(None),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Sends `payload` to every live worker, this one included, in order. A payload bigger
    /// than [`MAX_PAYLOAD`] is refused with [`MessagingError::TooLarge`].
    pub async fn broadcast<T: Serialize>(&self, payload: &T) -> Result<(), MessagingError> {
        let payload = checked_payload(payload)?;
        match &self.inner.link {
            Link::Primary(channel) => channel.send(&ToPrimary::Broadcast { payload }).await?,
            Link::Alone { slot, .. } => self.deliver(Some(*slot), payload),
        }
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
    /// within the primary's one-second limit are left out). A question or an answer bigger
    /// than [`MAX_PAYLOAD`] fails the gather ([`MessagingError::TooLarge`],
    /// [`MessagingError::Unanswered`]).
    pub async fn gather<Q: Serialize, A: DeserializeOwned>(
        &self,
        question: &Q,
    ) -> Result<Vec<(Reply, A)>, MessagingError> {
        let payload = checked_payload(question)?;
        let channel = match &self.inner.link {
            Link::Primary(channel) => channel,
            Link::Alone { slot, pid } => {
                let answer = self.answer_of(payload);
                check_size(&answer).map_err(|e| MessagingError::Unanswered { slot: *slot, reason: e.to_string() })?;
                let reply = Reply { slot: *slot, pid: *pid, payload: answer };
                return Ok(vec![(reply.clone(), serde_json::from_value(reply.payload)?)]);
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, rx) = oneshot::channel();
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.insert(id, Pending { done, replies: Vec::new() });
        }
        let forget = || {
            if let Ok(mut pending) = self.inner.pending.lock() {
                pending.remove(&id);
            }
        };
        if let Err(err) = channel.send(&ToPrimary::Gather { id, payload }).await {
            forget();
            return Err(err.into());
        }
        let limit = GATHER_TIMEOUT + Duration::from_secs(1);
        let replies = match tokio::time::timeout(limit, rx).await {
            Ok(Ok(replies)) => replies?,
            _ => {
                forget();
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

    /// A question from another worker's gather: answer it, or say why it cannot be answered.
    pub(crate) async fn answer(&self, id: u64, question: Value) {
        let payload = self.answer_of(question);
        let msg = match check_size(&payload) {
            Ok(()) => ToPrimary::Reply { id, payload },
            Err(err) => {
                tracing::warn!(error = %err, "cannot answer a gather");
                ToPrimary::Unanswered { id, reason: err.to_string() }
            }
        };
        let Link::Primary(channel) = &self.inner.link else { return };
        if let Err(err) = channel.send(&msg).await {
            tracing::warn!(error = %err, "cannot send a gather's answer");
        }
    }

    /// This worker's answer to `question`: its [`Messenger::on_query`] handler's, or `null`.
    fn answer_of(&self, question: Value) -> Value {
        let handler = self.inner.handler.lock().ok().and_then(|h| h.clone());
        handler.map_or(Value::Null, |handle| handle(question))
    }

    /// Some of the answers to one of our gathers arrived; more follow.
    pub(crate) fn gathered_part(&self, id: u64, replies: Vec<Reply>) {
        if let Ok(mut pending) = self.inner.pending.lock() {
            if let Some(gather) = pending.get_mut(&id) {
                gather.replies.extend(replies);
            }
        }
    }

    /// The last answers to one of our gathers arrived.
    pub(crate) fn gathered(&self, id: u64, replies: Vec<Reply>, unanswered: Vec<crate::proto::Unanswered>) {
        let waiter = self.inner.pending.lock().ok().and_then(|mut p| p.remove(&id));
        if let Some(mut gather) = waiter {
            let result = match unanswered.into_iter().next() {
                Some(failed) => Err(MessagingError::Unanswered { slot: failed.slot, reason: failed.reason }),
                None => {
                    gather.replies.extend(replies);
                    Ok(gather.replies)
                }
            };
            let _ = gather.done.send(result);
        }
    }
}

/// How long the primary waits for every worker's answer to a gather.
pub(crate) const GATHER_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn a_worker_alone_hears_its_own_broadcasts() {
        let messenger = Messenger::alone(3, 42);
        let mut incoming = messenger.subscribe();
        messenger.broadcast(&json!({ "hello": 1 })).await.expect("broadcast");
        let message = incoming.recv().await.expect("delivered");
        assert_eq!(message, Message { from: Some(3), payload: json!({ "hello": 1 }) });
        let too_big = "x".repeat(MAX_PAYLOAD);
        assert!(matches!(messenger.broadcast(&too_big).await, Err(MessagingError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn a_worker_alone_answers_its_own_gathers() {
        let messenger = Messenger::alone(3, 42);
        let unset: Vec<(Reply, Value)> = messenger.gather(&json!("q")).await.expect("gather");
        assert_eq!(unset, vec![(Reply { slot: 3, pid: 42, payload: Value::Null }, Value::Null)]);
        messenger.on_query(|question| json!({ "echo": question }));
        let replies: Vec<(Reply, Value)> = messenger.gather(&json!("q")).await.expect("gather");
        assert_eq!(replies.len(), 1);
        assert_eq!((replies[0].0.slot, replies[0].0.pid), (3, 42));
        assert_eq!(replies[0].1, json!({ "echo": "q" }));
        messenger.on_query(|_| json!("x".repeat(MAX_PAYLOAD)));
        let oversized = messenger.gather::<_, Value>(&json!("q")).await;
        assert!(matches!(oversized, Err(MessagingError::Unanswered { slot: 3, .. })), "{oversized:?}");
    }
}
