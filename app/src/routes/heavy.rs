use std::hint::black_box;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    Json,
};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::error::AppError;

const DEFAULT_N: u64 = 10_000_000;
const MAX_N: u64 = 10_000_000_000;

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
    let n = n_from(params)?;
    tracing::info!(n, "heavy computation started");
    let result =
        tokio::task::spawn_blocking(move || sum_below(n)).await.map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(Heavy { result, pid: state.worker.pid }))
}

#[derive(Serialize)]
pub(super) struct HeavyCached {
    result: u128,
    pid: u32,
    /// False for the one request in the cluster that computed it.
    cached: bool,
    /// `local` (this worker's copy), `redis` (the shared entry) or `computed`.
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
    let n = n_from(params)?;
    let cached = state
        .cache
        .get_or_compute(&cache_key(n), CACHE_TTL, || async move {
            tracing::info!(n, "heavy computation started (cache miss)");
            tokio::task::spawn_blocking(move || sum_below(n).to_string()).await
        })
        .await
        .map_err(|err| match err {
            herd_session_store::cache::CacheError::Store(e) => AppError::from(e),
            herd_session_store::cache::CacheError::Compute(e) => AppError::Internal(e.to_string()),
        })?;
    let result = cached.value.parse().map_err(|_| AppError::Internal(format!("cached heavy:{n} is not a number")))?;
    Ok(Json(HeavyCached { result, pid: state.worker.pid, cached: cached.from_cache, source: cached.source }))
}

/// `DELETE /heavy/cached?n=`: forgets the cached sum in Redis and in every worker's local copy.
pub(super) async fn forget_cached(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let n = n_from(params)?;
    state.cache.invalidate(&cache_key(n)).await?;
    Ok(Json(serde_json::json!({ "invalidated": n })))
}

fn cache_key(n: u64) -> String {
    format!("heavy:{n}")
}

fn n_from(params: Result<Query<Params>, QueryRejection>) -> Result<u64, AppError> {
    let Query(params) = params.map_err(|r| AppError::bad_request(StatusCode::BAD_REQUEST, r.body_text()))?;
    match params.n.as_deref() {
        None => Ok(DEFAULT_N),
        Some(raw) => parse_n(raw).ok_or_else(|| {
            AppError::bad_request(StatusCode::BAD_REQUEST, format!("n must be an integer from 0 to {MAX_N} (1e10)"))
        }),
    }
}

/// Accepts `12345` and `1e7`-style integers up to [`MAX_N`].
fn parse_n(raw: &str) -> Option<u64> {
    let n = match raw.parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            let f: f64 = raw.parse().ok()?;
            if !(f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= MAX_N as f64) {
                return None;
            }
            f as u64
        }
    };
    (n <= MAX_N).then_some(n)
}

/// 0 + 1 + … + (n-1), one addition at a time. `black_box` stops the compiler from replacing the
/// loop with n(n-1)/2, which would make the endpoint measure nothing.
fn sum_below(n: u64) -> u128 {
    let mut sum: u128 = 0;
    for i in 0..n {
        sum += u128::from(black_box(i));
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_the_formula() {
        for n in [0u64, 1, 2, 10, 12_345] {
            assert_eq!(sum_below(n), u128::from(n) * u128::from(n.saturating_sub(1)) / 2);
        }
    }

    #[test]
    fn n_parsing() {
        assert_eq!(parse_n("1e7"), Some(10_000_000));
        assert_eq!(parse_n("42"), Some(42));
        assert_eq!(parse_n("1e10"), Some(MAX_N));
        assert_eq!(parse_n("10000000001"), None);
        assert_eq!(parse_n("1e11"), None);
        assert_eq!(parse_n("-1"), None);
        assert_eq!(parse_n("1.5"), None);
        assert_eq!(parse_n("NaN"), None);
        assert_eq!(parse_n("lots"), None);
    }
}
