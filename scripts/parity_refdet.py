#!/usr/bin/env python3
"""Write ``tests/fixtures/refdet_heads.npz``: the original RefDet heads run once in PyTorch.

Reference: the original project it-dainb/zalo_ai_2025 at commit 075f362, its
``src/models/psalm_fusion.py`` (``PSALMFusion``), ``dual_head.py`` (``DualDetectionHead``) and
``dino_encoder.py`` (``DINOSupportEncoder``'s ``proj_p2..p5`` and ``triplet_proj``). The files
are imported by path from an extracted copy of the repository (``--zalo-src DIR``, holding
``src/models/`` or ``models/``); no code of theirs is copied into jdet.

Two stand-ins keep the import offline and light, without changing any computation we record:
``timm`` (the encoder builds a pretrained DINOv3 in ``__init__``) is replaced by a ViT stub whose
``forward_features`` returns its input tokens, so the encoder's own ``forward`` runs its
projections on CLS tokens we choose; and ``torchvision``, which ``dual_head.py`` imports but
never uses, is stubbed when its compiled ops do not load.

Small configuration (random init, float32, eval mode, BN/LN statistics and affine parameters
randomised so that their conversion is exercised): CLS width 24, N = 3 ways, batch 2,
query channels (16, 32, 32, 64) → heads 1/2/2/4, fusion outputs (16, 32, 32, 48) (identity
residuals at p2..p4, a 1×1 projection at p5), nc_base 5, reg_max 4 (num_bins 5), a 64×32
(H×W) query (p2..p5 grids 16×8 … 2×1). Batch ≠ N keeps the original head off its "N == B → diagonal" branch.

Usage (from the jdet repository root)::

    git --git-dir=/work/.mirror/it-dainb+zalo_ai_2025/repo archive 075f362 src | tar -x -C /tmp/zalo
    /work/venv-convert/bin/python scripts/parity_refdet.py --zalo-src /tmp/zalo [--seed 0]

The keys are documented in tests/fixtures/README.md (section "refdet_heads.npz").
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import pathlib
import sys
import types
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"
FIXTURE = "refdet_heads.npz"
SCALES = ("p2", "p3", "p4", "p5")

FEAT_DIM = 24
N_WAYS = 3
BATCH = 2
QUERY_CH = (16, 32, 32, 64)
OUT_CH = (16, 32, 32, 48)
NUM_HEADS = 4
NC_BASE = 5
REG_MAX = 4  # → num_bins 5
IMAGE_HW = (64, 32)  # non-square: pins the H/W order of the NHWC layout
STRIDES = (4, 8, 16, 32)
QUERY_WAY = (2, 0)  # the original's class_ids: way of each query image


def _models_dir(zalo_src: pathlib.Path) -> pathlib.Path:
    for cand in (zalo_src / "src" / "models", zalo_src / "models"):
        if (cand / "psalm_fusion.py").exists():
            return cand
    raise FileNotFoundError(f"no src/models/psalm_fusion.py under {zalo_src}")


def _install_stubs() -> None:
    """Stub timm (DINOv3 → token pass-through) and, if broken, the unused torchvision."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):  # dual_head.py only imports it
        sys.modules["torchvision"] = types.ModuleType("torchvision")

    class TokenViT(torch.nn.Module):
        """Stands in for the DINOv3 ViT: ``forward_features(tokens) = tokens``."""

        def __init__(self, embed_dim: int):
            super().__init__()
            self.embed_dim = embed_dim

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x

    timm = types.ModuleType("timm")
    timm.create_model = lambda *a, **k: TokenViT(FEAT_DIM)
    timm.data = types.SimpleNamespace(
        resolve_model_data_config=lambda m: {
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
    )
    sys.modules["timm"] = timm


def load_original(zalo_src: pathlib.Path) -> dict[str, types.ModuleType]:
    """Import the original's psalm_fusion, dual_head and dino_encoder modules by file path."""
    _install_stubs()
    mods = {}
    for name in ("psalm_fusion", "dual_head", "dino_encoder"):
        path = _models_dir(zalo_src) / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"zalo_075f362_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods


def _randomise_norms(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random BN running stats / affine and LN affine, so the fixture pins their conversion."""
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
            shape = m.weight.shape
            m.weight.data = 1.0 + 0.3 * torch.randn(shape, generator=gen)
            m.bias.data = 0.2 * torch.randn(shape, generator=gen)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.data = 0.2 * torch.randn(shape, generator=gen)
            m.running_var.data = 0.5 + torch.rand(shape, generator=gen)


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().astype(np.float32)


def _save_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed with fixed zip timestamps: same seed → byte-identical file."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.array(arrays[key], order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def write_refdet_fixtures(
    out_dir: pathlib.Path, seed: int, zalo_src: pathlib.Path | None = None
) -> list[pathlib.Path]:
    """Run the original projections, fusion and dual head once; write ``refdet_heads.npz``.

    ``zalo_src`` defaults to the environment variable ``JDET_ZALO_SRC``. Returns the paths
    written.
    """
    if zalo_src is None:
        if "JDET_ZALO_SRC" not in os.environ:
            raise ValueError("give zalo_src (or set JDET_ZALO_SRC): an extract of 075f362")
        zalo_src = pathlib.Path(os.environ["JDET_ZALO_SRC"])
    orig = load_original(pathlib.Path(zalo_src))
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    arrays: dict[str, np.ndarray] = {}

    with contextlib.redirect_stdout(io.StringIO()):  # the original prints banners
        encoder = orig["dino_encoder"].DINOSupportEncoder(
            output_dims=list(QUERY_CH), freeze_backbone=False
        )
        fusion = orig["psalm_fusion"].PSALMFusion(
            query_channels=list(QUERY_CH),
            support_channels=list(QUERY_CH),
            out_channels=list(OUT_CH),
            num_heads=NUM_HEADS,
        )
        head = orig["dual_head"].DualDetectionHead(
            nc_base=NC_BASE, ch=list(OUT_CH), proto_dims=list(QUERY_CH), reg_max=REG_MAX
        )
    for m in (encoder, fusion, head):
        _randomise_norms(m, gen)
        m.float().eval()
    head.prototype_head.temperature.data = torch.tensor(7.25)

    with torch.no_grad():
        # Projections: CLS tokens → per-scale prototypes and the triplet embedding.
        cls = torch.randn(N_WAYS, FEAT_DIM, generator=gen) * 3.0
        enc = encoder(cls[:, None, :], normalize=True, return_global_feat=True)
        arrays["proj_in_cls"] = _np(cls)
        for s in SCALES:
            arrays[f"proj_out_{s}"] = _np(enc[s])
        arrays["proj_out_global"] = _np(enc["global_feat"])

        # Fusion: each query image fused with its own way's prototype (original's class_ids).
        way = torch.tensor(QUERY_WAY)
        query = {
            s: torch.randn(BATCH, c, IMAGE_HW[0] // st, IMAGE_HW[1] // st, generator=gen)
            for s, c, st in zip(SCALES, QUERY_CH, STRIDES)
        }
        fused = fusion(query, {s: enc[s][way] for s in SCALES})
        bypass = fusion(query, None)
        arrays["fusion_in_query_way"] = np.asarray(QUERY_WAY, np.int64)
        for s in SCALES:
            arrays[f"fusion_in_query_{s}"] = _nhwc(query[s])
            arrays[f"fusion_out_{s}"] = _nhwc(fused[s])
            arrays[f"fusion_out_bypass_{s}"] = _nhwc(bypass[s])

        # Dual head on the fused maps with all N prototypes shared by the batch.
        protos = {s: enc[s] for s in SCALES}
        out = head(fused, protos, mode="dual")
        feats = [fused[s] for s in SCALES]
        for i, s in enumerate(SCALES):
            for key in ("standard_boxes", "standard_cls", "prototype_boxes", "prototype_sim"):
                arrays[f"head_out_{key}_{s}"] = _nhwc(out[key][i])
            embed = F.normalize(head.prototype_head.feature_proj[i](feats[i]), p=2, dim=1)
            arrays[f"head_out_prototype_features_{s}"] = _nhwc(embed)

    for name, module in (("proj", encoder), ("fusion", fusion), ("head", head)):
        for k, v in module.state_dict().items():  # num_batches_tracked kept (int64)
            kind = np.int64 if v.dtype == torch.int64 else np.float32
            arrays[f"{name}_sd/{k}"] = v.detach().numpy().astype(kind)
    config = dict(
        feat_dim=FEAT_DIM,
        n_ways=N_WAYS,
        batch=BATCH,
        query_channels=QUERY_CH,
        out_channels=OUT_CH,
        num_heads=NUM_HEADS,
        nc_base=NC_BASE,
        num_bins=REG_MAX + 1,
        strides=STRIDES,
        image_hw=IMAGE_HW,
        seed=seed,
    )
    for k, v in config.items():
        arrays[f"config_{k}"] = np.asarray(v, np.int64)

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FIXTURE
    _save_npz(path, arrays)
    return [path]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--zalo-src",
        type=pathlib.Path,
        required=True,
        help="extracted it-dainb/zalo_ai_2025 at 075f362 (holds src/models/)",
    )
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for path in write_refdet_fixtures(args.out, args.seed, args.zalo_src):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
