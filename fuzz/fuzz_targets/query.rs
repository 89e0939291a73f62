//! Fuzzes path-code and query-string parsing (`/api/kpi/<code>?period=&since=`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // First line: the code as the path gives it; the rest: the raw query.
    let (code, query) = text.split_once('\n').unwrap_or((&text, ""));
    if let Err(e) = kpi_gateway::request::parse_query(query) {
        assert_eq!(e.status.as_u16(), 400);
    }
    match kpi_gateway::request::parse_target(code, query) {
        Ok((topic, _)) => assert_eq!(topic.code.as_str(), code),
        Err(e) => assert_eq!(e.status.as_u16(), 400),
    }
    let _ = kpi_core::KpiPattern::parse(code);
});
