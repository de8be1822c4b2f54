"""`rv2 serve`: a trained classifier on the Open Inference Protocol (HTTP + gRPC)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from rv2 import engines
from rv2.errors import UserError

TOKEN_ENV = "RV2_SERVE_TOKEN"


def set_threads(threads: int) -> None:
    """Compute threads for a shared CPU: OpenMP sleeps instead of spinning while idle
    (spinning threads starve the front end and other tenants), one inter-op thread."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once in this process


def load_predictor(model_dir: str, engines_dir: str | None, device: str):
    """The classifier's Predictor: eager torch, or the classifier engine of an
    `rv2 build-engines` folder (its backend from the manifest; the engine must have
    been built from this model's weights)."""
    from rv2.classify.predictor import Predictor

    if engines_dir is None:
        return Predictor.load(model_dir, device)
    return engines.load(engines_dir, None if device == "auto" else device).predictor(model_dir)


@click.command("serve")
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="Classifier folder (rv2 train-classifier): labels, thresholds, preprocessing.")
@click.option("--engines", "engines_dir", default=None, type=click.Path(),
              help="Engines folder (rv2 build-engines --classifier); default: eager torch.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; 0.0.0.0 exposes it to the network).")
@click.option("--http-port", default=8000, show_default=True, type=int, help="HTTP port (-1: no HTTP).")
@click.option("--grpc-port", default=8001, show_default=True, type=int, help="gRPC port (-1: no gRPC).")
@click.option("--model-name", default="classifier", show_default=True, help="Name clients address.")
@click.option("--device", default="auto", show_default=True, help="Eager backend device: auto, cpu, cuda[:N].")
@click.option("--max-batch-size", type=int, default=None,
              help="Largest batch per execution (default: the engine's maximum, else 32).")
@click.option("--preferred-batch-size", type=int, multiple=True,
              help="Send a batch as soon as this many rows are queued (repeatable).")
@click.option("--max-queue-delay-microseconds", type=int, default=0, show_default=True,
              help="How long the oldest request may wait for others to fill a batch.")
@click.option("--tune-batch-size", is_flag=True,
              help="At start, time the backend at batch 1, 2, 4, ... and prefer the batch size "
                   "with the best rows per second (1 where batching does not pay, as on small CPUs).")
@click.option("--instances", type=int, default=1, show_default=True,
              help="Compute threads taking batches from the queue (Triton's instance count).")
@click.option("--max-queue-size", type=int, default=64, show_default=True,
              help="Requests waiting beyond this get 503 with Retry-After.")
@click.option("--request-timeout", type=float, default=30.0, show_default=True,
              help="Seconds a request may wait in the queue before 503.")
@click.option("--max-body-bytes", type=int, default=64 << 20, show_default=True,
              help="Largest request body (413 above it, checked before reading).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help=f"File holding a bearer token clients must send (or set {TOKEN_ENV}).")
@click.option("--threads", type=int, default=None,
              help="Threads per instance's backend call (default: CPUs available / instances).")
@click.option("--decode-threads", type=int, default=2, show_default=True,
              help="Threads decoding PNG/JPEG/DICOM inputs.")
@click.option("--decoder", type=click.Choice(["pil", "dali"]), default="pil", show_default=True,
              help="PNG/JPEG decoding: Pillow, or NVIDIA DALI (rv2[dali]; mixed on a CUDA device).")
def serve(model_dir, engines_dir, host, http_port, grpc_port, model_name, device, max_batch_size,
          preferred_batch_size, max_queue_delay_microseconds, tune_batch_size, instances,
          max_queue_size, request_timeout,
          max_body_bytes, token_file, threads, decode_threads, decoder):
    """Serve a classifier on KServe v2 / Triton's protocol: HTTP and gRPC, dynamic batching,
    Prometheus /metrics; SIGTERM drains and exits 0."""
    from rv2.serve.service import ServeSettings, default_threads

    if instances < 1:
        raise UserError(f"--instances must be at least 1, got {instances}")
    threads = threads or max(1, default_threads() // instances)
    set_threads(threads)
    from rv2.serve.server import Server

    token = os.environ.get(TOKEN_ENV) or None
    if token_file:
        token = Path(token_file).read_text().strip() or None
        if token is None:
            raise UserError(f"--token-file {token_file} is empty")
    settings = ServeSettings(model_name=model_name, host=host, http_port=http_port,
                             grpc_port=grpc_port, max_batch_size=max_batch_size,
                             preferred_batch_size=tuple(preferred_batch_size),
                             max_queue_delay_microseconds=max_queue_delay_microseconds,
                             tune_batch_size=tune_batch_size, instances=instances,
                             max_queue_size=max_queue_size, request_timeout_s=request_timeout,
                             max_body_bytes=max_body_bytes, token=token,
                             decode_threads=decode_threads, decoder=decoder)
    predictor = load_predictor(model_dir, engines_dir, device)
    server = Server(predictor, settings)

    def ready(s):
        where = []
        if s.http_port is not None:
            where.append(f"HTTP http://{host}:{s.http_port}/v2")
        if s.grpc_port is not None:
            where.append(f"gRPC {host}:{s.grpc_port}")
        svc = s.service
        tuned = (f", preferred batch {svc.preferred_batch_size[0]} (tuned)"
                 if svc.batch_timings else "")
        click.echo(f"rv2 serve: model '{model_name}' ({predictor.backend.name}, max batch "
                   f"{svc.model.max_batch_size}{tuned}, {instances} instance(s) x {threads} "
                   f"threads) ready on {', '.join(where)}", err=True)

    server.run(on_ready=ready)
    click.echo(f"rv2 serve: stopped: {server.summary()}", err=True)
