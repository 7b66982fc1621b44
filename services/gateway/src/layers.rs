//! What the gateway's tower layers ([`crate::admission`], [`crate::grpc::passthrough`]) share:
//! a layer that hands each service it wraps a piece of state, and the readiness hand-over.

use std::future::Future;
use std::pin::Pin;

/// A tower layer that gives each service it wraps a clone of `T`; what the resulting
/// [`WithState`] service does is implemented for each kind of state.
#[derive(Clone)]
pub struct StateLayer<T>(pub T);

impl<T: Clone, S> tower::Layer<S> for StateLayer<T> {
    type Service = WithState<T, S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithState {
            state: self.0.clone(),
            inner,
        }
    }
}

/// A service made by [`StateLayer`]: its state, and the service it wraps.
#[derive(Clone)]
pub struct WithState<T, S> {
    pub(crate) state: T,
    pub(crate) inner: S,
}

/// The gRPC service a layer wraps: tonic's router, or another layer's service.
pub trait GrpcService<B>:
    tower::Service<
        http::Request<B>,
        Response = http::Response<tonic::body::Body>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> GrpcService<B> for S where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The future a layer's service returns.
pub(crate) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The inner service that `poll_ready` drove to readiness, with a clone left in its place:
/// tower promises readiness only to the instance that was polled.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
