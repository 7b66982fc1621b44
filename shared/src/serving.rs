//! One way for every service to serve and to stop.
//!
//! A service makes a [`Serving`] first, gives its stop signal to whatever must end with the
//! server (streams, background tasks), builds its routes, and hands [`Serving::spawn`] the
//! server future (which stops on that signal). Health says NOT_SERVING until
//! [`Serving::ready`]; a service that has work to do before it can answer (the inference
//! service loads its models) does it in between, while already answering health checks.
//! [`Serving::run_until`] then serves until the process is told to stop, and stops the same
//! way in every service:
//!
//! 1. health turns NOT_SERVING (the overall status and every service named at `ready`), so a
//!    load balancer stops sending new calls;
//! 2. the stop signal fires: the server refuses new connections and calls and lets running
//!    ones finish; open streams (`Watch`, `ModelStreamInfer`) watch the same signal and end;
//! 3. the drain is bounded by the grace period: calls still running then are abandoned, with
//!    a warning, and so are the service's other tasks registered with [`Serving::also_drain`].
//!
//! Telemetry is flushed once the service's `serve` has returned, when `main` drops the guard
//! of [`crate::telemetry::init`]: after the last call's spans and metrics were recorded.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::shutdown::{self, Shutdown, ShutdownTrigger};

/// An error of a server or of a task stopped with it.
pub type DrainError = Box<dyn std::error::Error + Send + Sync>;

/// A server, the tasks that stop with it, and what it takes to stop them.
pub struct Serving {
    service: &'static str,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    others: Vec<(&'static str, JoinHandle<Result<(), DrainError>>)>,
    health: HealthReporter,
    named: Vec<&'static str>,
    trigger: ShutdownTrigger,
    stop: Shutdown,
    grace: Duration,
}

impl Serving {
    /// A service named `service` (in logs) whose health `health` reports and whose drain lasts
    /// at most `grace`.
    pub fn new(service: &'static str, health: HealthReporter, grace: Duration) -> Serving {
        let (trigger, stop) = shutdown::channel();
        Serving {
            service,
            server: None,
            others: Vec::new(),
            health,
            named: Vec::new(),
            trigger,
            stop,
            grace,
        }
    }

    /// Spawns the server: a future that serves until [`Serving::stop_signal`] fires (it passes
    /// the signal to `serve_with_incoming_shutdown`).
    pub fn spawn(
        &mut self,
        server: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    ) {
        self.server = Some(tokio::spawn(server));
    }

    /// The signal that fires when the server starts to stop: streams and background tasks
    /// watch it to end with it.
    pub fn stop_signal(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Stops `task` within the same grace period as the server (a second listener, say).
    pub fn also_drain(&mut self, name: &'static str, task: JoinHandle<Result<(), DrainError>>) {
        self.others.push((name, task));
    }

    /// Also answers health checks, and nothing else, in plaintext on `addr` (with the
    /// service's own health): for the kubelet's gRPC probe, which cannot speak TLS. Stops
    /// with the server.
    pub async fn health_port(
        &mut self,
        addr: std::net::SocketAddr,
        health_only: tonic::service::Routes,
    ) -> Result<(), crate::listen::ListenError> {
        let listener = crate::listen::listen(addr).await?;
        tracing::info!(service = self.service, %addr, "plaintext health checks listening");
        let stop = self.stop.clone();
        self.also_drain(
            "health port",
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_routes(health_only)
                    .serve_with_incoming_shutdown(crate::grpc::incoming(listener), stop.wait())
                    .await
                    .map_err(Into::into)
            }),
        );
        Ok(())
    }

    /// Marks the service SERVING: the overall status and each of `services` (their gRPC
    /// names), which turn NOT_SERVING again when it stops.
    pub async fn ready(&mut self, services: &[&'static str]) {
        self.named.extend_from_slice(services);
        self.set_health(ServingStatus::Serving).await;
    }

    /// Sets the overall status and every named service's to `status`.
    async fn set_health(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
        for name in &self.named {
            self.health.set_service_status(*name, status).await;
        }
    }

    /// Serves until `shutdown` resolves (or the server fails by itself), then stops as the
    /// module says.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let finished = async {
            match self.server.as_mut() {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = finished => {
                self.trigger.trigger();
                return outcome(self.service, result);
            }
            () = shutdown => {}
        }
        self.stop().await
    }

    /// Stops now: NOT_SERVING, the stop signal, then the drain bounded by the grace period.
    pub async fn stop(mut self) -> Result<(), tonic::transport::Error> {
        tracing::info!(service = self.service, "draining in-flight calls");
        self.set_health(ServingStatus::NotServing).await;
        self.trigger.trigger();
        let deadline = tokio::time::Instant::now() + self.grace;
        let result = match self.server.take() {
            None => Ok(()),
            Some(mut server) => match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(result) => outcome(self.service, result),
                Err(_) => {
                    tracing::warn!(
                        service = self.service,
                        grace_secs = self.grace.as_secs_f64(),
                        "calls still running at the end of the grace period; stopping anyway"
                    );
                    server.abort();
                    Ok(())
                }
            },
        };
        for (name, mut task) in self.others.drain(..) {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => {
                    tracing::error!(service = self.service, task = name, %err, "stopped with an error")
                }
                Ok(Err(err)) => {
                    tracing::error!(service = self.service, task = name, %err, "task failed")
                }
                Err(_) => {
                    tracing::warn!(
                        service = self.service,
                        task = name,
                        "still running at the end of the grace period; stopping anyway"
                    );
                    task.abort();
                }
            }
        }
        result
    }
}

/// What the spawned server returned: its own error, or a panic (logged).
fn outcome(
    service: &'static str,
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), tonic::transport::Error> {
    match result {
        Ok(inner) => inner,
        Err(err) => {
            tracing::error!(service, %err, "server task failed");
            Ok(())
        }
    }
}
