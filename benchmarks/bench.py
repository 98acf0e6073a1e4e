#!/usr/bin/env python3
"""`make bench`: kinfer-runtime against the in-process floor and a FastAPI baseline.

Standard library only. Expects (mk/bench.mk provides them): the release runtime and the `floor`
example built, ORT_DYLIB_PATH set, wrk on PATH and the baseline's venv (.tools/bench-venv).

Sections, each measured with every variant's server up at once and the variants interleaved
case by case within each repeat, so that ratios are taken side by side:
  ready     process start -> GET /v2/health/ready 200, per example model (local file)
  main      model x protocol (v2, v1) x rows (1, 64) x connections (1, 32): kinfer vs the FastAPI
            baseline vs the floor (the same model through `model::run`, one thread, no HTTP)
  batching  the MLP (a ~4 µs model) and a generated 2048-wide dense layer (16 MB, ~0.9 ms per 1-row run), 1-row
            requests at 1/32/64 connections, dynamic batching off / on
  sessions  the tabular model, sessions x intra-op threads
  logging   the tabular model, access log on (default, KINFER_LOG=info) / off (KINFER_LOG=warn)
  workers   the baseline with 1 uvicorn worker and with one per CPU (the main table's setting)
  cache     the MLP with the same body repeated (every request after the first is a hit), prediction
            cache off / on, 1 and 64 rows x 1 and 32 connections
  grpc      one kinfer server per model, REST (wrk: v2 JSON, v2 binary tensors) beside gRPC
            (the `grpc_load` example: raw_input_contents as tritonclient.grpc sends, typed
            fp32_contents), rows (1, 64) x connections (1, 32), interleaved case by case
  canary    the tabular model's stable runtime with no canary, with a second kinfer process as its
            canary in shadow mode (every request copied), and in split mode at 0 % (routing only)
            and 100 % (every request forwarded): what a canary costs stable's answers

Environment: BENCH_QUICK=1 (tabular only, 1 repeat, 1 s runs), BENCH_REPEAT (3), BENCH_DURATION
(s, 3), BENCH_WARMUP (s, 1), BENCH_MODELS (iris,tabular,mlp), BENCH_SECTIONS
(ready,main,batching,sessions,logging,workers,cache,grpc,canary), BENCH_WORKERS (uvicorn workers: the CPU count),
BENCH_WRK_THREADS (1), BENCH_OUT (benchmarks/results). Writes BENCH_OUT/results.json and
BENCH_OUT/report.md and prints the report.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BUILT_RUNTIME = TARGET / "release" / "kinfer-runtime"
BUILT_FLOOR = TARGET / "release" / "examples" / "floor"
BUILT_GRPC_LOAD = TARGET / "release" / "examples" / "grpc_load"
VENV_PY = ROOT / ".tools" / "bench-venv" / "bin" / "python"
LUA = ROOT / "benchmarks" / "post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
REPEAT = env_int("BENCH_REPEAT", 1 if QUICK else 3)
DURATION = env_int("BENCH_DURATION", 1 if QUICK else 3)
WARMUP = env_int("BENCH_WARMUP", 1)
MODELS = [m for m in os.environ.get("BENCH_MODELS", "tabular" if QUICK else "iris,tabular,mlp").split(",") if m]
SECTIONS = [s for s in os.environ.get("BENCH_SECTIONS", "ready,main,batching,sessions,logging,workers,cache,grpc,canary").split(",") if s]
NPROC = os.cpu_count() or 1
WORKERS = env_int("BENCH_WORKERS", NPROC)
WRK_THREADS = env_int("BENCH_WRK_THREADS", 1)
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "benchmarks" / "results"))
BODIES = OUT / "bodies"
# Copies of the binaries, taken at the start, so a rebuild during the run changes nothing.
RUNTIME = OUT / "bin" / "kinfer-runtime"
FLOOR = OUT / "bin" / "floor"
GRPC_LOAD = OUT / "bin" / "grpc_load"
LOGS = OUT / "logs"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The machine and its load


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": NPROC,
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version[0] if wrk_version else "?",
    }


def revision() -> str:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    if os.environ.get("BENCH_REVISION"):
        return os.environ["BENCH_REVISION"]
    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "runtime", "Cargo.toml", "Cargo.lock")
    return rev + (" + uncommitted runtime changes" if dirty else "")


def busy_processes() -> list[str]:
    """Other builds on the machine (cargo, rustc, cc, ld, podman/buildah), by name."""
    names = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm in ("cargo", "rustc", "cc1", "cc1plus", "ld", "podman", "buildah", "conmon") or comm.startswith("rustc"):
            names.append(comm)
    return names


def load_snapshot(label: str) -> dict:
    la = os.getloadavg()
    busy = busy_processes()
    snap = {"at": time.strftime("%H:%M:%S", time.gmtime()), "section": label, "loadavg": [round(x, 2) for x in la],
            "builds": len(busy), "build_procs": sorted(set(busy))}
    log(f"load {label}: loadavg {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, build processes: {len(busy)} {sorted(set(busy))}")
    return snap


# ---------------------------------------------------------------------------------------------
# Request bodies


# A generated model for the batching section: a 2048-wide dense layer and a score column
# (benchmarks/make_big_onnx.py --score; 16 MB), whose run time is most of a request.
DENSE = "dense"
DENSE_WIDTH = 2048


def model_dir(model: str) -> Path:
    """The example model's folder; the generated dense model is written on first use."""
    if model != DENSE:
        return ROOT / "examples" / "models" / model
    d = OUT / "models" / DENSE
    if not (d / "model.onnx").exists():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_big_onnx.py"), str(d / "model.onnx"),
                        str(DENSE_WIDTH), "--score"], check=True)
        row = [((i * 37) % 100) / 100.0 for i in range(DENSE_WIDTH)]
        (d / "expected.json").write_text(json.dumps(
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, DENSE_WIDTH], "data": row}]}))
    return d


