//! Times one model download through the runtime's store (`store::fetch`), for the `cold` benchmark:
//! `cargo run --release -p kinfer-runtime --example fetch -- --endpoint http://127.0.0.1:9000 \
//!     --uri s3://bench/big.bin --sha256 HEX --part-bytes 16777216 --concurrency 8 --cache-dir DIR`.
//! Prints one JSON line: bytes, seconds, MB/s. `--part-bytes` above the object size = one GET.

use std::{path::PathBuf, time::Instant};

use clap::Parser;
use kinfer_runtime::store::{self, FetchOptions};

#[derive(Parser)]
struct Opt {
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    uri: String,
    #[arg(long)]
    sha256: Option<String>,
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    part_bytes: u64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long)]
    cache_dir: PathBuf,
    #[arg(long, default_value = "kinfer")]
    access_key: String,
    #[arg(long, default_value = "kinfer-secret")]
    secret_key: String,
    /// Upload this file to `--uri` with one PutObject instead, and exit. s3s-fs keeps the ETag
    /// (MD5) of objects it received; for files put in its directory by hand it hashes the whole
    /// file again on every GET, ranged or not, which would make the benchmark measure that.
    #[arg(long)]
    put: Option<PathBuf>,
    /// A label for the output line.
    #[arg(long, default_value = "")]
    label: String,
}

#[tokio::main]
async fn main() {
    let opt = Opt::parse();
    let mut o = FetchOptions::new(&opt.cache_dir);
    o.expected_sha256 = opt.sha256.clone();
    o.part_bytes = opt.part_bytes;
    o.concurrency = opt.concurrency;
    o.s3_client = Some(store::s3_client_for(&opt.endpoint, &opt.access_key, &opt.secret_key));
    if let Some(file) = &opt.put {
        let (bucket, key) = opt.uri.trim_start_matches("s3://").split_once('/').expect("s3://bucket/key");
        let client = o.s3_client.clone().expect("client");
        let body = aws_sdk_s3::primitives::ByteStream::from_path(file).await.expect("read --put file");
        if let Err(e) = client.put_object().bucket(bucket).key(key).body(body).send().await {
            eprintln!("put failed: {e:?}");
            std::process::exit(1);
        }
        return;
    }
    let t0 = Instant::now();
    let path = match store::fetch(&opt.uri, &o).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fetch failed: {}", e.message);
            std::process::exit(1);
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({"label": opt.label, "bytes": bytes, "seconds": (secs * 1000.0).round() / 1000.0,
            "mb_per_s": ((bytes as f64 / 1e6 / secs) * 10.0).round() / 10.0,
            "part_bytes": opt.part_bytes, "concurrency": opt.concurrency})
    );
}
