//! Routing over inference replicas: power-of-two-choices by in-flight calls, health checks
//! that eject and re-admit replicas, and one retry on another replica within a retry budget.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use shared::tls::MeshTls;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::GatewayError;
use crate::unary::{ConnectionError, UnaryClient};

/// One inference replica.
pub struct Replica {
    /// Its address.
    pub addr: SocketAddr,
    channel: Channel,
    unary: UnaryClient,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
}

impl Replica {
    /// Its channel, for calls other than the hot path's.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Its connection for the hot path's unary calls.
    pub fn unary(&self) -> &UnaryClient {
        &self.unary
    }

    /// Whether the last health check (or call) found it serving.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                tracing::info!(replica = %self.addr, "replica re-admitted");
            } else {
                tracing::warn!(replica = %self.addr, reason = why, "replica ejected");
            }
        }
    }
}

/// Retries allowed: each call earns `ratio` of a retry, up to a reserve; a retry spends one.
///
/// Kept in place of tower's `retry::budget::TpsBudget` (tower 0.5.3), for two reasons:
/// - cost on every call: `TpsBudget::deposit` locks a `Mutex` and reads the clock to age its
///   time slots on every deposit, and every call deposits. A throwaway loop (release build,
///   one deposit per call and a withdrawal every 100th, 5 million calls, this 2-core host,
///   three rounds) measured 13 ns/call here against 45–64 ns/call for `TpsBudget`, and with
///   two threads sharing one budget 29–37 ns against 87–109 ns. The hot path takes no lock.
/// - meaning: `TpsBudget` forgets deposits after its TTL and grants `min_per_sec` retries
///   whatever the traffic, and truncates the ratio to one retry per whole number of deposits
///   (0.3 becomes one in 3); `--retry-ratio` promises that each call earns exactly `ratio` of a
///   retry and that a reserve of 10 is refilled by traffic alone.
struct RetryBudget {
    /// Thousandths of a retry in hand.
    milli: AtomicU64,
    earn_milli: u64,
    cap_milli: u64,
}

impl RetryBudget {
    fn new(ratio: f64) -> RetryBudget {
        let cap_milli = 10_000;
        RetryBudget {
            milli: AtomicU64::new(cap_milli),
            earn_milli: (ratio.clamp(0.0, 1.0) * 1000.0) as u64,
            cap_milli,
        }
    }

    fn earn(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some((m + self.earn_milli).min(self.cap_milli))
            });
    }

    fn spend(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                m.checked_sub(1000)
            })
            .is_ok()
    }
}

/// Why the replica pool could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RoutingError(String);

/// The inference replicas and how calls are spread over them.
pub struct ReplicaPool {
    /// The endpoints as given (`host:port`), resolved again by [`ReplicaPool::refresh`].
    endpoints: Vec<String>,
    /// TLS towards the replicas (each checked for its endpoint's host name).
    tls: MeshTls,
    /// The replicas now; a call works on the snapshot it took.
    replicas: std::sync::RwLock<Arc<Vec<Arc<Replica>>>>,
    budget: RetryBudget,
    next: AtomicUsize,
}

/// An address an endpoint resolved to, and the endpoint's host: the name the replica's TLS
/// certificate must hold.
type Resolved = (SocketAddr, Arc<str>);

fn replica(
    (addr, host): &Resolved,
    healthy: bool,
    tls: &MeshTls,
) -> Result<Arc<Replica>, RoutingError> {
    let addr = *addr;
    let url = format!("{}://{addr}", tls.scheme());
    let channel = tls
        .endpoint_checking(&url, "--inference", Some(host))
        .map_err(|err| RoutingError(format!("bad inference address {addr}: {err}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        // A replica that vanishes without closing the connection is noticed within seconds.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(Arc::new(Replica {
        addr,
        channel,
        unary: UnaryClient::new(addr, crate::MAX_MESSAGE_BYTES)
            .with_tls(tls, host)
            .map_err(|err| RoutingError(format!("inference replica {addr}: {err}")))?,
        in_flight: AtomicUsize::new(0),
        healthy: AtomicBool::new(healthy),
    }))
}

