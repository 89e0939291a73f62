//! InfluxDB line protocol: `POST /api/v2/write` (v2) and `POST /write` (v1), as Telegraf and Influx clients send them.
//!
//! `measurement[,tag=v...] field=v[,field=v...] [timestamp]`: one event per
//! numeric field (float, `i` integer, `u` unsigned, and booleans as 1/0), KPI
//! `<measurement>` for a field named `value`, else `<measurement>_<field>`;
//! tags become labels. String fields carry no number and are skipped; a line
//! with no numeric field is a bad line. `event_id` is derived from the KPI,
//! tags, timestamp and value, so a retried write counts once (a point without
//! a timestamp takes the server's clock and gets a fresh id).
//!
//! Answers follow InfluxDB: 204 when every point is stored; 400
//! `{"code":"invalid","message":..,"line":n}` naming the first bad line
//! (parse error or refused event) while the good lines are stored, as
//! InfluxDB's partial writes are; 401, 403, 413, 429 and 503 as for every format.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kpi_proto::v1::{Event, Status as EventStatus};
use serde::Deserialize;

use super::Refused;
use crate::accept::{content_id, Accept, Outcome, Tally};

/// The query parameters either API version may send; unknown ones are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct WriteParams {
    /// v2: `ns`, `us`, `ms`, `s`; v1: also `n`, `u`, `m`, `h`.
    precision: Option<String>,
    /// v1's password parameter, read as the publisher token.
    p: Option<String>,
}

/// Both `/api/v2/write` and `/write`: the v1 parameters are a subset of v2's
/// here (`db`, `rp`, `org` and `bucket` name no place in kpistream).
pub async fn write_handler(
    State(accept): State<Accept>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(&accept, params, &headers, body).await
}

/// Influx's error body: `{"code":..,"message":..}`.
fn influx_error(r: &Refused) -> Response {
    let code = match r.status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::PAYLOAD_TOO_LARGE => "request too large",
        StatusCode::TOO_MANY_REQUESTS => "too many requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "invalid",
    };
    let body = serde_json::json!({"code": code, "message": r.message});
    r.respond("application/json; charset=utf-8", body.to_string())
}

async fn write(accept: &Accept, params: WriteParams, headers: &HeaderMap, body: Body) -> Response {
    let publisher = match super::admit(accept, headers, params.p.as_deref()) {
        Ok(p) => p,
        Err(r) => return influx_error(&r.into()),
    };
    let Some(nanos_per_unit) = precision(params.precision.as_deref()) else {
        return influx_error(&Refused::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "precision {:?} is not one of ns, us, ms, s (v1 also n, u, m, h)",
                params.precision.unwrap_or_default()
            ),
        ));
    };
    let bytes = match super::read_body(headers, body, accept.max_body_bytes()).await {
        Ok(b) => b,
        Err(r) => return influx_error(&r),
    };
    let mut items = Vec::new();
    // The line number (1-based) and text of each item, to name a bad one.
    let mut origin: Vec<usize> = Vec::new();
    let text_lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    for (i, raw) in text_lines.iter().enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        let parsed = std::str::from_utf8(trimmed)
            .map_err(|_| "not UTF-8".to_owned())
            .and_then(|s| parse(s, nanos_per_unit));
        match parsed {
            Ok(events) => {
                for ev in events {
                    items.push(Ok(ev));
                    origin.push(i);
                }
            }
            Err(why) => {
                items.push(Err(Outcome::refused("", why)));
                origin.push(i);
            }
        }
    }
    let outcomes = match accept.publish_all(items, publisher.as_ref()).await {
        Ok(o) => o,
        Err(r) => return influx_error(&r.into()),
    };
    let tally = Tally::of(&outcomes);
    if tally.all_denied() {
        return influx_error(&Refused::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not publish these KPIs",
        ));
    }
    if let Some(o) = outcomes
        .iter()
        .find(|o| o.status == EventStatus::Unavailable)
    {
        return influx_error(
            &Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                o.reason.clone(),
            )
            .retry_after(super::RETRY_AFTER_BUS_SECS),
        );
    }
    let bad = outcomes
        .iter()
        .zip(&origin)
        .find(|(o, _)| o.status == EventStatus::Invalid);
    if let Some((o, &line_index)) = bad {
        let shown = String::from_utf8_lossy(text_lines[line_index]);
        let shown: String = shown.chars().take(200).collect();
        let message = format!(
            "partial write: {} points stored, {} refused; line {}: unable to parse '{}': {}",
            tally.stored + tally.duplicates,
            tally.refused,
            line_index + 1,
            shown.trim_end(),
            o.reason
        );
        let body =
            serde_json::json!({"code": "invalid", "message": message, "line": line_index + 1});
        return super::respond(
            StatusCode::BAD_REQUEST,
            None,
            "application/json; charset=utf-8",
            body.to_string(),
        );
    }
    super::respond(StatusCode::NO_CONTENT, None, "text/plain", Body::empty())
}

