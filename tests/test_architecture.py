"""The package's shape: imports run one way (no cycle, counting imports inside functions too),
argparse only in the CLI, the library never imports the CLI, and `--help` does not import torch."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "elmo_dist")

# Layers from the bottom up: a module may import its own layer or a lower one, never a higher one.
LAYERS = [
    {"elmo_dist.errors", "elmo_dist.paths", "elmo_dist.schema", "elmo_dist.storage", "elmo_dist.config"},
    {"elmo_dist.text", "elmo_dist.similarity"},
    {"elmo_dist.model"},
    {"elmo_dist.stages", "elmo_dist.checkpoint", "elmo_dist.lease", "elmo_dist.output"},
    {"elmo_dist.pipeline"},
    {"elmo_dist.refresh", "elmo_dist.search", "elmo_dist.interop", "elmo_dist.train", "elmo_dist.evaluate"},
    {"elmo_dist.cli", "elmo_dist.__main__"},
]


def _modules() -> dict[str, str]:
    mods = {}
    for dirpath, _, names in os.walk(PKG):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                mod = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                mods[mod[: -len(".__init__")] if mod.endswith(".__init__") else mod] = path
    return mods


def _imports(mods: dict[str, str]) -> dict[str, set[str]]:
    """Every elmo_dist module each module imports, wherever the import statement is."""
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("elmo_dist")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if base.startswith("elmo_dist"):
                    for a in node.names:
                        deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def _layer(mod: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(mod == m or mod.startswith(m + ".") for m in layer):
            return i
    return None


def test_no_import_cycle():
    graph = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
    assert len(graph) > 30  # the walk saw the package


def test_imports_run_downhill():
    graph = _imports(_modules())
    upward = []
    for mod, deps in graph.items():
        lm = _layer(mod)
        if lm is None:  # the package's __init__ only re-exports lazily
            continue
        for d in deps:
            ld = _layer(d)
            if ld is not None and ld > lm:
                upward.append(f"{mod} -> {d}")
    assert not upward, "imports that climb up: " + ", ".join(sorted(upward))


def test_argparse_only_in_the_cli():
    offenders = []
    for mod, path in _modules().items():
        if mod.startswith("elmo_dist.cli"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            if "argparse" in names:
                offenders.append(mod)
    assert not offenders, f"argparse outside elmo_dist/cli: {offenders}"


def test_help_does_not_import_torch_or_ray():
    code = ("import sys; from elmo_dist.cli import build_parser; p = build_parser(); "
            "[p.parse_args([c, '--help']) if False else None for c in ()]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["embed", "refresh", "verify", "status", "search", "elmo", "export", "train"])
def test_every_subcommand_help_is_fast_and_torch_free(command):
    code = ("import sys\nfrom elmo_dist.cli import main\ntry:\n    main([%r, '--help'])\nexcept SystemExit:\n    pass\n"
            "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))" % command)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "usage: elmo-dist " + command in out.stdout
    assert out.stdout.strip().endswith("IMPORTED []")
