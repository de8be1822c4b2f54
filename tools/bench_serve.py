#!/usr/bin/env python
"""rv2 serve latency and throughput, with stock tritonclient over HTTP (binary) and gRPC.

    .venv/bin/python tools/bench_serve.py [--image-size 224] [--seconds 5] [--threads 2]

One run, one machine, the same model and input everywhere:
  trivial     a backend that returns zeros at once: the front end's own cost
  grpc-floor  grpc.aio answering a canned response without reading the request: the
              gRPC transport's and tritonclient's own cost, the floor under any server
  densenet    DenseNet-121 (random weights) as the ONNX Runtime engine of
              `rv2 build-engines --target cpu`, served as `rv2 serve --engines` does

Each server runs in a child process of its own, as `rv2 serve` does, so neither client
and server nor two servers share a GIL or grpc's poller:
  trivial, densenet         dynamic batching up to 8, one instance
  densenet-nobatch          batches of 1, one instance
  densenet-tuned            --tune-batch-size (the batch size with the best rows/s)
  densenet-2inst            --tune-batch-size, 2 instances of threads/2 each
"backend rows/s by batch size" times the engine alone at each batch size: its
best-to-batch-1 ratio bounds what any batching can gain on this machine. "bare" is `Predictor.predict_tensor` on the same batch-1 tensor in this
process (what the server's batcher calls); overhead = client p50 - bare p50.
Batching ratio = inferences / executions from the server's Prometheus metrics; the
in-server compute column is the backend call's time inside the server (the batch a
request ran in), to set beside the bare call's; the in-server non-compute column is the
server's own time per request outside the backend call (parse, checks, queue,
hand-offs), from the same metrics. Server CPU per request is
the server process's user + system time over the row (Linux /proc) divided by its
answered requests: steadier than latency on a shared machine.
Ratios are against rows measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

import numpy as np

# Read by tools/gpu_check.py (ast, never imported). On a GPU: the batching target of
# issue 15, the densenet rows with the network on CUDA, where a batch of 8 costs about
# what one image does; a second call runs it (--only bench_serve).
GPU_CHECK = {
    "order": 60,
    "by_default": False,
    "timeout_s": 200,
    "dry_timeout_s": 150,
    "gpu": ["--device", "cuda", "--only", "densenet", "--seconds", "4", "--threads", "8",
            "--json", "{json}"],
    "dry": ["--only", "trivial", "--seconds", "0.3", "--image-size", "64", "--json", "{json}"],
}


def make_model_dir(folder: Path, size: int) -> Path:
    """A DenseNet-121 classifier folder with random (seeded) weights and 0.5 thresholds."""
    import torch
    from rv2.classify import model_dir as md
    from rv2.data.schema import CHEXPERT_LABELS
    from rv2.models.densenet import densenet121, model_config

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    md.save_weights(densenet121(len(CHEXPERT_LABELS), init="scratch"), folder / md.WEIGHTS)
    (folder / md.MODEL_CONFIG).write_text(json.dumps(model_config(CHEXPERT_LABELS, size, 0.5, 0.25)))
    (folder / md.THRESHOLDS).write_text(json.dumps(
        {"labels": list(CHEXPERT_LABELS), "thresholds": dict.fromkeys(CHEXPERT_LABELS, 0.5), "rule": ">="}))
    return folder


class Trivial:
    name = "trivial"
    max_batch_size = None

    def logits(self, x):
        return np.zeros((len(x), 14), np.float32)


def build_engine(folder: Path, out: Path) -> Path:
    """The classifier's ONNX Runtime engine for the CPU target (batch 1..16)."""
    from rv2.engines.build import Sources, build_engines
    from rv2.engines.profile import load_profile

    build_engines(load_profile("cpu"), out, Sources(classifier=folder), backends=["onnxruntime"],
                  echo=lambda s: None)
    return out


