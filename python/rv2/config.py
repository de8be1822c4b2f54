"""Versioned dataclass configs and the metadata written next to every artifact.

A stage's settings are one dataclass subclassing `Config` (nested dataclasses
allowed) with a class-level `VERSION`. Configs load from YAML or TOML, take
command-line overrides as dotted `key=value` pairs, and are saved beside what
they produced together with the rv2 version and hashes of the inputs.

    cfg = GenerateConfig.load("gen.yaml", overrides=["sampler.steps=50"])
    write_artifact_meta(out_dir, cfg, inputs=[prompts_path])
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import typing
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, TypeVar

import tomllib
import yaml

from rv2 import __version__
from rv2.errors import MissingInputError, UserError
from rv2.files import atomic_write_text, dumps

C = TypeVar("C", bound="Config")

META_SUFFIX = ".rv2.json"
DIR_META_NAME = "rv2_meta.json"


class ConfigError(UserError):
    """A config file or override that does not fit its dataclass."""


@dataclasses.dataclass
class Config:
    """Base of every rv2 config. Subclasses set VERSION and add fields."""

    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict:
        return {"config_class": type(self).__name__, "config_version": self.VERSION,
                **_to_plain(dataclasses.asdict(self))}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str = "<dict>") -> C:
        data = dict(data)
        name = data.pop("config_class", None)
        if name is not None and name != cls.__name__:
            raise ConfigError(f"{source}: holds a {name} config, expected {cls.__name__}")
        version = data.pop("config_version", cls.VERSION)
        if int(version) > cls.VERSION:
            raise ConfigError(
                f"{source}: config_version {version} is newer than this rv2 understands "
                f"({cls.__name__} v{cls.VERSION}); upgrade rv2")
        return _build(cls, data, source)

    @classmethod
    def load(cls: type[C], path: str | os.PathLike | None = None,
             overrides: Iterable[str] = ()) -> C:
        """Defaults, then the file (YAML or TOML) if given, then `key=value` overrides."""
        data: dict = {}
        source = "<defaults>"
        if path is not None:
            data = read_config_file(path)
            source = str(path)
        cfg = cls.from_dict(data, source=source)
        return cfg.override(overrides) if overrides else cfg

    def override(self: C, overrides: Iterable[str]) -> C:
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key.sub=value")
            key, raw = item.split("=", 1)
            value = yaml.safe_load(raw) if raw.strip() else ""
            node = data
            parts = key.strip().split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"override {item!r}: {p!r} is not a section of "
                                      f"{type(self).__name__}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"override {item!r}: unknown field {parts[-1]!r}; known: "
                                  f"{sorted(k for k in node if not k.startswith('config_'))}")
            node[parts[-1]] = value
        return type(self).from_dict(data, source="overrides")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        text = (yaml.safe_dump(self.to_dict(), sort_keys=False)
                if path.suffix in (".yaml", ".yml") else json.dumps(self.to_dict(), indent=2))
        atomic_write_text(path, text)
        return path


def read_config_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML, TOML or JSON)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _build(cls, data: Mapping[str, Any], source: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {sorted(unknown)} for {cls.__name__}; "
                          f"known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints.get(name), value, f"{source}: {cls.__name__}.{name}")
    return cls(**kwargs)


def _coerce(tp, value, where: str):
    if tp is None:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else None
        items = [_coerce(inner, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string: accept numeric strings here.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


# ---------------------------------------------------------------- artifacts

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_input(path: str | os.PathLike) -> dict:
    """Identity of one input: sha256 of a file; for a folder, sha256 over its
    files' relative paths, sizes and contents (sizes only above 64 MB, so that
    weight folders hash quickly)."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "kind": "file", "bytes": p.stat().st_size,
                "sha256": sha256_file(p)}
    if p.is_dir():
        h = hashlib.sha256()
        n = 0
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            rel = f.relative_to(p).as_posix()
            size = f.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            if size <= 64 << 20:
                h.update(bytes.fromhex(sha256_file(f)))
            n += 1
        return {"path": str(p), "kind": "dir", "files": n, "sha256": h.hexdigest()}
    return {"path": str(p), "kind": "missing", "sha256": None}


def meta_path_for(artifact: str | os.PathLike) -> Path:
    """Where the metadata of an artifact lives: `<dir>/rv2_meta.json` for a
    folder, `<file>.rv2.json` beside a file."""
    a = Path(artifact)
    if a.is_dir() or (not a.exists() and not a.suffix):
        return a / DIR_META_NAME
    return a.with_name(a.name + META_SUFFIX)


def write_artifact_meta(artifact: str | os.PathLike, config: Config | Mapping | None = None,
                        inputs: Iterable[str | os.PathLike] = (), extra: Mapping | None = None,
                        ) -> Path:
    """Write config, rv2 version, inputs' hashes and the command line next to an artifact."""
    cfg = config.to_dict() if isinstance(config, Config) else (dict(config) if config else None)
    meta = {
        "artifact": str(artifact),
        "rv2_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "argv": list(sys.argv),
        "config": cfg,
        "inputs": [hash_input(p) for p in inputs],
    }
    if extra:
        meta.update(_to_plain(dict(extra)))
    path = meta_path_for(artifact)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps(meta, indent=2))
    return path


def read_artifact_meta(artifact: str | os.PathLike) -> dict:
    path = meta_path_for(artifact)
    if not path.is_file():
        raise MissingInputError(f"no rv2 metadata next to {artifact} (looked for {path})")
    return json.loads(path.read_text())
