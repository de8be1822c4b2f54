#!/usr/bin/env python
"""The wheelhouse for the lent GPU machine: download, check tags and versions, fit 64 MiB.

    python tools/gpu_wheelhouse.py [--dest .whl] [--check] [--without NAME ...]

Downloads the pins of tools/gpu-wheels.txt that are not in DEST yet (pip download,
binary only, CPython 3.12, manylinux x86_64 or pure Python), removes wheels that
are no longer pinned, then checks that every wheel installs there (tags), that
each package has one version, and that DEST plus the working tree that travels
with a device call fit its 64 MiB. Exits 1 with the sizes when they do not fit.
--check does no download (offline).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "tools" / "gpu-wheels.txt"
LIMIT_BYTES = 64 * 2 ** 20          # what one device call carries: tree + carried paths
MAX_GLIBC_MINOR = 39                # the image's glibc (Ubuntu 24.04)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any")


class WheelhouseError(Exception):
    """A wheelhouse that cannot travel or install; the message says why and what to do."""


@dataclass(frozen=True)
class Pin:
    name: str          # normalized project name
    version: str
    optional: bool

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = REQUIREMENTS) -> list[Pin]:
    pins = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        req, _, comment = line.partition("#")
        req = req.strip()
        if not req:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", req)
        if not m:
            raise WheelhouseError(f"{path}:{n}: {req!r} is not NAME==VERSION; pin exact versions")
        pins.append(Pin(normalize(m[1]), m[2], "optional" in comment.split()))
    return pins


def parse_wheel(filename: str) -> tuple[str, str, set[str]]:
    """(normalized name, version, tags) of a wheel file name; raises on a bad name."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        name, version, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise WheelhouseError(f"{filename}: not a wheel file name ({exc})") from None
    return normalize(str(name)), str(version), {str(t) for t in tags}


def installs_there(tags: set[str]) -> bool:
    """Whether a wheel with these tags installs on CPython 3.12, Linux x86_64, glibc 2.39."""
    for tag in tags:
        interp, abi, plat = tag.split("-")
        py_ok = interp in ("py3", "cp312") or (abi == "abi3" and re.fullmatch(r"cp3(\d+)", interp)
                                                and int(interp[3:]) <= 12)
        abi_ok = abi in ("none", "abi3", "cp312")
        m = re.fullmatch(r"manylinux_2_(\d+)_x86_64", plat)
        plat_ok = (plat == "any" or plat in ("manylinux1_x86_64", "manylinux2010_x86_64",
                                             "manylinux2014_x86_64")
                   or bool(m and int(m[1]) <= MAX_GLIBC_MINOR))
        if py_ok and abi_ok and plat_ok:
            return True
    return False


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what a device call sends besides carried paths: tracked and untracked
    files that git does not ignore, plus a shared/ folder inside the checkout."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, capture_output=True, check=True).stdout
    files = {repo / p for p in out.decode().split("\0") if p}
    shared = repo / "shared"
    if shared.is_dir():
        files.update(p for p in shared.rglob("*"))
    return sum(p.lstat().st_size for p in files if p.is_file() and not p.is_symlink())


def mib(n: int) -> str:
    return f"{n / 2 ** 20:.2f} MiB"


