"""ViT forward-parity fixtures: tiny random Hugging Face `Dinov2Model` / `DINOv3ViTModel`,
their weights as Hub-style safetensors, two inputs and the models' outputs (needs the
`convert` extra: torch + transformers 5.x).

    /work/venv-convert/bin/python scripts/parity_vit.py [--out tests/fixtures] [--seed 0]

The architectures are jdet's test variants ``"dinov2-tiny"`` / ``"dinov3-tiny"``
(`jdet.models.convert_hf.VARIANTS[...].hf_config()`): 32-d, 2 blocks, 2 heads, patch 4,
MLP 128; DINOv2 stores an 8×8 position grid (image_size 32), DINOv3 has 4 registers.
Every parameter is randomised (biases, LayerNorm weights, LayerScale, tokens and positions
included) so that a mis-mapped tensor cannot hide behind HF's zero/one initialisation.

Writes (in `--out`):
  dinov2_tiny.safetensors, dinov3_tiny.safetensors
      float32 weights written by `save_pretrained`, i.e. with the names Hub checkpoints use
      (DINOv2: ``encoder.layer.{i}.attention.attention.query``…; DINOv3: ``layer.{i}``…).
  vit_tiny.npz, keys (M = dinov2 | dinov3, S = nonsquare | square; T tokens):
    images_nonsquare          [2, 26, 45, 3] f32  NHWC, N(0, 1) ("normalised" pixels); grid
                                                  6×11, the last 2 rows / 1 column are dropped
                                                  by the patch conv; DINOv2 resizes its 8×8
                                                  positions down in y and up in x
    images_square             [2, 40, 40, 3] f32  grid 10×10 (positions resized up)
    M_S_last_hidden_state     [2, T, 32] f64      HF forward in float64 (f32 weights and inputs
                                                  widened exactly): T = 1 + h·w (DINOv2),
                                                  1 + 4 + h·w (DINOv3), CLS first
    M_S_pooler_output         [2, 32] f64         = last_hidden_state[:, 0]
    M_S_hf_f32_max_abs_err    [] f64              max |HF float32 forward − the f64 one|:
                                                  HF's own float32 error, for comparison
    dinov2_s14_positions      [1, 1370, 2] f32    random positions stored like DINOv2-S/14's
                                                  (37×37 grid + CLS; 2 channels to stay small)
    dinov2_s14_positions_HxW  [1, 1 + h·w, 2] f32 HF `Dinov2Embeddings.interpolate_pos_encoding`
                                                  of those for a H×W input, patch 14: 224x224
                                                  (16×16), 256x256 (18×18), 224x320 (16×22)
    M_hf_config               [] str              JSON: model class, config kwargs, variant
    versions                  [] str              JSON: torch, transformers, numpy, seed
HF runs in eval mode with the eager attention (DINOv3's train-time RoPE rescale is off).
The npz is written with fixed zip timestamps (byte-identical for a given seed and versions).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import pathlib
import shutil
import sys
import tempfile
import zipfile

import numpy as np
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
INPUT_SHAPES = {"nonsquare": (2, 26, 45, 3), "square": (2, 40, 40, 3)}
POSITION_SIZES = ((224, 224), (256, 256), (224, 320))
MODELS = {"dinov2": ("dinov2-tiny", "Dinov2Config", "Dinov2Model"),
          "dinov3": ("dinov3-tiny", "DINOv3ViTConfig", "DINOv3ViTModel")}  # fmt: skip


def _load_variants() -> dict:
    """jdet's variant table, imported by file path (the module is jax-free; the jdet package
    __init__ files may not be, and this script runs in the torch environment)."""
    path = REPO_ROOT / "jdet" / "models" / "convert_hf.py"
    spec = importlib.util.spec_from_file_location("_jdet_convert_hf", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module.VARIANTS


def _import_transformers():
    """transformers, working around a torchvision wheel that fails to import against this
    torch ("operator torchvision::nms does not exist"): transformers only needs it for image
    processors, so hide it when it is broken."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "unusable"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # find_spec → None: transformers sees it as absent
    import transformers

    return transformers


