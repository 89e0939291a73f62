//! Which topics someone watches live: the announcements gateways send so the aggregator renders only those live.
//!
//! Rendering every topic live costs the aggregator and NATS work per topic
//! and tick whether or not anyone subscribed; with 10,000 KPIs (30,000
//! topics) that was most of the pipeline's work. A holder of a live update
//! subscription announces its topic on [`INTEREST_SUBJECT`] when it
//! subscribes, again every [`REFRESH`] while it holds it, and at once when an
//! aggregator asks on [`INTEREST_QUERY_SUBJECT`] (after it starts). An
//! aggregator treats a topic as watched for [`TTL`] after its last
//! announcement; unwatched topics are still stored, at the store policy's
//! pace, so snapshots and history stay right.
//!
//! Payload: topics as `<code>.<period>`, one per line. Codes cannot hold a
//! `.` or a newline, so the format needs no escaping.

use std::time::Duration;

use crate::code::KpiCode;
use crate::period::Period;
use crate::subject::Topic;

/// Announcements of watched topics.
pub const INTEREST_SUBJECT: &str = "kpi.interest";
/// An aggregator asks every holder to announce what it watches now.
pub const INTEREST_QUERY_SUBJECT: &str = "kpi.interest.query";
/// How often a holder announces its topics again.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long an announcement keeps a topic watched: three refreshes, so one
/// or two lost announcements do not stop its live updates.
pub const TTL: Duration = Duration::from_secs(15);
/// Most topics in one announcement (about 70 bytes each at most: well under
/// NATS's default 1 MiB payload).
pub const MAX_TOPICS_PER_MESSAGE: usize = 4096;

/// An announcement that is not a list of valid topics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterestError {
    #[error("an interest announcement holds at most {MAX_TOPICS_PER_MESSAGE} topics")]
    TooMany,
    #[error("line {line} of an interest announcement is not <code>.<period>: {why}")]
    BadTopic { line: usize, why: String },
}

/// `topics` as announcements of at most [`MAX_TOPICS_PER_MESSAGE`] each.
pub fn encode(topics: &[Topic]) -> Vec<Vec<u8>> {
    topics
        .chunks(MAX_TOPICS_PER_MESSAGE)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len() * 24);
            for t in chunk {
                out.extend_from_slice(t.code.as_str().as_bytes());
                out.push(b'.');
                out.extend_from_slice(t.period.as_str().as_bytes());
                out.push(b'\n');
            }
            out
        })
        .collect()
}

/// The topics of one announcement. A bad line fails the whole message: it
/// came from no holder of ours, and half of it is no better.
pub fn decode(raw: &[u8]) -> Result<Vec<Topic>, InterestError> {
    let mut topics = Vec::new();
    for (i, line) in raw.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if topics.len() == MAX_TOPICS_PER_MESSAGE {
            return Err(InterestError::TooMany);
        }
        let bad = |why: String| InterestError::BadTopic { line: i + 1, why };
        let line = std::str::from_utf8(line).map_err(|_| bad("not UTF-8".into()))?;
        let (code, period) = line
            .rsplit_once('.')
            .ok_or_else(|| bad("no '.' before the period".into()))?;
        let code = KpiCode::parse(code).map_err(|e| bad(e.to_string()))?;
        let period = Period::parse(period).map_err(|e| bad(e.to_string()))?;
        topics.push(Topic::new(code, period));
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(code: &str, period: Period) -> Topic {
        Topic::new(KpiCode::parse(code).expect("code"), period)
    }

    #[test]
    fn announcements_round_trip_in_chunks() {
        let topics: Vec<Topic> = (0..MAX_TOPICS_PER_MESSAGE + 10)
            .map(|i| topic(&format!("k-{i}_x"), Period::ALL[i % 3]))
            .collect();
        let chunks = encode(&topics);
        assert_eq!(chunks.len(), 2);
        let back: Vec<Topic> = chunks
            .iter()
            .flat_map(|c| decode(c).expect("decodes"))
            .collect();
        assert_eq!(back, topics);
        assert!(chunks.iter().all(|c| c.len() < 1 << 20));
        assert!(encode(&[]).is_empty());
        assert_eq!(decode(b""), Ok(vec![]));
    }

    #[test]
    fn anything_but_valid_topics_is_refused_with_its_line() {
        for (raw, line) in [
            (&b"a.minute\nb.week\n"[..], 2),
            (b"a*.hour", 1),
            (b"a.minute\n\n>.day", 3),
            (b"nodot", 1),
            (b"a.b.hour", 1),
            (b"\xff.hour", 1),
        ] {
            match decode(raw) {
                Err(InterestError::BadTopic { line: l, .. }) => assert_eq!(l, line, "{raw:?}"),
                other => panic!("{raw:?}: {other:?}"),
            }
        }
        let many = "a.minute\n".repeat(MAX_TOPICS_PER_MESSAGE + 1);
        assert_eq!(decode(many.as_bytes()), Err(InterestError::TooMany));
    }
}
