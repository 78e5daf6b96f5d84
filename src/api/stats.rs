//! StatsService: server-wide counts and recent ingest rates.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::to_status;
use crate::pb::stats_service_server::StatsService;
use crate::pb::{self, FindingStatus, Priority, Severity, TaskState};
use crate::storage::{Storage, now_micros, stats};

const MINUTE_MICROS: i64 = 60_000_000;
const HOUR_MICROS: i64 = 60 * MINUTE_MICROS;

/// How long the server returns the same figures. Counting a table reads
/// all of it, so on tens of millions of rows one count takes seconds; calls
/// within this period share one count.
pub const STATS_CACHE_TTL: Duration = Duration::from_secs(5);

/// Handlers of `StatsService`, with the figures of the last count.
pub struct StatsApi {
    storage: Storage,
    /// When the cached figures were counted, and the figures. The lock is
    /// held while counting, so calls that arrive meanwhile wait for that
    /// count instead of starting their own.
    cached: Mutex<Option<(Instant, pb::Stats)>>,
}

impl StatsApi {
    /// Creates the handlers on `storage`, with no figures counted yet.
    pub fn new(storage: Storage) -> Self {
        StatsApi {
            storage,
            cached: Mutex::new(None),
        }
    }

    /// Counts every table and builds the response.
    async fn count(&self) -> Result<pb::Stats, Status> {
        let now = now_micros();
        let counts = self
            .storage
            .run(move |conn| stats::counts(conn, now - MINUTE_MICROS, now - HOUR_MICROS))
            .await
            .map_err(to_status)?;

        let tasks_by_queue_and_state = counts
            .tasks_by_queue_and_state
            .into_iter()
            .map(|(queue, state, count)| pb::NamedCount {
                name: format!(
                    "{queue}/{}",
                    TaskState::try_from(state)
                        .map(|state| state.as_str_name())
                        .unwrap_or("TASK_STATE_UNSPECIFIED")
                ),
                count,
            })
            .collect();
        Ok(pb::Stats {
            crew_outputs: counts.crew_outputs,
            findings: counts.findings,
            fixes: counts.fixes,
            log_entries: counts.log_entries,
            tasks: counts.tasks,
            findings_by_priority: named(counts.findings_by_priority, |priority: Priority| {
                priority.as_str_name()
            }),
            findings_by_status: named(counts.findings_by_status, |status: FindingStatus| {
                status.as_str_name()
            }),
            log_entries_by_severity: by_severity(counts.log_entries_by_severity),
            tasks_by_queue_and_state,
            log_entries_rate: Some(rate(
                counts.log_entries_since_minute,
                counts.log_entries_since_hour,
            )),
            findings_rate: Some(rate(
                counts.findings_since_minute,
                counts.findings_since_hour,
            )),
        })
    }
}

/// Names each group by its enum value name, or by the number when the
/// value is not one the proto defines.
fn named<E: TryFrom<i32>>(
    groups: Vec<(i32, i64)>,
    name_of: impl Fn(E) -> &'static str,
) -> Vec<pb::NamedCount> {
    groups
        .into_iter()
        .map(|(value, count)| pb::NamedCount {
            name: E::try_from(value)
                .map(&name_of)
                .map(str::to_string)
                .unwrap_or_else(|_| value.to_string()),
            count,
        })
        .collect()
}

/// Folds severity numbers 1 to 24 into their six ranges (TRACE 1-4, DEBUG
/// 5-8, INFO 9-12, WARN 13-16, ERROR 17-20, FATAL 21-24).
fn by_severity(groups: Vec<(i32, i64)>) -> Vec<pb::NamedCount> {
    let mut ranges: Vec<pb::NamedCount> = Vec::new();
    for (number, count) in groups {
        let base = ((number.clamp(1, 24) - 1) / 4) * 4 + 1;
        let name = Severity::try_from(base)
            .map(|severity| severity.as_str_name())
            .unwrap_or("SEVERITY_UNSPECIFIED");
        match ranges.iter_mut().find(|range| range.name == name) {
            Some(range) => range.count += count,
            None => ranges.push(pb::NamedCount {
                name: name.to_string(),
                count,
            }),
        }
    }
    ranges
}

fn rate(since_minute: i64, since_hour: i64) -> pb::IngestRate {
    pb::IngestRate {
        last_minute_per_second: since_minute as f64 / 60.0,
        last_hour_per_second: since_hour as f64 / 3_600.0,
    }
}

#[tonic::async_trait]
impl StatsService for StatsApi {
    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        let mut cached = self.cached.lock().await;
        if let Some((counted_at, stats)) = cached.as_ref()
            && counted_at.elapsed() < STATS_CACHE_TTL
        {
            return Ok(Response::new(stats.clone()));
        }

        let stats = self.count().await?;
        *cached = Some((Instant::now(), stats.clone()));
        Ok(Response::new(stats))
    }
}

#[cfg(test)]
mod tests {
    use super::by_severity;

    #[test]
    fn severities_fold_into_ranges() {
        let folded = by_severity(vec![(9, 2), (10, 3), (13, 1), (24, 4)]);
        let pairs: Vec<(&str, i64)> = folded
            .iter()
            .map(|range| (range.name.as_str(), range.count))
            .collect();
        assert_eq!(
            pairs,
            [
                ("SEVERITY_INFO", 5),
                ("SEVERITY_WARN", 1),
                ("SEVERITY_FATAL", 4)
            ]
        );
    }
}
