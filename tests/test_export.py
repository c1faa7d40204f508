"""jdet.inference.export and `python -m jdet.export`: ONNX and jax.export files of a randomly
initialised tiny RefDet run, checked against JAX on onnxruntime; YOLOv8n through the same
converter; the ONNX backend of `python -m jdet.predict` against the JAX backend; errors that
name the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from jdet import checkpoint
from jdet.models import build_model
from tests.helpers import refdet_batch

pytest.importorskip("jax2onnx", reason='the export extra: pip install -e ".[export]"')
ort = pytest.importorskip("onnxruntime", reason='the export extra: pip install -e ".[export]"')

from jdet.inference import export  # noqa: E402  (after the extra's check)

pytestmark = [pytest.mark.heavy(4), pytest.mark.xdist_group("export")]


def _config():
    config = tiny.get_config()
    config.eval.appearance = 2.0
    config.eval.temporal.update(dict(mode="offline", threshold=0.05, min_length=1))
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with best/ weights (random initialisation) and its config."""
    config = _config()
    q, s = config.data.query_size, config.data.support_size
    model = build_model(config, support_groups=0)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), refdet_batch(b=2, n=1, hw=(q, q), s=s))
    workdir = tmp_path_factory.mktemp("export_run")
    meta = {
        "config": json.loads(config.to_json_best_effort()),
        "step": 0,
        "metric": "metrics/mAP50",
        "value": 0.0,
    }
    checkpoint.save_best(workdir / checkpoint.BEST, jax.device_get(variables), meta)
    return workdir, config, model, variables


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    workdir, *_ = run
    out = tmp_path_factory.mktemp("exported") / "model"
    manifest = export.export_run(workdir, out, fp16=True)
    return out, manifest


