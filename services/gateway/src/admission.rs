//! Admission: authentication, role check, per-key rate limit and the global concurrency limit,
//! as one tower layer in front of every gRPC service of the gateway.
//!
//! Refusals are answered at once with a gRPC status, before any handler runs: nothing queues.
//! Each is counted in `gateway.refusals` by rpc, tenant and reason.
//! The caller's principal and its [`Arrival`] go into the request's extensions for the handlers.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use shared::error::ServiceError;
use tokio::sync::Semaphore;
use tonic::Status;

use crate::auth::{ApiKeys, Principal, required_role};
use crate::error::GatewayError;
use crate::layers::{BoxFuture, GrpcService, StateLayer, WithState, take_ready};
use crate::metrics;

/// Shared admission state.
pub struct Admission {
    keys: ApiKeys,
    /// Principal for calls without an `authorization` header, when the operator allows them.
    anonymous: Option<Principal>,
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    concurrency: Arc<Semaphore>,
    max_concurrency: usize,
    /// The most calls one tenant may run at once.
    tenant_share: usize,
    /// Calls running per tenant.
    in_flight: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>>,
    /// How long a call's first message may take after its headers.
    idle_deadline: std::time::Duration,
    /// The calls still waiting for their first message (see [`crate::idle`]).
    idle_watch: Arc<crate::idle::IdleWatch>,
}

/// A running call's hold on the gateway: a concurrency slot and its place in its tenant's
/// share, both given back when dropped.
#[derive(Debug)]
pub struct CallPermit {
    _slot: tokio::sync::OwnedSemaphorePermit,
    tenant: Arc<str>,
    in_flight: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>>,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.tenant);
            }
        }
    }
}

impl Admission {
    /// Admission over `keys`, allowing `rate` calls per second per key with bursts of `burst`,
    /// and `max_concurrency` calls at once in all.
    pub fn new(keys: ApiKeys, rate: u32, burst: u32, max_concurrency: usize) -> Admission {
        Admission::with_anonymous(keys, None, rate, burst, max_concurrency)
    }

    /// Like [`Admission::new`], but calls that carry no `authorization` header at all are
    /// admitted as `anonymous_tenant` with role client (its own rate-limit bucket), for tools
    /// that cannot send gRPC metadata. A wrong key is still refused.
    pub fn with_anonymous(
        keys: ApiKeys,
        anonymous_tenant: Option<&str>,
        rate: u32,
        burst: u32,
        max_concurrency: usize,
    ) -> Admission {
        let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        Admission {
            keys,
            anonymous: anonymous_tenant.map(|tenant| Principal {
                tenant: Arc::from(tenant),
                role: crate::auth::Role::Client,
                key_id: Arc::from("anonymous"),
            }),
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            concurrency: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            tenant_share: max_concurrency,
            in_flight: Arc::default(),
            idle_deadline: std::time::Duration::from_secs(1),
            idle_watch: Arc::default(),
        }
    }

    /// Lets one tenant run at most `percent` of the concurrency slots at once (at least one),
    /// so that one tenant's flood leaves the others room.
    pub fn with_tenant_share(mut self, percent: u32) -> Admission {
        let percent = percent.clamp(1, 100) as usize;
        self.tenant_share = (self.max_concurrency * percent / 100).max(1);
        self
    }

    /// The watch of the calls still waiting for their first message, whose sweeper the server
    /// runs.
    pub fn idle_watch(&self) -> Arc<crate::idle::IdleWatch> {
        self.idle_watch.clone()
    }

    /// Ends a call whose first message is not in within `deadline` of its headers.
    pub fn with_idle_deadline(mut self, deadline: std::time::Duration) -> Admission {
        self.idle_deadline = deadline;
        self
    }

    /// Decides on one call to `path`: the caller's principal and a concurrency permit, or the
    /// status to refuse it with. Open methods get neither.
    fn admit(
        &self,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Option<(Principal, CallPermit)>, Status> {
        let Some(role) = required_role(path) else {
            return Ok(None);
        };
        let principal = match (&self.anonymous, authorization) {
            (Some(anonymous), None) => anonymous,
            _ => self.keys.authenticate(authorization).map_err(|reason| {
                metrics::refused_call(path, "", "unauthenticated");
                GatewayError::NoKey(reason).to_status()
            })?,
        };
        if principal.role < role {
            metrics::refused_call(path, &principal.tenant, "permission_denied");
            return Err(GatewayError::RoleTooLow {
                tenant: principal.tenant.clone(),
                role: principal.role,
                path: path.to_owned(),
                needs: role,
            }
            .into());
        }
        let permit = self.admit_call(path, principal)?;
        Ok(Some((principal.clone(), permit)))
    }

    /// The per-call part of admission for a call to `path`: the key's rate limit and a
    /// concurrency slot. Also used for each message of a stream, which the layer sees only
    /// once. A refusal is counted in `gateway.refusals`.
    pub fn admit_call(&self, path: &str, principal: &Principal) -> Result<CallPermit, Status> {
        if let Err(not_until) = self.limiter.check_key(&principal.key_id) {
            metrics::refused_call(path, &principal.tenant, "rate_limited");
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(GatewayError::RateLimited {
                key_id: principal.key_id.clone(),
                tenant: principal.tenant.clone(),
                retry_ms: wait.as_millis().max(1),
            }
            .into());
        }
        let slot = self.concurrency.clone().try_acquire_owned().map_err(|_| {
            metrics::refused_call(path, &principal.tenant, "overloaded");
            GatewayError::Overloaded(self.max_concurrency).to_status()
        })?;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let running = in_flight.entry(principal.tenant.clone()).or_default();
        if *running >= self.tenant_share {
            metrics::refused_call(path, &principal.tenant, "tenant_share");
            return Err(GatewayError::TenantOverloaded {
                tenant: principal.tenant.clone(),
                share: self.tenant_share,
                total: self.max_concurrency,
            }
            .into());
        }
        *running += 1;
        Ok(CallPermit {
            _slot: slot,
            tenant: principal.tenant.clone(),
            in_flight: self.in_flight.clone(),
        })
    }
}

/// When admission saw the call: the moment the server's own timeout on the caller's
/// `grpc-timeout` started, a few instructions earlier. The gateway counts the caller's deadline
/// and its timings from it, not from when a handler starts (after the request's message has
/// been read).
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub std::time::Instant);

