//! The in-process floor for the benchmark (`make bench`): each example model through the same
//! ort session and the same `model::run` the server uses (typed tensors in, typed tensors out),
//! single thread, intra-op threads = 1, no HTTP and no JSON.
//!
//! `cargo run --release -p kinfer-runtime --example floor -- [--models iris,tabular,mlp]
//!     [--rows 1,64] [--seconds 1.0] [--dir examples/models] [--json]`
//!
//! For each model × rows it warms up, then calls `run` back to back for the given time and prints
//! the per-call p50 / p99 (µs), calls/s and rows/s; `--json` prints one JSON object per line.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use kinfer_runtime::{
    model::{SessionOptions, build_session, init_onnxruntime, model_info, run},
    tensor::{Tensor, TensorData},
};

struct Opt {
    models: Vec<String>,
    rows: Vec<usize>,
    seconds: f64,
    dir: PathBuf,
    json: bool,
}

fn parse_args() -> Result<Opt, String> {
    let mut opt = Opt {
        models: vec!["iris".into(), "tabular".into(), "mlp".into()],
        rows: vec![1, 64],
        seconds: 1.0,
        dir: PathBuf::from("examples/models"),
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--models" => opt.models = val()?.split(',').map(str::to_string).collect(),
            "--rows" => {
                opt.rows = val()?
                    .split(',')
                    .map(|r| r.parse().map_err(|_| format!("bad --rows value {r}")))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => opt.seconds = val()?.parse().map_err(|_| "bad --seconds".to_string())?,
            "--dir" => opt.dir = PathBuf::from(val()?),
            "--json" => opt.json = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opt)
}

/// The example rows of the model's expected.json (its first input), as a flat f32 list.
fn example_rows(dir: &std::path::Path) -> Result<(Vec<f32>, usize), String> {
    let path = dir.join("expected.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let input = &v["inputs"][0];
    let cols = input["shape"][1].as_u64().ok_or("expected.json: inputs[0].shape[1] missing")? as usize;
    let data: Vec<f32> = input["data"]
        .as_array()
        .ok_or("expected.json: inputs[0].data missing")?
        .iter()
        .map(|x| x.as_f64().unwrap_or(0.0) as f32)
        .collect();
    Ok((data, cols))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let opt = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::exit(2);
        }
    };
    let env = init_onnxruntime().unwrap_or_else(|e| {
        eprintln!("floor: {e}");
        std::process::exit(1);
    });
    for name in &opt.models {
        let dir = opt.dir.join(name);
        let uri = dir.join("model.onnx");
        let bytes = std::fs::read(&uri).unwrap_or_else(|e| {
            eprintln!("floor: {}: {e}", uri.display());
            std::process::exit(1);
        });
        let uri = uri.display().to_string();
        let mut session = build_session(&env, &uri, &bytes, SessionOptions { intra_threads: 1 }).unwrap_or_else(|e| {
            eprintln!("floor: {e}");
            std::process::exit(1);
        });
        let info = model_info(&session, name, "1", &bytes).unwrap_or_else(|e| {
            eprintln!("floor: {e}");
            std::process::exit(1);
        });
        let (examples, cols) = example_rows(&dir).unwrap_or_else(|e| {
            eprintln!("floor: {e}");
            std::process::exit(1);
        });
        let example_count = (examples.len() / cols).max(1);
        for &rows in &opt.rows {
            // The same rows the HTTP benchmark sends: the example rows, cycled.
            let data: Vec<f32> =
                (0..rows).flat_map(|r| examples[(r % example_count) * cols..][..cols].to_vec()).collect();
            let inputs = vec![Tensor {
                name: info.inputs[0].name.clone(),
                shape: vec![rows as i64, cols as i64],
                data: TensorData::F32(data),
            }];
            // Warm-up: a few hundred calls or 0.2 s.
            let warm = Instant::now();
            for _ in 0..200 {
                run(&mut session, &info, &inputs).expect("warm-up inference");
                if warm.elapsed() > Duration::from_millis(200) {
                    break;
                }
            }
            let budget = Duration::from_secs_f64(opt.seconds.max(0.01));
            let mut times = Vec::with_capacity(1 << 16);
            let start = Instant::now();
            while start.elapsed() < budget {
                let t = Instant::now();
                let out = run(&mut session, &info, &inputs).expect("inference");
                times.push(t.elapsed());
                std::hint::black_box(out);
            }
            let elapsed = start.elapsed().as_secs_f64();
            let calls = times.len();
            times.sort_unstable();
            let (p50, p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
            let calls_s = calls as f64 / elapsed;
            if opt.json {
                println!(
                    "{{\"model\":\"{name}\",\"rows\":{rows},\"calls\":{calls},\"p50_us\":{p50:.2},\"p99_us\":{p99:.2},\"calls_s\":{calls_s:.1},\"rows_s\":{:.1}}}",
                    calls_s * rows as f64
                );
            } else {
                println!(
                    "{name:8} rows={rows:<3} calls={calls:<7} p50={p50:8.1} µs  p99={p99:8.1} µs  {calls_s:10.0} calls/s  {:12.0} rows/s",
                    calls_s * rows as f64
                );
            }
        }
    }
}