def test_export_writes_the_files_and_manifest(run, exported):
    _, config, *_ = run
    out, manifest = exported
    for name in ("encoder", "detector"):
        for suffix in (".onnx", "_fp16.onnx", ".jax"):
            assert (out / f"{name}{suffix}").stat().st_size > 0
    on_disk = json.loads((out / export.MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    q = config.data.query_size
    assert manifest["query_size"] == q and manifest["support_size"] == config.data.support_size
    assert manifest["anchors"] == sum((q // s) ** 2 for s in (4, 8, 16, 32))
    assert manifest["appearance"] == 2.0 and manifest["temporal"]["mode"] == "offline"
    assert manifest["nms"]["iou_threshold"] == config.eval.iou_threshold
    # The parity measured at export time (random frames): float32 to the digit, fp16 close.
    fp32 = manifest["parity"]["fp32"]
    assert fp32["kept_same_count"] and fp32["kept_boxes_max_abs_px"] <= 1e-3
    assert fp32["boxes_max_abs_px"] <= 1e-2 and fp32["scores_max_abs"] <= 1e-4
    assert fp32["prototypes_max_abs"] <= 1e-5
    fp16 = manifest["parity"]["fp16"]
    assert fp16["boxes_max_abs_px"] <= 2.0 and fp16["scores_max_abs"] <= 0.02


def test_onnx_equals_jax_on_dynamic_batch_and_references(run, exported):
    """Batch 1 and 3, 2 and 5 references: onnxruntime against the JAX functions; the
    `jax.export` files at the second size."""
    _, config, model, variables = run
    out, _ = exported
    q, s = config.data.query_size, config.data.support_size
    encode, detect = (jax.jit(f) for f in export.refdet_functions(model, variables))
    rng = np.random.default_rng(3)
    for k, b in ((2, 1), (5, 3)):
        support = rng.uniform(0, 1, (k, s, s, 3)).astype(np.float32)
        query = rng.uniform(0, 1, (b, q, q, 3)).astype(np.float32)
        protos, boxes, scores = export.run_onnx(out, support, query)
        want_protos = [np.asarray(p) for p in encode(support)]
        want_boxes, want_scores = (np.asarray(x) for x in detect(query, *want_protos))
        for got, want in zip(protos, want_protos):
            np.testing.assert_allclose(got, want, atol=1e-5)
        assert boxes.shape == (b, want_boxes.shape[1], 4) and scores.shape == (b, boxes.shape[1])
        np.testing.assert_allclose(boxes, want_boxes, atol=1e-3)
        np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    enc_jax = jax.export.deserialize((out / "encoder.jax").read_bytes())
    det_jax = jax.export.deserialize((out / "detector.jax").read_bytes())
    for got, want in zip(enc_jax.call(support), want_protos):
        np.testing.assert_allclose(got, want, atol=1e-5)
    got_boxes, got_scores = det_jax.call(query, *want_protos)
    np.testing.assert_allclose(got_boxes, want_boxes, atol=1e-3)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-4)


def test_yolov8n_round_trips(tmp_path):
    """The full-size YOLOv8n detector (80 classes) through the same converter: raw head
    outputs of onnxruntime equal JAX's."""
    from jdet.models.impl import LayerImpl
    from jdet.models.yolo import YOLOv8

    model = YOLOv8(scale="n", impl=LayerImpl(conv="xla"))
    images = np.random.default_rng(4).uniform(0, 1, (2, 128, 128, 3)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), images[:1])

    def fn(x):
        return tuple(model.apply(variables, x))

    path = export.to_onnx_file(
        fn, [("B", 128, 128, 3)], tmp_path / "yolov8n.onnx",
        input_names=["images"], output_names=["p3", "p4", "p5"],
    )  # fmt: skip
    got = ort.InferenceSession(str(path)).run(None, {"images": images})
    for g, w in zip(got, fn(images)):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, np.asarray(w), atol=1e-4, rtol=1e-4)


def test_bad_checkpoint_and_sizes_are_named(run, tmp_path):
    workdir, *_ = run
    with pytest.raises(checkpoint.CheckpointError, match="nowhere"):
        export.export_run(tmp_path / "nowhere", tmp_path / "out")
    # weights of another model: a run whose config names a larger YOLOv8 than its weights
    other = tmp_path / "other"
    variables = jax.device_get(run[3])
    meta = json.loads((workdir / checkpoint.BEST / checkpoint.META).read_text())
    meta["config"]["model"]["yolo_scale"] = "n"
    checkpoint.save_best(other / checkpoint.BEST, variables, meta)
    with pytest.raises(export.ExportError, match=r"other.*do not match the model"):
        export.export_run(other, tmp_path / "out")
    with pytest.raises(export.ExportError, match="--query-size"):
        export.export_run(workdir, tmp_path / "out", query_size=100)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not empty"):
        export.export_run(workdir, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_cli_names_a_missing_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jdet.export", "--checkpoint", str(tmp_path / "nope"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "no such file" in proc.stderr


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from jdet.data import synthetic

    root = tmp_path_factory.mktemp("export_samples") / "data"
    return synthetic.generate(root, 2, seed=9, frames=20, width=96, height=64, reference_size=48)


def test_predict_onnx_backend_writes_the_jax_submission(run, exported, samples, tmp_path):
    """The same folder through both backends: the same frames get a box, at the same place."""
    from jdet import predict
    from jdet.submission import read_submission

    workdir, *_ = run
    out, _ = exported
    common = ["--samples", str(samples), "--temporal", "frame", "--conf", "0", "--batch-size", "4"]
    jax_out, onnx_out = tmp_path / "jax.json", tmp_path / "onnx.json"
    assert predict.main(["--checkpoint", str(workdir), "--out", str(jax_out), *common]) == 0
    argv = ["--backend", "onnx", "--model", str(out), "--out", str(onnx_out), *common]
    assert predict.main(argv) == 0
    want, got = read_submission(jax_out), read_submission(onnx_out)
    assert sorted(got) == sorted(want) and len(want) == 2
    for vid in want:
        assert sorted(got[vid]) == sorted(want[vid]) and len(want[vid]) == 20
        for frame, box in want[vid].items():
            np.testing.assert_allclose(got[vid][frame], box, atol=0.05)
    assert (tmp_path / "time_submission.csv").exists()


def test_onnx_backend_runs_without_jax(exported, samples, tmp_path):
    """The board's path (here with the float16 files) never imports jax or flax."""
    out, _ = exported
    code = (
        "import sys\n"
        "from jdet import predict\n"
        f"rc = predict.main(['--backend', 'onnx', '--model', {str(out)!r}, '--samples', "
        f"{str(samples)!r}, '--out', {str(tmp_path / 's.json')!r}, '--max-frames', '3', "
        "'--fp16'])\n"
        "assert not [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax'))]\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "s.json").exists()


def test_onnx_backend_names_a_bad_model_folder(exported, tmp_path, samples, capsys):
    from jdet import predict

    out, _ = exported

    base = ["--backend", "onnx", "--samples", str(samples), "--out", str(tmp_path / "s.json")]
    assert predict.main([*base, "--model", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert predict.main([*base, "--model", str(tmp_path / "empty")]) == 2
    assert "no jdet_export.json" in capsys.readouterr().err
    (tmp_path / "empty" / "jdet_export.json").write_text((out / "jdet_export.json").read_text())
    assert predict.main([*base, "--model", str(tmp_path / "empty")]) == 2
    assert "encoder.onnx: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main(base)  # no --model
    assert "--model" in capsys.readouterr().err
