"""The house rules of the layout: every import (lazy ones included) points one way - infrastructure ->
models/data -> methods -> experiments -> report -> pipelines -> cli - and no module imports itself back."""

from __future__ import annotations

import ast
import os

from conftest import REPO

PKG = os.path.join(REPO, "zfnet")

# rank of each room; a module may import only from rooms of lower or equal rank
ROOMS = [
    ({"_version", "errors", "registry", "io", "progress", "provenance", "runtime", "readback", "settings"}, 0),
    ({"usercode"}, 0),
    ({"models", "data", "layers", "receptive_field", "recipe", "calling"}, 1),
    ({"weights", "pixels", "outputs"}, 2),
    ({"checkpoints"}, 3),
    ({"pretrained", "train"}, 4),
    ({"methods"}, 5),
    ({"experiments"}, 6),
    ({"render"}, 7),
    ({"pipelines"}, 8),
    ({"cli", "__main__", "__init__"}, 9),
]


def _room(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    for names, rank in ROOMS:
        if top in names:
            return rank
    raise AssertionError(f"{module} is in no room; add it to ROOMS")


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
    return out


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """Every zfnet module `module` imports, at top level or inside functions."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known and m != module}


def test_imports_point_one_way_and_form_no_cycle():
    mods = _modules()
    known = set(mods)
    graph = {m: _imports(m, p, known) for m, p in mods.items()}
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if _room(d) > _room(m)]
    assert not upward, "imports pointing upward: " + "; ".join(sorted(upward))
    # no cycle among modules, the package root included
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_rendering_never_loads_a_model():
    for m, p in _modules().items():
        if m.startswith("zfnet.render"):
            deps = _imports(m, p, set(_modules()))
            assert not deps & {
                "zfnet.checkpoints",
                "zfnet.weights",
                "zfnet.models",
                "zfnet.pretrained",
                "zfnet.train",
                "zfnet.runtime",
                "zfnet.data",
            }, (m, deps)


def test_html_comes_from_templates_and_compute_writes_no_file():
    """Issue 34: no page is concatenated in Python (templates under render/templates, autoescaped), no explorer
    handler re-checks an answer for an error response (one exception handler answers a UsageError), and no method
    under zfnet/methods writes a file (the pipelines do: a scan's resume state goes through a store it is given)."""

    def writes(call: str) -> bool:
        last = call.rsplit(".", 1)[-1]
        return (
            call in ("open", "torch.save", "os.makedirs", "os.mkdir", "shutil.copy")
            or last.startswith("atomic_")
            or last in ("write_text", "write_bytes", "savefig", "imsave")
        )

    for m, p in _modules().items():
        text = open(p, encoding="utf-8").read()
        assert "<html" not in text.lower(), m
        assert "isinstance(out, Response)" not in text, m
        if m.startswith("zfnet.methods"):
            calls = {ast.unparse(n.func) for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)}
            assert not [c for c in calls if writes(c)], (m, [c for c in calls if writes(c)])


def test_model_families_are_records_looked_up_once():
    """Issue 34, item 5: a model's family is decided in `zfnet.models.families` only; no other module tests a
    model name's prefix."""
    from zfnet import models

    prefixes = ("torchvision:", "timm:")
    found = []
    for m, p in _modules().items():
        if m == "zfnet.models.families":
            continue
        for node in ast.walk(ast.parse(open(p, encoding="utf-8").read())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in prefixes:
                found.append(f"{m}: {node.value!r}")  # a prefix test such as name.startswith("timm:")
    assert not found, found
    cases = {"torchvision:resnet18": "torchvision", "timm:vit_tiny": "timm", "mynets:build": "user", "zfnet": "zfnet"}
    for name, want in cases.items():
        f = models.family(name)
        assert f.name == want
        assert f.arch(name) == (name.split(":", 1)[1] if want in ("torchvision", "timm") else name)
    assert [f.starts_random for f in map(models.family, cases)] == [True, True, False, True]
    assert [f.overrides for f in map(models.family, cases)] == [False, False, False, True]


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """A function's lines of code: its body less the docstring, blank lines and comment lines."""
    body = fn.body
    start = body[0].lineno
    if (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        start = body[0].end_lineno + 1 if len(body) > 1 else fn.end_lineno + 1
    return sum(1 for line in lines[start - 1 : fn.end_lineno] if line.strip() and not line.strip().startswith("#"))


def test_long_functions_are_few():
    """Issue 34, item 10: at most 10 functions in zfnet/ with 45 or more lines of code, none with 80 or more."""
    long = []
    for m, p in _modules().items():
        text = open(p, encoding="utf-8").read()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(node, lines)
                if n >= 45:
                    long.append((n, f"{m}.{node.name}"))
    assert len(long) <= 10 and max(long, default=(0, ""))[0] < 80, sorted(long, reverse=True)
