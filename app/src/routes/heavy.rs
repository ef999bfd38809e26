//! `/heavy` and `/heavy/cached`: the seed's CPU-bound loop, which any anonymous client can
//! start. What one can cost is bounded three ways (docs/hardening.md, "CPU, memory and the
//! shared cache"):
//!
//! - **A cap per worker** ([`HeavyLimits::concurrency`]): a computation runs only with a permit;
//!   a request that gets none within [`HeavyLimits::queue_wait`] is answered 503 +
//!   `Retry-After`. The permit travels with the computation onto the blocking pool and is
//!   returned when the loop really stops, so the cap counts CPU in use, not requests.
//! - **A largest `n`** ([`HeavyLimits::max_n`]), so one permit is held for a fraction of a second.
//! - **Cancellation**: the loop runs in chunks and stops at the next one once the request is
//!   dropped (hyper drops it when the client goes away), instead of burning a core for a
//!   client that left.

use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    Json,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::AppState;
use crate::error::AppError;

const DEFAULT_N: u64 = 10_000_000;
/// Default of [`HeavyLimits::max_n`]: about 0.3 s of one core in a release build (the seed's
/// 1e10 was ~3 s).
pub(crate) const DEFAULT_MAX_N: u64 = 1_000_000_000;
/// Default of [`HeavyLimits::concurrency`]: with the default one worker per core, `/heavy` can
/// keep every core busy but never queue more work than there are cores.
pub(crate) const DEFAULT_CONCURRENCY: usize = 1;
/// Default of [`HeavyLimits::queue_wait`].
pub(crate) const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// Iterations between two looks at the cancellation flag (about a millisecond in a release
/// build): checking is cheap next to them, and a dropped request frees its core within a chunk.
const CHUNK: u64 = 1 << 20;

/// What an anonymous `/heavy` may cost one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeavyLimits {
    /// Largest `n` accepted; more is a 400.
    pub max_n: u64,
    /// Computations running at once in this worker.
    pub concurrency: usize,
    /// How long a request waits for a free slot before it is answered 503.
    pub queue_wait: Duration,
}

impl Default for HeavyLimits {
    fn default() -> Self {
        Self { max_n: DEFAULT_MAX_N, concurrency: DEFAULT_CONCURRENCY, queue_wait: DEFAULT_QUEUE_WAIT }
    }
}

/// This worker's heavy computations: the limits and the permits.
pub(crate) struct HeavyWork {
    limits: HeavyLimits,
    permits: Arc<Semaphore>,
}

impl HeavyWork {
    pub(crate) fn new(limits: HeavyLimits) -> Self {
        Self { limits, permits: Arc::new(Semaphore::new(limits.concurrency.max(1))) }
    }

    /// 0 + 1 + … + (n-1) on the blocking pool, once a permit is free; stops early (and returns
    /// its permit) if the request is dropped.
    async fn sum_below(&self, n: u64) -> Result<u128, AppError> {
        let busy =
            || AppError::Busy { what: "heavy computations", retry_after: self.limits.queue_wait.as_secs().max(1) };
        let permit = tokio::time::timeout(self.limits.queue_wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            // Never closed: only a closed semaphore fails to hand out permits.
            .map_err(|_| busy())?;
        let abandoned = CancelOnDrop::default();
        let flag = abandoned.0.clone();
        let sum = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            sum_below(n, &flag)
        })
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
        // Only a dropped request sets the flag, and then nobody reads this.
        sum.ok_or_else(|| AppError::Internal("heavy computation cancelled".to_owned()))
    }
}

