//! The access log: one line per request (HTTP and gRPC), formatted and written by its own thread.
//!
//! The request path only fills a [`Line`] (a few moves, no formatting, no system call) and puts it
//! on a bounded queue. The writer thread formats every waiting line into one buffer and writes it
//! with one `write` to stdout, so a busy server makes one system call per batch of lines (every
//! 20 ms) instead of one per request, and never wakes a thread per request. When the queue is full, lines of successful requests are dropped and counted
//! (`kinfer_access_log_dropped_total`); lines of failed requests are written at once by the
//! request's own thread: errors are always logged.
//!
//! The fields and the format (`KINFER_LOG_FORMAT`: JSON or text) are the ones the tracing
//! subscriber writes for the other log lines, with `target` `kinfer::access`; the level filter
//! (`KINFER_LOG`) applies as to any other line (`KINFER_LOG=warn` keeps only internal errors).

use std::{
    io::Write,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::LogFormat;

/// Lines waiting for the writer thread; beyond it, successful requests' lines are dropped.
const QUEUE: usize = 16_384;
/// The most bytes the writer gathers before it writes them.
const BATCH_BYTES: usize = 256 * 1024;
/// How long the writer lets lines gather while requests keep coming.
const INTERVAL: Duration = Duration::from_millis(20);

/// What one access line says.
pub struct Line {
    pub at: SystemTime,
    /// ERROR instead of INFO (internal errors).
    pub error_level: bool,
    pub request_id: Arc<str>,
    pub method: String,
    pub path: String,
    pub model: String,
    /// The version that answered, or "-".
    pub version: String,
    /// v2, v1, predict, grpc, or "-" for requests that are not inference.
    pub protocol: &'static str,
    pub status: u16,
    /// gRPC requests: the status code's name.
    pub grpc_code: Option<String>,
    pub latency_us: u64,
    pub trace_id: Option<String>,
    /// The error code (`INVALID_REQUEST`, …) of a failed request.
    pub code: Option<&'static str>,
    pub error: Option<String>,
}

impl Line {
    fn failed(&self) -> bool {
        self.error.is_some() || self.status >= 400
    }
}

enum Msg {
    Line(Box<Line>),
    Flush(std::sync::mpsc::Sender<()>),
}

struct Writer {
    tx: Sender<Msg>,
    format: LogFormat,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Lines dropped because the writer fell behind. Its own static, so that registering it (in
/// [`crate::metrics::Metrics`]) does not start the writer thread before [`init`] chose the format.
static DROPPED: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    prometheus::IntCounter::new(
        "kinfer_access_log_dropped_total",
        "Access log lines of successful requests dropped because the log writer fell behind",
    )
    .expect("a valid metric name")
});

/// The dropped-lines counter, for the metrics registry.
pub fn dropped_counter() -> prometheus::IntCounter {
    DROPPED.clone()
}

/// Starts the writer thread with `format` (the first call decides; later calls change nothing).
pub fn init(format: LogFormat) {
    let _ = start(format);
}

fn writer() -> &'static Writer {
    start(LogFormat::Json)
}

fn start(format: LogFormat) -> &'static Writer {
    WRITER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let spawned =
            std::thread::Builder::new().name("kinfer-access-log".into()).spawn(move || write_loop(rx, format));
        if let Err(e) = spawned {
            // Without the thread every line is written by its request (see `log`).
            eprintln!("kinfer-runtime: cannot start the access log thread ({e}); writing lines inline");
        }
        Writer { tx, format }
    })
}

/// Whether access lines of `level` pass the log filter (`KINFER_LOG`).
pub fn enabled(error_level: bool) -> bool {
    if error_level {
        tracing::enabled!(target: "kinfer::access", tracing::Level::ERROR)
    } else {
        tracing::enabled!(target: "kinfer::access", tracing::Level::INFO)
    }
}

