//! Prometheus metrics as the scraper asks for them.
//!
//! `prometheus-client` encodes OpenMetrics only: a counter's `# HELP` and
//! `# TYPE` name the family without `_total` while its samples carry it,
//! and the text ends with `# EOF`. Prometheus reads that when it asks for
//! OpenMetrics, but `promtool check metrics`, the Prometheus text format
//! 0.0.4 and the tools built on it do not ("no help text"; the crate's own
//! issue #51 tracks it). So every Lockstep `/metrics` endpoint negotiates:
//! OpenMetrics to a scraper whose `Accept` asks for it, the text format to
//! everyone else, converted from the same encoding by a pure function.
//!
//! `serve` is a daemon's metrics endpoint: `/metrics`, `/healthz` (the
//! process answers) and `/readyz` (it can do its job, else 503 and why).
//!
//! Must never: change a sample's name, labels or value in conversion; only
//! the comment lines and the terminator differ between the two formats.

mod endpoint;

pub use endpoint::{BeforeScrape, Endpoint, Readiness, serve};
use prometheus_client::registry::Registry;

/// The two exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the `Accept` header asks for it, else the text
    /// format (curl, promtool, humans).
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::PrometheusText,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The registry's metrics in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(match format {
        Format::OpenMetrics => text,
        Format::PrometheusText => to_prometheus_text(&text),
    })
}

/// OpenMetrics text as Prometheus text format 0.0.4: a counter's `# HELP`
/// and `# TYPE` name its `_total` samples, `info` and `stateset` families
/// become gauges, `unknown` becomes `untyped`, and `# UNIT`, `# EOF` and
/// exemplars are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A HELP line waits for its family's TYPE line, which decides the name.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take());
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "stateset" => (family.to_owned(), "gauge"),
                "unknown" => (family.to_owned(), "untyped"),
                other => (family.to_owned(), other),
            };
            match help.take() {
                Some((helped, text)) if helped == family => {
                    flush_help(&mut out, Some((&name, text)));
                }
                other => flush_help(&mut out, other),
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take());
        // An exemplar follows " # " after the value.
        let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
        out.push_str(sample);
        out.push('\n');
    }
    flush_help(&mut out, help);
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;

    #[test]
    fn counters_are_named_by_their_samples_and_the_terminator_goes() {
        let om = "# HELP jobs Jobs done.\n# TYPE jobs counter\njobs_total{k=\"a\"} 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total{k=\"a\"} 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }

    #[test]
    fn units_exemplars_info_and_unknown_are_translated() {
        let om = "# HELP t_seconds Time.\n# TYPE t_seconds histogram\n# UNIT t_seconds seconds\nt_seconds_bucket{le=\"1\"} 1 # {trace=\"x\"} 0.5\nt_seconds_sum 0.5\nt_seconds_count 1\n# HELP build Build.\n# TYPE build info\nbuild_info{v=\"1\"} 1\n# TYPE odd unknown\nodd 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP t_seconds Time.\n# TYPE t_seconds histogram\nt_seconds_bucket{le=\"1\"} 1\nt_seconds_sum 0.5\nt_seconds_count 1\n# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n# TYPE odd untyped\nodd 2\n"
        );
    }

    #[test]
    fn a_registry_encodes_in_both_formats() {
        let mut registry = Registry::default();
        let done = Counter::<u64>::default();
        let depth = Gauge::<i64>::default();
        let latency = Histogram::new([0.1, 1.0]);
        registry.register("lockstep_jobs", "Jobs done", done.clone());
        registry.register("lockstep_depth", "Queue depth", depth.clone());
        registry.register("lockstep_latency_seconds", "Latency", latency.clone());
        done.inc();
        depth.set(4);
        latency.observe(0.5);
        let om = encode(&registry, Format::OpenMetrics).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = encode(&registry, Format::PrometheusText).unwrap();
        assert!(
            text.contains("# TYPE lockstep_jobs_total counter\nlockstep_jobs_total 1\n"),
            "{text}"
        );
        assert!(text.contains("lockstep_depth 4\n"), "{text}");
        assert!(
            text.contains("lockstep_latency_seconds_bucket{le=\"1.0\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn the_scraper_chooses_the_format() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
    }
}