/// The tower layer applying [`Admission`] to every call.
pub type AdmissionLayer = StateLayer<Arc<Admission>>;

/// The service of [`AdmissionLayer`].
pub type AdmissionService<S> = WithState<Arc<Admission>, S>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for AdmissionService<S>
where
    S: GrpcService<tonic::body::Body>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // A reference-counted copy (no allocation), for the refusal's metric label.
        let uri = request.uri().clone();
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.state.admit(request.uri().path(), authorization) {
            Err(status) => {
                tracing::debug!(path = request.uri().path(), code = ?status.code(), "call refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok(admitted) => {
                // An admitted call's first message must follow its headers soon: a stream
                // that never sends one would hold its permit for ever.
                let idle = self.state.idle_deadline;
                let (mut request, expired) = match &admitted {
                    Some(_) => {
                        let (parts, body) = request.into_parts();
                        let (body, expired) = crate::idle::FirstMessageDeadline::new(
                            body,
                            idle,
                            self.state.idle_watch.clone(),
                        );
                        let body = tonic::body::Body::new(body);
                        (http::Request::from_parts(parts, body), Some(expired))
                    }
                    None => (request, None),
                };
                request
                    .extensions_mut()
                    .insert(Arrival(std::time::Instant::now()));
                let permit = admitted.map(|(principal, permit)| {
                    request.extensions_mut().insert(principal);
                    permit
                });
                let mut inner = take_ready(&mut self.inner);
                Box::pin(async move {
                    let response = inner.call(request).await;
                    drop(permit);
                    if expired.is_some_and(|e| e.load(std::sync::atomic::Ordering::Acquire)) {
                        metrics::refused_call(uri.path(), "", "idle_stream");
                        return Ok(GatewayError::IdleStream(idle).to_status().into_http());
                    }
                    response
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(rate: u32, burst: u32, concurrency: usize) -> Admission {
        let keys = ApiKeys::load(
            None,
            &["c-key:shop:client".to_owned(), "a-key:ops:admin".to_owned()],
        )
        .unwrap();
        Admission::new(keys, rate, burst, concurrency)
    }

    #[test]
    fn the_auth_matrix_holds() {
        let a = admission(100, 100, 10);
        let embed = "/ecommerce.gateway.v1.Gateway/Embed";
        let canary = "/ecommerce.gateway.v1.GatewayAdmin/SetCanary";
        assert_eq!(
            a.admit(embed, None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.admit(embed, Some("Bearer wrong")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(a.admit(embed, Some("Bearer c-key")).unwrap().is_some());
        assert_eq!(
            a.admit(canary, Some("Bearer c-key")).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(a.admit(canary, Some("Bearer a-key")).unwrap().is_some());
        assert!(
            a.admit("/grpc.health.v1.Health/Check", None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn anonymous_calls_are_admitted_only_when_allowed_and_only_as_clients() {
        let keys = ApiKeys::load(None, &["c-key:shop:client".to_owned()]).unwrap();
        let a = Admission::with_anonymous(keys, Some("load-test"), 100, 100, 10);
        let embed = "/inference.GRPCInferenceService/ModelInfer";
        let (principal, _) = a.admit(embed, None).unwrap().unwrap();
        assert_eq!(&*principal.tenant, "load-test");
        assert_eq!(
            a.admit("/ecommerce.gateway.v1.GatewayAdmin/SetCanary", None)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            a.admit(embed, Some("Bearer wrong")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_burst_over_the_limit_is_refused_per_key() {
        let a = admission(1, 3, 10);
        let embed = "/ecommerce.gateway.v1.Gateway/Embed";
        for _ in 0..3 {
            a.admit(embed, Some("Bearer c-key")).unwrap();
        }
        let refused = a.admit(embed, Some("Bearer c-key")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("rate limit") && !refused.message().contains("c-key"),
            "{}",
            refused.message()
        );
        // Another key has its own bucket.
        a.admit(embed, Some("Bearer a-key")).unwrap();
    }

    #[test]
    fn the_concurrency_limit_refuses_at_once_and_frees_on_completion() {
        let a = admission(100, 100, 1);
        let embed = "/ecommerce.gateway.v1.Gateway/Embed";
        let held = a.admit(embed, Some("Bearer c-key")).unwrap();
        assert_eq!(
            a.admit(embed, Some("Bearer c-key")).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        drop(held);
        a.admit(embed, Some("Bearer c-key")).unwrap();
    }
}
