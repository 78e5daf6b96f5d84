//! code-analyzer: a gRPC record server for automated code-analysis crews.
//! It stores crew runs, findings, fixes and logs in SQLite or PostgreSQL.

pub mod api;
pub mod auth;
pub mod background;
pub mod client;
pub mod config;
pub mod fingerprint;
pub mod levels;
pub mod metrics;
pub mod middleware;
pub mod paths;
pub mod sarif;
pub mod server;
pub mod state;
pub mod storage;

/// Types and clients generated from `proto/code_analyzer/v1`.
pub mod pb {
    tonic::include_proto!("code_analyzer.v1");

    /// Encoded descriptors of every proto file, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/code_analyzer_descriptor.bin"));
}
