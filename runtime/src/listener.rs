//! The connection layer: accepts TCP connections, serves HTTP on them with hyper, and sheds the
//! ones that only hold resources.
//!
//! - **Connection limit.** At most `max_connections` connections are served normally. Beyond
//!   that, a small reserve ([`RESERVE_CONNECTIONS`]) still accepts one GET/HEAD request per
//!   connection (health, readiness, metrics: kubelet opens a new connection for every probe), so
//!   a pod under a connection flood is not restarted for failing its probes. Anything else on a
//!   reserve connection gets 429, and connections beyond the reserve are answered 429 at once
//!   and closed, so the process never runs out of file descriptors.
//! - **Header deadline.** A new connection must deliver a complete request head within
//!   `header_timeout` of being accepted; on a kept-alive connection, within `header_timeout` of
//!   the first byte of the next request.
//! - **Idle deadline.** A kept-alive connection with no request in flight and no bytes moving for
//!   `idle_timeout` is closed (a client that stops reading its response counts as idle).
//! - The **body deadline** lives with the request, in [`crate::access::guard`]: the body must
//!   arrive before the request takes an inference slot.
//!
//! hyper's own `header_read_timeout` is not used: it restarts whenever the connection waits for a
//! request head, so it would also close kept-alive connections after the header deadline. A
//! watchdog per connection applies both deadlines instead, from what the connection's reads and
//! requests show ([`Activity`]).
//!
//! The layer serves any [`axum::Router`]: the REST routes, and the gRPC services on their own
//! port. HTTP/1.1 and HTTP/2 with prior knowledge are served, as `axum::serve` did; the HTTP/2
//! limits (streams, header list, rapid reset) are set in [`ConnLimits::builder`]. The reserve's
//! GET/HEAD-only rule is applied by the REST guard ([`crate::access::guard`]); on the gRPC port a
//! reserve connection is served like any other, within the same count.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, http::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};
use tower::ServiceExt;

use crate::{
    error::{ApiError, ErrorCode},
    metrics::Metrics,
};

/// Connections accepted beyond `max_connections` for one GET/HEAD request each (probes, metrics).
pub const RESERVE_CONNECTIONS: usize = 32;

/// Header deadline of a reserve connection (a probe sends its request at once).
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// File descriptors kept free for everything but client connections (model file, S3 and log
/// clients, ONNX Runtime, the listener).
const FD_HEADROOM: u64 = 256;

/// Which share of the connection limit a connection holds; requests carry it as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Within `max_connections`: every endpoint, keep-alive.
    Normal,
    /// Over `max_connections`, within the reserve: one GET/HEAD request, then closed.
    Reserve,
}

/// Connection limits and deadlines.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub reserve: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// HTTP/2 streams in flight per connection (each is one call; KINFER_MAX_CONCURRENCY still caps
/// the inference calls of all connections together).
pub const H2_MAX_STREAMS: u32 = 256;
/// Bytes of request headers per stream (HTTP/1's header limit is hyper's 100 headers / buffer).
pub const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams a client may open and reset before the server reads them (rapid reset).
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server resets for a client's protocol errors before closing the connection.
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

impl ConnLimits {
    /// The HTTP settings of one lane. HTTP/2 (the gRPC port, and h2c on the REST port) gets
    /// the limits Envoy and nginx set: streams per connection, a header-list cap, and a cap on
    /// streams a client opens and resets at once (the "rapid reset" attack, CVE-2023-44487).
    /// Idle and silent HTTP/2 connections are closed by the same watchdog as HTTP/1 (no
    /// keep-alive PINGs from the server: they would keep an idle connection busy forever).
    fn builder(&self, lane: Lane) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            // The watchdog applies the header deadline (see the module docs).
            .header_read_timeout(None)
            .keep_alive(lane == Lane::Normal);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
        b
    }

    fn header_timeout(&self, lane: Lane) -> Duration {
        match lane {
            Lane::Normal => self.header_timeout,
            Lane::Reserve => self.header_timeout.min(RESERVE_HEADER_TIMEOUT),
        }
    }
}

