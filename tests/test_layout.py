"""The package's shape (docs/design.md §1): dependencies point one way, no import circles, no
function-level imports of jdet's own modules (except the one heavy optional one), the public
names stay where outside code imports them, and the prediction command leaves training out."""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Layers, lowest first: a module may import modules of its own layer or lower ones only.
LAYERS = [
    (0, ("jdet", "jdet.dtypes", "jdet.boxes", "jdet.assign", "jdet.grads", "jdet.distributed",
         "jdet._xla_defaults", "jdet.cli", "jdet.submission", "jdet.native")),
    (1, ("jdet.losses", "jdet.models", "jdet.data", "jdet.postprocess", "jdet.checkpoint")),
    (2, ("jdet.inference",)),
    (3, ("jdet.evaluation",)),
    (4, ("jdet.training", "jdet.config")),
    (5, ("jdet.train", "jdet.predict", "jdet.evaluate", "jdet.export", "jdet.baselines")),
]  # fmt: skip
# Function-level imports of jdet's own modules that a heavy dependency justifies.
LAZY_ALLOWED = {
    ("jdet.data.prepare", "jdet.data.tfds_builder"),  # tensorflow_datasets
    # the backend the flags choose: JAX, or onnxruntime without JAX (a board's install)
    ("jdet.predict", "jdet.inference.predictor"),
    ("jdet.predict", "jdet.inference.onnx_predictor"),
}


def _layer(module: str) -> int:
    best = None
    for rank, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} has no layer in tests/test_layout.py"
    return best[0]


def _modules(package: str) -> dict[str, pathlib.Path]:
    base = ROOT / package
    out = {}
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(module-level imports, function-level imports) of `known` modules by module `name`."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    top, nested = set(), set()

    def targets(node) -> set[str]:
        found = set()
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        return {t for t in found if t in known}

    def visit(node, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            inside = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (nested if depth else top).update(targets(child))
            visit(child, inside)

    visit(tree, 0)
    return top - {name}, nested - {name}


def _graph(package: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules(package)
    known = set(modules)
    top, nested = {}, {}
    for name, path in modules.items():
        top[name], nested[name] = _imports(name, path, known)
    return top, nested


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


@pytest.mark.parametrize("package", ["jdet", "benchmarks"])
def test_no_import_circles(package):
    top, nested = _graph(package)
    both = {m: top[m] | nested[m] for m in top}
    assert _cycles(both) == []


def test_dependencies_point_one_way():
    top, nested = _graph("jdet")
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m in sorted(top)
        for t in sorted(top[m] | nested[m])
        if _layer(t) > _layer(m)
    ]
    assert upward == []


def test_no_function_level_imports_of_jdet_modules():
    _, nested = _graph("jdet")
    # "from jdet.data import tfds_builder" also names the package jdet.data: ignore packages.
    packages = {m for m, p in _modules("jdet").items() if p.name == "__init__.py"}
    lazy = {(m, t) for m, ts in nested.items() for t in ts if t not in packages}
    assert lazy <= LAZY_ALLOWED, sorted(lazy - LAZY_ALLOWED)


def test_the_graph_walker_sees_imports():
    top, nested = _graph("jdet")
    assert "jdet.training.steps" in top["jdet.training.loop"]
    assert "jdet.data.tfds_builder" in nested["jdet.data.prepare"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


PUBLIC = {
    "jdet.boxes": ["bbox_iou", "make_anchors", "dist2bbox", "bbox2dist"],
    "jdet.assign": ["task_aligned_assign"],
    "jdet.losses": ["dfl_loss", "supcon_loss", "triplet_loss", "batch_hard_triplet_loss",
                    "loss_terms", "LossConfig"],
    "jdet.grads": ["per_term_grads"],
    "jdet.models": ["build_model"],
    "jdet.models.yolo": ["YOLOv8"],
    "jdet.models.vit": ["ViT"],
    "jdet.models.convert": ["yolo_from_torch", "dinov2_from_safetensors",
                            "dinov3_from_safetensors"],
    "jdet.inference.predictor": ["Predictor", "PredictOptions", "predict_folder", "load_samples"],
    "jdet.inference.pipeline": ["BasePredictor", "PredictOptions", "predict_folder",
                                "load_samples"],
    "jdet.inference.onnx_predictor": ["OnnxPredictor"],
    "jdet.inference.host_nms": ["nms", "batched_nms"],
    "jdet.inference.export": ["export_run", "export_refdet", "refdet_functions"],
    "jdet.evaluation.st_iou": ["st_iou", "st_iou_video"],
    "jdet.evaluation.coco": ["coco_map"],
    "jdet.training.loop": ["train_and_evaluate", "TrainResult"],
    "jdet.checkpoint": ["load_run", "CheckpointError", "BEST"],
    "jdet.submission": ["read_submission", "write_submission", "submission_from_detections"],
    "jdet.train": ["main"],
    "jdet.predict": ["main"],
    "jdet.evaluate": ["main"],
    "jdet.export": ["main"],
    "jdet.data.synthetic": ["main"],
    "jdet.data.zalo": ["main"],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import_where_they_are(module):
    mod = importlib.import_module(module)
    missing = [n for n in PUBLIC[module] if not hasattr(mod, n)]
    assert missing == []


def _fresh(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_predict_command_does_not_import_training():
    out = _fresh(
        "import sys, jdet.predict; "
        "print(sorted(m for m in sys.modules if m.startswith(('jdet.training', 'jdet.config'))))"
    )
    assert out == "[]"


def test_predict_command_imports_jax_only_for_the_jax_backend():
    out = _fresh("import sys, jdet.predict; print('jax' in sys.modules, 'flax' in sys.modules)")
    assert out == "False False"


def test_import_jdet_has_no_side_effects():
    out = _fresh(
        "import os, sys; os.environ['JDET_XLA_CPU_CONV'] = 'eigen'; import jdet; "
        "print(repr(os.environ.get('XLA_FLAGS', '')), sorted(m for m in sys.modules "
        "if m.startswith('jdet') or m == 'jax'))"
    )
    assert out == "'' ['jdet']"  # XLA_FLAGS untouched, nothing else imported
