//! deploy/grafana/kpistream.json is valid Grafana JSON whose queries name only metrics the services define (crates/*/src/metrics.rs).

use std::collections::BTreeSet;
use std::path::Path;

/// `kpi_...` identifiers in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("kpi_") {
        let start = i + pos;
        let preceded_by_ident =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if !preceded_by_ident {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 4);
    }
    out
}

#[test]
fn dashboard_queries_only_defined_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("deploy/grafana/kpistream.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dash["uid"], "kpistream-overview");

    let mut defined = BTreeSet::new();
    for krate in ["kpi-ingest", "kpi-aggregator", "kpi-gateway"] {
        let src = root.join(format!("crates/{krate}/src/metrics.rs"));
        let code =
            std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        defined.extend(metric_names(&code));
    }

    let mut used = BTreeSet::new();
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {} undocumented",
            p["title"]
        );
        for t in targets {
            used.extend(metric_names(t["expr"].as_str().expect("expr")));
        }
    }
    let unknown: Vec<&String> = used
        .iter()
        .filter(|m| !defined.contains(m.trim_end_matches("_bucket")))
        .collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries metrics no service defines: {unknown:?} (defined: {defined:?})"
    );
    for must in [
        "kpi_gateway_upstream_subscriptions",
        "kpi_gateway_connections",
        "kpi_gateway_messages_sent_total",
        "kpi_gateway_conflated_total",
        "kpi_gateway_rejected_total",
        "kpi_gateway_slow_consumers_closed_total",
        "kpi_ingest_events_total",
        "kpi_aggregator_consumer_pending",
    ] {
        assert!(used.contains(must), "dashboard lacks {must}");
    }
}
