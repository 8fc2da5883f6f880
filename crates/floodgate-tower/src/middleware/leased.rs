//! An answer's body that holds its request's concurrency slots until it
//! ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use crate::limiter::Lease;

pin_project_lite::pin_project! {
    /// The inner service's body, with the request's [`Lease`] (if any):
    /// given back when the body's last frame has been read, or when the
    /// body is dropped (the answer sent, the client gone, a timeout).
    pub struct Leased<B> {
        #[pin]
        inner: B,
        lease: Option<Lease>,
    }
}

impl<B> Leased<B> {
    /// `inner`, holding `lease` until it ends.
    pub fn new(inner: B, lease: Option<Lease>) -> Self {
        Leased { inner, lease }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for Leased<B> {
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
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &frame {
            // The last frame is out (or the body failed): the slots go back.
            this.lease.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
