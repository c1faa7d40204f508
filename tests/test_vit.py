"""jdet.models.vit (DINOv2 / DINOv3 support encoder) and jdet.models.convert_hf.

Parity fixtures (tests/fixtures/README.md, "ViT"): tiny random Hugging Face models written by
tests/fixtures/generate/parity_vit.py. Full-size variants are only traced (`jax.eval_shape`),
never compiled.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdet.models import convert_hf
from jdet.models.vit import (
    ViT,
    bicubic_resize_matrix,
    imagenet_normalize,
    interpolate_pos_encoding,
    vit_param_labels,
)
from jdet.models.vit_variants import VARIANTS

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SIZES = [(224, 224), (256, 256), (224, 320)]
FAMILIES = ["dinov2", "dinov3"]


@functools.cache
def fixture_arrays() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "vit_tiny.npz") as z:
        return {k: z[k] for k in z.files}


@functools.cache
def tiny_params(family: str) -> dict:
    return getattr(convert_hf, f"{family}_from_safetensors")(
        FIXTURES / f"{family}_tiny.safetensors"
    )


@functools.cache
def param_shapes(variant: str) -> dict:
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    return jax.eval_shape(ViT(variant).init, jax.random.key(0), x)["params"]


def last_hidden_state(out: dict) -> jax.Array:
    return jnp.concatenate([out["cls"][:, None], out["registers"], out["patch"]], axis=1)


def flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {"/".join(k.key for k in path): leaf for path, leaf in leaves}


# --- shapes and sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_output_shapes(variant, size):
    cfg, (h, w) = VARIANTS[variant], size
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    model = ViT(variant)
    out = jax.eval_shape(model.apply, {"params": param_shapes(variant)}, x)
    n = (h // cfg.patch_size) * (w // cfg.patch_size)  # DINOv2 at 256²: 18×18 (252 px used)
    d, r = cfg.hidden_size, cfg.num_register_tokens
    assert out["cls"].shape == (2, d)
    assert out["registers"].shape == (2, r, d)
    assert out["patch"].shape == (2, n, d)
    assert all(o.dtype == jnp.float32 for o in out.values())


def hf_param_count(family: str, hf: dict) -> int:
    """Parameters of the HF model (Dinov2Model / DINOv3ViTModel) from its config arithmetic."""
    d, layers, p = hf["hidden_size"], hf["num_hidden_layers"], hf["patch_size"]
    if family == "dinov2":
        f = d * hf["mlp_ratio"]
        grid = hf["image_size"] // p
        # cls, mask_token, 518²-grid positions + CLS, patch conv
        embed = d + d + (grid * grid + 1) * d + (3 * p * p * d + d)
        attn = 4 * (d * d + d)  # q, k, v, o all biased (qkv_bias=True)
        mlp = (d * f + f) + (f * d + d)
    else:
        f, regs = hf["intermediate_size"], hf["num_register_tokens"]
        embed = d + d + regs * d + (3 * p * p * d + d)
        n_bias = sum(hf[k] for k in ("query_bias", "key_bias", "value_bias", "proj_bias"))
        attn = 4 * d * d + n_bias * d
        mlp = (d * f + f) + (f * d + d) if hf["mlp_bias"] else 2 * d * f
    block = 2 * (2 * d) + attn + mlp + 2 * d  # 2 LayerNorms, attention, MLP, 2 LayerScales
    return embed + layers * block + 2 * d  # final LayerNorm


@pytest.mark.parametrize(
    "variant, expected",
    [("dinov3-S/16", 21_596_544), ("dinov2-S/14", 22_056_576), ("dinov3-tiny", None),
     ("dinov2-tiny", None)],
)  # fmt: skip
def test_param_count_matches_hf(variant, expected):
    # DINOv3 ViT-S/16 as DINOv3ViTModel: 21,596,544 (no key bias; q/v/o biased; mask token).
    # The original's 21.77M support encoder (docs/original.md §2) is timm's
    # vit_small_patch16_dinov3 (qkv_bias=False: −12·2·384 = −9,216; no mask token: −384 →
    # 21,586,944) plus its four scale projections Linear(384→d)+LayerNorm(d), d = 32/64/128/256
    # (185,760): 21,772,704. Its frozen part, 10.94M = patch conv + CLS + 6 timm blocks, checks.
    cfg = VARIANTS[variant]
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(param_shapes(variant)))
    assert count == hf_param_count(cfg.family, cfg.hf_config())
    if expected is not None:
        assert count == expected


# --- forward parity with Hugging Face ----------------------------------------------------------


def test_fixture_configs_match_variants():
    z = fixture_arrays()
    for family in FAMILIES:
        meta = json.loads(str(z[f"{family}_hf_config"]))
        assert meta["config"] == VARIANTS[meta["jdet_variant"]].hf_config(), "regenerate fixtures"


@pytest.mark.parametrize("images", ["nonsquare", "square"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_parity_with_hf(family, images):
    z = fixture_arrays()
    out = jax.jit(ViT(f"{family}-tiny").apply)(
        {"params": tiny_params(family)}, z[f"images_{images}"]
    )
    ref = z[f"{family}_{images}_last_hidden_state"]  # HF in float64
    got = np.asarray(last_hidden_state(out), np.float64)
    assert got.shape == ref.shape
    # Measured ≈3e-6 (HF's own float32 forward differs from float64 by ≈2–4e-6).
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got[:, 0], z[f"{family}_{images}_pooler_output"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dinov2_s14_position_interpolation_matches_hf(size):
    z = fixture_arrays()
    h, w = size
    got = interpolate_pos_encoding(jnp.asarray(z["dinov2_s14_positions"]), h // 14, w // 14)
    np.testing.assert_allclose(got, z[f"dinov2_s14_positions_{h}x{w}"], rtol=0, atol=1e-5)


def test_bicubic_matrix_invariants():
    np.testing.assert_array_equal(bicubic_resize_matrix(7, 7), np.eye(7, dtype=np.float32))
    for n_in, n_out in [(37, 16), (37, 18), (8, 11), (3, 1)]:
        m = bicubic_resize_matrix(n_in, n_out)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)  # Keys kernel: partition of unity
    # Upsampling 2→4 (scale 0.5): output 1 sits at source x = 0.25, taps at -1, 0, 1, 2 with
    # Keys (A = -0.75) weights -0.10546875, 0.87890625, 0.26171875, -0.03515625 (by hand);
    # taps -1, 0 clamp to index 0 and taps 1, 2 to index 1.
    row = bicubic_resize_matrix(2, 4)[1]
    np.testing.assert_allclose(row, [0.7734375, 0.2265625], atol=1e-7)


# --- conversion -----------------------------------------------------------------------------------


def hub_tensors(family: str) -> dict[str, np.ndarray]:
    return convert_hf.load_safetensors(FIXTURES / f"{family}_tiny.safetensors")


def test_variant_is_inferred_and_names_in_all_spellings_convert_alike():
    hub = hub_tensors("dinov2")
    assert convert_hf.infer_variant(hub, "dinov2") == "dinov2-tiny"
    # transformers 5.x in-memory names, under the `dinov2.` prefix of the task models
    renamed = {
        "dinov2."
        + k.replace("attention.attention.query", "attention.q_proj")
        .replace("attention.attention.key", "attention.k_proj")
        .replace("attention.attention.value", "attention.v_proj")
        .replace("attention.output.dense", "attention.o_proj"): v
        for k, v in hub.items()
    }
    ref = flat(tiny_params("dinov2"))
    for name, leaf in flat(convert_hf.dinov2_from_state_dict(renamed)).items():
        np.testing.assert_array_equal(leaf, ref[name])
    # DINOv3: 5.x `model.layer.{i}` and a `model.` prefix on everything
    hub3 = hub_tensors("dinov3")
    for spelling in ({k.replace("layer.", "model.layer.", 1): v for k, v in hub3.items()},
                     {"model." + k: v for k, v in hub3.items()}):  # fmt: skip
        got = flat(convert_hf.dinov3_from_state_dict(spelling, "dinov3-tiny"))
        assert got.keys() == flat(tiny_params("dinov3")).keys()


def test_converted_tree_matches_module_params():
    for family in FAMILIES:
        expected = jax.tree.map(lambda s: (s.shape, s.dtype), param_shapes(f"{family}-tiny"))
        got = jax.tree.map(lambda a: (a.shape, a.dtype), tiny_params(family))
        assert got == expected


def test_conversion_errors_name_the_tensors():
    hub = hub_tensors("dinov3")
    missing = dict(hub)
    del missing["layer.1.attention.q_proj.bias"]
    with pytest.raises(
        ValueError, match=r"missing tensors \(1\): layer\.1\.attention\.q_proj\.bias"
    ):
        convert_hf.dinov3_from_state_dict(missing, "dinov3-tiny")
    extra = dict(hub, **{"layer.0.attention.k_proj.bias": np.zeros(32, np.float32)})
    with pytest.raises(
        ValueError, match=r"unknown tensors \(1\): layer\.0\.attention\.k_proj\.bias"
    ):
        convert_hf.dinov3_from_state_dict(extra, "dinov3-tiny")
    wrong = dict(hub, **{"norm.weight": np.ones(33, np.float32)})
    with pytest.raises(ValueError, match=r"norm\.weight: shape \(33,\), expected \(32,\)"):
        convert_hf.dinov3_from_state_dict(wrong, "dinov3-tiny")
    with pytest.raises(ValueError, match="is dinov2"):
        convert_hf.dinov3_from_state_dict(hub, "dinov2-tiny")
    with pytest.raises(ValueError, match="classifier.weight"):  # task heads are never dropped
        convert_hf.dinov2_from_state_dict(
            dict(hub_tensors("dinov2"), **{"classifier.weight": hub["norm.weight"]})
        )
    with pytest.raises(ValueError, match="pass variant"):  # a size no variant has
        convert_hf.dinov3_from_state_dict({k: v for k, v in hub.items() if "register" not in k})


def test_bf16_safetensors_are_widened(tmp_path):
    values = np.array([[1.0, -2.5], [3.140625, 0.0]], np.float32)  # exact in bf16
    payload = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    np.testing.assert_array_equal(convert_hf.load_safetensors(tmp_path)["w"], values)


# --- freezing, dtype, inputs -------------------------------------------------------------------


def test_frozen_blocks_zero_grads_and_optimizer_leaves_them_bit_identical():
    params = tiny_params("dinov3")
    images = fixture_arrays()["images_square"]
    model = ViT("dinov3-tiny", frozen_blocks=1)

    def loss(p):
        out = model.apply({"params": p}, images)
        return jnp.sum(out["cls"] ** 2) + jnp.mean(out["patch"])

    grads = jax.jit(jax.grad(loss))(params)
    labels = vit_param_labels(params, frozen_blocks=1)
    grad_flat, label_flat = flat(grads), flat(labels)
    frozen = {k for k, v in label_flat.items() if v == "frozen"}
    assert frozen == {k for k in label_flat if k.startswith(("embeddings/", "layer_0/"))}
    for name, g in grad_flat.items():
        if name in frozen:
            assert not np.any(np.asarray(g)), name  # exactly zero
        else:
            assert np.any(np.asarray(g)), name

    tx = optax.multi_transform(
        {"trainable": optax.adamw(1e-2, weight_decay=0.1), "frozen": optax.set_to_zero()}, labels
    )

    @jax.jit
    def step(p, g):
        updates, _ = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, updates)

    new = flat(step(params, grads))
    for name, old in flat(params).items():
        changed = not np.array_equal(np.asarray(new[name]), old)
        assert changed == (name not in frozen), name

    # stop_gradient leaves the forward untouched
    def cls(module):
        return jax.jit(module.apply)({"params": params}, images)["cls"]

    np.testing.assert_array_equal(cls(model), cls(ViT("dinov3-tiny")))


def test_param_labels():
    labels = flat(vit_param_labels(tiny_params("dinov2"), 0))
    assert [k for k, v in labels.items() if v == "frozen"] == ["embeddings/mask_token"]
    with pytest.raises(ValueError, match="frozen_blocks"):
        vit_param_labels(tiny_params("dinov2"), 3)
    with pytest.raises(ValueError, match="frozen_blocks"):
        ViT("dinov2-tiny", frozen_blocks=3).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_compute_close_to_f32(family):
    params = tiny_params(family)
    images = fixture_arrays()["images_nonsquare"]
    ref = last_hidden_state(jax.jit(ViT(f"{family}-tiny").apply)({"params": params}, images))
    out = jax.jit(ViT(f"{family}-tiny", dtype=jnp.bfloat16).apply)({"params": params}, images)
    got = last_hidden_state(out)
    assert got.dtype == jnp.bfloat16
    assert bool(jnp.isfinite(got).all())
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - ref)))
    assert err < 0.05 * float(jnp.max(jnp.abs(ref))), err
    init = jax.eval_shape(ViT(f"{family}-tiny", dtype=jnp.bfloat16).init, jax.random.key(0), images)
    assert {leaf.dtype for leaf in jax.tree.leaves(init)} == {jnp.dtype(jnp.float32)}


def test_imagenet_normalize_and_input_checks():
    mean = jnp.array([0.485, 0.456, 0.406])
    np.testing.assert_allclose(imagenet_normalize(jnp.broadcast_to(mean, (2, 3, 3))), 0, atol=1e-7)
    np.testing.assert_allclose(
        imagenet_normalize(jnp.ones(3)), (1 - mean) / jnp.array([0.229, 0.224, 0.225]), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        ViT("dinov2-tiny").init(jax.random.key(0), jnp.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="smaller than patch"):
        ViT("dinov2-tiny").init(jax.random.key(0), jnp.zeros((1, 3, 8, 3)))
    with pytest.raises(ValueError, match="unknown ViT variant"):
        ViT("dinov3-B/16").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
