"""The manifest next to every engine, and the checks made before deserialising one.

An engine runs only where the toolkit and device it was built for are: an
AOTInductor package needs the same torch (and, on CPU, the same vector ISA; on
CUDA, the same compute capability), a TensorRT plan the same TensorRT version
and GPU. There is no preflight API for that, so the build records what it ran on
(`machine_info`) and `check_machine` compares before anything is loaded; a
mismatch is refused with what differs and the command that rebuilds.

The cache key of an engine hashes everything its bytes depend on (source
weights, graph version, profile shapes, precision, toolkit, device): rebuilding
with the same key is a cache hit.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from rv2 import __version__
from rv2.config import sha256_file
from rv2.errors import UserError
from rv2.files import atomic_write_text, dumps

FORMAT = "rv2-engine"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "engines.json"
# Bump when an exported graph changes meaning (rv2.export.graphs): old engines rebuild.
GRAPH_VERSION = 1


class EngineError(UserError):
    """An engine that cannot be used here: corrupt, missing, or built for another
    machine or toolkit. The message names the file and the fix."""


def _module_version(name: str) -> str | None:
    try:
        mod = __import__(name)
    except Exception:  # noqa: BLE001 - absent or broken: not available
        return None
    return getattr(mod, "__version__", "installed")


def cpu_isa() -> str:
    """The vector ISA Inductor compiles CPU kernels for on this machine."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa()) or "none"
    except Exception:  # noqa: BLE001 - private API: record that it is unknown
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """Toolkit versions and the device of this process (`device`: cpu | cuda | cuda:N)."""
    import torch

    info: dict[str, Any] = {
        "rv2": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
        "onnx": _module_version("onnx"), "onnxruntime": _module_version("onnxruntime"),
        "tensorrt": _module_version("tensorrt"), "platform": platform.machine(),
    }
    dev = torch.device(device)
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        cc = torch.cuda.get_device_capability(idx)
        info.update(device_type="cuda", device_name=torch.cuda.get_device_name(idx),
                    compute_capability=f"{cc[0]}.{cc[1]}", cpu_isa=None)
    else:
        info.update(device_type="cpu", device_name=cpu_name(), compute_capability=None,
                    cpu_isa=cpu_isa())
    return info


# What must match for each backend to load its file (beyond the device type).
STRICT = {
    "onnxruntime": (),
    "aotinductor": ("torch", "platform"),
    "tensorrt": ("tensorrt", "device_name", "compute_capability"),
}
STRICT_CPU = {"aotinductor": ("cpu_isa",)}
STRICT_CUDA = {"aotinductor": ("compute_capability",)}


def strict_fields(backend: str, device_type: str) -> tuple[str, ...]:
    extra = (STRICT_CUDA if device_type == "cuda" else STRICT_CPU).get(backend, ())
    return ("device_type", *STRICT[backend], *extra)


def describe(m: dict, fields) -> str:
    return ", ".join(f"{f}={m.get(f)}" for f in fields)


def check_machine(manifest: dict, path: Path, here: dict | None = None) -> None:
    """Refuse (EngineError) an engine built for another device or toolkit."""
    backend = manifest["backend"]
    built = manifest["machine"]
    here = here or machine_info(built.get("device_type", "cpu"))
    fields = strict_fields(backend, built.get("device_type", "cpu"))
    diff = [f for f in fields if built.get(f) != here.get(f)]
    if diff:
        raise EngineError(
            f"{path}: this {backend} engine was built for {describe(built, diff)} but this machine "
            f"has {describe(here, diff)}; rebuild here with: {manifest.get('rebuild', 'rv2 build-engines')}")


def file_digest(path: Path) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def check_files(manifest: dict, folder: Path) -> None:
    """Every file the engine is made of is present with the recorded size and sha256."""
    rebuild = manifest.get("rebuild", "rv2 build-engines")
    for f in manifest.get("files", []):
        p = (folder / f["file"]).resolve()
        if not p.is_file():
            raise EngineError(f"{p}: engine file missing; rebuild with: {rebuild}")
        if p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            raise EngineError(f"{p}: engine file is corrupt (size or sha256 differs from "
                              f"{folder / MANIFEST}); rebuild with: {rebuild}")


def read_manifest(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise EngineError(f"{path}: no engine manifest; build engines with `rv2 build-engines`")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path}: not valid JSON ({exc}); rebuild with `rv2 build-engines`") from None
    if m.get("format") != FORMAT:
        raise EngineError(f"{path}: not an rv2 engine manifest (format {m.get('format')!r})")
    if int(m.get("version", 0)) > VERSION:
        raise EngineError(f"{path}: manifest version {m.get('version')} is newer than this rv2 "
                          "reads; upgrade rv2")
    return m


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST
    atomic_write_text(path, dumps(manifest, indent=2))
    return path


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def sources_digest(paths) -> dict:
    """sha256 per source file and one over all of them (names and contents)."""
    files = {Path(p).name: sha256_file(p) for p in sorted(paths, key=lambda q: Path(q).name)}
    total = hashlib.sha256("".join(f"{k}\0{v}\0" for k, v in files.items()).encode()).hexdigest()
    return {"files": files, "sha256": total}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["EngineError", "machine_info", "check_machine", "check_files", "read_manifest",
           "write_manifest", "cache_key", "sources_digest", "file_digest", "strict_fields",
           "MANIFEST", "INDEX", "FORMAT", "VERSION", "GRAPH_VERSION", "now"]
