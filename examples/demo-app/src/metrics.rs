//! The app's own Prometheus metrics, on `GET /metrics` of its listener
//! (OpenMetrics or the Prometheus text format, as the scraper asks):
//! requests by route and status code, and their latency. This is what an
//! analysis gate queries to tell a release that serves errors from one
//! that is merely up.
//!
//! ```text
//! demo_http_requests_total{route="/publish",code="200"}
//! demo_http_request_duration_seconds_bucket{route="/publish",le="…"}
//! ```
//!
//! Must never: label by anything unbounded (a path that matched no route
//! is not counted; the code is one of the few the app answers).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use exposition::Format;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric of the app and the registry that encodes them.
#[derive(Debug)]
pub struct AppMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Default for AppMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register(
            "demo_http_requests",
            "HTTP requests answered, by route and status code",
            requests.clone(),
        );
        registry.register(
            "demo_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
        }
    }
}

impl AppMetrics {
    /// Counts one answered request.
    pub fn observe(&self, route: &str, code: StatusCode, took: Duration) {
        let route = route.to_owned();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                code: code.as_u16().to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// The exposition text in `format`.
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        exposition::encode(&self.registry, format)
    }
}

/// Middleware on the matched routes: counts and times every answer.
pub async fn track(
    State(metrics): State<Arc<AppMetrics>>,
    route: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(route.as_str(), response.status(), started.elapsed());
    response
}

/// `GET /metrics`, in the format the scraper asks for.
pub async fn exposition(State(metrics): State<Arc<AppMetrics>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let format = Format::negotiate(accept);
    match metrics.encode(format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_code() {
        let m = AppMetrics::default();
        m.observe("/publish", StatusCode::OK, Duration::from_millis(2));
        m.observe("/publish", StatusCode::OK, Duration::from_millis(3));
        m.observe(
            "/publish",
            StatusCode::INTERNAL_SERVER_ERROR,
            Duration::ZERO,
        );
        let text = m.encode(Format::PrometheusText).unwrap();
        assert!(
            text.contains(r#"demo_http_requests_total{route="/publish",code="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"demo_http_requests_total{route="/publish",code="500"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"demo_http_request_duration_seconds_count{route="/publish"} 3"#),
            "{text}"
        );
    }
}