/// The replica set after a new resolution: addresses still resolved keep their replica (its
/// connection, load and health), new ones join as unhealthy until a health check admits them,
/// and the rest leave. The second value says whether anything changed.
fn merge(
    current: &[Arc<Replica>],
    resolved: &[Resolved],
    tls: &MeshTls,
) -> Result<(Vec<Arc<Replica>>, bool), RoutingError> {
    let mut next = Vec::with_capacity(resolved.len());
    for found in resolved {
        let addr = found.0;
        if next.iter().any(|r: &Arc<Replica>| r.addr == addr) {
            continue;
        }
        match current.iter().find(|r| r.addr == addr) {
            Some(kept) => next.push(kept.clone()),
            None => next.push(replica(found, false, tls)?),
        }
    }
    let changed =
        next.len() != current.len() || next.iter().zip(current).any(|(a, b)| a.addr != b.addr);
    Ok((next, changed))
}

/// Every address the endpoints resolve to, in order.
async fn lookup(endpoints: &[String]) -> Result<Vec<Resolved>, RoutingError> {
    let mut out = Vec::new();
    for endpoint in endpoints.iter().filter(|e| !e.is_empty()) {
        let host: Arc<str> = host_of(endpoint).into();
        let addrs = tokio::net::lookup_host(endpoint.as_str())
            .await
            .map_err(|err| {
                RoutingError(format!(
                    "cannot resolve inference endpoint '{endpoint}': {err}"
                ))
            })?;
        out.extend(addrs.map(|addr| (addr, host.clone())));
    }
    Ok(out)
}

/// The host of a `host:port` endpoint (`[::1]:50052` gives `::1`).
fn host_of(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Releases a replica's in-flight slot when a call ends, however it ends.
struct InFlight<'a>(&'a Replica);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The caller's deadline passing while tonic's client waits for a replica reads as CANCELLED
/// ("Timeout expired"); gRPC calls it DEADLINE_EXCEEDED, as the hot path's client does. Any
/// other status is kept as it is.
fn past_deadline(addr: SocketAddr, status: Status) -> Status {
    let mut source = std::error::Error::source(&status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return GatewayError::ReplicaTimedOut(addr).into();
        }
        source = error.source();
    }
    status
}

/// Whether the failure came from the connection itself (refused, reset, broken), as opposed
/// to an answer the replica gave.
fn transport_failure(status: &Status) -> bool {
    use std::error::Error as _;
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<tonic::transport::Error>() || err.is::<ConnectionError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether a failed call may be sent again: the replica could not take it (UNAVAILABLE: a
/// refused connection, a replica shutting down, a model not loaded there), or the connection
/// broke under the call (as when a replica is killed). Only idempotent calls are retried.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => transport_failure(status),
        _ => false,
    }
}

impl ReplicaPool {
    /// Resolves every `host:port` (a name may give several addresses) into replicas.
    pub async fn resolve(
        endpoints: &[String],
        retry_ratio: f64,
        tls: MeshTls,
    ) -> Result<ReplicaPool, RoutingError> {
        let resolved = lookup(endpoints).await?;
        let mut replicas: Vec<Arc<Replica>> = Vec::new();
        for found in &resolved {
            if !replicas.iter().any(|r| r.addr == found.0) {
                replicas.push(replica(found, true, &tls)?);
            }
        }
        if replicas.is_empty() {
            return Err(RoutingError(
                "no inference endpoint given (--inference)".to_owned(),
            ));
        }
        Ok(ReplicaPool {
            endpoints: endpoints.to_vec(),
            tls,
            replicas: std::sync::RwLock::new(Arc::new(replicas)),
            budget: RetryBudget::new(retry_ratio),
            next: AtomicUsize::new(0),
        })
    }

