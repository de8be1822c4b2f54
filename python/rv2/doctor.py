"""`rv2 doctor`: what is installed and what is usable on this machine.

Reports versions, torch and its CUDA devices, the native target, TensorRT,
DALI, the ONNX Runtime providers that really create a session, and which
known weights are found. A problem is "broken" only when rv2 itself cannot
work (a core dependency missing, or a native module present but unloadable).
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import shutil
import sys
from pathlib import Path

from rv2 import __version__, _native, envs, weights
from rv2.engines.profile import known_targets

CORE = ("numpy", "pandas", "pyarrow", "click", "yaml", "tqdm", "PIL")
OPTIONAL = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "open_clip",
            "torchxrayvision", "pydicom", "sklearn", "scipy", "onnx", "onnxruntime")


DISTRIBUTIONS = {"yaml": "PyYAML", "PIL": "pillow", "sklearn": "scikit-learn",
                 "open_clip": "open-clip-torch"}


def _version(mod_name: str) -> str | None:
    """Version of an importable module (None when the import fails)."""
    try:
        importlib.import_module(mod_name)
    except Exception:  # noqa: BLE001 - a broken optional package is reported, not fatal
        return None
    try:
        return md.version(DISTRIBUTIONS.get(mod_name, mod_name))
    except md.PackageNotFoundError:
        return "installed"


def onnxruntime_usable_providers() -> tuple[list[str], list[str]]:
    """(available, usable): a provider is usable when a session on a tiny graph keeps it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    blob = model.SerializeToString()
    available = list(ort.get_available_providers())
    usable = []
    for prov in available:
        try:
            sess = ort.InferenceSession(blob, providers=[prov])
        except Exception:  # noqa: BLE001
            continue
        if prov in sess.get_providers():
            usable.append(prov)
    return available, usable


