//! The worker's HTTP series, recorded by a middleware around the app's routes.
//!
//! The route label is the route *template* axum matched (`MatchedPath`: `/users/{id}`, never
//! `/users/42`), so a client cannot grow the series without bound; requests that matched no
//! route are `unmatched`, and methods other than the standard ones are `other`.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::Response,
};

use super::WorkerMetrics;

/// Records one request: its count by route, method and status class, its latency, and
/// in-flight requests while it runs.
pub(crate) async fn record(State(metrics): State<WorkerMetrics>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let route = route.as_deref().unwrap_or("unmatched").to_owned();
    let method = method_label(request.method());
    let http = metrics.http();
    http.in_flight.add(1);
    // Decremented when the request ends, answered or abandoned by its client.
    let _in_flight = InFlight(metrics.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    http.duration.observe_duration(&[&route], started.elapsed());
    http.requests.inc(&[&route, method, status_class(response.status().as_u16())]);
    response
}

struct InFlight(WorkerMetrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.http().in_flight.add(-1);
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, middleware::from_fn_with_state, routing::get, Router};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_not_raw_path() {
        let metrics = WorkerMetrics::default();
        let app = Router::new()
            .route("/users/{id}", get(|| async { "hi" }))
            .layer(from_fn_with_state(metrics.clone(), record));
        for path in ["/users/1", "/users/2", "/nowhere"] {
            let request = axum::http::Request::get(path).body(Body::empty()).expect("request");
            let _ = app.clone().oneshot(request).await;
        }
        let requests = &metrics.http().requests;
        assert_eq!(requests.get(&["/users/{id}", "GET", "2xx"]), 2);
        assert_eq!(requests.get(&["unmatched", "GET", "4xx"]), 1);
        assert_eq!(metrics.http().in_flight.get(), 0);
    }
}
