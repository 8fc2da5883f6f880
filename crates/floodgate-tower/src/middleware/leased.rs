//! An answer's body that holds its request's concurrency slots until it
//! ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use crate::limiter::Lease;

pin_project_lite::pin_project! {
    /// The inner service's body, with the request's [`Lease`] (if any):
    /// given back before the body's last frame goes out, so a client that
    /// has its whole answer never finds its slot still held, on any
    /// instance (the last frame waits for the store, at most its timeout);
    /// or, when the body fails or is dropped first (the client gone, a
    /// timeout), in a task of its own.
    pub struct Leased<B: Body> {
        #[pin]
        inner: B,
        lease: Option<Lease>,
        // The slots' return under way, and the last frame held until it
        // is done (`None`: the body's end).
        giving_back: Option<GivingBack<B::Data, B::Error>>,
    }
}

struct GivingBack<D, E> {
    call: Pin<Box<dyn Future<Output = ()> + Send>>,
    last: Option<Result<Frame<D>, E>>,
}

impl<B: Body> Leased<B> {
    /// `inner`, holding `lease` until it ends.
    pub fn new(inner: B, lease: Option<Lease>) -> Self {
        Leased {
            inner,
            lease,
            giving_back: None,
        }
    }
}

impl<B: Body + std::fmt::Debug> std::fmt::Debug for Leased<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leased")
            .field("inner", &self.inner)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

impl<B: Body> Body for Leased<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if this.giving_back.is_none() {
            let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
            let last = match &frame {
                None | Some(Err(_)) => true,
                Some(Ok(_)) => this.inner.is_end_stream(),
            };
            if !last {
                return Poll::Ready(frame);
            }
            if matches!(frame, Some(Err(_))) {
                // A failed body ends the answer without its end: nothing
                // to hold back; the dropped lease gives the slots back.
                this.lease.take();
                return Poll::Ready(frame);
            }
            let Some(call) = this.lease.take().and_then(Lease::give_back) else {
                return Poll::Ready(frame);
            };
            *this.giving_back = Some(GivingBack { call, last: frame });
        }
        let Some(giving_back) = this.giving_back.as_mut() else {
            return Poll::Ready(None);
        };
        std::task::ready!(giving_back.call.as_mut().poll(cx));
        let last = giving_back.last.take();
        *this.giving_back = None;
        Poll::Ready(last)
    }

    fn is_end_stream(&self) -> bool {
        // Held slots are given back in poll_frame: an end reached with the
        // slots still held must be polled once more.
        self.lease.is_none() && self.giving_back.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
