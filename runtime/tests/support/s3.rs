//! A real S3-compatible server (s3s-fs: SigV4-checked, objects as plain files) on 127.0.0.1.

use std::{net::SocketAddr, path::Path};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use s3s::{auth::SimpleAuth, service::S3ServiceBuilder};
use tokio::net::TcpListener;

/// Serves `root` (each directory a bucket) on `addr` until the returned future is dropped.
pub async fn serve(root: &Path, listener: TcpListener, access_key: &str, secret_key: &str) -> std::io::Result<()> {
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
        let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
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