/// Sets its flag when dropped: when the request future holding it is dropped (the client went
/// away), the loop on the blocking pool sees the flag and stops.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
pub(super) struct Params {
    n: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Heavy {
    result: u128,
    pid: u32,
}

/// The seed's CPU-bound loop, on the blocking pool so the worker keeps serving other requests.
pub(super) async fn heavy(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Heavy>, AppError> {
    let n = n_from(params, state.heavy.limits.max_n)?;
    tracing::info!(n, "heavy computation started");
    let result = state.heavy.sum_below(n).await?;
    Ok(Json(Heavy { result, pid: state.worker.pid }))
}

#[derive(Serialize)]
pub(super) struct HeavyCached {
    result: u128,
    pid: u32,
    /// False for the one request in the cluster that computed it.
    cached: bool,
    /// `local` (this worker's copy), `redis` (the shared entry), `waited` (the shared entry,
    /// after waiting for another request's computation) or `computed`.
    source: herd_session_store::cache::Source,
}

/// How long a cached sum is kept.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The same sum through the shared cache: concurrent misses across every worker compute it
/// once; everyone else gets the stored result.
pub(super) async fn heavy_cached(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<HeavyCached>, AppError> {
    let n = n_from(params, state.heavy.limits.max_n)?;
    let heavy = &state.heavy;
    let cached = state
        .cache
        .get_or_compute(&cache_key(n), CACHE_TTL, || async move {
            tracing::info!(n, "heavy computation started (cache miss)");
            heavy.sum_below(n).await.map(|sum| sum.to_string())
        })
        .await;
    let result = match &cached {
        Ok(cached) => match cached.source {
            herd_session_store::cache::Source::Local => "local",
            herd_session_store::cache::Source::Redis => "redis",
            herd_session_store::cache::Source::Waited => "waited",
            herd_session_store::cache::Source::Computed => "computed",
        },
        Err(_) => "error",
    };
    state.metrics.cache.inc(&[result]);
    let cached = cached.map_err(|err| match err {
        herd_session_store::cache::CacheError::Store(e) => AppError::from(e),
        herd_session_store::cache::CacheError::Compute(e) => e,
    })?;
    let result = cached.value.parse().map_err(|_| AppError::Internal(format!("cached heavy:{n} is not a number")))?;
    Ok(Json(HeavyCached { result, pid: state.worker.pid, cached: cached.from_cache, source: cached.source }))
}

/// `DELETE /heavy/cached?n=`: forgets the cached sum in Redis and in every worker's local copy.
pub(super) async fn forget_cached(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let n = n_from(params, state.heavy.limits.max_n)?;
    state.cache.invalidate(&cache_key(n)).await?;
    Ok(Json(serde_json::json!({ "invalidated": n })))
}

fn cache_key(n: u64) -> String {
    format!("heavy:{n}")
}

fn n_from(params: Result<Query<Params>, QueryRejection>, max_n: u64) -> Result<u64, AppError> {
    let Query(params) = params.map_err(|r| AppError::bad_request(StatusCode::BAD_REQUEST, r.body_text()))?;
    match params.n.as_deref() {
        None => Ok(DEFAULT_N.min(max_n)),
        Some(raw) => parse_n(raw, max_n).ok_or_else(|| {
            AppError::bad_request(StatusCode::BAD_REQUEST, format!("n must be an integer from 0 to {max_n}"))
        }),
    }
}

/// Accepts `12345` and `1e7`-style integers up to `max_n`.
pub(crate) fn parse_n(raw: &str, max_n: u64) -> Option<u64> {
    let n = match raw.parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            let f: f64 = raw.parse().ok()?;
            if !(f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64) {
                return None;
            }
            f as u64
        }
    };
    (n <= max_n).then_some(n)
}

/// 0 + 1 + … + (n-1), one addition at a time, or `None` once `cancelled` is set (looked at
/// every [`CHUNK`] iterations). `black_box` stops the compiler from replacing the loop with
/// n(n-1)/2, which would make the endpoint measure nothing.
fn sum_below(n: u64, cancelled: &AtomicBool) -> Option<u128> {
    let mut sum: u128 = 0;
    let mut start = 0;
    while start < n {
        if cancelled.load(Ordering::Relaxed) {
            return None;
        }
        let end = start.saturating_add(CHUNK).min(n);
        for i in start..end {
            sum += u128::from(black_box(i));
        }
        start = end;
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_the_formula() {
        let running = AtomicBool::new(false);
        for n in [0u64, 1, 2, 10, 12_345, 3 * CHUNK + 7] {
            assert_eq!(sum_below(n, &running), Some(u128::from(n) * u128::from(n.saturating_sub(1)) / 2));
        }
    }

    #[test]
    fn a_cancelled_sum_stops() {
        assert_eq!(sum_below(u64::MAX, &AtomicBool::new(true)), None);
    }

    #[test]
    fn n_parsing() {
        let max = 10_000_000_000;
        assert_eq!(parse_n("1e7", max), Some(10_000_000));
        assert_eq!(parse_n("42", max), Some(42));
        assert_eq!(parse_n("1e10", max), Some(max));
        assert_eq!(parse_n("10000000001", max), None);
        assert_eq!(parse_n("1e11", max), None);
        assert_eq!(parse_n("1e9", DEFAULT_MAX_N), Some(DEFAULT_MAX_N));
        assert_eq!(parse_n("1e10", DEFAULT_MAX_N), None);
        assert_eq!(parse_n("1e30", max), None);
        assert_eq!(parse_n("-1", max), None);
        assert_eq!(parse_n("1.5", max), None);
        assert_eq!(parse_n("NaN", max), None);
        assert_eq!(parse_n("lots", max), None);
    }

    #[tokio::test]
    async fn beyond_the_cap_a_request_waits_then_is_told_busy() {
        let work =
            HeavyWork::new(HeavyLimits { max_n: u64::MAX, concurrency: 1, queue_wait: Duration::from_millis(50) });
        let held = work.permits.clone().acquire_owned().await.expect("a permit");
        assert!(matches!(work.sum_below(10).await, Err(AppError::Busy { .. })));
        drop(held);
        assert_eq!(work.sum_below(10).await.expect("a free slot"), 45);
    }
}
