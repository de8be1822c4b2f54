"""The layers contract: rv2's imports run one way, lowest layer first.

Every import of every module is checked, function-level ones included (parsed
with ast, nothing is imported). A module may import its own layer and the
layers below it, never a layer above. Function-level imports of rv2's own
modules are kept only where they keep `import rv2` and `rv2 --help` light: the
imported module must pull in a heavy third-party package (torch, diffusers, ...)
at import time, or be the CLI's lazy command table.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "python" / "rv2"

# Lowest first; one entry per layer (see docs/architecture.md).
LAYERS: list[set[str]] = [
    {"__init__", "config", "envs", "errors", "files", "_native", "_C", "weights",
     "signals"},
    {"data"},
    {"prompts"},
    {"models"},
    {"finetune", "generate"},
    {"classify"},
    {"evaluate"},
    {"export", "engines", "runtime", "serve", "distributed"},
    {"demo", "testing"},
    {"cli", "doctor"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
HEAVY = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "onnx", "onnxruntime",
         "tensorrt", "nvidia", "ray", "open_clip", "torchxrayvision", "matplotlib", "sklearn",
         "scipy", "pydicom", "fastapi", "uvicorn", "grpc", "tritonclient")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _in_functions(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a function body (the rest run at import time)."""
    inside: set[int] = set()

    def walk(node, in_fn):
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if fn and isinstance(child, (ast.Import, ast.ImportFrom)):
                inside.add(id(child))
            walk(child, fn)

    walk(tree, False)
    return inside


def _lazy_getattr_imports(tree: ast.AST) -> set[int]:
    """Imports inside a package's module-level `__getattr__` (its lazy public API)."""
    out: set[int] = set()
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            out |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def _imports(tree: ast.AST, module: str, is_pkg: bool):
    """(target, line, kind) for each imported module or name: kind is "top" (runs at
    import time), "lazy" (in a package's `__getattr__`: runs on attribute access) or
    "function". `from a.b import c` yields "a.b.c", which `_resolve` maps to the
    module `a.b.c` or, when c is a name, to `a.b`."""
    in_fn = _in_functions(tree)
    lazy = _lazy_getattr_imports(tree)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        kind = "lazy" if id(node) in lazy else "function" if id(node) in in_fn else "top"
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, kind
            continue
        if node.level:
            base = module.split(".")
            base = base if is_pkg else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for a in node.names:
            yield f"{target}.{a.name}", node.lineno, kind


def _collect():
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        mods[name] = (path, list(_imports(tree, name, path.name == "__init__.py")))
    return mods


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "rv2":
        return None
    key = parts[1] if len(parts) > 1 else "__init__"
    return LAYER_OF.get(key)


def _resolve(target: str, mods: dict) -> str | None:
    """The rv2 module a dotted import names (a submodule, or the package holding a name)."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def test_every_subpackage_has_a_layer():
    subs = {p.name if p.is_dir() else p.stem for p in PKG.iterdir()
            if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py")}
    assert not subs - set(LAYER_OF), f"give these a layer in LAYERS: {sorted(subs - set(LAYER_OF))}"


def test_imports_run_one_way():
    mods = _collect()
    bad = []
    for name, (path, imports) in mods.items():
        own = _layer(name)
        for target, line, _ in imports:
            t = _layer(target)
            if t is not None and own is not None and t > own:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {name} (layer {own}) imports "
                           f"{target} (layer {t})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles_at_module_level():
    mods = _collect()
    graph = {name: {r for t, _, kind in imports if kind == "top" and t.startswith("rv2")
                    for r in [_resolve(t, mods)] if r and r != name}
             for name, (_, imports) in mods.items()}
    seen, stack, cycles = set(), [], []

    def visit(n, on_path):
        if n in on_path:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        on_path.add(n)
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            visit(m, on_path)
        stack.pop()
        on_path.discard(n)

    for n in sorted(graph):
        visit(n, set())
    assert not cycles, "module-level import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def _heavy_closure(mods: dict) -> dict[str, bool]:
    """Whether importing each rv2 module pulls a heavy package in (top-level imports only)."""
    memo: dict[str, bool] = {}

    def heavy(n, path=()):
        if n in memo:
            return memo[n]
        if n in path:
            return False
        memo_val = False
        for t, _, kind in mods[n][1]:
            if kind != "top":
                continue
            if t.split(".")[0] in HEAVY:
                memo_val = True
                break
            r = _resolve(t, mods) if t.startswith("rv2") else None
            if r and r != n and heavy(r, path + (n,)):
                memo_val = True
                break
        memo[n] = memo_val
        return memo_val

    return {n: heavy(n) for n in mods}


def test_function_level_imports_only_for_heavy_modules():
    mods = _collect()
    heavy = _heavy_closure(mods)
    bad = []
    for name, (path, imports) in mods.items():
        for target, line, kind in imports:
            if kind != "function" or not target.startswith("rv2"):
                continue
            r = _resolve(target, mods)
            if r is None or r == name or heavy.get(r, False) or r == "rv2._C":
                continue
            if name == "rv2.cli" or name.endswith(".cli"):
                continue  # command modules load their stage on first use (`rv2 --help` stays fast)
            bad.append(f"{path.relative_to(PKG.parent)}:{line}: {target} is light; import it at the top")
    assert not bad, "function-level imports of light rv2 modules:\n" + "\n".join(bad)