def peer_graph(engines: Path) -> Path:
    """The ONNX graph that rv2's ONNX Runtime engine of the classifier loads (its manifest's
    engine file), for the Triton peer to serve the very same graph."""
    from rv2.engines.manifest import read_manifest

    folder = engines / "classifier" / "onnxruntime"
    graph = (folder / read_manifest(folder)["engine_file"]).resolve()
    if not graph.is_file():
        raise SystemExit(f"the classifier's ONNX Runtime manifest names {graph}, which is missing")
    return graph


def densenet(folder: Path, engines: Path | None, threads: int, device: str = "cpu"):
    """On the CPU the engine's Predictor, its ONNX Runtime session on `threads` intra-op
    threads; on a GPU the eager network on CUDA (autocast), which needs no engine build."""
    import torch
    from rv2.engines import load

    if device == "cuda":
        from rv2.classify.predictor import Predictor

        return Predictor.load(folder, device="cuda")

    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the session takes torch's thread count
    try:
        return load(engines, "cpu").predictor(folder)
    finally:
        torch.set_num_threads(before)


SERVERS = ("grpc-floor", "trivial", "densenet", "densenet-nobatch", "densenet-tuned", "densenet-2inst")


def grpc_floor() -> None:
    """grpc.aio answering ModelInfer with a canned response, the request left unread: what
    grpc's transport and tritonclient cost on this machine, before any server code."""
    import asyncio

    import grpc
    from tritonclient.grpc import service_pb2

    resp = service_pb2.ModelInferResponse(model_name="classifier", model_version="1")
    resp.outputs.add(name="probabilities", datatype="FP32", shape=[1, 14])
    resp.raw_output_contents.append(np.zeros((1, 14), np.float32).tobytes())
    canned = resp.SerializeToString()

    async def infer(request: bytes, context) -> bytes:
        return canned

    async def main():
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(json.dumps([None, port, []]), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(0)

    asyncio.run(main())


def child(folder: Path, engines: Path | None, threads: int, name: str, device: str) -> None:
    """Serve one row's server, as `rv2 serve` does (one per process); print its ports."""
    if name == "grpc-floor":
        grpc_floor()
        return
    from rv2.classify.predictor import Predictor
    from rv2.serve.cli import set_threads
    from rv2.serve.server import ServerThread
    from rv2.serve.service import ServeSettings

    set_threads(threads)
    kw = {"http_port": 0, "grpc_port": 0, "decode_threads": 1}
    if name == "trivial":
        server = ServerThread(Predictor.load(folder, backend=Trivial()), ServeSettings(max_batch_size=8, **kw))
    elif name == "densenet-2inst":
        server = ServerThread(densenet(folder, engines, max(1, threads // 2), device),
                              ServeSettings(max_batch_size=8, tune_batch_size=True, instances=2, **kw))
    else:
        batching = {"densenet": {"max_batch_size": 8}, "densenet-nobatch": {"max_batch_size": 1},
                    "densenet-tuned": {"max_batch_size": 8, "tune_batch_size": True}}[name]
        server = ServerThread(densenet(folder, engines, threads, device), ServeSettings(**batching, **kw))
    server.start()
    print(json.dumps([server.http_port, server.grpc_port, list(server.service.preferred_batch_size)]), flush=True)
    sys.stdin.read()  # until the parent closes it
    server.stop()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def bare_p50(pred, x, seconds: float) -> float:
    ts, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(ts) < 5:
        t = time.perf_counter()
        pred.predict_tensor(x)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def metrics(port: int, model: str = "classifier") -> tuple[float, float, float, float, float]:
    """(inferences, executions, successes, non-compute us, compute us) from Triton-named metrics."""
    import urllib.request

    from rv2.serve.metrics import parse_text

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        m = parse_text(r.read().decode())
    lab = f'model="{model}",version="1"'
    get = lambda k: m.get(f"{k}{{{lab}}}", float("nan"))
    return (get("nv_inference_count"), get("nv_inference_exec_count"), get("nv_inference_request_success"),
            get("nv_inference_request_duration_us") - get("nv_inference_compute_infer_duration_us"),
            get("nv_inference_compute_infer_duration_us"))


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_peer(python: str, onnx: Path, threads: int, tmp: Path):
    """PyTriton (real Triton 2.x) from a side environment; None if it does not start."""
    import sysconfig

    ports = free_ports(3)
    (tmp / "peer-tmp").mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp / "peer-tmp"), HOME=str(tmp / "peer-home"),
               OMP_WAIT_POLICY="PASSIVE", PYTHONPATH="")
    # PyTriton's Python-backend stub links libpython: point it at this interpreter's
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}"
    with open(tmp / "peer.log", "w") as log:  # Triton logs to stdout: all of it to the file
        proc = subprocess.Popen([python, str(REPO / "tools" / "pytriton_peer.py"), str(onnx),
                                 str(threads), *map(str, ports)], stdin=subprocess.PIPE,
                                stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    import tritonclient.http as th

    client = th.InferenceServerClient(f"127.0.0.1:{ports[0]}")
    end = time.monotonic() + 600
    while time.monotonic() < end and proc.poll() is None:
        try:
            if client.is_model_ready("classifier") and client.is_model_ready("trivial"):
                return proc, ports
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(1.0)
    proc.kill()
    proc.wait()
    # the log goes with the run's temp folder: show its end now
    tail = (tmp / "peer.log").read_text(errors="replace").splitlines()[-25:]
    print("PyTriton peer did not start; the end of its log:", *tail, sep="\n  ", file=sys.stderr)
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seconds", type=float, default=5.0, help="per measured cell")
    ap.add_argument("--threads", type=int, default=2, help="compute threads (ORT intra-op, torch)")
    ap.add_argument("--only", default=None, help="comma-separated servers to measure (trivial, densenet)")
    ap.add_argument("--pytriton-python", default=None,
                    help="interpreter of a side venv with nvidia-pytriton and onnxruntime: measure Triton too")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the densenet rows compute (cuda: eager DenseNet-121 on the GPU)")
    ap.add_argument("--json", default=None, help="also write the table here (tools/gpu_check.py's shape)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), None if args.child[1] == "-" else Path(args.child[1]), args.threads,
              args.child[2], args.device)
        return

    from rv2.classify.predictor import Predictor
    from rv2.serve.cli import set_threads
    from rv2.serve.loadgen import run_load
    from rv2.serve.service import time_batch_sizes

    set_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="rv2-bench-serve-"))
    folder = make_model_dir(tmp / "clf", args.image_size)
    keep = set(args.only.split(",")) if args.only else None
    family = lambda n: "trivial" if n == "grpc-floor" else n.replace("triton-", "").split("-")[0]
    wanted = [n for n in SERVERS if keep is None or family(n) in keep]
    dense = any(family(n) == "densenet" for n in wanted)
    # the CPU rows serve the ONNX Runtime engine (so does the Triton peer, whatever rows
    # are kept); a GPU's, the eager network
    if args.pytriton_python and args.device != "cpu":
        raise SystemExit("--pytriton-python serves the CPU engine: measure Triton with --device cpu")
    need_engine = args.device == "cpu" and (dense or args.pytriton_python)
    engines = build_engine(folder, tmp / "engines") if need_engine else None
    onnx = peer_graph(engines) if engines else None
    # one process per server, as deployed: grpc.aio servers sharing a process slow each
    # other's requests (0.5-0.9 ms p50 with five in one process)
    procs = {n: subprocess.Popen([sys.executable, __file__, "--threads", str(args.threads), "--device", args.device,
                                  "--child", str(folder), str(engines or "-"), n], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for n in wanted}
    peer = peer_ports = None
    try:
        info = {n: json.loads(p.stdout.readline()) for n, p in procs.items()}
        ports = {k: v[:2] for k, v in info.items()}
        if args.pytriton_python:
            peer, peer_ports = start_peer(args.pytriton_python, onnx, args.threads, tmp)
        x = np.random.default_rng(0).normal(size=(1, 3, args.image_size, args.image_size)).astype(np.float32)
        preds = {"trivial": Predictor.load(folder, backend=Trivial())}
        if dense:
            preds["densenet"] = densenet(folder, engines, args.threads, args.device)
        bare = {k: bare_p50(p, x, min(args.seconds, 3.0)) for k, p in preds.items()}
        per_row = time_batch_sizes(preds["densenet"].predict_tensor, x, 8, repeats=3) if dense else {}

        def make_inputs(mod):
            i = mod.InferInput("image", list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            return [i]

        rows = []
        cells = [("grpc-floor", "grpc", 1), ("trivial", "http", 1), ("trivial", "grpc", 1), ("trivial", "http", 8), ("trivial", "grpc", 8),
                 ("densenet", "http", 1), ("densenet", "grpc", 1), ("densenet", "http", 8),
                 ("densenet", "grpc", 8), ("densenet-nobatch", "grpc", 8), ("densenet-tuned", "grpc", 8),
                 ("densenet-2inst", "grpc", 8)]
        # server -> (http port, grpc port, metrics port, model name)
        where = {k: (h, g, h, "classifier") for k, (h, g) in ports.items()}
        if peer is not None:
            h, g, m = peer_ports
            where["triton-trivial"] = (h, g, m, "trivial")
            where["triton-densenet"] = (h, g, m, "classifier")
            cells += [("triton-trivial", "http", 1), ("triton-trivial", "grpc", 1),
                      ("triton-densenet", "http", 1), ("triton-densenet", "grpc", 1),
                      ("triton-densenet", "grpc", 8)]
        if keep is not None:
            cells = [c for c in cells if family(c[0]) in keep]
        for server, proto, conc in cells:
            http_port, grpc_port, metrics_port, model = where[server]
            url = f"127.0.0.1:{http_port if proto == 'http' else grpc_port}"
            run_load(proto, url, model, make_inputs, concurrency=conc, seconds=0.5)  # warm
            nan5 = (float("nan"),) * 5  # the floor has no metrics
            n0, e0, s0, o0, k0 = metrics(metrics_port, model) if metrics_port else nan5
            pid = procs[server].pid if server in procs else None
            c0 = cpu_seconds(pid) if pid else None
            r = run_load(proto, url, model, make_inputs, concurrency=conc, seconds=args.seconds)
            c1 = cpu_seconds(pid) if pid else None
            n1, e1, s1, o1, k1 = metrics(metrics_port, model) if metrics_port else nan5
            b = bare["densenet" if "densenet" in server else "trivial"]
            rows.append({"server": server, "proto": proto, "conc": conc, "n": len(r.latencies),
                         "errors": len(r.errors), "p50": r.p(50) * 1e3, "p99": r.p(99) * 1e3,
                         "rps": r.throughput, "batch": (n1 - n0) / max(e1 - e0, 1),
                         "bare": b * 1e3, "overhead": (r.p(50) - b) * 1e3,
                         "insrv": (o1 - o0) / max(s1 - s0, 1) / 1e3,
                         # Triton counts a batch's compute time once for each of its requests:
                         # this is the mean time of the batch a request ran in
                         "compute": (k1 - k0) / max(s1 - s0, 1) / 1e3,
                         "cpu": (c1 - c0) / max(len(r.latencies), 1) * 1e3 if c0 is not None and c1 is not None
                         else float("nan")})
    finally:
        for p in (*procs.values(), peer):
            if p is not None:
                p.stdin.close()
                p.wait(120)
        shutil.rmtree(tmp, ignore_errors=True)  # model, engines and the peer's files: 50+ MB a run

    backend = "ONNX Runtime engine" if args.device == "cpu" else "eager, CUDA"
    if per_row:
        print(f"\nbackend rows/s by batch size (the densenet {backend} alone, best of 3):")
        print("| batch | ms per row | rows/s | vs batch 1 |\n|---:|---:|---:|---:|")
        for b, t in per_row.items():
            print(f"| {b} | {t * 1e3:.1f} | {1 / t:.1f} | {per_row[1] / t:.2f}x |")
    print(f"\ntuned preferred batch sizes: "
          f"{ {k: v[2] for k, v in info.items() if k.startswith('densenet-') and v[2]} }; "
          f"load average after the run: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"\nrv2 serve, {args.image_size}x{args.image_size} FP32 input (batch 1 per request), "
          f"{args.threads} compute threads, densenet on {args.device}, {args.seconds:g} s per row\n")
    print("| server | protocol | concurrency | requests | errors | p50 ms | p99 ms | req/s | "
          "rows/exec | bare p50 ms | overhead p50 ms | in-server compute mean ms | in-server non-compute mean ms | "
          "server CPU ms / request |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['server']} | {r['proto']} | {r['conc']} | {r['n']} | {r['errors']} | {r['p50']:.2f} | "
              f"{r['p99']:.2f} | {r['rps']:.1f} | {r['batch']:.2f} | {r['bare']:.2f} | {r['overhead']:.2f} | "
              f"{r['compute']:.2f} | {r['insrv']:.2f} | {r['cpu']:.2f} |")
    get = {(r["server"], r["proto"], r["conc"]): r for r in rows}
    notes = []
    if ("densenet", "grpc", 8) in get:
        nb = get[("densenet-nobatch", "grpc", 8)]
        print()
        for k in ("densenet", "densenet-tuned", "densenet-2inst"):
            line = (f"throughput at concurrency 8, {k} vs densenet-nobatch (gRPC, DenseNet {backend}): "
                    f"{get[(k, 'grpc', 8)]['rps'] / max(nb['rps'], 1e-9):.2f}x (target for batching >= 1.5x)")
            print(line)
            notes.append(line)
    for proto in ("http", "grpc") if ("trivial", "http", 1) in get else ():
        t = get[("trivial", proto, 1)]
        peer_t = get.get(("triton-trivial", proto, 1))
        vs = (f"; Triton (PyTriton) {peer_t['overhead']:.2f} ms, {peer_t['overhead'] / max(t['overhead'], 1e-9):.1f}x rv2's"
              if peer_t else "; Triton not measured in this run (--pytriton-python)")
        line = (f"front-end overhead p50 at batch 1 ({proto}{' binary' if proto == 'http' else ''}): "
                f"{t['overhead']:.2f} ms (target <= 2 ms{vs})")
        print(line)
        notes.append(line)
    floor = get.get(("grpc-floor", "grpc", 1))
    if floor and ("trivial", "grpc", 1) in get:
        t = get[("trivial", "grpc", 1)]
        line = (f"gRPC transport floor (grpc.aio, canned answer, request unread): {floor['p50']:.2f} ms p50, "
                f"{floor['cpu']:.2f} ms server CPU per request; rv2 adds {t['p50'] - floor['p50']:.2f} ms p50 and "
                f"{t['cpu'] - floor['cpu']:.2f} ms CPU to it")
        print(line)
        notes.append(line)
    if args.json:  # the shape tools/gpu_check.py renders: title, rows, notes
        table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
        per = {str(b): round(1 / t, 2) for b, t in per_row.items()}
        Path(args.json).write_text(json.dumps(
            {"title": f"rv2 serve, densenet on {args.device}", "rows": table,
             "notes": notes + ([f"densenet backend alone, rows/s by batch size: {per}"] if per else [])},
            indent=2, default=str))


if __name__ == "__main__":
    main()
