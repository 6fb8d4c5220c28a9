//! Serving a router over TCP as `axum::serve` does (HTTP/1 and HTTP/2, the
//! peer's address as `ConnectInfo`, graceful shutdown), with one difference:
//! each connection's task is polled again in place when it woke itself
//! during its own poll.
//!
//! Hyper runs a connection and the handler of its request in one task, and
//! they signal each other through the request body's channel (the handler
//! asks for the body, the connection reads it and hands it over): each
//! signal wakes the task that is running. Tokio takes a task woken while it
//! runs for one that yields: it queues it again and wakes another worker
//! thread to take it, which at low concurrency finds nothing and sleeps
//! again. On the command API at one connection (perf's `sched_wakeup` with
//! call chains) that was 0.8 wake-ups of the other worker per request;
//! polled again in place, the API's threads are switched out 2.4 times per
//! request instead of 4.0, and its CPU per request is 11-17% lower
//! (docs/perf/log.md, "2026-12-05 (11:50-12:20)").

use std::future::Future;
use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use futures_util::task::AtomicWaker;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// open connections finish their requests (as `axum::serve(..)
/// .with_graceful_shutdown(..)` with `into_make_service_with_connect_info`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // As axum::serve: the one receiver of `stop` is dropped when shutdown is
    // asked for, so every holder of its sender sees it closed; the
    // connections hold receivers of `done` until they end.
    let (stop, stop_rx) = watch::channel(());
    let (done_tx, done) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stop_rx);
    });
    loop {
        let (stream, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // As axum::serve: a connection that failed before it was
                // accepted is passed over; any other failure (out of file
                // descriptors, say) is tried again a second later.
                Err(error) if matches!(error.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) => continue,
                Err(error) => {
                    tracing::error!(%error, "accepting a connection failed; trying again in a second");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = stop.closed() => break,
        };
        let service = router.clone().map_request(move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote_addr));
            request.map(axum::body::Body::new)
        });
        let service = TowerToHyperService::new(service);
        let (stop, done) = (stop.clone(), done.clone());
        tokio::spawn(InPlace::new(async move {
            let builder = Builder::new(TokioExecutor::new());
            let mut connection = std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::trace!(%error, "connection ended");
                        }
                        break;
                    }
                    () = stop.closed(), if !stopping => {
                        connection.as_mut().graceful_shutdown();
                        stopping = true;
                    }
                }
            }
            drop(done);
        }));
    }
    drop(done);
    drop(listener);
    done_tx.closed().await;
    Ok(())
}

/// A task's future, polled again at once (up to [`AGAIN`] times) when it
/// woke itself during its poll, instead of being handed back to the
/// scheduler as a task that yields. A wake-up from elsewhere, or after the
/// poll, goes to the task's waker as usual; one that comes during the poll
/// from another thread is taken as the task's own (it is polled again:
/// nothing is lost).
struct InPlace<F> {
    future: Pin<Box<F>>,
    waker: Arc<Relay>,
}

/// How many times in a row a future may be polled again in place; after
/// that its wake-up goes to the scheduler (a future that keeps waking
/// itself is yielding on purpose, or out of tokio's budget).
const AGAIN: usize = 4;

/// The waker the future sees: while it is polled, a wake-up is noted;
/// otherwise it is passed on to the task's waker.
///
/// The state is one atomic, so that a wake-up and the end of a poll cannot
/// interleave: a wake-up either marks the poll under way (and the poller,
/// ending it, sees the mark) or finds it ended and wakes the task. (With two
/// flags, "polling?" then "mark woken", a wake-up from another thread could
/// read "polling", the poll end and find no mark, and the mark come too
/// late: the task slept for good, a connection hung.)
#[derive(Default)]
struct Relay {
    state: AtomicU8,
    task: AtomicWaker,
}

