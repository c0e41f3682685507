//! Runs a strategy's analysis gates against the Prometheus named in
//! coordinator.toml (`[prometheus] url`): `count` instant queries at
//! `interval`, each judged and tallied by the pure `rollout::analysis`.
//!
//! Owns the query to `/api/v1/query` (over `http_client`, http or https;
//! connect and answer deadlines, a bounded response) and reading its
//! answer into a `Sample`
//! (`read_answer`, pure). Must never: query any URL but the configured
//! one, let a measurement it could not take count as a pass, or wait
//! without a deadline.
//!
//! ```text
//! driver RunAnalysis ─► fill(query, bindings) ─► every interval: GET /api/v1/query ─► Sample
//!                                                 Analysis::measure ─► Tally::add ─► Verdict ─► driver
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use rollout::analysis::{Analysis, Sample, Tally, Verdict};
use rollout::{Bindings, analysis};

use crate::http_client::{self, HttpError, Origin, Transport, TrustError};

/// Prometheus on the coordinator's network answers a connect at once;
/// longer means it is down or unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An instant query's answer is one sample; a megabyte is thousands of
/// series, which the query should have aggregated.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The Prometheus HTTP API the coordinator queries: `http://` or
/// `https://`, host, port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusEndpoint {
    origin: Origin,
    prefix: String,
    transport: Transport,
}

/// What is wrong with `[prometheus]`: its `url` or its `ca_file`.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0}")]
    Url(String),
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl PrometheusEndpoint {
    /// Parses `http[s]://host[:port][/prefix]`; for https the server must
    /// chain to `ca_file` (PEM) or, without it, to the system's CAs.
    /// Blocking (reads the CA file).
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Self, EndpointError> {
        let (origin, prefix) = Origin::split(url).map_err(EndpointError::Url)?;
        if prefix.contains(['?', '#']) {
            return Err(EndpointError::Url(format!(
                "{url:?}: no query or fragment; the base URL of the HTTP API only"
            )));
        }
        let transport = Transport::for_origin(&origin, ca_file)?;
        Ok(Self {
            origin,
            prefix: prefix.trim_end_matches('/').to_owned(),
            transport,
        })
    }
}

impl fmt::Display for PrometheusEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.prefix)
    }
}

/// What went wrong talking to Prometheus; each becomes an inconclusive
/// measurement naming it.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("prometheus {endpoint}")]
    Exchange {
        endpoint: String,
        #[source]
        source: HttpError,
    },
    #[error("prometheus {endpoint}: no answer within {timeout:?}")]
    AnswerTimeout { endpoint: String, timeout: Duration },
}

/// One instant query, bounded by `timeout` as a whole (connect included);
/// a failure is a `Sample::Error` naming it.
pub async fn query(endpoint: &PrometheusEndpoint, promql: &str, timeout: Duration) -> Sample {
    match tokio::time::timeout(timeout, exchange(endpoint, promql, timeout)).await {
        Err(_) => Sample::Error(cli::chain(&QueryError::AnswerTimeout {
            endpoint: endpoint.to_string(),
            timeout,
        })),
        Ok(Err(err)) => Sample::Error(cli::chain(&err)),
        Ok(Ok((status, body))) => read_answer(status, &body),
    }
}

async fn exchange(
    endpoint: &PrometheusEndpoint,
    promql: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), QueryError> {
    let failed = |source| QueryError::Exchange {
        endpoint: endpoint.to_string(),
        source,
    };
    let path = format!(
        "{}/api/v1/query?query={}&timeout={}ms",
        endpoint.prefix,
        percent_encode(promql),
        timeout.as_millis()
    );
    let request = http_client::request(&endpoint.origin, hyper::Method::GET, &path)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| failed(HttpError::Request(e)))?;
    let response = http_client::send(
        &endpoint.origin,
        &endpoint.transport,
        request,
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(failed)?;
    let status = response.status().as_u16();
    let body = http_client::read_body(response, MAX_ANSWER_BYTES)
        .await
        .map_err(failed)?;
    Ok((status, body))
}

