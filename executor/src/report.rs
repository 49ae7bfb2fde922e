//! Keeping a report within one NATS message. Each stream is already capped
//! by the sandbox (1 MiB by default), but both together, JSON-escaped,
//! can exceed the server's `max_payload` (1 MiB by default): the longer
//! stream is cut until the report fits, and it says `truncated`.

use tandem_domain::work::{Report, RunOutput};

/// Room for the subject, headers and the rest of the report.
const HEADROOM: usize = 8 * 1024;

pub fn fit_report(mut report: Report, max_payload: usize) -> Report {
    let budget = max_payload.saturating_sub(HEADROOM).max(1024);
    for _ in 0..16 {
        let size = serde_json::to_vec(&report).map_or(0, |b| b.len());
        if size <= budget {
            break;
        }
        let Some(output) = output_mut(&mut report) else {
            break;
        };
        let over = size - budget;
        // Cut the stream that costs more on the wire (escaping can make a
        // byte cost six), by what is over in its own encoded measure.
        let encoded = |text: &str| serde_json::to_string(text).map_or(text.len(), |j| j.len());
        let (out_cost, err_cost) = (encoded(&output.stdout), encoded(&output.stderr));
        let (longer, cost) = if out_cost >= err_cost {
            (&mut output.stdout, out_cost)
        } else {
            (&mut output.stderr, err_cost)
        };
        let bytes_per_byte = cost as f64 / longer.len().max(1) as f64;
        let cut = ((over as f64 / bytes_per_byte).ceil() as usize).max(longer.len() / 16);
        let keep = longer.len().saturating_sub(cut);
        cut_at_char(longer, keep);
        output.truncated = true;
    }
    report
}

fn output_mut(report: &mut Report) -> Option<&mut RunOutput> {
    match report {
        Report::Finished { output, .. } | Report::LimitExceeded { output, .. } => Some(output),
        Report::AttemptFailed { .. } => None,
    }
}

fn cut_at_char(s: &mut String, mut len: usize) {
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    s.truncate(len);
}

#[cfg(test)]
mod tests {
    use tandem_domain::JobId;

    use super::*;

    fn finished(stdout: String, stderr: String) -> Report {
        Report::Finished {
            job_id: JobId::generate(),
            attempt: 1,
            exit_code: 0,
            output: RunOutput {
                stdout,
                stderr,
                duration_ms: 1,
                truncated: false,
            },
        }
    }

    #[test]
    fn a_small_report_is_left_alone() {
        let report = finished("hi".into(), String::new());
        assert_eq!(fit_report(report.clone(), 1 << 20), report);
    }

    #[test]
    fn two_full_streams_are_cut_to_one_message_and_marked_truncated() {
        let big = "é".repeat(600 * 1024);
        let escaped = "\u{1}".repeat(300 * 1024);
        let fitted = fit_report(finished(big, escaped), 1 << 20);
        assert!(serde_json::to_vec(&fitted).unwrap().len() <= (1 << 20) - HEADROOM);
        let Report::Finished { output, .. } = fitted else {
            panic!("still a finished report")
        };
        assert!(output.truncated);
        assert!(
            output.stdout.starts_with('é'),
            "kept the beginning, at a char boundary"
        );
    }
}
