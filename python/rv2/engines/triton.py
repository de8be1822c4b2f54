"""A Triton Inference Server model repository from built engines.

    <repo>/<model>/config.pbtxt
    <repo>/<model>/1/model.onnx (+ model.onnx.data)   onnxruntime_onnx platform
    <repo>/<model>/1/model.plan                       tensorrt_plan platform (when built)

for the classifier and the QC networks. Each model batches dynamically:
`max_batch_size` is the profile's largest batch, `preferred_batch_size` its
other sizes. Triton's dims leave the batch axis out; a per-image scalar output
(P(female), age) is declared with dims [1] and reshaped to [] so clients get a
(B,) tensor, as the engines give it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from rv2.engines import manifest as mf
from rv2.engines.runtime import read_index

MODELS = ("classifier", "qc_sex", "qc_race", "qc_age")
TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "float16": "TYPE_FP16"}
QUEUE_DELAY_US = 100


def config_pbtxt(name: str, manifest: dict, platform: str, gpu: bool) -> str:
    sizes = sorted(int(b) for b in manifest["batch_sizes"])
    max_batch = max(sizes)

    def tensor(t: dict) -> str:
        dims = [int(d) for d in t["shape"][1:]]
        lines = [f'    name: "{t["name"]}"', f"    data_type: {TYPES[t['dtype']]}"]
        if dims:
            lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
        else:
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        return "  {\n" + "\n".join(lines) + "\n  }"

    preferred = [b for b in sizes if b > 1] or [max_batch]
    return "\n".join([
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(tensor(t) for t in manifest["inputs"]) + "\n]",
        "output [\n" + ",\n".join(tensor(t) for t in manifest["outputs"]) + "\n]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}",
        "}",
        "instance_group [",
        f"  {{ count: 1, kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }}",
        "]",
        "",
    ])


def write_repository(engines_dir: str | os.PathLike, repo: str | os.PathLike) -> Path:
    """Write (replace) the Triton models of `engines_dir` under `repo`; returns `repo`."""
    engines_dir, repo = Path(engines_dir), Path(repo)
    index = read_index(engines_dir)
    written = 0
    for name in MODELS:
        entry = index["components"].get(name)
        if not entry or not entry.get("engines"):
            continue
        if "tensorrt" in entry["engines"]:
            backend, platform = "tensorrt", "tensorrt_plan"
        elif "onnxruntime" in entry["engines"]:
            backend, platform = "onnxruntime", "onnxruntime_onnx"
        else:
            continue  # AOTInductor packages are not a Triton platform
        folder = engines_dir / entry["engines"][backend]
        m = mf.read_manifest(folder)
        mf.check_files(m, folder)
        target = repo / name
        if target.exists():
            shutil.rmtree(target)
        (target / "1").mkdir(parents=True)
        if backend == "tensorrt":
            shutil.copy2(folder / m["engine_file"], target / "1" / "model.plan")
        else:
            for f in m["files"]:  # model.onnx and its external data keep their names
                shutil.copy2(folder / f["file"], target / "1" / Path(f["file"]).name)
        (target / "config.pbtxt").write_text(
            config_pbtxt(name, m, platform, m["machine"]["device_type"] == "cuda"))
        written += 1
    if not written:
        raise mf.EngineError(f"{engines_dir}: no classifier or QC engine built with onnxruntime or "
                             "tensorrt, nothing to put in a Triton repository; build with "
                             "--classifier / --qc-weights-dir and the onnxruntime backend")
    return repo


__all__ = ["write_repository", "config_pbtxt", "MODELS"]