/// Reads `/api/v1/query`'s answer: a scalar or a one-sample vector is a
/// value; an empty vector is `Empty` (no series matched: no evidence);
/// more than one series, an error status or anything else is an error
/// saying which.
pub fn read_answer(status: u16, body: &[u8]) -> Sample {
    let answer: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Sample::Error(format!(
                "prometheus answered HTTP {status} with something that is not JSON: {e}"
            ));
        }
    };
    if answer["status"] != "success" {
        return Sample::Error(format!(
            "prometheus answered HTTP {status}: {} {}",
            answer["errorType"].as_str().unwrap_or("error"),
            answer["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let data = &answer["data"];
    let value = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([]) => return Sample::Empty,
            Some([one]) => &one["value"],
            Some(many) => {
                return Sample::Error(format!(
                    "the query returned {} series; aggregate it to one (sum, max, ...)",
                    many.len()
                ));
            }
            None => return Sample::Error("a vector answer without a result list".into()),
        },
        other => {
            return Sample::Error(format!(
                "the query returned a {}, not a scalar or an instant vector",
                other.unwrap_or("result of no type")
            ));
        }
    };
    match value[1].as_str().map(str::parse::<f64>) {
        Some(Ok(v)) => Sample::Value(v),
        _ => Sample::Error(format!("a sample without a numeric value: {value}")),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One run: what to query and where.
#[derive(Debug, Clone)]
pub struct AnalysisRun {
    pub deployment: String,
    pub analysis: Analysis,
    pub bindings: Bindings,
    /// The baseline form's bindings (the hosts still on the previous release).
    pub baseline: Option<Bindings>,
}

/// Takes the run's measurements and returns its verdict (never `Pending`).
/// Without a configured Prometheus every measurement is inconclusive.
pub async fn run_analysis(endpoint: Option<PrometheusEndpoint>, run: AnalysisRun) -> Verdict {
    let a = &run.analysis;
    let promql = analysis::fill(&a.query, &run.bindings);
    let baseline = run.baseline.as_ref().map(|b| analysis::fill(&a.query, b));
    let interval = Duration::from_millis(a.interval.0);
    let timeout = Duration::from_millis(analysis::QUERY_TIMEOUT.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tally = Tally::default();
    loop {
        tick.tick().await;
        let (value, base) = match &endpoint {
            None => (
                Sample::Error("no [prometheus] url in coordinator.toml".into()),
                None,
            ),
            Some(e) => {
                let value = query(e, &promql, timeout).await;
                let base = match &baseline {
                    Some(q) => Some(query(e, q, timeout).await),
                    None => None,
                };
                (value, base)
            }
        };
        let measurement = a.measure(value, base);
        tracing::info!(deployment = run.deployment, analysis = a.name, query = promql, measurement = ?measurement, "analysis measurement");
        match tally.add(a, measurement) {
            Verdict::Pending => {}
            verdict => return verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_or_https_base_url_is_an_endpoint() {
        let e = PrometheusEndpoint::parse("http://127.0.0.1:9090/prom/", None).unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:9090/prom");
        assert_eq!(
            PrometheusEndpoint::parse("http://p", None)
                .unwrap()
                .to_string(),
            "http://p"
        );
        for bad in [
            "ftp://p:9090",
            "127.0.0.1:9090",
            "http://u:pw@p:9090",
            "http://p:9090/x?y=1",
            "http://:9090",
        ] {
            assert!(
                PrometheusEndpoint::parse(bad, None).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn answers_are_read_as_one_value_no_data_or_an_error() {
        let vector = |result: &str| {
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#)
        };
        assert_eq!(
            read_answer(
                200,
                vector(r#"[{"metric":{},"value":[1.5,"0.25"]}]"#).as_bytes()
            ),
            Sample::Value(0.25)
        );
        assert_eq!(read_answer(200, vector("[]").as_bytes()), Sample::Empty);
        let Sample::Error(many) = read_answer(
            200,
            vector(r#"[{"value":[1,"1"]},{"value":[1,"2"]}]"#).as_bytes(),
        ) else {
            panic!("two series read as one value");
        };
        assert!(many.contains("2 series"), "{many}");
        assert!(matches!(
            read_answer(
                200,
                br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#
            ),
            Sample::Value(v) if v.is_nan()
        ));
        let Sample::Error(bad) = read_answer(
            400,
            br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#,
        ) else {
            panic!("an error answer read as a value");
        };
        assert!(
            bad.contains("HTTP 400: bad_data parse error at char 5"),
            "{bad}"
        );
        assert!(matches!(read_answer(502, b"<html>"), Sample::Error(_)));
        assert!(matches!(
            read_answer(
                200,
                br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#
            ),
            Sample::Error(_)
        ));
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"sum(x{code="500"})"#),
            "sum%28x%7Bcode%3D%22500%22%7D%29"
        );
    }

    /// #16: the analysis gates' client speaks https to a Prometheus whose
    /// certificate chains to the `ca_file`, and refuses one that does not,
    /// naming the TLS failure as the measurement's error.
    #[tokio::test]
    async fn an_https_prometheus_from_the_ca_file_answers_and_another_is_refused() {
        use crate::http_client::test_server::{TestCa, TlsServer};
        let answer = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#;
        let server = TlsServer::start(&["prometheus.test", "127.0.0.1"], answer).await;
        let url = format!("https://127.0.0.1:{}/prom", server.addr.port());
        let e = PrometheusEndpoint::parse(&url, Some(&server.ca.ca)).unwrap();
        let timeout = Duration::from_secs(30);
        assert_eq!(
            query(&e, r#"sum(x{code="500"})"#, timeout).await,
            Sample::Value(0.25)
        );
        assert_eq!(
            server.requests(),
            [
                "GET /prom/api/v1/query?query=sum%28x%7Bcode%3D%22500%22%7D%29&timeout=30000ms HTTP/1.1"
            ]
        );
        let other = TestCa::new("another CA");
        let e = PrometheusEndpoint::parse(&url, Some(&other.ca)).unwrap();
        let Sample::Error(why) = query(&e, "up", timeout).await else {
            panic!("a Prometheus from another CA answered");
        };
        assert_eq!(
            why,
            format!(
                "prometheus {url}: TLS handshake with 127.0.0.1 failed: invalid peer certificate: UnknownIssuer"
            )
        );
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_an_error_naming_it() {
        // Port 9 (discard) on loopback: nothing listens there in tests.
        let e = PrometheusEndpoint::parse("http://127.0.0.1:9", None).unwrap();
        let Sample::Error(why) = query(&e, "up", Duration::from_secs(5)).await else {
            panic!("an unreachable Prometheus answered");
        };
        assert!(why.contains("http://127.0.0.1:9"), "{why}");
    }
}