def check(dest: Path, pins: list[Pin], tree: int, limit: int = LIMIT_BYTES) -> list[tuple[str, int]]:
    """Checks DEST against the pins; returns [(wheel file, bytes)] or raises WheelhouseError."""
    wheels = sorted(dest.glob("*.whl"))
    rows, seen = [], {}
    for w in wheels:
        name, _, tags = parse_wheel(w.name)
        if not installs_there(tags):
            raise WheelhouseError(f"{w.name} does not install on the GPU machine (CPython 3.12, "
                                  "manylinux x86_64): download it with tools/gpu_wheelhouse.py")
        if name in seen:
            raise WheelhouseError(f"two versions of {name} in {dest} ({seen[name]} and {w.name}); "
                                  "pip installs neither: delete one")
        seen[name] = w.name
        rows.append((w.name, w.stat().st_size))
    wanted = {p.name for p in pins}
    missing = sorted(wanted - set(seen))
    if missing:
        raise WheelhouseError(f"{dest} lacks {', '.join(missing)}: run `make gpu-wheelhouse`")
    extra = sorted(set(seen) - wanted)
    if extra:
        raise WheelhouseError(f"{dest} holds wheels not pinned in {REQUIREMENTS.name}: "
                              f"{', '.join(seen[e] for e in extra)}; delete them")
    total = sum(b for _, b in rows)
    if total + tree > limit:
        optional = [p.name for p in pins if p.optional]
        hint = (f"leave out an optional wheel (--without {' --without '.join(optional)})"
                if optional else "pin fewer wheels")
        raise WheelhouseError(
            f"wheelhouse {dest.name}/ is {mib(total)} and the working tree {mib(tree)}: "
            f"{mib(total + tree)} together, over the {mib(limit)} one device call carries by "
            f"{mib(total + tree - limit)}; {hint}, or make the tree smaller")
    return rows


def download(dest: Path, pins: list[Pin]) -> None:
    """pip download of the pins whose wheel is not in DEST; removes unpinned wheels."""
    dest.mkdir(parents=True, exist_ok=True)
    have = {}
    for w in dest.glob("*.whl"):
        try:
            name, version, _ = parse_wheel(w.name)
        except WheelhouseError:
            continue
        have.setdefault(name, set()).add((version, w))
    wanted = {p.name: p for p in pins}
    for name, versions in have.items():
        for version, w in versions:
            if name not in wanted or wanted[name].version != version:
                print(f"removing {w.name} (not pinned)")
                w.unlink()
    todo = [p for p in pins if not any(v == p.version for v, _ in have.get(p.name, ()))]
    if not todo:
        print(f"all {len(pins)} pinned wheels already in {dest}")
        return
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
           "--abi", "none", "--disable-pip-version-check", "-q", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    print("pip download", " ".join(p.spec for p in todo), flush=True)
    r = subprocess.run(cmd + [p.spec for p in todo], check=False)
    if r.returncode:
        raise WheelhouseError(f"pip download failed (exit {r.returncode}) for "
                              f"{', '.join(p.spec for p in todo)}; see pip's message above")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=REPO / ".whl")
    ap.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    ap.add_argument("--check", action="store_true", help="no download: only check DEST")
    ap.add_argument("--without", action="append", default=[], metavar="NAME",
                    help="leave out an optional pin (repeatable)")
    ap.add_argument("--tree-bytes", type=int, default=None,
                    help="working-tree size to count (default: measured with git)")
    ap.add_argument("--limit-mib", type=float, default=LIMIT_BYTES / 2 ** 20)
    args = ap.parse_args(argv)
    try:
        pins = read_pins(args.requirements)
        drop = {normalize(n) for n in args.without}
        bad = drop - {p.name for p in pins if p.optional}
        if bad:
            raise WheelhouseError(f"--without {', '.join(sorted(bad))}: only optional pins can be "
                                  f"left out ({', '.join(p.name for p in pins if p.optional)})")
        pins = [p for p in pins if p.name not in drop]
        if not args.check:
            download(args.dest, pins)
        tree = tree_bytes() if args.tree_bytes is None else args.tree_bytes
        rows = check(args.dest, pins, tree, int(args.limit_mib * 2 ** 20))
    except WheelhouseError as exc:
        print(f"gpu-wheelhouse: error: {exc}", file=sys.stderr)
        return 1
    total = sum(b for _, b in rows)
    for name, b in rows:
        print(f"  {mib(b):>10}  {name}")
    print(f"gpu-wheelhouse: {len(rows)} wheels, {mib(total)}; with the working tree "
          f"{mib(tree)}: {mib(total + tree)} of {args.limit_mib:.0f} MiB "
          f"({mib(int(args.limit_mib * 2 ** 20) - total - tree)} left)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
