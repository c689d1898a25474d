"""The package's shape: folders follow the user's path, imports point one way, the learner's
model file stands alone, and no module reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import slm

PACKAGE = Path(slm.__file__).parent

# A unit is a top-level module or a folder. Lower units never import higher ones (checked on
# every import, inside functions too); units in the same layer do not import each other.
LAYERS = [
    {"errors"},
    {"fileio", "config", "device"},
    {"chat_template"},
    {"model", "tokenizer"},
    {"hf_llama"},
    {"checkpoint", "data"},
    {"evaluate", "generation"},
    {"training", "api"},
    {"export"},
    {"serve"},
    {"bench"},
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}

# Questions a newcomer asks, and the file that answers each (the README's table says so too).
WHERE = {
    "where is the text split before BPE": "tokenizer/pieces.py",
    "where is warmup": "training/schedule.py",
    "where is top-p": "generation/sampling.py",
    "where is bits per byte computed": "evaluate.py",
    "where is the model folder written": "checkpoint.py",
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def unit_of(path: Path) -> str:
    """`slm/data/prepare.py` -> "data"; `slm/model.py` -> "model"."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path) -> set[str]:
    """Dotted slm modules a file imports ("slm.data.prepare"), inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slm":
            found.add(node.module)
            # `from slm.data import corpus` imports the module slm.data.corpus
            base = PACKAGE.joinpath(*node.module.split(".")[1:])
            found.update(
                f"{node.module}.{a.name}" for a in node.names if (base / f"{a.name}.py").exists()
            )
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("slm."))
    return found


def target_unit(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in modules()}
    assert units <= set(RANK), f"place these in LAYERS: {sorted(units - set(RANK))}"


def test_imports_point_down_between_units():
    wrong = []
    for path in modules():
        source = unit_of(path)
        for dotted in imported_modules(path):
            target = target_unit(dotted)
            if target and target != source and RANK[target] >= RANK[source]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {dotted}")
    assert not wrong


def test_no_import_cycles_inside_a_folder():
    graph: dict[str, set[str]] = {}
    for path in modules():
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue
        name = "slm." + ".".join(rel.with_suffix("").parts)
        graph[name] = {m for m in imported_modules(path) if m.startswith(f"slm.{rel.parts[0]}.")}

    def visit(node: str, trail: list[str]) -> None:
        assert node not in trail, f"import cycle: {' -> '.join([*trail, node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, [*trail, node])

    for start in graph:
        visit(start, [])


def test_model_file_reads_alone():
    assert imported_modules(PACKAGE / "model.py") == {"slm.config"}


# torch's own private names that slm reads on purpose, each with its reason.
TORCH_PRIVATE = {
    "_version": "a tensor's in-place version counter: how the CPU step sees changed weights",
}


def test_no_private_names_imported_across_modules():
    wrong = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slm"):
                private = [a.name for a in node.names if _is_private(a.name)]
                wrong += [f"{path.relative_to(PACKAGE)}: {name}" for name in private]
            elif (
                isinstance(node, ast.Attribute)
                and _is_private(node.attr)
                and node.attr not in TORCH_PRIVATE
            ):
                # `obj._name` on something other than self/cls reaches into another's insides
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    wrong.append(f"{path.relative_to(PACKAGE)}: .{node.attr}")
    assert not wrong


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def test_every_module_and_folder_says_what_it_owns():
    missing = [
        str(p.relative_to(PACKAGE))
        for p in modules()
        if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))
    ]
    assert not missing


def test_every_folder_docstring_names_its_modules():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        for module in init.parent.glob("*.py"):
            if module.stem != "__init__":
                assert f"`{module.stem}`" in doc, f"{init.parent.name}/__init__ omits {module.stem}"


def test_no_init_reexports():
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], init


def test_the_readme_answers_where_things_are():
    readme = (PACKAGE.parents[1] / "README.md").read_text(encoding="utf-8")
    for question, path in WHERE.items():
        assert (PACKAGE / path).exists(), question
        assert f"`{path}`" in readme, f"the README's table should point to {path}"