/// Nanoseconds per timestamp unit; `None` for an unknown precision.
fn precision(p: Option<&str>) -> Option<i128> {
    Some(match p.unwrap_or("ns") {
        "ns" | "n" | "" => 1,
        "us" | "u" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Splits `s` at the first unescaped, unquoted `sep`.
fn split_unescaped(s: &str, sep: char, quotes: bool) -> (&str, Option<&str>) {
    let mut escaped = false;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if quotes && c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            return (&s[..i], Some(&s[i + c.len_utf8()..]));
        }
    }
    (s, None)
}

fn split_all(s: &str, sep: char, quotes: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let (head, tail) = split_unescaped(rest, sep, quotes);
        out.push(head);
        match tail {
            Some(t) => rest = t,
            None => return out,
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '=' | ' ' | '\\' | '"')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One field value as a number; `Ok(None)` for a string field.
fn field_value(raw: &str) -> Result<Option<f64>, String> {
    if raw.starts_with('"') {
        return if raw.len() >= 2 && raw.ends_with('"') {
            Ok(None)
        } else {
            Err(format!("unterminated string field value {raw}"))
        };
    }
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Some(1.0)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Some(0.0)),
        _ => {}
    }
    let bad = || format!("invalid field value {raw:?}");
    if let Some(int) = raw.strip_suffix('i') {
        // i64 -> f64 rounds past 2^53, like every float-valued KPI.
        return int
            .parse::<i64>()
            .map(|v| Some(v as f64))
            .map_err(|_| bad());
    }
    if let Some(uint) = raw.strip_suffix('u') {
        return uint
            .parse::<u64>()
            .map(|v| Some(v as f64))
            .map_err(|_| bad());
    }
    let v: f64 = raw.parse().map_err(|_| bad())?;
    // "NaN" and "inf" parse in Rust but are not line protocol.
    if !v.is_finite() {
        return Err(bad());
    }
    Ok(Some(v))
}

/// One line of line protocol as events, or why it cannot be read.
pub fn parse(line: &str, nanos_per_unit: i128) -> Result<Vec<Event>, String> {
    let (series, rest) = split_unescaped(line, ' ', false);
    let rest = rest.ok_or("missing fields")?;
    let (fields, timestamp) = split_unescaped(rest.trim_start(), ' ', true);
    let mut key_parts = split_all(series, ',', false).into_iter();
    let measurement = unescape(key_parts.next().unwrap_or(""));
    if measurement.is_empty() {
        return Err("missing measurement".into());
    }
    let mut labels = HashMap::new();
    for tag in key_parts {
        let (k, v) = split_unescaped(tag, '=', false);
        match v {
            Some(v) if !k.is_empty() && !v.is_empty() => {
                labels.insert(unescape(k), unescape(v));
            }
            _ => return Err(format!("invalid tag {tag:?}")),
        }
    }
    let time = match timestamp.map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => {
            let units: i128 = t
                .parse::<i64>()
                .map_err(|_| format!("invalid timestamp {t:?}"))?
                .into();
            let nanos = units
                .checked_mul(nanos_per_unit)
                .ok_or_else(|| format!("timestamp {t} out of range"))?;
            let seconds = i64::try_from(nanos.div_euclid(1_000_000_000))
                .map_err(|_| format!("timestamp {t} out of range"))?;
            Some((
                prost_types::Timestamp {
                    seconds,
                    nanos: nanos.rem_euclid(1_000_000_000) as i32,
                },
                nanos,
            ))
        }
    };
    let mut sorted_tags: Vec<(&String, &String)> = labels.iter().collect();
    sorted_tags.sort();
    let mut events = Vec::new();
    for field in split_all(fields, ',', true) {
        let (k, v) = split_unescaped(field, '=', true);
        let (k, v) = match v {
            Some(v) if !k.is_empty() && !v.is_empty() => (unescape(k), v),
            _ => return Err(format!("invalid field {field:?}")),
        };
        let Some(value) = field_value(v)? else {
            continue;
        };
        let kpi = if k == "value" {
            measurement.clone()
        } else {
            format!("{measurement}_{k}")
        };
        let event_id = match &time {
            Some((_, nanos)) => {
                let mut parts: Vec<&[u8]> = vec![kpi.as_bytes()];
                for (tk, tv) in &sorted_tags {
                    parts.push(tk.as_bytes());
                    parts.push(tv.as_bytes());
                }
                let nanos = nanos.to_le_bytes();
                let bits = value.to_bits().to_le_bytes();
                parts.push(&nanos);
                parts.push(&bits);
                content_id("lp", &parts)
            }
            // No timestamp: the server's clock, which no retry can repeat.
            None => String::new(),
        };
        events.push(Event {
            event_id,
            kpi,
            value,
            time: time.as_ref().map(|(ts, _)| *ts),
            labels: labels.clone(),
        });
    }
    if events.is_empty() {
        return Err("no numeric field".into());
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_fields_tags_and_time() {
        let evs = parse(
            r#"cpu,host=a\ b,region=eu value=0.5,idle=3i,up=t,note="x y" 1700000000"#,
            1_000_000_000,
        )
        .expect("a line");
        let kpis: Vec<&str> = evs.iter().map(|e| e.kpi.as_str()).collect();
        assert_eq!(kpis, vec!["cpu", "cpu_idle", "cpu_up"]);
        assert_eq!(evs[1].value, 3.0);
        assert_eq!(evs[2].value, 1.0);
        assert_eq!(evs[0].labels.get("host").map(String::as_str), Some("a b"));
        assert_eq!(evs[0].time.map(|t| t.seconds), Some(1_700_000_000));
        assert!(evs[0].event_id.starts_with("lp-"));
        // Same content, same id; the tag order does not matter.
        let again = parse(
            r#"cpu,region=eu,host=a\ b value=0.5 1700000000"#,
            1_000_000_000,
        )
        .expect("a line");
        assert_eq!(again[0].event_id, evs[0].event_id);
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, why) in [
            ("cpu", "missing fields"),
            ("cpu value=abc", "invalid field value"),
            ("cpu value=1 12x", "invalid timestamp"),
            (r#"cpu note="only text""#, "no numeric field"),
            ("cpu,host value=1", "invalid tag"),
            ("cpu value=NaN", "invalid field value"),
        ] {
            let err = parse(line, 1).expect_err(line);
            assert!(err.contains(why), "{line}: {err}");
        }
    }
}