def collect() -> dict:
    report: dict = {"rv2": __version__, "python": platform.python_version(),
                    "platform": platform.platform(), "broken": [], "notes": []}
    report["core"] = {m: _version(m) for m in CORE}
    for m, v in report["core"].items():
        if v is None:
            report["broken"].append(f"core dependency {m} cannot be imported")
    report["optional"] = {m: _version(m) for m in OPTIONAL}
    report["environment"] = envs.snapshot()

    info = _native.build_info()
    report["native"] = info
    pkg_dir = Path(__file__).resolve().parent
    built = sorted(pkg_dir.glob("_C*.so")) + sorted(pkg_dir.glob("_C*.pyd"))
    if not _native.HAS_NATIVE and built and "RV2_DISABLE_NATIVE" not in (_native.NATIVE_ERROR or ""):
        report["broken"].append(f"native module {built[0].name} present but fails to load: "
                                f"{_native.NATIVE_ERROR}")

    feats = _native.features()
    report["native_features"] = feats
    report["executors"] = {
        "default": "native" if feats["run_pipeline"] else "inprocess",
        "available": (["native"] if feats["run_pipeline"] else []) + ["python", "inprocess"]}
    if not feats["run_pipeline"]:
        report["notes"].append("rv2._C has no pipeline scheduler: rv2 generate runs the in-process "
                               "executor (or --executor python, the scheduler's twin)")

    torch_info: dict = {"version": report["optional"]["torch"]}
    if torch_info["version"]:
        import torch

        torch_info["cuda_build"] = torch.version.cuda
        torch_info["cuda_available"] = bool(torch.cuda.is_available())
        torch_info["devices"] = [
            f"{i}: {torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())] if torch_info["cuda_available"] else []
        torch_info["threads"] = torch.get_num_threads()
    report["torch"] = torch_info

    try:
        import tensorrt  # type: ignore

        report["tensorrt"] = tensorrt.__version__
    except Exception as exc:  # noqa: BLE001
        report["tensorrt"] = None
        report["notes"].append(f"TensorRT not usable ({type(exc).__name__}); engines use "
                               "AOTInductor / ONNX Runtime")
    try:
        import nvidia.dali  # type: ignore

        report["dali"] = nvidia.dali.__version__
    except Exception:  # noqa: BLE001
        report["dali"] = None
    if report["optional"]["onnxruntime"] and report["optional"]["onnx"]:
        try:
            report["onnxruntime_providers"] = dict(zip(("available", "usable"),
                                                       onnxruntime_usable_providers()))
        except Exception as exc:  # noqa: BLE001
            report["onnxruntime_providers"] = {"error": f"{type(exc).__name__}: {exc}"}
    usable = report.get("onnxruntime_providers", {}).get("usable") or []
    report["engines"] = {
        "targets": known_targets(),
        "onnxruntime": bool(usable),
        # AOTInductor compiles C++ at build time: it needs torch and a C++ compiler.
        "aotinductor": bool(torch_info["version"]) and bool(shutil.which("c++") or shutil.which("g++")),
        "tensorrt": report["tensorrt"] is not None,
    }
    report["weight_dirs"] = [str(d) for d in weights.weight_dirs()]
    report["weights"] = {w.key: (str(p) if p else None) for w, p in weights.inventory()}
    return report


def format_report(r: dict) -> str:
    def ok(v):
        return v if v else "-- not available"

    lines = [f"rv2 {r['rv2']}  (python {r['python']}, {r['platform']})", "", "core packages:"]
    lines += [f"  {k:16s} {ok(v)}" for k, v in r["core"].items()]
    lines += ["optional packages:"]
    lines += [f"  {k:16s} {ok(v)}" for k, v in r["optional"].items()]
    if r.get("environment"):
        lines += ["environment:"] + [f"  {k}={v}" for k, v in r["environment"].items()]
    n = r["native"]
    lines += ["", f"native (rv2._C):  target={n.get('target')}  compiler={n.get('compiler') or '-'}"
              f"  cuda_archs={n.get('cuda_archs') or '-'}"
              + (f"  ({n['reason']})" if n.get("reason") else "")]
    feats = r.get("native_features", {})
    kernels = [k for k in ("to_uint8", "to_uint8_cuda", "guided_update", "guided_update_cuda")
               if feats.get(k)]
    ex = r.get("executors", {})
    lines.append(f"executors:        default {ex.get('default')}; available "
                 f"{', '.join(ex.get('available', []))}")
    lines.append(f"native kernels:   {', '.join(kernels) or '-- none (Python twins)'}")
    t = r["torch"]
    if t.get("version"):
        lines.append(f"torch:            {t['version']} (CUDA build {t.get('cuda_build') or 'none'}, "
                     f"cuda available: {t.get('cuda_available')}, threads {t.get('threads')})")
        lines += [f"  GPU {d}" for d in t.get("devices", [])]
    else:
        lines.append("torch:            -- not installed (generation and training need it)")
    lines.append(f"TensorRT:         {ok(r['tensorrt'])}")
    lines.append(f"DALI:             {ok(r['dali'])}")
    prov = r.get("onnxruntime_providers")
    if prov:
        if "error" in prov:
            lines.append(f"ONNX Runtime:     error: {prov['error']}")
        else:
            lines.append(f"ONNX Runtime:     usable {prov['usable']} (listed {prov['available']})")
    e = r.get("engines")
    if e:
        lines.append(f"engines:          backends {[b for b in ('onnxruntime', 'aotinductor', 'tensorrt') if e[b]]}"
                     f", target profiles {e['targets']} (rv2 build-engines --target NAME)")
    lines += ["", "weight folders searched:"] + [f"  {d}" for d in r["weight_dirs"]]
    lines.append("weights:")
    lines += [f"  {k:18s} {v or '-- not found'}" for k, v in r["weights"].items()]
    if r["notes"]:
        lines += ["", "notes:"] + [f"  - {x}" for x in r["notes"]]
    lines.append("")
    lines.append("status: BROKEN\n" + "\n".join(f"  - {b}" for b in r["broken"])
                 if r["broken"] else "status: ok")
    return "\n".join(lines)


def main_exit_code(report: dict) -> int:
    return 1 if report["broken"] else 0


if __name__ == "__main__":  # pragma: no cover
    rep = collect()
    print(format_report(rep))
    sys.exit(main_exit_code(rep))
