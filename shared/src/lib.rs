//! Pieces that every service of the mesh shares: telemetry set-up, shutdown signalling, API keys,
//! the vocabulary of error kinds and their gRPC codes, the report of a fatal error, W3C
//! trace-context propagation over tonic metadata, health and reflection services, and helpers
//! for tests.

pub mod auth;
pub mod error;
pub mod grpc;
pub mod listen;
pub mod report;
pub mod serving;
pub mod shutdown;
pub mod small_frames;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod trace_context;

pub use error::{ErrorKind, ServiceError};
