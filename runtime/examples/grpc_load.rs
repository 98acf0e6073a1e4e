//! A small gRPC load generator for the benchmark (`benchmarks/bench.py`, section `grpc`): what
//! wrk is for REST. `--conns` connections (one HTTP/2 connection each, one call in flight each,
//! as wrk's connections), `ModelInfer` back to back for `--seconds`, after `--warmup` seconds.
//!
//! `cargo run --release -p kinfer-runtime --example grpc_load -- --addr 127.0.0.1:8081
//!     --model tabular --rows 64 --cols 30 [--conns 32] [--seconds 3] [--warmup 1] [--typed]`
//!
//! The input is a `[rows, cols]` FP32 tensor named `input` (the example models' shape), taken
//! from `--data` (a JSON array of numbers, repeated as needed) or zeros, sent as
//! `raw_input_contents` (what tritonclient.grpc sends) or, with `--typed`, as `fp32_contents`.
//! Prints one line `BENCH_JSON {requests, duration_us, p50_us, p90_us, p99_us, max_us, errors}`
//! (the fields benchmarks/post.lua prints for wrk).

use std::time::{Duration, Instant};

use clap::Parser;
use kinfer_runtime::protocol::grpc::pb::{
    InferTensorContents, ModelInferRequest, grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::InferInputTensor,
};
use tonic::transport::Endpoint;

#[derive(Parser)]
struct Args {
    /// host:port of the gRPC server.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: String,
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 1)]
    rows: usize,
    #[arg(long)]
    cols: usize,
    /// Input values as a JSON array (repeated to fill rows × cols); zeros when absent.
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value_t = 1)]
    conns: usize,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Send typed `fp32_contents` instead of `raw_input_contents`.
    #[arg(long)]
    typed: bool,
}

fn request(args: &Args) -> Result<ModelInferRequest, String> {
    let given: Vec<f32> = match &args.data {
        Some(s) => serde_json::from_str(s).map_err(|e| format!("--data: {e}"))?,
        None => vec![0.0],
    };
    let n = args.rows * args.cols;
    let values: Vec<f32> = (0..n).map(|i| given.get(i % given.len().max(1)).copied().unwrap_or(0.0)).collect();
    let mut input = InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape: vec![args.rows as i64, args.cols as i64],
        ..Default::default()
    };
    let mut req = ModelInferRequest { model_name: args.model.clone(), ..Default::default() };
    if args.typed {
        input.contents = Some(InferTensorContents { fp32_contents: values, ..Default::default() });
    } else {
        req.raw_input_contents = vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()];
    }
    req.inputs = vec![input];
    Ok(req)
}

/// Runs `conns` callers until `until`; returns the latencies (µs) of successful calls and errors.
async fn run(
    endpoint: &Endpoint,
    req: &ModelInferRequest,
    conns: usize,
    until: Instant,
) -> Result<(Vec<u64>, u64), String> {
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        // One channel per caller: its own HTTP/2 connection, like one wrk connection.
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
        let mut client = GrpcInferenceServiceClient::new(channel).max_decoding_message_size(usize::MAX);
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                match client.model_infer(req.clone()).await {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.map_err(|e| format!("caller failed: {e}"))?;
        all.extend(lat);
        errors += e;
    }
    Ok((all, errors))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let req = request(&args)?;
    let endpoint =
        Endpoint::from_shared(format!("http://{}", args.addr)).map_err(|e| format!("--addr: {e}"))?.tcp_nodelay(true);
    if args.warmup > 0.0 {
        run(&endpoint, &req, args.conns, Instant::now() + Duration::from_secs_f64(args.warmup)).await?;
    }
    let start = Instant::now();
    let (mut lat, errors) = run(&endpoint, &req, args.conns, start + Duration::from_secs_f64(args.seconds)).await?;
    let elapsed = start.elapsed();
    lat.sort_unstable();
    println!(
        "BENCH_JSON {}",
        serde_json::json!({
            "requests": lat.len(),
            "duration_us": elapsed.as_micros() as u64,
            "p50_us": percentile(&lat, 50.0),
            "p90_us": percentile(&lat, 90.0),
            "p99_us": percentile(&lat, 99.0),
            "max_us": lat.last().copied().unwrap_or(0),
            "errors": errors,
        })
    );
    Ok(())
}
