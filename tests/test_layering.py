"""The package map's import rules (docs/architecture.md), checked on the source text.

Why a test: a layering rule that nothing checks erodes with the first convenient import.
Every ``import`` and ``from ... import`` in ``recsys/`` counts, including those inside
functions and under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "recsys"

# Kept for one release for outside users only; nothing in recsys/ may import them.
SHIMS = frozenset({
    "recsys.evaluate", "recsys.serve_request", "recsys.data.preprocess", "recsys.data.fast_parse",
    "recsys.data.raw_formats", "recsys.models.blocks", "recsys.bench.tts_vs_params",
})

# package -> packages (first two dotted parts under recsys) it must never import
FORBIDDEN = {
    "recsys.modules": {"recsys.models", "recsys.ensemble", "recsys.data", "recsys.distributed", "recsys.train",
                       "recsys.eval", "recsys.serve", "recsys.study", "recsys.budget", "recsys.config",
                       "recsys.checkpoint"},
    "recsys.data": {"recsys.models", "recsys.modules", "recsys.ensemble", "recsys.distributed", "recsys.checkpoint",
                    "recsys.train", "recsys.train_group", "recsys.serve", "recsys.study", "recsys.budget",
                    "recsys.plan", "recsys.config", "recsys.tb"},
    "recsys.models": {"recsys.ensemble", "recsys.distributed", "recsys.checkpoint", "recsys.train", "recsys.eval",
                      "recsys.serve", "recsys.study", "recsys.budget", "recsys.plan", "recsys.config", "recsys.tb"},
    "recsys.checkpoint": {"recsys.train", "recsys.train_group", "recsys.eval", "recsys.serve", "recsys.study"},
    "recsys.config": {"recsys.train", "recsys.eval", "recsys.serve", "recsys.study", "recsys.checkpoint"},
    "recsys.eval": {"recsys.train", "recsys.serve", "recsys.study"},
    "recsys.train": {"recsys.serve", "recsys.study"},
}
# The one allowed exception to "data knows no evaluator": the numpy-only metrics leaf.
ALLOWED = {("recsys.data", "recsys.eval.metrics")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(n, m) for n, m in out if m == "recsys" or m.startswith("recsys.")]


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _all_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_tree_is_found():
    assert len(_all_modules()) > 50 and (ROOT / "cli.py").exists()


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_down(layer):
    bad = []
    for path in _all_modules():
        src = _module_name(path)
        if _package(src) != layer or src in SHIMS:
            continue
        for line, target in _imports(path):
            if _package(target) in FORBIDDEN[layer] and (layer, target) not in ALLOWED \
                    and not any(target == a or target.startswith(a + ".") for la, a in ALLOWED if la == layer):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_nothing_in_recsys_imports_a_deprecated_shim():
    bad = [f"{p.relative_to(ROOT.parent)}:{line} imports {t}"
           for p in _all_modules() if _module_name(p) not in SHIMS
           for line, t in _imports(p) if t in SHIMS]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    """The rule can fail: a planted upward import is found by the same parser."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from recsys.train.loop import GroupTrainer\n")
    assert (2, "recsys.train.loop") in _imports(f) and _package("recsys.train.loop") in FORBIDDEN["recsys.models"]


def test_every_shim_warns_on_import_and_new_paths_do_not():
    """Each deprecated path says where its names went (one DeprecationWarning on import); the
    new packages import without any.  Run in a fresh interpreter so no module is cached."""
    import subprocess
    import sys

    code = (
        "import importlib, warnings, json, sys\n"
        "out = {}\n"
        f"for name in {sorted(SHIMS)!r} + ['recsys.eval.cli', 'recsys.study', 'recsys.data.convert', 'recsys.modules']:\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        importlib.import_module(name)\n"
        "    out[name] = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)\n"
        "                 and 'recsys' in str(x.message)]\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    seen = json.loads(r.stdout.strip().splitlines()[-1])
    for name in SHIMS:
        assert any(name in m and "deprecated" in m for m in seen[name]), (name, seen[name])
    for name in ("recsys.eval.cli", "recsys.study", "recsys.data.convert", "recsys.modules"):
        assert seen[name] == [], (name, seen[name])
