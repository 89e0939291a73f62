//! The generated gRPC types of kpistream's publisher API, `proto/kpi/v1/ingest.proto`.
//!
//! Messages live in [`kpi::v1`], the client in [`kpi::v1::ingest_client`], the
//! server trait in [`kpi::v1::ingest_server`]. [`FILE_DESCRIPTOR_SET`] is what
//! gRPC server reflection needs to describe the service to tools like grpcurl.

/// Generated code, nested by proto package.
pub mod kpi {
    pub mod v1 {
        // Generated code follows prost's conventions, not this workspace's lints.
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/kpi.v1.rs"));
    }
}

/// The encoded `FileDescriptorSet` of every file in `proto/` (and what they import).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kpi_descriptor.bin"));

pub use kpi::v1;
