//! Nothing but tests: see `tests/` for the cluster fault tests and the Helm chart check.
//!
//! `tests/gateway_failover.rs`, `tests/nats_failover.rs` and
//! `tests/rolling_restart.rs` each start a local cluster
//! (`kpi_test_support::LocalCluster`: three NATS nodes, ingest, two aggregator
//! replicas, two gateways behind HAProxy) and break part of it;
//! `tests/chart.rs` runs `helm/check_chart.py`; `tests/local_cluster_script.rs`
//! drives `deploy/local-cluster.sh`. They need the workspace's binaries
//! (`cargo build --workspace --bins`), `nats-server`, `haproxy` and the chart
//! check's Python packages, all of which `scripts/setup-deps` installs.
