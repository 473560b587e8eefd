"""The package's shape: no import cycle, no import up the layers (at module or
function level), a small public API, no SavedModel loading outside the one
loader, no flag parsing or printing outside cli/, no train_step in the model
classes."""

import ast
import pathlib

import pytest

import mgcam_tf

PACKAGE = pathlib.Path(mgcam_tf.__file__).parent


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        yield name.removesuffix(".__init__"), path


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """mgcam_tf modules `name` imports, at any depth of its code (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mgcam_tf")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mgcam_tf"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file()
                          else node.module)
    return {m for m in found if m != name}


def test_no_import_cycle():
    modules = dict(_modules())
    graph = {name: {m for m in _imports(name, path) if m in modules and m != "mgcam_tf"}
             for name, path in modules.items() if name != "mgcam_tf"}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


# Bottom to top (docs/ARCHITECTURE.md): a module imports only from its own layer
# or the layers below, wherever the import statement sits (a lazy import inside
# a function is still an arrow of the graph).
LAYERS = (
    ("mgcam_tf.conventions", "mgcam_tf.errors", "mgcam_tf.hardware", "mgcam_tf.atomic_files",
     "mgcam_tf.process_lock", "mgcam_tf.image_io"),
    ("mgcam_tf.segmentation",),
    ("mgcam_tf.data",),
    ("mgcam_tf.modeling",),
    ("mgcam_tf.evaluation",),
    ("mgcam_tf.training",),
    ("mgcam_tf.serving",),
    ("mgcam_tf.presets",),
    ("mgcam_tf.retrieval",),
    ("mgcam_tf.cli",),
)


def _layer(module: str) -> int | None:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def test_no_import_up_the_layers():
    upward = []
    for name, path in _modules():
        mine = _layer(name)
        if mine is None:
            continue
        for imported in sorted(_imports(name, path)):
            theirs = _layer(imported)
            if theirs is not None and theirs > mine:
                upward.append(f"{name} -> {imported}")
    assert not upward, "imports up the layers: " + ", ".join(upward)


def test_public_api_resolves():
    for name in mgcam_tf.__all__:
        assert getattr(mgcam_tf, name) is not None, name
    assert mgcam_tf.build_model is mgcam_tf.modeling.models.build_model
    with pytest.raises(AttributeError):
        mgcam_tf.no_such_name  # noqa: B018


def _calls(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            parts = []
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            names.add(".".join(reversed(parts)))
    return names


def test_one_savedmodel_loader_and_cli_only_io():
    for name, path in _modules():
        calls = _calls(path)
        if name != "mgcam_tf.serving.loader":
            assert "tf.saved_model.load" not in calls, name
        if not name.startswith("mgcam_tf.cli"):
            assert "print" not in calls, name
            assert not any(c.startswith("flags.DEFINE") for c in calls), name


def test_model_classes_hold_no_training_step():
    from mgcam_tf.modeling import models

    for cls in (models.MGCAM, models.MSCANBody):
        assert "train_step" not in vars(cls) and "test_step" not in vars(cls)
        assert "compile" not in vars(cls)