/// Logs `line` (when its level passes the filter).
pub fn log(line: Line) {
    if !enabled(line.error_level) {
        return;
    }
    let w = writer();
    match w.tx.try_send(Msg::Line(Box::new(line))) {
        Ok(()) => {}
        // The writer fell behind: a failed request's line is written here, a success's dropped.
        Err(TrySendError::Full(Msg::Line(line))) if !line.failed() => DROPPED.inc(),
        // Full with a failure, or no writer thread at all (it could not start): written here.
        Err(TrySendError::Full(Msg::Line(line)) | TrySendError::Disconnected(Msg::Line(line))) => {
            let mut buf = Vec::with_capacity(512);
            write_line(&mut buf, &line, w.format);
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&buf);
            let _ = out.flush();
        }
        Err(_) => {}
    }
}

/// Waits (at most `limit`) until every line logged so far is written.
pub fn flush(limit: Duration) -> bool {
    let Some(w) = WRITER.get() else { return true };
    let (ack, done) = std::sync::mpsc::channel();
    if w.tx.send_timeout(Msg::Flush(ack), limit).is_err() {
        return false;
    }
    done.recv_timeout(limit).is_ok()
}

/// Blocks for the first line after a quiet spell, then drains the queue every [`INTERVAL`] until
/// it stays empty: while requests keep coming the writer sleeps instead of waiting on the queue,
/// so logging a line never has to wake it (one wake per burst, not one per request).
fn write_loop(rx: Receiver<Msg>, format: LogFormat) {
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    let mut acks = Vec::new();
    let take = |msg: Msg, buf: &mut Vec<u8>, acks: &mut Vec<std::sync::mpsc::Sender<()>>| match msg {
        Msg::Line(line) => write_line(buf, &line, format),
        Msg::Flush(ack) => acks.push(ack),
    };
    while let Ok(first) = rx.recv() {
        take(first, &mut buf, &mut acks);
        loop {
            while let Ok(msg) = rx.try_recv() {
                take(msg, &mut buf, &mut acks);
                if buf.len() >= BATCH_BYTES {
                    write_out(&mut buf);
                }
            }
            write_out(&mut buf);
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            std::thread::sleep(INTERVAL);
            if rx.is_empty() {
                break;
            }
        }
    }
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(buf);
        let _ = out.flush();
        buf.clear();
    }
}

/// Appends `line` in `format`, ending with a newline.
pub fn write_line(buf: &mut Vec<u8>, line: &Line, format: LogFormat) {
    match format {
        LogFormat::Json => json(buf, line),
        LogFormat::Text => text(buf, line),
    }
}

fn level(line: &Line) -> &'static str {
    if line.error_level { "ERROR" } else { "INFO" }
}

/// `{"timestamp":…,"level":…,"message":"request",<fields>,"target":"kinfer::access"}`, as the
/// JSON subscriber writes events (flattened).
fn json(buf: &mut Vec<u8>, l: &Line) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf, l.at);
    buf.extend_from_slice(b"\",\"level\":\"");
    buf.extend_from_slice(level(l).as_bytes());
    buf.extend_from_slice(b"\",\"message\":\"request\"");
    let field = |buf: &mut Vec<u8>, name: &str, value: &str| {
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b"\":");
        let _ = serde_json::to_writer(&mut *buf, value);
    };
    field(buf, "request_id", &l.request_id);
    field(buf, "method", &l.method);
    field(buf, "path", &l.path);
    field(buf, "model", &l.model);
    field(buf, "version", &l.version);
    field(buf, "protocol", l.protocol);
    let _ = write!(buf, ",\"status\":{}", l.status);
    if let Some(c) = &l.grpc_code {
        field(buf, "grpc_code", c);
    }
    let _ = write!(buf, ",\"latency_us\":{}", l.latency_us);
    if let Some(t) = &l.trace_id {
        field(buf, "trace_id", t);
    }
    if let Some(c) = l.code {
        field(buf, "code", c);
    }
    if let Some(e) = &l.error {
        field(buf, "error", e);
    }
    buf.extend_from_slice(b",\"target\":\"kinfer::access\"}\n");
}

