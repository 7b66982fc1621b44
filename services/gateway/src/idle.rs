//! The idle-stream deadline: a call whose first message does not arrive within a deadline of
//! its headers is ended, so that header-only HTTP/2 streams (a buggy client, or one that opens
//! streams and never writes) cannot hold the gateway's concurrency permits.
//!
//! The request body is wrapped: until its first data frame, polling it also polls a timer, and
//! when the timer fires the body ends and says so through a flag; the admission layer then
//! answers the call `CANCELLED` with a message saying why, and the call's permit is freed. Once data has arrived the
//! deadline no longer applies (a long stream is not idle because it is long).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A request body that fails when its first data frame is later than a deadline.
pub struct FirstMessageDeadline {
    inner: tonic::body::Body,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<AtomicBool>,
    ended: bool,
}

impl FirstMessageDeadline {
    /// `inner`, whose first data frame must arrive within `limit` of now, and the flag that
    /// says it did not.
    pub fn new(
        inner: tonic::body::Body,
        limit: Duration,
    ) -> (FirstMessageDeadline, Arc<AtomicBool>) {
        let expired = Arc::new(AtomicBool::new(false));
        let body = FirstMessageDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            expired: expired.clone(),
            ended: false,
        };
        (body, expired)
    }
}

impl Body for FirstMessageDeadline {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            this.deadline = None;
        }
        if let Poll::Pending = polled
            && let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            this.ended = true;
            this.expired.store(true, Ordering::Release);
            return Poll::Ready(None);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
