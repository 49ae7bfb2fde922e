//! Measuring: a timed request and its outcome, errors counted by kind,
//! nearest-rank percentiles, and the PASS/MISS verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode};

use super::wire::{Call, Wire};

/// What one measured request came back with.
pub(super) enum Outcome {
    Ok {
        has_position: bool,
    },
    /// `"<status> <code>"` or `"transport: ..."`, counted by kind.
    Failed(String),
}

pub(super) async fn send(request: RequestBuilder) -> Outcome {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Outcome::Failed(format!("transport: {e}")),
    };
    let status = response.status();
    // The body is part of the answer: read it inside the timed span.
    match response.bytes().await {
        Ok(body) => judge(status, &body),
        Err(e) => Outcome::Failed(format!("transport (body): {e}")),
    }
}

/// [`send`] on a load loop's own connection.
pub(super) async fn send_on(wire: &mut Wire, call: Call<'_>) -> Outcome {
    match wire.send(call).await {
        Ok((status, body)) => judge(status, &body),
        Err(e) => Outcome::Failed(format!("transport: {e:#}")),
    }
}

/// What a load loop reads of an answer. Deserializing these two fields
/// alone skips the rest of the body without building it.
#[derive(Default, serde::Deserialize)]
struct Answer<'a> {
    position: Option<i64>,
    #[serde(borrow)]
    code: Option<std::borrow::Cow<'a, str>>,
}

fn judge(status: StatusCode, body: &[u8]) -> Outcome {
    let answer: Answer = serde_json::from_slice(body).unwrap_or_default();
    if status.is_success() {
        Outcome::Ok {
            has_position: answer.position.is_some(),
        }
    } else {
        let code = answer.code.as_deref().unwrap_or("(no code)");
        Outcome::Failed(format!("{} {code}", status.as_u16()))
    }
}

pub(super) type Errors = BTreeMap<String, usize>;

pub(super) fn merge_errors(into: &mut Errors, from: Errors) {
    for (kind, n) in from {
        *into.entry(kind).or_default() += n;
    }
}

pub(super) fn error_total(errors: &Errors) -> usize {
    errors.values().sum()
}

pub(super) fn print_errors(indent: &str, errors: &Errors) {
    for (kind, n) in errors {
        println!("{indent}{n:>8} × {kind}");
    }
}

// -- latency statistics ------------------------------------------------------

#[derive(Clone, Copy)]
pub(super) struct Percentiles {
    pub(super) count: usize,
    pub(super) p50: Duration,
    pub(super) p90: Duration,
    pub(super) p99: Duration,
    pub(super) max: Duration,
}

impl Percentiles {
    /// `None` without samples.
    pub(super) fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        let max = *samples.last()?;
        Some(Self {
            count: samples.len(),
            p50: nearest_rank(&samples, 50.0),
            p90: nearest_rank(&samples, 90.0),
            p99: nearest_rank(&samples, 99.0),
            max,
        })
    }
}

/// The nearest-rank percentile of a sorted, non-empty slice.
fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(super) fn verdict(met: bool) -> &'static str {
    if met {
        "PASS"
    } else {
        "MISS"
    }
}

/// The value of metric `name` (unlabelled) in a Prometheus exposition.
pub(super) fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|value| value.trim().parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples).unwrap();
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p90, Duration::from_millis(90));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
        assert!(Percentiles::of(Vec::new()).is_none());
        let one = Percentiles::of(vec![Duration::from_millis(7)]).unwrap();
        assert_eq!(one.p50, Duration::from_millis(7));
    }

    #[test]
    fn metric_values_are_read_by_exact_name() {
        let text = "a_total_x 9\na_total 3\n# HELP a_total\n";
        assert_eq!(metric_value(text, "a_total"), Some(3.0));
        assert_eq!(metric_value(text, "b_total"), None);
    }
}