/// `<timestamp>  INFO kinfer::access: request request_id=… …`, as the text subscriber writes
/// events (without colours).
fn text(buf: &mut Vec<u8>, l: &Line) {
    timestamp(buf, l.at);
    let _ = write!(buf, " {:>5} kinfer::access: request", level(l));
    let _ = write!(
        buf,
        " request_id={} method={} path={} model={} version={:?} protocol={:?} status={}",
        l.request_id, l.method, l.path, l.model, l.version, l.protocol, l.status
    );
    if let Some(c) = &l.grpc_code {
        let _ = write!(buf, " grpc_code={c:?}");
    }
    let _ = write!(buf, " latency_us={}", l.latency_us);
    if let Some(t) = &l.trace_id {
        let _ = write!(buf, " trace_id={t:?}");
    }
    if let Some(c) = l.code {
        let _ = write!(buf, " code={c:?}");
    }
    if let Some(e) = &l.error {
        let _ = write!(buf, " error={e}");
    }
    buf.push(b'\n');
}

/// RFC 3339 in UTC with microseconds (`2026-11-30T11:42:58.123456Z`), as the subscriber's timer.
fn timestamp(buf: &mut Vec<u8>, at: SystemTime) {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil(days as i64);
    let _ = write!(
        buf,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
}

/// Year, month, day of `days` since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line {
        Line {
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_038_978_123_456),
            error_level: false,
            request_id: Arc::from("r-1"),
            method: "POST".into(),
            path: "/v2/models/m/infer".into(),
            model: "m".into(),
            version: "2".into(),
            protocol: "v2",
            status: 200,
            grpc_code: None,
            latency_us: 87,
            trace_id: None,
            code: None,
            error: None,
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut b = Vec::new();
        timestamp(&mut b, SystemTime::UNIX_EPOCH);
        assert_eq!(String::from_utf8_lossy(&b), "1970-01-01T00:00:00.000000Z");
        b.clear();
        timestamp(&mut b, line().at);
        assert_eq!(String::from_utf8_lossy(&b), "2026-11-30T11:42:58.123456Z");
        b.clear();
        // A leap day.
        timestamp(&mut b, SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(String::from_utf8_lossy(&b), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn json_lines_carry_the_fields_of_the_subscriber_events() {
        let mut b = Vec::new();
        let mut l = line();
        json(&mut b, &l);
        let v: serde_json::Value = serde_json::from_slice(&b).expect("one JSON object");
        assert_eq!(v["target"], "kinfer::access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_us"], 87);
        assert!(v.get("error").is_none() && v.get("trace_id").is_none());
        assert!(b.ends_with(b"}\n"));

        l.error_level = true;
        l.status = 500;
        l.code = Some("INTERNAL");
        l.error = Some("a \"quoted\"\nmessage".into());
        l.grpc_code = Some("Internal".into());
        l.trace_id = Some("abc".into());
        b.clear();
        json(&mut b, &l);
        let v: serde_json::Value = serde_json::from_slice(&b).expect("escaped");
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["error"], "a \"quoted\"\nmessage");
        assert_eq!(v["code"], "INTERNAL");
        assert_eq!(v["grpc_code"], "Internal");
        assert_eq!(v["trace_id"], "abc");
    }

    #[test]
    fn text_lines_read_like_the_subscriber_events() {
        let mut b = Vec::new();
        text(&mut b, &line());
        let s = String::from_utf8_lossy(&b);
        assert!(
            s.starts_with("2026-11-30T11:42:58.123456Z  INFO kinfer::access: request request_id=r-1 method=POST"),
            "{s}"
        );
        assert!(s.contains(" model=m version=\"2\" protocol=\"v2\" status=200 "), "{s}");
        assert!(s.ends_with("status=200 latency_us=87\n"), "{s}");
    }
}