def _randomize_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter: LayerNorm weights 1 + N(0, 0.2²), the rest N(0, 0.3²)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_weight = name.endswith("weight") and param.ndim == 1
            param.copy_(1 + 0.2 * noise if is_norm_weight else 0.3 * noise)


def _save_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            array = np.asarray(arrays[key]).copy(order="C")  # keeps 0-d arrays 0-d
            np.lib.format.write_array(buf, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _dinov2_s14_position_fixture(transformers, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """HF's own `Dinov2Embeddings.interpolate_pos_encoding` on random DINOv2-S/14 positions
    (37×37 + CLS, 2 channels) for 224², 256² and 224×320 inputs."""
    config = transformers.Dinov2Config(**dict(_load_variants()["dinov2-S/14"].hf_config(),
                                              hidden_size=2, num_attention_heads=1))  # fmt: skip
    embeddings = transformers.models.dinov2.modeling_dinov2.Dinov2Embeddings(config)
    positions = rng.normal(size=(1, 37 * 37 + 1, 2)).astype(np.float32)
    out = {"dinov2_s14_positions": positions}
    with torch.no_grad():
        embeddings.position_embeddings.copy_(torch.from_numpy(positions))
        for height, width in POSITION_SIZES:
            tokens = torch.zeros(1, (height // 14) * (width // 14) + 1, 2)
            resized = embeddings.interpolate_pos_encoding(tokens, height, width)
            out[f"dinov2_s14_positions_{height}x{width}"] = resized.numpy()
    return out


def write_vit_fixtures(out_dir: pathlib.Path, seed: int) -> list[pathlib.Path]:
    """Write dinov2_tiny.safetensors, dinov3_tiny.safetensors and vit_tiny.npz into out_dir."""
    transformers = _import_transformers()
    variants = _load_variants()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 31])
    images = {k: rng.normal(size=s).astype(np.float32) for k, s in INPUT_SHAPES.items()}
    arrays: dict[str, np.ndarray] = {f"images_{k}": v for k, v in images.items()}
    written = []
    for stream, (family, (variant, config_cls, model_cls)) in enumerate(MODELS.items()):
        hf_kwargs = variants[variant].hf_config()
        config = getattr(transformers, config_cls)(**hf_kwargs)
        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = getattr(transformers, model_cls)(config).float().eval()
        _randomize_(model, torch.Generator().manual_seed(seed * 100 + stream))
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            target = out_dir / f"{family}_tiny.safetensors"
            shutil.copyfile(pathlib.Path(tmp) / "model.safetensors", target)
        written.append(target)
        for name, image in images.items():
            pixels = torch.from_numpy(image).permute(0, 3, 1, 2)  # NHWC → NCHW
            with torch.no_grad():
                out32 = model(pixel_values=pixels)
                out64 = model.double()(pixel_values=pixels.double())
            model.float()
            prefix = f"{family}_{name}"
            arrays[f"{prefix}_last_hidden_state"] = out64.last_hidden_state.numpy()
            arrays[f"{prefix}_pooler_output"] = out64.pooler_output.numpy()
            f32_error = (out32.last_hidden_state.double() - out64.last_hidden_state).abs().max()
            arrays[f"{prefix}_hf_f32_max_abs_err"] = np.float64(f32_error)
        meta = {"model": model_cls, "config": hf_kwargs, "jdet_variant": variant}
        arrays[f"{family}_hf_config"] = np.array(json.dumps(meta, sort_keys=True))
    arrays.update(_dinov2_s14_position_fixture(transformers, rng))
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "numpy": np.__version__, "seed": seed}  # fmt: skip
    arrays["versions"] = np.array(json.dumps(versions, sort_keys=True))
    npz = out_dir / "vit_tiny.npz"
    _save_npz(npz, arrays)
    written.append(npz)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "tests" / "fixtures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in write_vit_fixtures(args.out, args.seed):
        print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
