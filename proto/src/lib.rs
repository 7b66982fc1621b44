//! Protocol types of the serving mesh, generated from `proto/`.
//!
//! - [`inference`]: the Open Inference Protocol (KServe v2), wire-compatible with Triton, so
//!   that `tritonclient` and `perf_analyzer` work unchanged.
//! - [`serving::inference::v1`]: the inference service's task API (`Embed`, `Classify`).
//! - [`ecommerce::gateway::v1`]: the gateway's API for recommender services.
//! - [`monitoring::metrics::v1`]: the metrics collector's query and record API.
//! - [`monitoring::alerts::v1`]: the alert manager's alerts and incidents.

#![allow(
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation,
    missing_docs
)]

/// The Open Inference Protocol (`inference` package).
pub mod inference {
    tonic::include_proto!("inference");
}

/// Our own versioned APIs.
pub mod serving {
    /// APIs of the inference service.
    pub mod inference {
        /// Version 1 of the inference task API.
        pub mod v1 {
            tonic::include_proto!("serving.inference.v1");
        }
    }
}

/// APIs of the gateway.
pub mod ecommerce {
    /// The gateway's packages.
    pub mod gateway {
        /// Version 1 of the gateway API.
        pub mod v1 {
            tonic::include_proto!("ecommerce.gateway.v1");
        }
    }
}

/// Monitoring APIs.
pub mod monitoring {
    /// The alert manager's packages.
    pub mod alerts {
        /// Version 1 of the alert manager's API.
        pub mod v1 {
            tonic::include_proto!("monitoring.alerts.v1");
        }
    }

    /// The metrics collector's packages.
    pub mod metrics {
        /// Version 1 of the collector's query and record API.
        pub mod v1 {
            tonic::include_proto!("monitoring.metrics.v1");
        }
    }
}

/// Encoded `FileDescriptorSet` of every proto above, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
