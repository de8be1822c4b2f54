"""`build_engines`: every component's engines for one target, with manifests,
parity gates and a cache.

Output folder:

    engines.json                 index: target, profile, the rebuild command, per
                                 component the engines built and the one selected
    profile.yaml                 the profile it was built from
    generator/tokenizer/, generator/scheduler/   what the runtime needs besides engines
    <component>/model.onnx (+ model.onnx.data)   the exported graph, onnx.json beside it
    <component>/<backend>/manifest.json + model.pt2 | model.plan (+ timing.cache)

Order of work per component: hash the sources (weights and configs), compare
with the existing manifests (same cache key and intact files: a cache hit,
nothing loaded), else load the model once, export the ONNX, build each backend
of the profile, gate it against the eager module and write its manifest. The
selected backend is the first of the profile's list that built.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from rv2.classify import model_dir as md
from rv2.engines import manifest as mf
from rv2.engines.parity import (TOLERANCES, ParityError, compare, e2e_prompts, end_to_end,
                                format_table, passed, worst)
from rv2.engines.profile import GENERATOR, QC, TargetProfile
from rv2.errors import UserError
from rv2.files import atomic_write_text, dumps
from rv2.models.sd import check_model_dir, load_components

ONNX_FILE = "model.onnx"
ONNX_META = "onnx.json"
E2E_STEPS = 10
E2E_GUIDANCE = 3.0


@dataclasses.dataclass
class Sources:
    """What to build from: a generator folder, QC weights, a classifier folder."""

    generator: Optional[Path] = None
    qc_dir: Optional[Path] = None
    qc_convention: Optional[str] = None
    classifier: Optional[Path] = None

    def components(self, profile: TargetProfile) -> list[str]:
        out = []
        if self.generator is not None:
            out += list(GENERATOR)
        if self.qc_dir is not None:
            out += list(QC)
        if self.classifier is not None:
            out.append("classifier")
        missing = [c for c in out if c not in profile.components]
        if missing:
            raise UserError(f"profile {profile.target!r} has no entry for {missing}; add them to the "
                            "profile YAML (batch_sizes and shapes) or leave out their models")
        if not out:
            raise UserError("nothing to build: give --generator, --qc-weights-dir and/or --classifier")
        return out

    def files(self, component: str) -> list[Path]:
        from rv2.export.graphs import qc_sources

        if component in GENERATOR:
            sub = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae"}[component]
            d = self.generator / sub
            if sub == "vae" and not d.is_dir():
                raise UserError(f"generator folder {self.generator} has no vae/ (the VAE decoder is "
                                "one of the engines); give a full diffusers folder (model_index.json, "
                                "unet/, vae/, text_encoder/, tokenizer/)")
            if not d.is_dir():
                check_model_dir(self.generator)
            return sorted(p for p in d.glob("*") if p.suffix in (".safetensors", ".bin", ".json"))
        if component in QC:
            return qc_sources(self.qc_dir)
        md.check_model_dir(self.classifier)
        return [self.classifier / md.WEIGHTS, self.classifier / md.MODEL_CONFIG]


@dataclasses.dataclass
class BuildRow:
    component: str
    backend: str
    status: str                 # built | cached | skipped | failed
    precision: str = ""
    seconds: Optional[float] = None
    max_abs: Optional[float] = None
    rel_max: Optional[float] = None
    tolerance: Optional[float] = None
    finite: Optional[bool] = None
    message: str = ""


class _Graphs:
    """Loads each model once, only when some engine of it must be (re)built."""

    def __init__(self, sources: Sources, profile: TargetProfile, device):
        self.sources, self.profile, self.device = sources, profile, device
        self._specs: dict = {}

    def get(self, component: str):
        """The component's graph on the build device (its eager reference shares the
        modules, so parity runs there too, in fp32)."""
        if component not in self._specs:
            specs = self._load(component)
            for s in specs.values():
                s.module.to(self.device)
            self._specs.update(specs)
        return self._specs[component]

    def _load(self, component: str) -> dict:
        from rv2.export import graphs

        p = self.profile
        if component in GENERATOR:
            latent = p.component("unet").latent if "unet" in p.components else None
            return graphs.generator_graphs(self.sources.generator, latent=latent)
        if component in QC:
            from rv2.models.qc_networks import load_qc_models

            qc = load_qc_models(self.sources.qc_dir, "cpu", self.sources.qc_convention)
            return graphs.qc_graphs(qc, self.qc_image_size(), graphs.qc_sources(self.sources.qc_dir))
        img = p.component("classifier").image
        return {"classifier": graphs.classifier_graph(self.sources.classifier,
                                                      img[1] if img else None)}

    def qc_image_size(self) -> int:
        img = next((self.profile.component(c).image for c in QC if c in self.profile.components
                    and self.profile.component(c).image), None)
        if img:
            return int(img[1])
        if self.sources.generator is not None:
            gen = self.get("vae_decoder")
            return int(gen.outputs[0].shape[-1])
        raise UserError(f"profile {self.profile.target!r}: set qc_sex/qc_race/qc_age image "
                        "[1, H, W] (the generated image size) to build QC engines without a generator")


def _shape_key(profile: TargetProfile, component: str) -> dict:
    c = dataclasses.asdict(profile.component(component))
    if component == "vae_decoder" and c.get("latent") is None and "unet" in profile.components:
        c["latent"] = profile.component("unet").latent
    return c


def build_engines(profile: TargetProfile, out: str | Path, sources: Sources, *,
                  backends: Optional[list[str]] = None, device: Optional[str] = None,
                  force: bool = False, e2e_steps: int = E2E_STEPS, e2e_prompts_n: int = 16,
                  only: Optional[list[str]] = None,
                  command: str = "rv2 build-engines", echo: Callable[[str], None] = print) -> dict:
    """Build (or reuse) the engines; returns the index written to `out/engines.json`.
    `only`: build these components and keep the others as the index has them.
    Raises ParityError naming the component when an engine fails its gate."""
    from rv2.engines.backends import tensorrt_missing
    from rv2.models.device import resolve_device

    out = Path(out)
    dev = resolve_device(device or profile.device)
    if dev.type != profile.device:
        raise UserError(f"profile {profile.target!r} targets {profile.device} but the build device is "
                        f"{dev}; pick a {profile.device} profile or --device {profile.device}")
    backends = list(backends or profile.backends)
    bad = [b for b in backends if b not in profile.backends and b not in mf.STRICT]
    if bad:
        raise UserError(f"unknown backend(s) {bad}; use {list(mf.STRICT)}")
    if "tensorrt" in backends:
        why = tensorrt_missing() if dev.type == "cuda" else "TensorRT needs a CUDA target; skipped"
        if why:
            echo(why)
            backends.remove("tensorrt")
    here = mf.machine_info(str(dev))
    components = sources.components(profile)
    if only:
        bad = [c for c in only if c not in components]
        if bad:
            raise UserError(f"--components {bad}: not among the components of the given models "
                            f"{components}")
        components = [c for c in components if c in only]
    graphs = _Graphs(sources, profile, dev)
    out.mkdir(parents=True, exist_ok=True)
    old = _read_index(out)
    index = {"format": "rv2-engines", "version": 1, "target": profile.target,
             "device": dev.type, "precision": profile.precision, "rebuild": command,
             "built_at": mf.now(), "machine": here,
             "components": {c: e for c, e in old.get("components", {}).items()
                            if only and c not in components and (out / c).is_dir()}}
    if only:  # what this partial build does not touch stays as it was
        index.update({k: old[k] for k in ("generator", "qc", "classifier", "end_to_end") if k in old})
    rows: list[BuildRow] = []
    failures: list[str] = []
    for comp in components:
        t_src = time.perf_counter()
        src = mf.sources_digest(sources.files(comp))
        extra_key = {"qc_convention": sources.qc_convention} if comp in QC else {}
        base_key = {"component": comp, "graph_version": mf.GRAPH_VERSION, "sources": src["sha256"],
                    "shape": _shape_key(profile, comp), **extra_key}
        onnx_info = None
        if any(b in ("onnxruntime", "tensorrt") for b in backends):
            onnx_info = _onnx(out / comp, graphs, comp, base_key, profile, here, force, echo)
        entry = {"engines": {}, "selected": None, "sources": src}
        for backend in backends:
            row = _engine(out / comp, graphs, comp, backend, base_key, onnx_info, profile, dev,
                          here, src, force, command)
            row.seconds = row.seconds if row.status != "cached" else time.perf_counter() - t_src
            rows.append(row)
            if row.status in ("built", "cached"):
                entry["engines"][backend] = f"{comp}/{backend}"
                entry["selected"] = entry["selected"] or backend
            elif row.status == "failed":
                failures.append(f"{comp} ({backend}): {row.message}")
            echo(_row_line(row))
        index["components"][comp] = entry
    built = {c for c, e in index["components"].items() if e["selected"]}
    if sources.generator is not None and "unet" in built:
        _copy_generator_files(sources.generator, out)
        index["generator"] = {"path": str(sources.generator), **_generator_meta(out, graphs)}
    if sources.qc_dir is not None and "qc_sex" in built:
        index["qc"] = _qc_meta(out)
    if sources.classifier is not None and "classifier" in built:
        index["classifier"] = {"path": str(sources.classifier), **_classifier_meta(out)}
    echo("")
    echo(format_table([dataclasses.asdict(r) for r in rows]))
    if failures:
        _write_index(out, index, profile)
        raise ParityError("engine build failed for " + "; ".join(failures))
    if sources.generator is not None and e2e_steps > 0 and all(c in components for c in GENERATOR):
        index["end_to_end"] = _end_to_end(out, index, old, sources, profile, dev, e2e_steps,
                                          e2e_prompts_n, echo)
    _write_index(out, index, profile)
    return index


def _row_line(r: BuildRow) -> str:
    if r.status == "failed":
        return f"{r.component} [{r.backend}]: FAILED {r.message}"
    if r.status == "skipped":
        return f"{r.component} [{r.backend}]: skipped ({r.message})"
    return (f"{r.component} [{r.backend}]: {r.status} in {r.seconds:.1f}s, rel max err "
            f"{r.rel_max:.2e} (tol {r.tolerance:.0e})")


def _read_index(out: Path) -> dict:
    p = out / mf.INDEX
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _write_index(out: Path, index: dict, profile: TargetProfile) -> None:
    profile.save(out / "profile.yaml")
    atomic_write_text(out / mf.INDEX, dumps(index, indent=2))


def _onnx(folder: Path, graphs: _Graphs, comp: str, base_key: dict, profile: TargetProfile,
          here: dict, force: bool, echo) -> dict:
    """The component's ONNX graph (cached by key): {"key", "sha256", "files", "io", "path"}."""
    from rv2.export.onnx_export import OPSET, IR_VERSION, check_onnx, export_onnx, onnx_io

    prec = profile.onnx_precision
    key = mf.cache_key({**base_key, "precision": prec, "torch": here["torch"], "onnx": here["onnx"],
                        "opset": OPSET, "ir": IR_VERSION})
    meta_path = folder / ONNX_META
    path = folder / ONNX_FILE
    if not force and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            try:
                mf.check_files({"files": meta["files"], "rebuild": "rv2 build-engines"}, folder)
                return meta
            except mf.EngineError:
                pass
    t0 = time.perf_counter()
    spec = graphs.get(comp)
    export_onnx(spec, path, prec, example_batch=min(max(profile.component(comp).min_batch, 2),
                                                        profile.component(comp).max_batch))
    check_onnx(path)
    files = [mf.file_digest(path)]
    data = path.with_name(path.name + ".data")
    if data.is_file():
        files.append(mf.file_digest(data))
    meta = {"key": key, "sha256": files[0]["sha256"], "files": files, "io": onnx_io(path),
            "precision": prec, "opset": OPSET, "ir_version": IR_VERSION,
            "seconds": time.perf_counter() - t0}
    atomic_write_text(meta_path, dumps(meta, indent=2))
    echo(f"{comp}: exported ONNX ({prec}, opset {OPSET}, IR {IR_VERSION}) in {meta['seconds']:.1f}s")
    return meta


