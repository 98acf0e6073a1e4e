#!/usr/bin/env python3
"""A/B: the same model served by two kinfer-runtime binaries, wrk, interleaved.

usage: benchmarks/ab.py BEFORE_BIN AFTER_BIN [model]; env: REPEAT (3), DURATION (5), CONNS (1,32),
CASES (protocol:rows list, default predict:1; protocols predict, v1, v2, v2bin), ARGS (extra
runtime flags for both, space-separated), ARGS_BEFORE / ARGS_AFTER (for one side only), ENV_BEFORE /
ENV_AFTER (space-separated NAME=VALUE environment for one side only).
Both servers are up at once (defaults, access log on) and the runs alternate between them, the
order flipping every repeat. Needs wrk on PATH and ORT_DYLIB_PATH.
Prints per run and the medians: requests/s, p50/p99 (us), server CPU us per request (utime +
stime of the server process from /proc over the run, divided by the requests wrk completed)."""
import json, os, socket, statistics, subprocess, sys, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "benchmarks" / "post.lua"
TCK = os.sysconf("SC_CLK_TCK")
before, after = sys.argv[1], sys.argv[2]
model = sys.argv[3] if len(sys.argv) > 3 else "iris"
REPEAT = int(os.environ.get("REPEAT", "3"))
DURATION = int(os.environ.get("DURATION", "5"))
CONNS = [int(c) for c in os.environ.get("CONNS", "1,32").split(",")]
CASES = [(c.split(":")[0], int(c.split(":")[1])) for c in os.environ.get("CASES", "predict:1").split(",")]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402  (the same request bodies and models as `make bench`)


def body_for(proto, n):
    """The body file `make bench` sends and, for the binary tensor extension, its JSON header length."""
    path = bench.body_file(model, "v1" if proto == "predict" else proto, n)
    hlen = Path(str(path) + ".hlen")
    return path, hlen.read_text().strip() if hlen.exists() else ""


def url_path(proto):
    return {"predict": "/predict", "v1": f"/v1/models/{model}:predict"}.get(proto, f"/v2/models/{model}/infer")


bodies = {case: body_for(*case) for case in CASES}

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start(binary, extra, side_env=""):
    port = free_port()
    env = dict(os.environ, KINFER_LOG=os.environ.get("KINFER_LOG", "info"))
    env.update(kv.split("=", 1) for kv in side_env.split() if "=" in kv)
    p = subprocess.Popen([binary, "--model-uri", str(bench.model_dir(model) / "model.onnx"), "--model-name", model,
                          "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0",
                          "--cache-dir", f"/tmp/ab-cache-{port}", *extra],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status == 200:
                return p, port
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{binary} not ready")

def cpu(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TCK

def wrk(port, conns, case, seconds=None):
    body, hlen = bodies[case]
    env = dict(os.environ, BENCH_BODY=str(body), BENCH_HEADER_LENGTH=hlen)
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds or DURATION}s", "--timeout", "5s", "-s", str(LUA),
                          f"http://127.0.0.1:{port}{url_path(case[0])}"],
                         env=env, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("BENCH_JSON "))
    return json.loads(line[len("BENCH_JSON "):])

common = os.environ.get("ARGS", "").split()
servers = {"before": start(before, common + os.environ.get("ARGS_BEFORE", "").split(), os.environ.get("ENV_BEFORE", "")),
           "after": start(after, common + os.environ.get("ARGS_AFTER", "").split(), os.environ.get("ENV_AFTER", ""))}
keys = [(case, c) for case in CASES for c in CONNS]
res = {(v, k): [] for v in servers for k in keys}
try:
    for name, (p, port) in servers.items():  # warm-up
        for case, c in keys:
            wrk(port, c, case, seconds=1)
    for rep in range(REPEAT):
        for case, c in keys:
            for name in (["before", "after"] if rep % 2 == 0 else ["after", "before"]):
                p, port = servers[name]
                c0 = cpu(p.pid)
                d = wrk(port, c, case)
                used = cpu(p.pid) - c0
                errs = d["status_errors"] + d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"]
                r = {"rps": d["requests"] / (d["duration_us"] / 1e6), "p50": d["p50_us"], "p99": d["p99_us"],
                     "cpu_us": used * 1e6 / max(d["requests"], 1), "errors": errs}
                res[(name, (case, c))].append(r)
                print(f"rep {rep} {case[0]:>7} {case[1]:>2} rows c={c:>2} {name:<6} {r['rps']:>8.0f} req/s p50 {r['p50']:>5} us p99 {r['p99']:>6} us "
                      f"cpu {r['cpu_us']:>5.1f} us/req errors {errs}", flush=True)
finally:
    for p, _ in servers.values():
        p.terminate()
load = os.getloadavg()
print(f"\nmedians over {REPEAT} runs of {DURATION} s, model {model}, wrk -t1; load at the end "
      f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}:")
print("| case | rows | conns | binary | req/s | p50 us | p99 us | server CPU us/req | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for case, c in keys:
    for name in ("before", "after"):
        rs = res[(name, (case, c))]
        m = lambda k: statistics.median(r[k] for r in rs)
        print(f"| {case[0]} | {case[1]} | {c} | {name} | {m('rps'):.0f} | {m('p50'):.0f} | {m('p99'):.0f} | "
              f"{m('cpu_us'):.1f} | {sum(r['errors'] for r in rs)} |")
