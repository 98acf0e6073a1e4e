//! A local S3-compatible server for trying kinfer and for the image test:
//! `cargo run -p kinfer-runtime --example s3_server -- --root DIR --addr 127.0.0.1:9000 \
//!     --access-key K --secret-key S`. Each directory under DIR is a bucket; objects are files.

#[path = "../tests/support/s3.rs"]
mod s3;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Opt {
    /// Directory served; each sub-directory is a bucket.
    #[arg(long)]
    root: PathBuf,
    /// Listen address (loopback only by default).
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: String,
    #[arg(long, default_value = "kinfer")]
    access_key: String,
    #[arg(long, default_value = "kinfer-secret")]
    secret_key: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let opt = Opt::parse();
    std::fs::create_dir_all(&opt.root)?;
    let listener = tokio::net::TcpListener::bind(&opt.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    s3::serve(&opt.root, listener, &opt.access_key, &opt.secret_key).await
}
