#!/usr/bin/env python3
"""A/B: the same model served by two kinfer-runtime binaries, 1-row /predict, wrk, interleaved.

usage: benchmarks/ab.py BEFORE_BIN AFTER_BIN [model]; env: REPEAT (3), DURATION (5), CONNS (1,32).
Both servers are up at once (defaults, access log on) and the runs alternate between them.
Needs wrk on PATH and ORT_DYLIB_PATH.
Prints per run and the medians: requests/s, p50/p99 (us), server CPU us per request."""
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
exp = json.loads((ROOT / "examples/models" / model / "expected.json").read_text())
shape = exp["inputs"][0]["shape"]
row = exp["inputs"][0]["data"][: shape[1]]
body = Path(f"/tmp/ab-{model}-1row.json")
body.write_text(json.dumps({"instances": [row]}))

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start(binary):
    port = free_port()
    env = dict(os.environ, KINFER_LOG="info")
    p = subprocess.Popen([binary, "--model-uri", str(ROOT / "examples/models" / model / "model.onnx"), "--model-name", model,
                          "--host", "127.0.0.1", "--port", str(port), "--cache-dir", f"/tmp/ab-cache-{port}"],
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

def wrk(port, conns):
    env = dict(os.environ, BENCH_BODY=str(body))
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "-s", str(LUA), f"http://127.0.0.1:{port}/predict"],
                         env=env, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("BENCH_JSON "))
    return json.loads(line[len("BENCH_JSON "):])

servers = {"before": start(before), "after": start(after)}
res = {(v, c): [] for v in servers for c in CONNS}
try:
    for name, (p, port) in servers.items():  # warm-up
        for c in CONNS:
            subprocess.run(["wrk", "-t1", f"-c{c}", "-d1s", "-s", str(LUA), f"http://127.0.0.1:{port}/predict"],
                           env=dict(os.environ, BENCH_BODY=str(body)), capture_output=True)
    for rep in range(REPEAT):
        for c in CONNS:
            for name in (["before", "after"] if rep % 2 == 0 else ["after", "before"]):
                p, port = servers[name]
                c0 = cpu(p.pid)
                d = wrk(port, c)
                used = cpu(p.pid) - c0
                errs = d["status_errors"] + d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"]
                r = {"rps": d["requests"] / (d["duration_us"] / 1e6), "p50": d["p50_us"], "p99": d["p99_us"],
                     "cpu_us": used * 1e6 / max(d["requests"], 1), "errors": errs}
                res[(name, c)].append(r)
                print(f"rep {rep} c={c:>2} {name:<6} {r['rps']:>8.0f} req/s p50 {r['p50']:>5} us p99 {r['p99']:>6} us "
                      f"cpu {r['cpu_us']:>5.1f} us/req errors {errs}", flush=True)
finally:
    for p, _ in servers.values():
        p.terminate()
print(f"\nmedians over {REPEAT} runs of {DURATION} s, model {model}, 1 row, wrk -t1:")
print("| conns | binary | req/s | p50 us | p99 us | server CPU us/req | errors |")
print("|---|---|---|---|---|---|---|")
for c in CONNS:
    for name in ("before", "after"):
        rs = res[(name, c)]
        m = lambda k: statistics.median(r[k] for r in rs)
        print(f"| {c} | {name} | {m('rps'):.0f} | {m('p50'):.0f} | {m('p99'):.0f} | {m('cpu_us'):.1f} | {sum(r['errors'] for r in rs)} |")