    /// The replicas now.
    pub fn replicas(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves the endpoints again (a headless Service's name gives one address per pod):
    /// new addresses join once a health check admits them, gone ones leave. A failed lookup,
    /// or one that finds nothing, keeps the replicas as they are.
    pub async fn refresh(&self) {
        let resolved = match lookup(&self.endpoints).await {
            Ok(resolved) if !resolved.is_empty() => resolved,
            Ok(_) => {
                tracing::warn!("the inference endpoints resolve to nothing; keeping the replicas");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "keeping the replicas");
                return;
            }
        };
        let current = self.replicas();
        match merge(&current, &resolved, &self.tls) {
            Ok((next, true)) => {
                let addrs: Vec<String> = next.iter().map(|r| r.addr.to_string()).collect();
                tracing::info!(replicas = ?addrs, "inference replicas changed");
                *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
            }
            Ok((_, false)) => {}
            Err(err) => tracing::warn!(error = %err, "keeping the replicas"),
        }
    }

    /// Resolves the endpoints again every `interval` until `shutdown`.
    pub async fn run_resolution(
        self: Arc<Self>,
        interval: Duration,
        shutdown: shared::shutdown::Shutdown,
    ) {
        let mut stopped = std::pin::pin!(shutdown.wait());
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => self.refresh().await,
                () = &mut stopped => return,
            }
        }
    }

    /// Power of two choices among healthy replicas other than `exclude`: the less loaded of
    /// two. Falls back to unhealthy ones when no healthy one is left.
    ///
    /// Kept in place of tower's `balance::p2c::Balance` (tower 0.5.3), which meets none of
    /// these needs without a redesign around it:
    /// - it is one `Service` driven through `&mut self` (`poll_ready`, then `call`), so
    ///   concurrent calls could share it only behind a `Buffer` (a channel send, a oneshot and
    ///   a hop to a worker task per call) or a lock; this pick is a shared `&self` read;
    /// - a retry must go to a replica other than the one that just failed (`exclude`); the
    ///   balancer picks among all ready endpoints and cannot be told to skip one;
    /// - an ejected replica is still used when no healthy one is left; the balancer only
    ///   picks ready endpoints and otherwise stays pending until the call's deadline;
    /// - the hot path relays on the replica's own HTTP/2 client ([`Replica::unary`]), and the
    ///   model loads, health checks and re-resolution reach every replica's channel; the
    ///   balancer owns its endpoints as tower services and exposes neither.
    ///
    /// Its cost: a throwaway loop (release build, 5 million picks, this 2-core host) measured
    /// 70–73 ns/pick among 2 replicas, 72–81 ns among 3 and 116–124 ns among 8.
    fn pick(&self, exclude: Option<SocketAddr>) -> Option<Arc<Replica>> {
        let replicas = self.replicas();
        let candidates: Vec<&Arc<Replica>> = replicas
            .iter()
            .filter(|r| Some(r.addr) != exclude && r.is_healthy())
            .collect();
        let candidates = if candidates.is_empty() {
            replicas
                .iter()
                .filter(|r| Some(r.addr) != exclude)
                .collect()
        } else {
            candidates
        };
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                // Two distinct replicas from a rotating start: cheap and spread evenly.
                let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
                let j = (i + 1 + self.next.load(Ordering::Relaxed) % (n - 1)) % n;
                let (a, b) = (candidates[i], candidates[j]);
                Some(
                    if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                        b.clone()
                    } else {
                        a.clone()
                    },
                )
            }
        }
    }

    /// Runs `call` on a replica. An idempotent call that fails because the replica could not
    /// take it is sent once more to another replica, if the retry budget allows.
    pub async fn call<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_replica(idempotent, |replica| call(replica.channel.clone()))
            .await
    }

    /// Like [`ReplicaPool::call`], with the replica itself (for [`Replica::unary`]).
    pub async fn call_replica<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T, Status>
    where
        F: Fn(Arc<Replica>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.budget.earn();
        let first = self.pick(None).ok_or(GatewayError::NoReplica)?;
        let status = match self.call_on(&first, &call).await {
            Ok(value) => return Ok(value),
            Err(status) => status,
        };
        if !(idempotent && retryable(&status)) {
            return Err(status);
        }
        // Only a broken connection says the replica is gone; an answer (say, a model not
        // loaded there) says nothing about its health.
        if transport_failure(&status) {
            first.set_healthy(false, status.message());
        }
        let Some(second) = self.pick(Some(first.addr)) else {
            return Err(status);
        };
        if !self.budget.spend() {
            tracing::warn!(replica = %first.addr, "retry budget exhausted; not retrying");
            return Err(status);
        }
        tracing::debug!(from = %first.addr, to = %second.addr, %status, "retrying on another replica");
        self.call_on(&second, &call).await
    }

    async fn call_on<T, F, Fut>(&self, replica: &Arc<Replica>, call: &F) -> Result<T, Status>
    where
        F: Fn(Arc<Replica>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        let _slot = InFlight(replica);
        call(replica.clone())
            .await
            .map_err(|status| past_deadline(replica.addr, status))
    }

    /// Runs `call` on every replica (model loads and unloads); fails if any fails.
    pub async fn broadcast<T, F, Fut>(&self, call: F) -> Result<Vec<T>, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.ask_each(|replica| call(replica.channel()))
            .await
            .into_iter()
            .collect()
    }

    /// Runs `call` on every replica at once and returns what each gave, in the replicas'
    /// order (readiness checks, which weigh each replica's answer by whether it takes
    /// traffic).
    pub async fn ask_each<T, F, Fut>(&self, call: F) -> Vec<T>
    where
        F: Fn(Arc<Replica>) -> Fut,
        Fut: Future<Output = T>,
    {
        futures::future::join_all(self.replicas().iter().cloned().map(call)).await
    }

    /// Checks every replica's health every `interval` until `shutdown` resolves; ejects those
    /// that do not answer SERVING and re-admits them when they do again.
    ///
    /// `checked` is notified when the first round is done: until then every replica counts as
    /// down, so the gateway does not report itself serving before.
    pub async fn run_health_checks(
        self: Arc<Self>,
        interval: Duration,
        checked: Arc<tokio::sync::Notify>,
        shutdown: shared::shutdown::Shutdown,
    ) {
        let checks = async {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let replicas = self.replicas();
                futures::future::join_all(replicas.iter().map(|replica| async move {
                    let mut client = HealthClient::new(replica.channel.clone());
                    let mut request = tonic::Request::new(HealthCheckRequest {
                        service: String::new(),
                    });
                    request.set_timeout(interval.max(Duration::from_millis(200)));
                    match client.check(request).await {
                        Ok(response)
                            if response.get_ref().status == ServingStatus::Serving as i32 =>
                        {
                            replica.set_healthy(true, "")
                        }
                        Ok(_) => replica.set_healthy(false, "health check: not serving"),
                        Err(status) => replica.set_healthy(false, status.message()),
                    }
                }))
                .await;
                checked.notify_one();
            }
        };
        tokio::select! {
            () = checks => {}
            () = shutdown.wait() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_resolution_keeps_known_replicas_admits_new_ones_later_and_drops_gone_ones() {
        let a: SocketAddr = "10.0.0.1:50052".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:50052".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:50052".parse().unwrap();
        let tls = MeshTls::plaintext();
        let at = |addr: SocketAddr| (addr, Arc::<str>::from("inference"));
        let first = vec![
            replica(&at(a), true, &tls).unwrap(),
            replica(&at(b), true, &tls).unwrap(),
        ];
        first[0].in_flight.store(3, Ordering::Relaxed);
        let (next, changed) = merge(&first, &[at(a), at(c), at(c)], &tls).unwrap();
        assert!(changed);
        let addrs: Vec<SocketAddr> = next.iter().map(|r| r.addr).collect();
        assert_eq!(addrs, [a, c], "b is gone, c came (once)");
        assert!(Arc::ptr_eq(&next[0], &first[0]), "a kept its connection");
        assert_eq!(next[0].in_flight.load(Ordering::Relaxed), 3);
        assert!(next[0].is_healthy());
        assert!(!next[1].is_healthy(), "c waits for a health check");
        let (_, changed) = merge(&next, &[at(a), at(c)], &tls).unwrap();
        assert!(!changed);
    }

    #[test]
    fn the_certificate_name_is_the_endpoint_s_host() {
        assert_eq!(host_of("inference-headless:50052"), "inference-headless");
        assert_eq!(host_of("127.0.0.1:50052"), "127.0.0.1");
        assert_eq!(host_of("[::1]:50052"), "::1");
    }

    #[test]
    fn the_retry_budget_refills_with_traffic() {
        let budget = RetryBudget::new(0.2);
        let spent = (0..20).filter(|_| budget.spend()).count();
        assert_eq!(spent, 10, "a reserve of 10 retries");
        for _ in 0..5 {
            budget.earn();
        }
        assert!(budget.spend(), "5 calls at 0.2 earn one retry");
        assert!(!budget.spend());
    }
}