def _engine(folder: Path, graphs: _Graphs, comp: str, backend: str, base_key: dict,
            onnx_info: Optional[dict], profile: TargetProfile, dev, here: dict, src: dict,
            force: bool, command: str) -> BuildRow:
    from rv2.engines import backends as be

    cp = profile.component(comp)
    prec = profile.precision if backend == "aotinductor" else profile.onnx_precision
    strict = {f: here.get(f) for f in mf.strict_fields(backend, dev.type)}
    key = mf.cache_key({**base_key, "backend": backend, "precision": prec, "batch": cp.batch_sizes,
                        "onnx": onnx_info["sha256"] if onnx_info and backend != "aotinductor" else None,
                        "machine": strict})
    efolder = folder / backend
    tol = TOLERANCES[prec]
    if not force and (efolder / mf.MANIFEST).is_file():
        try:
            m = mf.read_manifest(efolder)
            if m.get("key") == key:
                mf.check_files(m, efolder)
                a, r, fin = worst(m["parity"]["figures"])
                return BuildRow(comp, backend, "cached", prec, 0.0, a, r, tol, fin)
        except mf.EngineError:
            pass
    t0 = time.perf_counter()
    spec = graphs.get(comp)
    if efolder.exists():
        shutil.rmtree(efolder)
    efolder.mkdir(parents=True)
    try:
        if backend == "onnxruntime":
            engine_file = f"../{ONNX_FILE}"
            files = [{**f, "file": f"../{f['file']}"} for f in onnx_info["files"]]
        elif backend == "aotinductor":
            be.build_aoti(spec, efolder, cp.min_batch, cp.max_batch, prec, dev)
            engine_file = be.PACKAGE
            files = [mf.file_digest(efolder / be.PACKAGE)]
        else:
            be.build_trt(spec, folder / ONNX_FILE, efolder, cp.min_batch, cp.opt_batch, cp.max_batch, prec)
            engine_file = be.PLAN
            files = [mf.file_digest(efolder / be.PLAN)]
    except Exception as exc:  # noqa: BLE001 - a backend that cannot build this graph is reported
        shutil.rmtree(efolder, ignore_errors=True)
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        return BuildRow(comp, backend, "failed", prec, time.perf_counter() - t0,
                        message=f"{type(exc).__name__}: {msg}")
    build_s = time.perf_counter() - t0
    manifest = {
        "format": mf.FORMAT, "version": mf.VERSION, "component": comp, "backend": backend,
        "precision": prec, "key": key, "engine_file": engine_file, "files": files,
        "onnx": ({"file": f"../{ONNX_FILE}", "sha256": onnx_info["sha256"], "opset": onnx_info["opset"],
                  "ir_version": onnx_info["ir_version"], "files": onnx_info["files"]}
                 if onnx_info else None),
        "inputs": [t.as_dict() for t in spec.inputs], "outputs": [t.as_dict() for t in spec.outputs],
        "batch_range": [cp.min_batch, cp.max_batch], "batch_sizes": list(cp.batch_sizes),
        "profile_shapes": {t.name: {"min": list(t.with_batch(cp.min_batch)),
                                    "opt": list(t.with_batch(cp.opt_batch)),
                                    "max": list(t.with_batch(cp.max_batch))} for t in spec.inputs},
        "machine": here, "sources": src, "meta": spec.meta, "target": profile.target,
        "built_at": mf.now(), "build_seconds": build_s, "rebuild": command,
    }
    # Parity: the engine as the runtime will load it, against the eager module.
    try:
        runner = be.open_runner(manifest, efolder, dev)
        figures = _parity(spec, runner, cp)
    except Exception as exc:  # noqa: BLE001
        shutil.rmtree(efolder, ignore_errors=True)
        return BuildRow(comp, backend, "failed", prec, build_s,
                        message=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    ok = passed(figures, prec)
    a, r, fin = worst(figures)
    manifest["parity"] = {"figures": figures, "tolerance": tol, "metric": "max|engine-eager|/max|eager|",
                          "passed": ok}
    if not ok:
        shutil.rmtree(efolder, ignore_errors=True)
        return BuildRow(comp, backend, "failed", prec, build_s, a, r, tol, fin,
                        message=f"parity gate: rel max err {r:.2e} > {tol:.0e} or non-finite output")
    mf.write_manifest(efolder, manifest)
    return BuildRow(comp, backend, "built", prec, time.perf_counter() - t0, a, r, tol, fin)


def _parity(spec, runner, cp) -> dict:
    from rv2.export.graphs import run_reference

    figures = {}
    for n in sorted({cp.min_batch, cp.max_batch}):
        xs = spec.example(n, seed=1234 + n)
        refs = run_reference(spec, [x.to(runner.device) for x in xs])
        outs = runner(*xs)
        figures[str(n)] = compare(outs, refs, [t.name for t in spec.outputs])
    return figures


def _copy_generator_files(generator: Path, out: Path) -> None:
    dst = out / "generator"
    for sub in ("tokenizer", "scheduler"):
        if (generator / sub).is_dir():
            if (dst / sub).exists():
                shutil.rmtree(dst / sub)
            shutil.copytree(generator / sub, dst / sub)


def _generator_meta(out: Path, graphs: _Graphs) -> dict:
    m = mf.read_manifest(next(p for p in (out / "unet").iterdir() if (p / mf.MANIFEST).is_file()))
    return {k: m["meta"][k] for k in ("in_channels", "sample_size", "latent", "scale_factor",
                                       "vae_scaling", "seq_len", "hidden")}


def _qc_meta(out: Path) -> dict:
    m = mf.read_manifest(next(p for p in (out / "qc_sex").iterdir() if (p / mf.MANIFEST).is_file()))
    return {k: m["meta"][k] for k in ("convention", "model_id", "model_hash", "image_size")}


def _classifier_meta(out: Path) -> dict:
    m = mf.read_manifest(next(p for p in (out / "classifier").iterdir() if (p / mf.MANIFEST).is_file()))
    return {k: m["meta"][k] for k in ("labels", "image_size", "mean", "std", "channels")}


def _end_to_end(out: Path, index: dict, old: dict, sources: Sources, profile: TargetProfile, dev,
                steps: int, n_prompts: int, echo) -> dict:
    """Engine images against eager ones, per backend that built every generator component."""
    from rv2.engines.runtime import load
    from rv2.generate.eager import eager_stages

    comps = index["components"]
    backends = [b for b in profile.backends
                if all(b in comps[c]["engines"] for c in GENERATOR)]
    keys = {c: {b: mf.read_manifest(out / comps[c]["engines"][b])["key"] for b in comps[c]["engines"]}
            for c in comps}
    e2e_key = mf.cache_key({"keys": keys, "steps": steps, "n": n_prompts})
    if old.get("end_to_end", {}).get("key") == e2e_key:
        echo("end to end: cached " + _e2e_line(old["end_to_end"]))
        return old["end_to_end"]
    prompts = e2e_prompts(n_prompts)
    qc = None
    if sources.qc_dir is not None:
        from rv2.models.qc_networks import load_qc_models

        qc = load_qc_models(sources.qc_dir, dev, sources.qc_convention)
    eager = eager_stages(load_components(sources.generator), dev, _eager_dtype(profile), qc=qc)
    result = {"key": e2e_key, "backends": {}}
    failed = []
    for b in backends:
        engines = load(out, device=str(dev), backend=b, _index=index)
        stages = engines.stages()
        batch = max(1, engines.runner("unet").max_batch // 2)
        r = _run_e2e(eager, stages, prompts, steps, batch)
        result["backends"][b] = r
        echo(f"end to end [{b}]: " + _e2e_line(r))
        if not r["passed"]:
            failed.append(b)
    if failed:
        raise ParityError(f"end-to-end parity failed for the generator engines on {failed} "
                          f"(need >= 99% of pixels within 2 grey levels and the same QC verdict on "
                          f">= 99% of prompts): {result['backends']}")
    return result


def _run_e2e(eager, engine, prompts, steps, batch):
    return end_to_end(eager, engine, prompts, steps, E2E_GUIDANCE, batch=batch)


def _eager_dtype(profile: TargetProfile):
    from rv2.models.device import DTYPES

    return DTYPES[profile.precision]


def _e2e_line(r: dict) -> str:
    per = r.get("backends", {"": r})
    return "; ".join(f"{b + ': ' if b else ''}{v['pixels_within_2'] * 100:.2f}% of pixels within 2 grey "
                     f"levels, same QC verdict on {v.get('same_verdict', float('nan')) * 100:.1f}% "
                     f"of {v['prompts']} prompts" for b, v in per.items())


__all__ = ["build_engines", "Sources", "BuildRow", "ONNX_FILE"]