/// The descriptor limit of the process, after raising the soft limit to the hard one.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (as Go's runtime does) and returns both.
#[cfg(unix)]
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(FdLimit { soft: lim.rlim_cur, hard: lim.rlim_max })
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no RLIMIT_NOFILE on this platform"))
}

/// The connection limit that fits in `fds` descriptors: `wanted`, or less when the reserve and
/// [`FD_HEADROOM`] would not fit beside it.
pub fn fit_connections(wanted: usize, reserve: usize, fds: u64) -> usize {
    let room = fds.saturating_sub(FD_HEADROOM + reserve as u64).max(1);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX)).max(1)
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets every
/// connection finish its request in flight, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Arc::new(limits);
    let normal = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(limits.reserve));
    let builders = Arc::new([limits.builder(Lane::Normal), limits.builder(Lane::Reserve)]);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        metrics.connections_accepted.inc();
        // Small request/response messages (gRPC unary calls, JSON answers): no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let (lane, permit) = if let Ok(p) = normal.clone().try_acquire_owned() {
            (Lane::Normal, p)
        } else if let Ok(p) = reserve.clone().try_acquire_owned() {
            (Lane::Reserve, p)
        } else {
            metrics.connections_shed.with_label_values(&["max_connections"]).inc();
            refuse(&tcp, limits.max_connections);
            continue;
        };
        let conn = Connection {
            lane,
            _permit: permit,
            limits: limits.clone(),
            builders: builders.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(conn.run(tcp, app.clone(), stop_rx.clone()));
    }
    drop(listener);
    // Every connection finishes its request in flight and closes; idle ones close at once.
    let _ = stop_tx.send(true);
    drop(stop_rx);
    stop_tx.closed().await;
}

/// Accept errors other than a client giving up (e.g. out of descriptors) pause accepting
/// briefly instead of spinning.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers 429 on a connection over every limit (best effort: never waits) and closes it.
fn refuse(tcp: &TcpStream, max: usize) {
    let id = uuid::Uuid::new_v4().to_string();
    let body = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many connections: the server holds {max} (KINFER_MAX_CONNECTIONS); retry later"),
    )
    .body(&id);
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {id}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tcp.try_write(&[head.as_bytes(), &body].concat());
}

/// One accepted connection and what it holds.
struct Connection {
    lane: Lane,
    _permit: OwnedSemaphorePermit,
    limits: Arc<ConnLimits>,
    builders: Arc<[auto::Builder<TokioExecutor>; 2]>,
    metrics: Arc<Metrics>,
}

/// Why the watchdog closed a connection (the `reason` label of `kinfer_connections_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    HeaderTimeout,
    IdleTimeout,
}

impl Shed {
    fn label(self) -> &'static str {
        match self {
            Shed::HeaderTimeout => "header_timeout",
            Shed::IdleTimeout => "idle_timeout",
        }
    }
}

impl Connection {
    async fn run(self, tcp: TcpStream, app: Router, mut stop: watch::Receiver<bool>) {
        self.metrics.connections_open.inc();
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked { inner: tcp, activity: activity.clone() });
        let lane = self.lane;
        let svc_activity = activity.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let request = svc_activity.begin_request();
            req.extensions_mut().insert(lane);
            let app = app.clone();
            async move {
                let resp = app.oneshot(req.map(Body::new)).await;
                drop(request);
                resp
            }
        });
        let builder = &self.builders[if lane == Lane::Normal { 0 } else { 1 }];
        let header_timeout = self.limits.header_timeout(lane);
        let conn = builder.serve_connection(io, svc);
        let mut conn = std::pin::pin!(conn);
        let watchdog = tokio::time::sleep(Duration::ZERO);
        let mut watchdog = std::pin::pin!(watchdog);
        watchdog.as_mut().reset(activity.epoch + header_timeout);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = stop.wait_for(|stop| *stop), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = watchdog.as_mut() => {
                    match activity.check(Instant::now(), header_timeout, self.limits.idle_timeout) {
                        Ok(next) => watchdog.as_mut().reset(next),
                        Err(reason) => {
                            self.metrics.connections_shed.with_label_values(&[reason.label()]).inc();
                            break;
                        }
                    }
                }
            }
        }
        self.metrics.connections_open.dec();
    }
}

