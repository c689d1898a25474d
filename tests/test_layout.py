"""The package's shape: imports point one way, the learner's model file stands alone."""

from __future__ import annotations

import ast
from pathlib import Path

import slm

PACKAGE = Path(slm.__file__).parent

# Lower layers never import higher ones (checked on every import, inside functions too).
LAYERS = [
    {"errors", "unicode_classes", "splits", "prepare_summary"},
    {"fileio", "config", "runtime", "corpus", "textio", "pieces", "encode_pool"},
    {"tokenizer", "model", "sampling", "sources", "metrics", "measure", "data", "cli_args"},
    {"prepare", "checkpoint", "decode", "schedule", "stream_text"},
    {"evaluate", "generate", "optim", "runs", "terminal"},
    {"train", "api"},
    {"chat", "bench_generate"},
    {"bench"},
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def slm_imports(path: Path) -> set[str]:
    """Modules of slm that a file imports, by name (`from slm import x` counts x if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "slm":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("slm."))
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules <= set(RANK), f"place these in LAYERS: {sorted(modules - set(RANK))}"


def test_imports_point_down():
    wrong = []
    for path in PACKAGE.glob("*.py"):
        for target in slm_imports(path):
            if RANK[target] >= RANK[path.stem]:
                wrong.append(f"{path.stem} imports {target}")
    assert not wrong


def test_model_file_reads_alone():
    assert slm_imports(PACKAGE / "model.py") == {"config"}


def test_every_module_says_what_it_owns():
    missing = [
        p.stem for p in PACKAGE.glob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not missing
