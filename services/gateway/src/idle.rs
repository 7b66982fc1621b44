//! The idle-stream deadline: a call whose first message does not arrive within a deadline of
//! its headers is ended, so that header-only HTTP/2 streams (a buggy client, or one that opens
//! streams and never writes) cannot hold the gateway's concurrency permits.
//!
//! The request body is wrapped: until its first data frame, a poll that finds nothing checks
//! the deadline, and once it has passed the body ends and says so through a flag; the
//! admission layer then answers the call `CANCELLED` with a message saying why, and the call's
//! permit is freed.
//!
//! No timer is made per call (registering one costs every call a wake-up of the runtime's
//! timer, about 0.03 ms here): a body still waiting is listed in the [`IdleWatch`], whose one
//! sweeper wakes the overdue ones every [`SWEEP_EVERY`]. A deadline is thus kept to within
//! that much.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// How often the sweeper looks for overdue bodies.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A body waiting for its first data frame.
struct Waiting {
    deadline: Instant,
    waker: Mutex<Waker>,
    done: AtomicBool,
}

/// The bodies waiting for their first data frame, and the sweeper that wakes the overdue.
#[derive(Default)]
pub struct IdleWatch {
    waiting: Mutex<Vec<Arc<Waiting>>>,
}

impl IdleWatch {
    /// Wakes the overdue bodies every [`SWEEP_EVERY`] until `stop`.
    pub async fn sweep(self: Arc<Self>, stop: shared::shutdown::Shutdown) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopped = std::pin::pin!(stop.wait());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut stopped => return,
            }
            let now = Instant::now();
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|w| {
                    if w.done.load(Ordering::Acquire) {
                        return false;
                    }
                    if now >= w.deadline {
                        w.waker
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .wake_by_ref();
                        return false;
                    }
                    true
                });
        }
    }
}

/// A request body that ends, flagging it, when its first data frame is later than a deadline.
pub struct FirstMessageDeadline {
    inner: tonic::body::Body,
    deadline: Option<Instant>,
    watch: Arc<IdleWatch>,
    listed: Option<Arc<Waiting>>,
    expired: Arc<AtomicBool>,
    ended: bool,
}

impl FirstMessageDeadline {
    /// `inner`, whose first data frame must arrive within `limit` of now, watched by `watch`,
    /// and the flag that says it did not.
    pub fn new(
        inner: tonic::body::Body,
        limit: Duration,
        watch: Arc<IdleWatch>,
    ) -> (FirstMessageDeadline, Arc<AtomicBool>) {
        let expired = Arc::new(AtomicBool::new(false));
        let body = FirstMessageDeadline {
            inner,
            deadline: Some(Instant::now() + limit),
            watch,
            listed: None,
            expired: expired.clone(),
            ended: false,
        };
        (body, expired)
    }

    /// No longer waiting: the sweeper forgets it.
    fn settle(&mut self) {
        self.deadline = None;
        if let Some(listed) = self.listed.take() {
            listed.done.store(true, Ordering::Release);
        }
    }
}

impl Drop for FirstMessageDeadline {
    fn drop(&mut self) {
        self.settle();
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
        let Some(deadline) = this.deadline else {
            return polled;
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() => this.settle(),
            Poll::Ready(_) => {}
            Poll::Pending if Instant::now() >= deadline => {
                this.settle();
                this.ended = true;
                this.expired.store(true, Ordering::Release);
                return Poll::Ready(None);
            }
            Poll::Pending => match &this.listed {
                Some(listed) => {
                    let mut waker = listed.waker.lock().unwrap_or_else(|p| p.into_inner());
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                }
                None => {
                    let listed = Arc::new(Waiting {
                        deadline,
                        waker: Mutex::new(cx.waker().clone()),
                        done: AtomicBool::new(false),
                    });
                    this.watch
                        .waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(listed.clone());
                    this.listed = Some(listed);
                }
            },
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