/// [`Relay::state`]: not being polled (the default), polled, polled and woken meanwhile.
const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl Relay {
    /// Starts a poll.
    fn polling(&self) {
        self.state.store(POLLING, Ordering::SeqCst);
    }

    /// Ends a poll: whether the future was woken during it.
    fn polled(&self) -> bool {
        self.state.swap(IDLE, Ordering::SeqCst) == WOKEN
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Marked if a poll is under way (or already marked); else the task's waker.
        if let Err(IDLE) = self.state.compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

impl<F: Future> InPlace<F> {
    fn new(future: F) -> Self {
        Self { future: Box::pin(future), waker: Arc::default() }
    }
}

impl<F: Future> Future for InPlace<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.waker.task.register(cx.waker());
        let relay = Waker::from(self.waker.clone());
        let mut inner = Context::from_waker(&relay);
        for _ in 0..AGAIN {
            self.waker.polling();
            let polled = self.future.as_mut().poll(&mut inner);
            if !self.waker.polled() || polled.is_ready() {
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Mutex;

    use super::*;

    /// Counts the wake-ups the scheduler would get.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself `times` times during its polls, then is ready; keeps the
    /// last waker it was given.
    struct WakesItself {
        times: usize,
        polls: usize,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for WakesItself {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.polls > self.times {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn poll_once<F: Future>(future: &mut InPlace<F>, scheduler: &Arc<Counted>) -> Poll<F::Output> {
        let waker = Waker::from(scheduler.clone());
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again_without_the_scheduler() {
        let scheduler = Arc::new(Counted::default());
        let mut future = InPlace::new(WakesItself { times: 2, polls: 0, waker: Arc::default() });
        assert_eq!(poll_once(&mut future, &scheduler), Poll::Ready(3));
        assert_eq!(scheduler.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_is_handed_back_to_the_scheduler() {
        let scheduler = Arc::new(Counted::default());
        let mut future = InPlace::new(WakesItself { times: 100, polls: 0, waker: Arc::default() });
        assert_eq!(poll_once(&mut future, &scheduler), Poll::Pending);
        assert_eq!(future.future.polls, AGAIN);
        assert_eq!(scheduler.0.load(Ordering::SeqCst), 1, "woken once, to be polled again");
    }

    /// Pending until woken, keeping the waker it was given.
    struct Parked(Arc<Mutex<Option<Waker>>>);

    impl Future for Parked {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            *self.0.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_up_after_the_poll_goes_to_the_scheduler() {
        let scheduler = Arc::new(Counted::default());
        let kept = Arc::new(Mutex::new(None));
        let mut future = InPlace::new(Parked(kept.clone()));
        for polls in 1..=2 {
            assert_eq!(poll_once(&mut future, &scheduler), Poll::Pending);
            assert_eq!(scheduler.0.load(Ordering::SeqCst), polls - 1, "nothing woke it during the poll");
            // From another thread, as the IO driver would.
            let waker = kept.lock().unwrap().take().expect("the future kept its waker");
            std::thread::spawn(move || waker.wake()).join().unwrap();
            assert_eq!(scheduler.0.load(Ordering::SeqCst), polls, "each wake-up after a poll reaches the scheduler");
        }
    }

    /// Hands its waker to another thread at every poll and stays pending,
    /// spinning a little after each hand-over so that the other thread's
    /// wake-up lands anywhere around the end of the poll.
    struct HandsOver {
        to: Arc<HandOver>,
        spin: usize,
    }

    /// One waker at a time from the polling thread to the waking one.
    #[derive(Default)]
    struct HandOver {
        waker: Mutex<Option<Waker>>,
        full: AtomicBool,
        handed: AtomicUsize,
        woken: AtomicUsize,
        stop: AtomicBool,
    }

    impl Future for HandsOver {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            while self.to.full.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            *self.to.waker.lock().unwrap() = Some(cx.waker().clone());
            self.to.handed.fetch_add(1, Ordering::SeqCst);
            self.to.full.store(true, Ordering::SeqCst);
            for _ in 0..self.spin {
                std::hint::spin_loop();
            }
            Poll::Pending
        }
    }

    /// A wake-up from another thread is never lost, wherever it lands
    /// against the end of a poll: it is taken in place, or it reaches the
    /// scheduler (the IO driver wakes a connection's task from whichever
    /// thread holds it).
    #[test]
    fn a_wake_up_from_another_thread_as_the_poll_ends_is_never_lost() {
        let hand_over = Arc::new(HandOver::default());
        let waking = {
            let from = hand_over.clone();
            std::thread::spawn(move || {
                while !from.stop.load(Ordering::SeqCst) {
                    if from.full.load(Ordering::SeqCst) {
                        let waker = from.waker.lock().unwrap().take().unwrap();
                        from.full.store(false, Ordering::SeqCst);
                        waker.wake();
                        from.woken.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::yield_now(); // spinning, but not against a test sharing its core
                }
            })
        };
        let scheduler = Arc::new(Counted::default());
        let mut future = InPlace::new(HandsOver { to: hand_over.clone(), spin: 0 });
        for round in 0..20_000 {
            future.future.spin = round % 200;
            let before = scheduler.0.load(Ordering::SeqCst);
            assert_eq!(poll_once(&mut future, &scheduler), Poll::Pending);
            while hand_over.woken.load(Ordering::SeqCst) < hand_over.handed.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            assert!(scheduler.0.load(Ordering::SeqCst) > before, "round {round}: the last wake-up was lost");
        }
        hand_over.stop.store(true, Ordering::SeqCst);
        waking.join().unwrap();
    }
}
