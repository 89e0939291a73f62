//! `kpi-stack` as a process on free loopback ports, ready before a test talks to it.

use std::time::Duration;

use crate::{free_port, Service};

/// How long a starting stack may take to answer `/readyz` (a loaded CI machine).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running `kpi-stack`: its process and where to reach it.
pub struct Stack {
    pub service: Service,
    /// The gateway's port (HTTP, WebSocket, ingest's HTTP formats): `http://127.0.0.1:<port>`.
    pub http: String,
    /// Ingest's gRPC address: `127.0.0.1:<port>`.
    pub grpc: String,
}

impl Stack {
    /// Starts `kpi-stack --listen .. --grpc-listen ..` on free ports with
    /// `args` after them (any flag of the three services), and waits until
    /// it is ready.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Stack {
        let (http, grpc) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut all = vec!["--listen", &http, "--grpc-listen", &grpc];
        all.extend_from_slice(args);
        let service = Service::spawn("kpi-stack", &all, env);
        let http = format!("http://{http}");
        service
            .wait_http_ok(&format!("{http}/readyz"), READY_WITHIN)
            .await;
        Stack {
            service,
            http,
            grpc,
        }
    }
}