def example_input(model: str) -> dict:
    return json.loads((model_dir(model) / "expected.json").read_text())["inputs"][0]


def example_rows(model: str) -> tuple[list[float], int]:
    inp = example_input(model)
    return [float(x) for x in inp["data"]], int(inp["shape"][1])


def rows_of(model: str, n: int) -> list[list[float]]:
    data, cols = example_rows(model)
    count = max(1, len(data) // cols)
    return [data[(r % count) * cols:(r % count) * cols + cols] for r in range(n)]


def body_file(model: str, proto: str, n: int) -> Path:
    """The request body; for "v2bin" (the binary tensor extension) its JSON header's length goes
    into the file name's sidecar PATH.hlen, for the Inference-Header-Content-Length header."""
    BODIES.mkdir(parents=True, exist_ok=True)
    path = BODIES / f"{model}-{proto}-{n}.json"
    rows = rows_of(model, n)
    name = example_input(model)["name"]
    if proto == "v2bin":
        raw = struct.pack(f"<{n * len(rows[0])}f", *[x for r in rows for x in r])
        header = json.dumps({"inputs": [{"name": name, "shape": [n, len(rows[0])], "datatype": "FP32",
                                         "parameters": {"binary_data_size": len(raw)}}],
                             "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()
        path.write_bytes(header + raw)
        Path(str(path) + ".hlen").write_text(str(len(header)))
        return path
    if proto == "v1":
        body = {"instances": rows}
    else:
        body = {"inputs": [{"name": name, "shape": [n, len(rows[0])], "datatype": "FP32",
                            "data": [x for r in rows for x in r]}]}
    path.write_text(json.dumps(body, separators=(",", ":")))
    return path


def url_path(proto: str, name: str) -> str:
    if proto == "live":
        return "/v2/health/live"
    return f"/v2/models/{name}/infer" if proto in ("v2", "v2bin") else f"/v1/models/{name}:predict"


# ---------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 1.0) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def http_post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(p.name))
            out.extend(children(int(p.name)))
    return out


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Server:
    label: str  # e.g. "kinfer", "baseline", "kinfer s2t1"
    kind: str  # "kinfer" | "baseline"
    model: str
    args: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    workers: int = WORKERS  # uvicorn workers (baseline only)
    port: int = 0
    grpc_port: int = 0
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ready_s: float = 0.0

    def start(self) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        LOGS.mkdir(parents=True, exist_ok=True)
        safe = self.label.replace(" ", "_").replace("/", "_")
        err = open(LOGS / f"{self.model}-{safe}.stderr", "wb")
        env = dict(os.environ)
        env.update(self.env)
        model_path = model_dir(self.model) / "model.onnx"
        if self.kind == "kinfer":
            cmd = [str(RUNTIME), "--model-uri", str(model_path), "--model-name", self.model,
                   "--host", "127.0.0.1", "--port", str(self.port), "--grpc-port", str(self.grpc_port),
                   *self.args]
        else:
            env.update({"BASELINE_MODEL": str(model_path), "BASELINE_NAME": self.model, "BASELINE_THREADS": "1"})
            cmd = [str(VENV_PY), "-m", "uvicorn", "benchmarks.fastapi_server:app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(self.workers), *self.args]
        self.started = time.perf_counter()
        # stdout (kinfer's JSON access log, uvicorn's access log) is discarded: its cost is still
        # paid (formatting and the write), not the disk it would fill.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                     process_group=0)

    def wait_ready(self, timeout: float = 60.0) -> float:
        assert self.proc is not None
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} ({self.model}) exited with {self.proc.returncode}; see {LOGS}")
            try:
                if http_get(self.port, "/v2/health/ready", timeout=0.5) == 200:
                    self.ready_s = time.perf_counter() - self.started
                    return self.ready_s
            except OSError:
                pass
            time.sleep(0.002)
        raise RuntimeError(f"{self.label} ({self.model}) not ready after {timeout} s")

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) in MB (10^6 bytes), summed over the process tree."""
        return sum(status_kb(p, "VmHWM") for p in self.pids()) * 1024 / 1e6

    def rss_mb(self) -> float:
        return sum(status_kb(p, "VmRSS") for p in self.pids()) * 1024 / 1e6

    def cpu_s(self) -> float:
        """CPU time (user + system, all threads) used so far by the server's processes."""
        ticks = 0
        for p in self.pids():
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, ValueError, IndexError):
                pass
        return ticks / CLK_TCK

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_all(servers: list[Server]) -> None:
    for s in servers:
        s.start()
    for s in servers:
        s.wait_ready()
        log(f"{s.model}/{s.label} ready on :{s.port} after {s.ready_s * 1000:.0f} ms")


def stop_all(servers: list[Server]) -> None:
    for s in servers:
        s.stop()


# ---------------------------------------------------------------------------------------------
# Load


def wrk(port: int, path: str, body: Path | None, conns: int, seconds: int) -> dict:
    """wrk POSTing `body` to `path` (a GET when `body` is None)."""
    threads = max(1, min(WRK_THREADS, conns))
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--latency", "--timeout", "5s",
           "-s", str(LUA), f"http://127.0.0.1:{port}{path}"]
    env = {**os.environ, "BENCH_BODY": str(body) if body else ""}
    hlen = Path(str(body) + ".hlen")
    if body and hlen.exists():
        env["BENCH_HEADER_LENGTH"] = hlen.read_text().strip()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in r.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
            d["errors"] = d["status_errors"] + d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"]
            return d
    raise RuntimeError(f"wrk gave no result (rc {r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")


