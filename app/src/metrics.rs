//! The app's own series, registered with the worker's metrics (`WorkerContext::metrics`) and
//! gathered by the primary at scrape time: session store operations (a [`MeteredStore`] around
//! the store, so that `herd-session-store` needs no hook), Redis reconnects and command
//! timeouts, and shared-cache lookups.
//!
//! The store is measured at the `tower_sessions::SessionStore` boundary (`load`, `save`,
//! `create`, `delete`) and, for what happens inside those (the touch within a load, a login's
//! rotation), through the store's [`StoreObserver`].

use std::{future::Future, sync::Arc, time::Instant};

use async_trait::async_trait;
use fred::{clients::Pool, interfaces::EventInterface};
use herd_cluster::metrics::{CounterVec, HistogramVec, WorkerMetrics, LATENCY_BUCKETS};
use herd_session_store::{StoreEvent, StoreObserver};
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

/// The app's counters and histograms of one worker.
#[derive(Debug)]
pub(crate) struct AppMetrics {
    store_ops: CounterVec,
    store_latency: HistogramVec,
    timeouts: CounterVec,
    reconnects: CounterVec,
    pub(crate) cache: CounterVec,
}

impl AppMetrics {
    /// Creates them and registers them with the worker's metrics; counts `pool`'s reconnects.
    pub(crate) fn register(worker: &WorkerMetrics, pool: &Pool) -> Arc<Self> {
        let metrics = Arc::new(Self {
            store_ops: CounterVec::new(
                "herd_session_store_operations",
                "Session store operations by kind (load, save, create, delete, touch, rotate) and outcome (ok, unavailable: answered 503, full: 507, error)",
                &["op", "outcome"],
            ),
            store_latency: HistogramVec::new(
                "herd_session_store_operation_duration_seconds",
                "Session store operation latency, by kind",
                &["op"],
                LATENCY_BUCKETS,
            ),
            timeouts: CounterVec::new(
                "herd_redis_command_timeouts",
                "Session store operations that failed because Redis did not answer within the command timeout",
                &[],
            ),
            reconnects: CounterVec::new("herd_redis_reconnects", "Reconnections of this worker's Redis connections", &[]),
            cache: CounterVec::new(
                "herd_cache_lookups",
                "Shared cache lookups by where the value came from (local, redis, waited: for another worker's computation, computed: a miss) or error",
                &["result"],
            ),
        });
        // Every series appears from the first scrape, at 0.
        metrics.timeouts.add(&[], 0);
        metrics.reconnects.add(&[], 0);
        struct Registered(Arc<AppMetrics>);
        impl herd_cluster::metrics::Collect for Registered {
            fn collect(&self, out: &mut Vec<herd_cluster::metrics::Family>) {
                let m = &self.0;
                m.store_ops.collect(out);
                m.store_latency.collect(out);
                m.timeouts.collect(out);
                m.reconnects.collect(out);
                m.cache.collect(out);
            }
        }
        worker.register(Arc::new(Registered(metrics.clone())));
        for client in pool.clients() {
            let mut reconnected = client.reconnect_rx();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                while reconnected.recv().await.is_ok() {
                    metrics.reconnects.inc(&[]);
                }
            });
        }
        metrics
    }

    fn record<T>(&self, op: &'static str, started: Instant, result: &session_store::Result<T>) {
        self.store_latency.observe_duration(&[op], started.elapsed());
        let outcome = match result {
            Ok(_) => "ok",
            Err(err) if herd_session_store::is_store_full(err) => "full",
            Err(err @ session_store::Error::Backend(_)) => {
                if herd_session_store::is_store_timeout(err) {
                    self.timeouts.inc(&[]);
                }
                "unavailable"
            }
            Err(_) => "error",
        };
        self.store_ops.inc(&[op, outcome]);
    }

    /// Counts what the store does inside loads and logins as operations of their own.
    pub(crate) fn store_observer(self: &Arc<Self>) -> StoreObserver {
        let metrics = Arc::clone(self);
        StoreObserver::new(move |event| match event {
            StoreEvent::Touch { ok } => metrics.store_ops.inc(&["touch", if ok { "ok" } else { "error" }]),
            StoreEvent::Rotate => metrics.store_ops.inc(&["rotate", "ok"]),
        })
    }
}

/// A session store whose operations are counted and timed.
#[derive(Debug, Clone)]
pub(crate) struct MeteredStore<S> {
    inner: S,
    metrics: Arc<AppMetrics>,
}

impl<S> MeteredStore<S> {
    pub(crate) fn new(inner: S, metrics: Arc<AppMetrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S> MeteredStore<S> {
    /// Runs one store operation, counting and timing it as `op`.
    async fn timed<T>(
        &self,
        op: &'static str,
        operation: impl Future<Output = session_store::Result<T>>,
    ) -> session_store::Result<T> {
        let started = Instant::now();
        let result = operation.await;
        self.metrics.record(op, started, &result);
        result
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for MeteredStore<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.timed("create", self.inner.create(record)).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.timed("save", self.inner.save(record)).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.timed("load", self.inner.load(id)).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.timed("delete", self.inner.delete(id)).await
    }
}