/// What a connection's watchdog reads: requests in flight and when bytes last moved. Times are
/// milliseconds since `epoch` (when the connection was accepted).
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Whether a request has been answered (so the connection is a kept-alive one).
    served: AtomicBool,
    /// When bytes were last read or written.
    last_io: AtomicU64,
    /// When the last request was answered.
    free_since: AtomicU64,
    /// When the first byte of the next request arrived ([`NONE`] until it does).
    head_started: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_io: AtomicU64::new(0),
            free_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn read_at(&self, now: Instant) {
        let now = self.ms(now);
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started.compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn wrote_at(&self, now: Instant) {
        self.last_io.store(self.ms(now), Ordering::Relaxed);
    }

    /// A request head arrived; the returned guard marks it answered when dropped.
    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.started();
        InFlight(self.clone())
    }

    fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
    }

    fn answered_at(&self, now: Instant) {
        self.free_since.store(self.ms(now), Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// `Ok(when to look again)`, or `Err(why)` when a deadline has passed.
    fn check(&self, now: Instant, header_timeout: Duration, idle_timeout: Duration) -> Result<Instant, Shed> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // The request's own deadlines (body, inference) apply; look again later.
            return Ok(now + header_timeout.min(idle_timeout));
        }
        let at = |ms: u64| self.epoch + Duration::from_millis(ms);
        let head = self.head_started.load(Ordering::Relaxed);
        let (deadline, reason) = if !self.served.load(Ordering::Relaxed) {
            // A new connection: the whole first head within the deadline, counted from accept.
            (self.epoch + header_timeout, Shed::HeaderTimeout)
        } else if head != NONE {
            (at(head) + header_timeout, Shed::HeaderTimeout)
        } else {
            let quiet = self.free_since.load(Ordering::Relaxed).max(self.last_io.load(Ordering::Relaxed));
            (at(quiet) + idle_timeout, Shed::IdleTimeout)
        };
        if now >= deadline { Err(reason) } else { Ok(deadline) }
    }
}

/// A request in flight on a connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered_at(Instant::now());
    }
}

/// The TCP stream, noting every read and write in the connection's [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_at(Instant::now());
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote_at(Instant::now());
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote_at(Instant::now());
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_fits_under_the_descriptor_limit() {
        assert_eq!(fit_connections(4096, 32, 1_048_576), 4096);
        assert_eq!(fit_connections(4096, 32, 1024), 1024 - 256 - 32);
        assert_eq!(fit_connections(4096, 32, 100), 1, "never zero");
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let h = Duration::from_secs(2);
        let idle = Duration::from_secs(60);
        let a = Activity::new();
        let t0 = a.epoch;
        let at = |s: u64| t0 + Duration::from_secs(s);
        // New connection: header deadline from accept, even once bytes arrive.
        assert_eq!(a.check(t0, h, idle), Ok(at(2)));
        a.read_at(at(1));
        assert_eq!(a.check(at(1), h, idle), Ok(at(2)));
        assert_eq!(a.check(at(2), h, idle), Err(Shed::HeaderTimeout));
        // In flight: no connection deadline.
        a.started();
        assert!(a.check(at(100), h, idle).is_ok());
        a.answered_at(at(3));
        // Kept alive: idle deadline from the answer, or from the last bytes written...
        assert_eq!(a.check(at(3), h, idle), Ok(at(63)));
        a.wrote_at(at(4));
        assert_eq!(a.check(at(10), h, idle), Ok(at(64)));
        assert_eq!(a.check(at(64), h, idle), Err(Shed::IdleTimeout));
        // ...until the next request starts: then the header deadline from its first byte.
        a.read_at(at(30));
        assert_eq!(a.check(at(30), h, idle), Ok(at(32)));
        a.read_at(at(31));
        assert_eq!(a.check(at(32), h, idle), Err(Shed::HeaderTimeout));
        // Its head complete, the next request is in flight; answered, idle again.
        a.started();
        a.answered_at(at(33));
        assert_eq!(a.check(at(34), h, idle), Ok(at(93)));
    }
}