def measure(server: Server, proto: str, rows: int, conns: int, body: Path | None) -> dict:
    path = url_path(proto, server.model)
    if WARMUP > 0:
        wrk(server.port, path, body, conns, WARMUP)
    cpu0 = server.cpu_s()
    d = wrk(server.port, path, body, conns, DURATION)
    cpu = server.cpu_s() - cpu0
    d["rows_s"] = d["rps"] * rows
    # The server's own CPU per request: far less sensitive to other load on the machine than req/s.
    d["cpu_us_per_req"] = cpu * 1e6 / d["requests"] if d["requests"] else float("nan")
    return d


def approx_equal(a, b, tol=1e-4) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(approx_equal(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(approx_equal(a[k], b[k], tol) for k in a)
    return a == b


def check_same_answers(servers: list[Server], model: str) -> list[str]:
    """Every server answers 200 to every body, and the V1 predictions agree."""
    problems = []
    for proto in ("v1", "v2"):
        for n in (1, 64):
            body = body_file(model, proto, n).read_bytes()
            answers = {}
            for s in servers:
                status, out = http_post(s.port, url_path(proto, model), body)
                if status != 200:
                    problems.append(f"{model} {s.label} {proto} {n} rows: HTTP {status}: {out[:300]!r}")
                    continue
                answers[s.label] = json.loads(out)
            if proto == "v1" and len(answers) > 1:
                labels = list(answers)
                ref = answers[labels[0]]["predictions"]
                for other in labels[1:]:
                    if not approx_equal(ref, answers[other]["predictions"]):
                        problems.append(f"{model} v1 {n} rows: {labels[0]} and {other} disagree: "
                                        f"{json.dumps(ref)[:200]} vs {json.dumps(answers[other]['predictions'])[:200]}")
    return problems


def floor(model: str) -> dict[int, dict]:
    r = subprocess.run([str(FLOOR), "--models", model, "--rows", "1,64", "--seconds", "1", "--json"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    out = {}
    for line in r.stdout.splitlines():
        d = json.loads(line)
        out[int(d["rows"])] = d
    return out


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------
# Sections

RESULTS: dict = {"machine": {}, "settings": {}, "load": [], "ready": {}, "main": [], "floor": [], "rss": {},
                 "transport": [], "variants": {}, "grpc": [], "problems": []}


def section_ready() -> None:
    RESULTS["load"].append(load_snapshot("ready"))
    for model in ["iris", "tabular", "mlp"]:
        times = []
        for _ in range(1 if QUICK else 3):
            s = Server("kinfer", "kinfer", model, env={"KINFER_LOG": "warn"})
            s.start()
            try:
                times.append(s.wait_ready() * 1000)
            finally:
                s.stop()
        RESULTS["ready"][model] = {"runs_ms": [round(t, 1) for t in times], "median_ms": round(med(times), 1)}
        log(f"ready {model}: {times}")


MAIN_CASES = [(proto, rows, conns) for proto in ("v2", "v1") for rows in (1, 64) for conns in (1, 32)]
# The binary tensor extension (kinfer only; the baseline does not speak it).
BINARY_CASES = [("v2bin", 64, 1), ("v2bin", 64, 32)]
# The transport floor: GET /v2/health/live through the same server (HTTP/1.1 over loopback, routing,
# middleware, metrics, access log; no body, no JSON, no model), what every request pays.
TRANSPORT_CONNS = (1, 32)


def section_main() -> None:
    for model in MODELS:
        RESULTS["load"].append(load_snapshot(f"main {model}"))
        servers = [Server("kinfer", "kinfer", model), Server("baseline", "baseline", model)]
        try:
            start_all(servers)
            problems = check_same_answers(servers, model)
            for p in problems:
                log("PROBLEM " + p)
            RESULTS["problems"].extend(problems)
            bodies = {(proto, rows): body_file(model, proto, rows) for proto, rows, _ in MAIN_CASES + BINARY_CASES}
            for rep in range(REPEAT):
                fl = floor(model)
                for rows, d in fl.items():
                    RESULTS["floor"].append({"model": model, "rows": rows, "rep": rep, **d})
                for proto, rows, conns in MAIN_CASES + BINARY_CASES:
                    for s in servers:
                        if proto == "v2bin" and s.kind != "kinfer":
                            continue
                        d = measure(s, proto, rows, conns, bodies[(proto, rows)])
                        RESULTS["main"].append({"model": model, "server": s.label, "proto": proto, "rows": rows,
                                                "conns": conns, "rep": rep, **d})
                        log(f"{model} {s.label:8} {proto} rows={rows:<2} c={conns:<2} rep={rep}: "
                            f"{d['rps']:9.0f} req/s p50={d['p50_us']}µs p99={d['p99_us']}µs err={d['errors']}")
                for conns in TRANSPORT_CONNS:
                    d = measure(servers[0], "live", 0, conns, None)
                    RESULTS["transport"].append({"model": model, "conns": conns, "rep": rep, **d})
                    log(f"{model} kinfer   GET /v2/health/live c={conns:<2} rep={rep}: {d['rps']:9.0f} req/s "
                        f"p50={d['p50_us']}µs p99={d['p99_us']}µs CPU/req={d['cpu_us_per_req']:.1f}µs")
            for s in servers:
                RESULTS["rss"].setdefault(model, {})[s.label] = {"peak_mb": round(s.peak_rss_mb(), 1),
                                                                 "now_mb": round(s.rss_mb(), 1),
                                                                 "processes": len(s.pids())}
        finally:
            stop_all(servers)


def section_variants(name: str, model: str, variants: list[tuple], cases: list[tuple[str, int, int]]) -> None:
    """Variants: (label, args, env) of kinfer, or (label, args, env, workers) of the baseline."""
    RESULTS["load"].append(load_snapshot(name))
    servers = [Server(v[0], "kinfer", model, args=v[1], env=v[2]) if len(v) == 3
               else Server(v[0], "baseline", model, args=v[1], env=v[2], workers=v[3]) for v in variants]
    out = []
    try:
        start_all(servers)
        bodies = {(p, r): body_file(model, p, r) for p, r, _ in cases}
        for rep in range(REPEAT):
            for proto, rows, conns in cases:
                for s in servers:
                    d = measure(s, proto, rows, conns, bodies[(proto, rows)])
                    out.append({"variant": s.label, "model": model, "proto": proto, "rows": rows, "conns": conns,
                                "rep": rep, **d})
                    log(f"{name} {s.label:22} {proto} rows={rows:<2} c={conns:<2} rep={rep}: {d['rps']:9.0f} req/s "
                        f"p50={d['p50_us']}µs p99={d['p99_us']}µs err={d['errors']}")
        rss = {s.label: round(s.peak_rss_mb(), 1) for s in servers}
    finally:
        stop_all(servers)
    RESULTS["variants"][name] = {"model": model, "runs": out, "peak_rss_mb": rss,
                                 "args": {v[0]: " ".join(v[1]) + "".join(f" {k}={x}" for k, x in v[2].items())
                                          for v in variants}}


def section_batching() -> None:
    variants = [
        ("off", [], {}),
        ("batch32 delay0", ["--max-batch-size", "32"], {}),
        ("batch32 delay200us", ["--max-batch-size", "32", "--max-batch-delay-us", "200"], {}),
    ]
    cases = [("v2", 1, 1), ("v2", 1, 32), ("v2", 1, 64)]
    # The MLP runs in ~4 µs: HTTP is most of a request, batching has little to save.
    section_variants("batching", "mlp", variants, cases)
    # The dense layer reads its 16 MB of weights once per run (~0.9 ms for one row): what batching is for.
    section_variants("batching dense", DENSE, variants, cases)


def section_sessions() -> None:
    section_variants("sessions", "tabular", [
        ("sessions=1 threads=1", ["--sessions", "1", "--threads", "1"], {}),
        ("sessions=1 threads=2", ["--sessions", "1", "--threads", "2"], {}),
        ("sessions=2 threads=1", ["--sessions", "2", "--threads", "1"], {}),
    ], [("v2", 1, 1), ("v2", 1, 32), ("v2", 64, 32)])


def section_logging() -> None:
    section_variants("logging", "tabular", [
        ("KINFER_LOG=info", [], {"KINFER_LOG": "info"}),
        ("KINFER_LOG=warn", [], {"KINFER_LOG": "warn"}),
    ], [("v2", 1, 1), ("v2", 1, 32)])


def section_cache() -> None:
    # wrk sends one fixed body: with the cache on, only the first request runs the model. The
    # ratio is the most a fully repeated workload gains; real hit ratios sit in between.
    section_variants("cache", "mlp", [
        ("cache off", [], {}),
        ("cache on", ["--cache-max-entries", "1024"], {}),
    ], [("v2", 1, 1), ("v2", 1, 32), ("v2", 64, 1), ("v2", 64, 32)])


def grpc_load(server: Server, rows: int, typed: bool, conns: int, seconds: int) -> dict:
    data, cols = example_rows(server.model)
    cmd = [str(GRPC_LOAD), "--addr", f"127.0.0.1:{server.grpc_port}", "--model", server.model,
           "--rows", str(rows), "--cols", str(cols), "--data", json.dumps(data[:rows * cols]),
           "--conns", str(conns), "--seconds", str(seconds), "--warmup", "0"]
    if typed:
        cmd.append("--typed")
    r = subprocess.run(cmd, capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
            return d
    raise RuntimeError(f"grpc_load gave no result (rc {r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")


def measure_grpc(server: Server, rows: int, typed: bool, conns: int) -> dict:
    if WARMUP > 0:
        grpc_load(server, rows, typed, conns, WARMUP)
    cpu0 = server.cpu_s()
    d = grpc_load(server, rows, typed, conns, DURATION)
    cpu = server.cpu_s() - cpu0
    d["rows_s"] = d["rps"] * rows
    d["cpu_us_per_req"] = cpu * 1e6 / d["requests"] if d["requests"] else float("nan")
    return d


GRPC_CASES = [(rows, conns) for rows in (1, 64) for conns in (1, 32)]
GRPC_VARIANTS = ["REST v2 JSON", "REST v2 binary", "gRPC raw", "gRPC typed"]


def section_grpc() -> None:
    """REST and gRPC on the same kinfer process, case by case."""
    for model in MODELS:
        RESULTS["load"].append(load_snapshot(f"grpc {model}"))
        server = Server("kinfer", "kinfer", model)
        try:
            start_all([server])
            bodies = {(p, r): body_file(model, p, r) for p in ("v2", "v2bin") for r, _ in GRPC_CASES}
            for rep in range(REPEAT):
                for rows, conns in GRPC_CASES:
                    for variant in GRPC_VARIANTS:
                        if variant.startswith("REST"):
                            proto = "v2" if variant.endswith("JSON") else "v2bin"
                            d = measure(server, proto, rows, conns, bodies[(proto, rows)])
                        else:
                            d = measure_grpc(server, rows, variant.endswith("typed"), conns)
                        RESULTS["grpc"].append({"model": model, "variant": variant, "rows": rows, "conns": conns,
                                                "rep": rep, **d})
                        log(f"grpc {model} {variant:15} rows={rows:<2} c={conns:<2} rep={rep}: {d['rps']:9.0f} req/s "
                            f"p50={d['p50_us']}µs p99={d['p99_us']}µs err={d['errors']}")
        finally:
            stop_all([server])


def section_canary() -> None:
    """Stable's cost of a canary. The canary is a second kinfer process (version 2) on the same
    machine, so in shadow mode and at split 100 % it competes with stable for the CPUs; on a cluster
    it runs on its own pods."""
    canary = Server("canary", "kinfer", "tabular", args=["--model-version", "2"], env={"KINFER_LOG": "warn"})
    start_all([canary])
    url = f"http://127.0.0.1:{canary.port}"
    try:
        section_variants("canary", "tabular", [
            ("no canary", [], {}),
            ("shadow 100%", [], {"KINFER_CANARY_URL": url, "KINFER_CANARY_MODE": "shadow"}),
            ("split 0%", [], {"KINFER_CANARY_URL": url, "KINFER_CANARY_PERCENT": "0"}),
            ("split 100%", [], {"KINFER_CANARY_URL": url, "KINFER_CANARY_PERCENT": "100"}),
        ], [("v2", 1, 1), ("v2", 64, 1), ("v2", 1, 32)])
    finally:
        stop_all([canary])


def section_workers() -> None:
    section_variants("baseline workers", "tabular", [
        ("uvicorn --workers 1", [], {}, 1),
        (f"uvicorn --workers {NPROC}", [], {}, NPROC),
    ], [("v2", 1, 1), ("v2", 1, 32)])


# ---------------------------------------------------------------------------------------------
# Report


def fmt(x: float, digits: int = 0) -> str:
    if x != x:  # NaN
        return "–"
    return f"{x:,.{digits}f}"


def ratio_str(x: float) -> str:
    return "–" if x != x else (f"{x:.2f}×" if x < 10 else f"{x:.1f}×")


def pct(x: float) -> str:
    return "–" if x != x else f"{x * 100:.0f}%"


def main_rows() -> list[dict]:
    """Medians over repeats, and ratios taken per repeat (side by side) then the median."""
    rows = []
    for model in MODELS:
        for proto, n, conns in MAIN_CASES + BINARY_CASES:
            def runs(server):
                return [r for r in RESULTS["main"] if r["model"] == model and r["server"] == server
                        and r["proto"] == proto and r["rows"] == n and r["conns"] == conns]
            k, b = runs("kinfer"), runs("baseline")
            if not k:
                continue
            fl = {f["rep"]: f for f in RESULTS["floor"] if f["model"] == model and f["rows"] == n}
            vs_base = [kr["rps"] / br["rps"] for kr in k for br in b if br["rep"] == kr["rep"] and br["rps"] > 0]
            vs_floor = [kr["rps"] / fl[kr["rep"]]["calls_s"] for kr in k if kr["rep"] in fl]
            over_floor = [kr["p50_us"] - fl[kr["rep"]]["p50_us"] for kr in k if kr["rep"] in fl]
            rows.append({
                "model": model, "proto": proto, "rows": n, "conns": conns,
                "k_rps": med([r["rps"] for r in k]), "k_rows_s": med([r["rows_s"] for r in k]),
                "k_p50": med([r["p50_us"] for r in k]), "k_p99": med([r["p99_us"] for r in k]),
                "k_err": sum(r["errors"] for r in k), "k_req": sum(r["requests"] for r in k),
                "k_cpu": med([r["cpu_us_per_req"] for r in k]), "b_cpu": med([r["cpu_us_per_req"] for r in b]),
                "b_rps": med([r["rps"] for r in b]), "b_p50": med([r["p50_us"] for r in b]),
                "b_p99": med([r["p99_us"] for r in b]), "b_err": sum(r["errors"] for r in b),
                "vs_base": med(vs_base), "vs_floor": med(vs_floor), "over_floor_us": med(over_floor),
                "floor_calls_s": med([f["calls_s"] for f in fl.values()]),
                "floor_p50": med([f["p50_us"] for f in fl.values()]),
            })
    return rows


def us(x: float) -> str:
    return "–" if x != x else (f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs")


def report() -> str:
    m = RESULTS["machine"]
    lines = [f"Revision: {RESULTS.get('revision', '?')}.",
             f"Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('memory')}, Linux {m.get('kernel')}; "
             f"{m.get('wrk')}; Python {m.get('python')}.",
             f"Settings: {REPEAT} repeat(s), {DURATION} s per run after a {WARMUP} s warm-up, wrk -t{WRK_THREADS}, "
             f"baseline uvicorn --workers {WORKERS}, medians over repeats; ratios per repeat (side by side), "
             f"then their median.", ""]
    lines.append("Load on the machine during the run (1-min load average; other build processes seen):")
    lines.append("")
    for snap in RESULTS["load"]:
        lines.append(f"- {snap['at']} UTC {snap['section']}: load {snap['loadavg'][0]:.2f} / {snap['loadavg'][1]:.2f} "
                     f"/ {snap['loadavg'][2]:.2f}, {snap['builds']} build processes {snap['build_procs'] or ''}")
    lines.append("")
    if RESULTS["problems"]:
        lines.append("Problems:")
        lines.extend(f"- {p}" for p in RESULTS["problems"])
        lines.append("")
    if RESULTS["ready"]:
        lines.append("### Time to ready (process start → `GET /v2/health/ready` 200, local file)")
        lines.append("")
        lines.append("| model | median | runs |")
        lines.append("|---|---:|---|")
        for model, d in RESULTS["ready"].items():
            lines.append(f"| {model} | {d['median_ms']:.0f} ms | {', '.join(f'{x:.0f}' for x in d['runs_ms'])} ms |")
        lines.append("")
    if RESULTS["floor"]:
        lines.append("### Floors (in-process, `model::run`, 1 thread, no HTTP)")
        lines.append("")
        lines.append("| model | rows | p50 | calls/s | rows/s |")
        lines.append("|---|---:|---:|---:|---:|")
        for model in MODELS:
            for n in (1, 64):
                fs = [f for f in RESULTS["floor"] if f["model"] == model and f["rows"] == n]
                if fs:
                    lines.append(f"| {model} | {n} | {med([f['p50_us'] for f in fs]):.1f} µs | "
                                 f"{fmt(med([f['calls_s'] for f in fs]))} | {fmt(med([f['rows_s'] for f in fs]))} |")
        lines.append("")
    rows = main_rows()
    if rows:
        lines.append("### kinfer vs the FastAPI baseline vs the floor")
        lines.append("")
        lines.append("kinfer/floor: the server's requests/s over the floor's calls/s for the same batch (= rows/s over "
                     "rows/s); Δp50: the server's p50 minus the floor's per-call p50. Errors: non-2xx + socket errors, "
                     "summed over repeats. CPU/req: the server's own CPU time (all threads, user + system) per "
                     "request during the run, the figure least disturbed by other load on the machine.")
        lines.append("")
        lines.append("| model | proto | rows | conns | kinfer req/s | rows/s | p50 | p99 | err | CPU/req | "
                     "baseline req/s | b. p50 | b. p99 | b. err | b. CPU/req | kinfer/baseline | kinfer/floor | "
                     "Δp50 vs floor |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            lines.append(f"| {r['model']} | {r['proto']} | {r['rows']} | {r['conns']} | {fmt(r['k_rps'])} | "
                         f"{fmt(r['k_rows_s'])} | {us(r['k_p50'])} | {us(r['k_p99'])} | {r['k_err']} | {us(r['k_cpu'])} | "
                         f"{fmt(r['b_rps'])} | {us(r['b_p50'])} | {us(r['b_p99'])} | {r['b_err']} | {us(r['b_cpu'])} | "
                         f"{ratio_str(r['vs_base'])} | {pct(r['vs_floor'])} | {fmt(r['over_floor_us'])} µs |")
        lines.append("")
    if RESULTS["transport"]:
        lines.append("### Transport floor: GET /v2/health/live on the same server")
        lines.append("")
        lines.append("HTTP/1.1 over loopback with wrk, routing, middleware, metrics and the access log: no body, no "
                     "JSON, no model. What any request costs on this machine before it does anything.")
        lines.append("")
        lines.append("| model server | conns | req/s | p50 | p99 | CPU/req |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for model in MODELS:
            for conns in TRANSPORT_CONNS:
                ts = [t for t in RESULTS["transport"] if t["model"] == model and t["conns"] == conns]
                if ts:
                    lines.append(f"| {model} | {conns} | {fmt(med([t['rps'] for t in ts]))} | "
                                 f"{us(med([t['p50_us'] for t in ts]))} | {us(med([t['p99_us'] for t in ts]))} | "
                                 f"{us(med([t['cpu_us_per_req'] for t in ts]))} |")
        lines.append("")
    if RESULTS["rss"]:
        lines.append("### Peak RSS (VmHWM after the whole model's run, MB = 10^6 bytes)")
        lines.append("")
        lines.append("| model | kinfer | baseline (all uvicorn processes) |")
        lines.append("|---|---:|---:|")
        for model, d in RESULTS["rss"].items():
            k, b = d.get("kinfer", {}), d.get("baseline", {})
            lines.append(f"| {model} | {k.get('peak_mb', 0):.1f} MB | {b.get('peak_mb', 0):.1f} MB "
                         f"({b.get('processes', 0)} processes) |")
        lines.append("")
    for name, v in RESULTS["variants"].items():
        lines.append(f"### {name} ({v['model']})")
        lines.append("")
        labels = list(v["args"])
        cases = sorted({(r["proto"], r["rows"], r["conns"]) for r in v["runs"]}, key=lambda c: (c[1], c[2]))
        lines.append("| case | " + " | ".join(f"{lab}: req/s (p50 / p99; CPU/req)" for lab in labels)
                     + " | best vs first |")
        lines.append("|---|" + "---:|" * (len(labels) + 1))
        for proto, n, conns in cases:
            cells, meds = [], []
            for lab in labels:
                rs = [r for r in v["runs"] if r["variant"] == lab and (r["proto"], r["rows"], r["conns"]) == (proto, n, conns)]
                rps = med([r["rps"] for r in rs])
                meds.append(rps)
                cells.append(f"{fmt(rps)} ({us(med([r['p50_us'] for r in rs]))} / {us(med([r['p99_us'] for r in rs]))}; "
                             f"{us(med([r['cpu_us_per_req'] for r in rs]))}"
                             f"{', ' + str(sum(r['errors'] for r in rs)) + ' err' if sum(r['errors'] for r in rs) else ''})")
            best = max(range(len(meds)), key=lambda i: meds[i])
            lines.append(f"| {proto} {n} row{'s' if n > 1 else ''}, {conns} conn | " + " | ".join(cells)
                         + f" | {labels[best]}: {ratio_str(meds[best] / meds[0]) if meds[0] else '–'} |")
        lines.append("")
        lines.append("Peak RSS: " + ", ".join(f"{k} {x:.1f} MB" for k, x in v["peak_rss_mb"].items()) + ".")
        lines.append("")
    if RESULTS["grpc"]:
        lines.append("### REST vs gRPC (the same kinfer process)")
        lines.append("")
        lines.append("REST through wrk (JSON body, or the binary tensor extension), gRPC through the `grpc_load` "
                     "example (one HTTP/2 connection per caller, one call in flight each, as wrk's connections): "
                     "`raw_input_contents` (what tritonclient.grpc sends) or typed `fp32_contents`. Each cell: "
                     "req/s (p50 / p99; the server's CPU per request), medians over repeats.")
        lines.append("")
        lines.append("| model | rows | conns | " + " | ".join(GRPC_VARIANTS) + " | gRPC raw / REST JSON |")
        lines.append("|---|---:|---:|" + "---:|" * (len(GRPC_VARIANTS) + 1))
        for model in MODELS:
            for n, conns in GRPC_CASES:
                cells, meds = [], {}
                for variant in GRPC_VARIANTS:
                    rs = [r for r in RESULTS["grpc"] if (r["model"], r["variant"], r["rows"], r["conns"]) ==
                          (model, variant, n, conns)]
                    if not rs:
                        cells.append("–")
                        continue
                    meds[variant] = med([r["rps"] for r in rs])
                    errs = sum(r["errors"] for r in rs)
                    cells.append(f"{fmt(meds[variant])} ({us(med([r['p50_us'] for r in rs]))} / "
                                 f"{us(med([r['p99_us'] for r in rs]))}; {us(med([r['cpu_us_per_req'] for r in rs]))}"
                                 f"{', ' + str(errs) + ' err' if errs else ''})")
                if not meds:
                    continue
                base, grpc = meds.get("REST v2 JSON"), meds.get("gRPC raw")
                ratio = ratio_str(grpc / base) if base and grpc else "–"
                lines.append(f"| {model} | {n} | {conns} | " + " | ".join(cells) + f" | {ratio} |")
        lines.append("")
    if rows or RESULTS["ready"] or "batching" in RESULTS["variants"]:
        lines.extend(targets(rows))
    return "\n".join(lines)


def transport(model: str, conns: int, key: str) -> float:
    return med([t[key] for t in RESULTS["transport"] if t["model"] == model and t["conns"] == conns])


def batching_ratio(name: str) -> tuple[float, list[float]]:
    """Batching on (max 32, no delay) over off, 1-row requests at 64 connections, per repeat."""
    v = RESULTS["variants"].get(name)
    if not v:
        return float("nan"), []
    pick = lambda lab: {r["rep"]: r["rps"] for r in v["runs"] if r["variant"] == lab and r["conns"] == 64}
    off, on = pick("off"), pick("batch32 delay0")
    ratios = [on[k] / off[k] for k in on if k in off and off[k] > 0]
    return med(ratios), ratios


def targets(rows: list[dict]) -> list[str]:
    out = ["### Targets (issue 10)", "", "| target | measured | verdict |", "|---|---|---|"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "not yet"

    def find(model, proto, n, conns):
        return next((r for r in rows if (r["model"], r["proto"], r["rows"], r["conns"]) == (model, proto, n, conns)), None)

    for proto in ("v2", "v1"):
        r = find("tabular", proto, 1, 32)
        if r:
            limit = r["floor_p50"] + 15
            live = transport("tabular", 32, "cpu_us_per_req")
            out.append(f"| tabular, 1 row, 32 conns, {proto}: server CPU/req ≤ floor + 15 µs ({limit:.0f} µs) | "
                       f"{r['k_cpu']:.1f} µs (transport floor alone {live:.1f} µs) | {verdict(r['k_cpu'] <= limit)} |")
            out.append(f"| tabular, 1 row, 32 conns, {proto}: p99 ≤ 2 ms | {us(r['k_p99'])} | {verdict(r['k_p99'] <= 2000)} |")
            out.append(f"| tabular, 1 row, 32 conns, {proto}: ≥ 10× baseline req/s | {ratio_str(r['vs_base'])} "
                       f"({fmt(r['k_rps'])} vs {fmt(r['b_rps'])}) | {verdict(r['vs_base'] >= 10)} |")
    for r in rows:
        if r["rows"] == 1 and r["conns"] == 1:
            live = transport(r["model"], 1, "p50_us")
            out.append(f"| {r['model']}, 1 row, 1 conn, {r['proto']}: p50 ≤ floor + 50 µs | {us(r['k_p50'])} vs floor "
                       f"{r['floor_p50']:.0f} µs: +{r['over_floor_us']:.0f} µs (GET /v2/health/live p50 {us(live)}) | "
                       f"{verdict(r['over_floor_us'] <= 50)} |")
    for r in rows:
        if r["rows"] == 64 and r["conns"] == 32:
            want = 0.9 if r["proto"] == "v2bin" else 0.6
            out.append(f"| {r['model']}, 64 rows, 32 conns, {r['proto']}: rows/s ≥ {want * 100:.0f}% of the floor | "
                       f"{pct(r['vs_floor'])} ({fmt(r['k_rows_s'])} vs {fmt(r['floor_calls_s'] * 64)}) | "
                       f"{verdict(r['vs_floor'] >= want)} |")
    for name in ("batching", "batching dense"):
        ratio, each = batching_ratio(name)
        if each:
            model = RESULTS["variants"][name]["model"]
            out.append(f"| {model}, 1 row, 64 conns: batching on ≥ 1.5× off | {ratio_str(ratio)} (repeats: "
                       f"{', '.join(ratio_str(x) for x in each)}) | {verdict(ratio >= 1.5)} |")
    if "tabular" in RESULTS["rss"]:
        mb = RESULTS["rss"]["tabular"]["kinfer"]["peak_mb"]
        out.append(f"| tabular: RSS ≤ 60 MB | {mb:.1f} MB peak | {verdict(mb <= 60)} |")
    for model, d in RESULTS["ready"].items():
        out.append(f"| {model}: ready ≤ 1 s | {d['median_ms']:.0f} ms | {verdict(d['median_ms'] <= 1000)} |")
    out.append("")
    return out


def main() -> int:
    needed = [(BUILT_RUNTIME, "the release runtime")]
    if "main" in SECTIONS:
        needed.append((BUILT_FLOOR, "the floor example"))
    if "grpc" in SECTIONS:
        needed.append((BUILT_GRPC_LOAD, "the grpc_load example"))
    if {"main", "workers"} & set(SECTIONS):
        needed.append((VENV_PY, "the bench venv"))  # the FastAPI baseline
    for p, what in needed:
        if not p.exists():
            print(f"bench: {what} is missing at {p}; run `make bench`", file=sys.stderr)
            return 2
    if not os.environ.get("ORT_DYLIB_PATH"):
        print("bench: ORT_DYLIB_PATH is not set; run `make bench`", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bin").mkdir(exist_ok=True)
    for built, copy in ((BUILT_RUNTIME, RUNTIME), (BUILT_FLOOR, FLOOR), (BUILT_GRPC_LOAD, GRPC_LOAD)):
        if built.exists():
            shutil.copy2(built, copy)
    RESULTS["machine"] = machine()
    RESULTS["revision"] = revision()
    RESULTS["settings"] = {"quick": QUICK, "repeat": REPEAT, "duration_s": DURATION, "warmup_s": WARMUP,
                           "models": MODELS, "sections": SECTIONS, "uvicorn_workers": WORKERS,
                           "wrk_threads": WRK_THREADS}
    t0 = time.time()
    log(f"settings {RESULTS['settings']}")
    sections = {"ready": section_ready, "main": section_main, "batching": section_batching,
                "sessions": section_sessions, "logging": section_logging, "workers": section_workers,
                "cache": section_cache, "grpc": section_grpc, "canary": section_canary}
    try:
        for name in SECTIONS:
            sections[name]()
    finally:
        RESULTS["load"].append(load_snapshot("end"))
        RESULTS["elapsed_s"] = round(time.time() - t0, 1)
        (OUT / "results.json").write_text(json.dumps(RESULTS, indent=1))
        text = report()
        (OUT / "report.md").write_text(text + "\n")
        print(text)
        log(f"done in {RESULTS['elapsed_s']:.0f} s; {OUT / 'report.md'}, {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
