//! A real S3-compatible server (s3s-fs: SigV4-checked, objects as plain files) on 127.0.0.1.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use s3s::{auth::SimpleAuth, service::S3ServiceBuilder};
use tokio::net::TcpListener;

/// Requests the server answered: GETs, and GETs with a `Range` header.
#[derive(Default, Debug)]
pub struct Counts {
    pub gets: AtomicUsize,
    pub ranged_gets: AtomicUsize,
}

#[allow(dead_code)]
impl Counts {
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
    pub fn ranged_gets(&self) -> usize {
        self.ranged_gets.load(Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.gets.store(0, Ordering::SeqCst);
        self.ranged_gets.store(0, Ordering::SeqCst);
    }
}

/// Serves `root` (each directory a bucket) on `addr` until the returned future is dropped.
pub async fn serve(root: &Path, listener: TcpListener, access_key: &str, secret_key: &str) -> std::io::Result<()> {
    serve_counted(root, listener, access_key, secret_key, Arc::default()).await
}

/// As `serve`, counting the requests in `counts`.
pub async fn serve_counted(
    root: &Path,
    listener: TcpListener,
    access_key: &str,
    secret_key: &str,
    counts: Arc<Counts>,
) -> std::io::Result<()> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let service = {
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(access_key, secret_key));
        b.build()
    };
    let http = ConnBuilder::new(TokioExecutor::new());
    // Connections live in this future's JoinSet: dropping the future (aborting its task) closes
    // them all, as a store going down would.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (socket, _) = listener.accept().await?;
        let (service, counts) = (service.clone(), counts.clone());
        let counted = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            if req.method() == http::Method::GET {
                counts.gets.fetch_add(1, Ordering::SeqCst);
                if req.headers().contains_key(http::header::RANGE) {
                    counts.ranged_gets.fetch_add(1, Ordering::SeqCst);
                }
            }
            let service = service.clone();
            async move { hyper::service::Service::call(&service, req).await }
        });
        let conn = http.serve_connection(TokioIo::new(socket), counted).into_owned();
        conns.spawn(async move {
            let _ = conn.await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Binds 127.0.0.1 on `port` (0 = any free port).
#[allow(dead_code)]
pub async fn bind(port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(("127.0.0.1", port)).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
