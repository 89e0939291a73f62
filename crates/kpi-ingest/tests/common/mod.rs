//! An in-process ingest server on ephemeral ports, and helpers to talk to it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use kpi_bus::{Bus, BusConfig, StoredEvent};
use kpi_core::{partition_of, KpiCode};
use kpi_ingest::{IngestError, IngestSettings};
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::Event;
use kpi_service::Shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct Harness {
    pub bus: Bus,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub shutdown: Shutdown,
    pub server: JoinHandle<Result<(), IngestError>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(IngestSettings::default()).await
    }

    pub async fn start_with(settings: IngestSettings) -> Harness {
        Self::start_on(Bus::memory(BusConfig::default()), settings).await
    }

    pub async fn start_on(bus: Bus, settings: IngestSettings) -> Harness {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
        let (grpc_addr, http_addr) = (
            grpc.local_addr().expect("gRPC addr"),
            http.local_addr().expect("HTTP addr"),
        );
        let shutdown = Shutdown::new();
        let server = tokio::spawn(kpi_ingest::run(
            grpc,
            http,
            bus.clone(),
            settings,
            shutdown.clone(),
        ));
        Harness {
            bus,
            grpc: grpc_addr,
            http: http_addr,
            shutdown,
            server,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("valid uri")
            .connect()
            .await
            .expect("connect to ingest")
    }

    pub async fn client(&self) -> IngestClient<Channel> {
        IngestClient::new(self.channel().await)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The first `n` events of `kpi`'s partition, waiting briefly for each.
    pub async fn read_events(&self, kpi: &str, n: usize) -> Vec<StoredEvent> {
        let code = KpiCode::parse(kpi).expect("valid code");
        let partition = partition_of(&code, self.bus.config().partitions);
        let mut feed = self.bus.event_feed(partition, 1).await.expect("feed");
        let mut out = Vec::new();
        for _ in 0..n {
            let next = tokio::time::timeout(Duration::from_secs(5), feed.next())
                .await
                .expect("event within 5 s")
                .expect("feed open")
                .expect("feed ok");
            out.push(next);
        }
        out
    }

    /// True when the partition of `kpi` holds nothing after what was read.
    pub async fn no_more_events(&self, kpi: &str, after: usize) -> bool {
        let code = KpiCode::parse(kpi).expect("valid code");
        let partition = partition_of(&code, self.bus.config().partitions);
        let mut feed = self.bus.event_feed(partition, 1).await.expect("feed");
        for _ in 0..after {
            feed.next().await;
        }
        tokio::time::timeout(Duration::from_millis(200), feed.next())
            .await
            .is_err()
    }
}

pub fn event(id: &str, kpi: &str, value: f64) -> Event {
    Event {
        event_id: id.into(),
        kpi: kpi.into(),
        value,
        time: None,
        labels: Default::default(),
    }
}
