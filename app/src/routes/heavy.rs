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
    let Query(params) = params.map_err(|r| AppError::bad_request(StatusCode::BAD_REQUEST, r.body_text()))?;
    let n = match params.n.as_deref() {
        None => DEFAULT_N,
        Some(raw) => parse_n(raw).ok_or_else(|| {
            AppError::bad_request(StatusCode::BAD_REQUEST, format!("n must be an integer from 0 to {MAX_N} (1e10)"))
        })?,
    };
    tracing::info!(n, "heavy computation started");
    let result = tokio::task::spawn_blocking(move || sum_below(n))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(Heavy { result, pid: state.worker.pid }))
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
