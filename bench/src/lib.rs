//! Benchmarks of the inference service, shared by the `inprocess` and `loadgen` binaries.
//!
//! `inprocess` measures what ONNX Runtime alone achieves on this machine; `loadgen` measures
//! what the served model achieves over gRPC. `scripts/bench.sh` runs both (plus Triton's
//! `perf_analyzer`) and `BENCHMARKS.md` compares them.

pub mod latency;
pub mod texts;
