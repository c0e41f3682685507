//! A deployment's events read back from etcd, and where its batches'
//! time went: what the rollout benches print to explain a ratio.
//!
//! Must never: write to etcd (it reads what the coordinator wrote).

use crate::{EtcdCluster, HarnessError};

/// One event of a deployment, as the journal's pages hold it.
#[derive(Debug, Clone)]
pub struct EventLine {
    pub at_unix_ms: i64,
    pub kind: String,
    pub instance: String,
    pub message: String,
}

/// Every event of deployment `id`, in order (pages of 50 keys: a page of
/// events may be 60 KiB and etcd's answer is bounded).
pub async fn deployment_events(
    etcd: &EtcdCluster,
    id: &str,
) -> Result<Vec<EventLine>, HarnessError> {
    let mut client = etcd.client().await?;
    let prefix = format!("/lockstep/v1/deployment-events/{id}/");
    let mut end = prefix.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut from = prefix.into_bytes();
    let mut events = Vec::new();
    loop {
        let options = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(50);
        let page = client
            .get(from.clone(), Some(options))
            .await
            .map_err(|source| HarnessError::Etcd {
                endpoint: etcd.endpoints().join(","),
                source,
            })?;
        for kv in page.kvs() {
            let value: serde_json::Value = serde_json::from_slice(kv.value()).map_err(|e| {
                HarnessError::Fixture(format!(
                    "event page {} is not JSON: {e}",
                    String::from_utf8_lossy(kv.key())
                ))
            })?;
            // A page of one step's events (format 2), or one event.
            let page = match value {
                serde_json::Value::Array(page) => page,
                one => vec![one],
            };
            events.extend(page.iter().map(|e| EventLine {
                at_unix_ms: e["at_unix_ms"].as_i64().unwrap_or(0),
                kind: e["kind"].as_str().unwrap_or_default().to_owned(),
                instance: e["instance"].as_str().unwrap_or_default().to_owned(),
                message: e["message"].as_str().unwrap_or_default().to_owned(),
            }));
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(events)
}

/// Where a batch's time goes, from the events' `at_unix_ms` (when the
/// driver took each step): means over the batches that had readinesses,
/// and the worst.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchTimeline {
    pub batches: usize,
    /// Distinct moments readinesses were stepped at: the journal commits
    /// a batch's readinesses took.
    pub readiness_steps: usize,
    /// From a batch's applies to its first readiness.
    pub first_ready_ms: f64,
    /// From a batch's applies to its last readiness.
    pub last_ready_ms: f64,
    pub last_ready_worst_ms: f64,
    /// From a batch's last readiness to the next batch's applies.
    pub next_batch_ms: f64,
    pub next_batch_worst_ms: f64,
}

impl BatchTimeline {
    /// A batch is the applies of one step (one moment); an instance
    /// belongs to the last batch that applied to it.
    pub fn of(events: &[EventLine]) -> Self {
        let mut starts: Vec<i64> = events
            .iter()
            .filter(|e| e.kind == "instance_applying")
            .map(|e| e.at_unix_ms)
            .collect();
        starts.dedup();
        let batch_of = |at: i64| starts.partition_point(|&s| s <= at).checked_sub(1);
        let mut applied = std::collections::HashMap::new();
        for e in events.iter().filter(|e| e.kind == "instance_applying") {
            if let Some(b) = batch_of(e.at_unix_ms) {
                applied.insert(e.instance.as_str(), b);
            }
        }
        // Per batch: first and last readiness, and the moments stepped.
        let mut ready = vec![(i64::MAX, i64::MIN, std::collections::BTreeSet::new()); starts.len()];
        for e in events.iter().filter(|e| e.kind == "instance_ready") {
            if let Some(&b) = applied.get(e.instance.as_str()) {
                let (lo, hi, moments) = &mut ready[b];
                *lo = (*lo).min(e.at_unix_ms);
                *hi = (*hi).max(e.at_unix_ms);
                moments.insert(e.at_unix_ms);
            }
        }
        let (mut first, mut last, mut gap, mut steps) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for (b, (lo, hi, moments)) in ready.iter().enumerate() {
            if moments.is_empty() {
                continue;
            }
            steps += moments.len();
            first.push((lo - starts[b]) as f64);
            last.push((hi - starts[b]) as f64);
            if let Some(next) = starts.get(b + 1) {
                gap.push((next - hi) as f64);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        Self {
            batches: starts.len(),
            readiness_steps: steps,
            first_ready_ms: mean(&first),
            last_ready_ms: mean(&last),
            last_ready_worst_ms: worst(&last),
            next_batch_ms: mean(&gap),
            next_batch_worst_ms: worst(&gap),
        }
    }

    /// One line, against what the plan allows at least: `to_ready_ms`
    /// from a batch's applies to a readiness, `to_next_ms` from its last
    /// readiness to the next batch.
    pub fn describe(&self, to_ready_ms: u64, to_next_ms: u64) -> String {
        format!(
            "per batch ({} batches, {} readiness steps): applies -> first ready {:.0} ms, -> last ready {:.0} ms mean / {:.0} worst (minimum {to_ready_ms} ms); last ready -> next applies {:.0} ms mean / {:.0} worst (minimum {to_next_ms} ms)",
            self.batches,
            self.readiness_steps,
            self.first_ready_ms,
            self.last_ready_ms,
            self.last_ready_worst_ms,
            self.next_batch_ms,
            self.next_batch_worst_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: i64, kind: &str, instance: &str) -> EventLine {
        EventLine {
            at_unix_ms: at,
            kind: kind.to_owned(),
            instance: instance.to_owned(),
            message: String::new(),
        }
    }

    #[test]
    fn batches_are_the_moments_applies_were_stepped_at() {
        let events = [
            event(0, "started", ""),
            event(0, "instance_applying", "a"),
            event(300, "instance_ready", "a"),
            event(1300, "instance_applying", "b"),
            event(1300, "instance_applying", "c"),
            event(1550, "instance_ready", "b"),
            event(1550, "instance_ready", "c"),
            event(1700, "instance_ready", "c"),
        ];
        let timeline = BatchTimeline::of(&events);
        assert_eq!(timeline.batches, 2);
        assert_eq!(timeline.readiness_steps, 3);
        assert_eq!(timeline.first_ready_ms, (300.0 + 250.0) / 2.0);
        assert_eq!(timeline.last_ready_ms, (300.0 + 400.0) / 2.0);
        assert_eq!(timeline.last_ready_worst_ms, 400.0);
        assert_eq!(timeline.next_batch_ms, 1000.0);
    }
}
