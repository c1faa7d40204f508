"""Host-side image augmentations for query frames and support photos (numpy + Pillow, no OpenCV).

Conventions shared by every function here:

- ``image``: [H, W, 3] uint8 RGB. Augmentations work in uint8 (Pillow's C kernels); the
  pipeline converts to f32 in [0, 1] as its last step (``to_unit_float``). Float images are
  refused with a TypeError rather than guessed at ([0, 1] or [0, 255]?): every decode path
  yields uint8.
- ``boxes``: [n, 4 + E] f32. Columns 0..3 are xyxy corners in continuous pixel coordinates
  (a box covering pixel columns 10..19 is x1=10, x2=20). Extra columns (the pipeline keeps
  the way label in column 4) ride along unchanged; a dropped box drops its whole row, so
  labels never fall out of step with boxes.
- Random transforms take an explicit ``np.random.Generator``; nothing touches global state.

Geometry follows ultralytics (ultralytics/data/augment.py: LetterBox, Mosaic._mosaic4,
RandomPerspective without rotation/shear/perspective, RandomFlip). Box survival after a crop
follows ultralytics' ``box_candidates`` in spirit: a clipped box is kept when both sides are at
least ``min_size`` (2) px and at least ``min_visible`` (10%) of its unclipped area is still in
the image. The rule is applied per stage (mosaic crop, then affine crop).

Colour jitter follows the original's HSV ranges (docs/original.md §5: h ±15, s ±30, v ±30, in
OpenCV/albumentations uint8 units: hue on a 0..180 circle, saturation and value additive on
0..255), not ultralytics' multiplicative gains (0.015/0.7/0.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

PAD_VALUE = 114  # ultralytics' letterbox/mosaic grey
MIN_BOX_SIZE = 2.0  # px, either side, after clipping
MIN_VISIBLE = 0.1  # clipped area / unclipped area


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(
            f"image must be [H, W, 3] uint8 RGB, got shape {image.shape} dtype {image.dtype}"
        )


def as_boxes(boxes: np.ndarray | Sequence | None, extra: int = 0) -> np.ndarray:
    """Any box container (list of lists, [], [4], [n, 4+E] array) -> [n, 4 + extra] f32."""
    arr = np.asarray([] if boxes is None else boxes, dtype=np.float32)
    return arr.reshape(-1, 4 + extra) if arr.size else np.zeros((0, 4 + extra), np.float32)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [H, W, 3] f32 in [0, 1]."""
    return image.astype(np.float32) * np.float32(1.0 / 255.0)


def clip_and_filter(
    boxes: np.ndarray,
    width: float,
    height: float,
    *,
    min_size: float = MIN_BOX_SIZE,
    min_visible: float = MIN_VISIBLE,
) -> np.ndarray:
    """Clip boxes to the image and drop the ones that are too small or mostly outside.

    boxes: [n, 4 + E] f32 xyxy px (unclipped). Returns the surviving rows, clipped.
    """
    if len(boxes) == 0:
        return boxes
    xy = boxes[:, :4]
    area = np.maximum(xy[:, 2] - xy[:, 0], 0) * np.maximum(xy[:, 3] - xy[:, 1], 0)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(xy[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(xy[:, [1, 3]], 0, height)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    keep = (w >= min_size) & (h >= min_size) & (w * h >= min_visible * np.maximum(area, 1e-9))
    return clipped[keep]


# ---------------------------------------------------------------------------------------------
# Deterministic geometry
# ---------------------------------------------------------------------------------------------


def resize(image: np.ndarray, boxes: np.ndarray, width: int, height: int) -> tuple:
    """Bilinear (antialiased) resize to exactly (height, width); boxes scale per axis.

    image: [H, W, 3] uint8; boxes: [n, 4 + E] f32. Returns ([height, width, 3] uint8, boxes).
    """
    _check_image(image)
    h, w = image.shape[:2]
    if (h, w) != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    boxes = boxes.astype(np.float32, copy=True)
    boxes[:, [0, 2]] *= width / w
    boxes[:, [1, 3]] *= height / h
    return image, boxes


def letterbox_params(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left) of ultralytics' centred letterbox of [height, width] into size².

    The resized content covers rows top..top+new_h and columns left..left+new_w, so a box
    maps as ``x * new_w / width + left`` (use this to map predictions back to the frame).
    """
    ratio = min(size / height, size / width)
    new_w = max(1, min(size, round(width * ratio)))
    new_h = max(1, min(size, round(height * ratio)))
    # ultralytics rounds (pad - 0.1) so an odd total puts the extra pixel bottom/right.
    top = round((size - new_h) / 2 - 0.1)
    left = round((size - new_w) / 2 - 0.1)
    return new_h, new_w, top, left


def letterbox(
    image: np.ndarray, boxes: np.ndarray, size: int, *, pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, np.ndarray]:
    """Resize keeping the aspect ratio so the long side is ``size``, centre on a grey square.

    image: [H, W, 3] uint8; boxes: [n, 4 + E] f32 xyxy px.
    Returns ([size, size, 3] uint8, boxes in the letterboxed frame).
    """
    new_h, new_w, top, left = letterbox_params(image.shape[0], image.shape[1], size)
    resized, boxes = resize(image, boxes, new_w, new_h)
    out = np.full((size, size, 3), pad_value, np.uint8)
    out[top : top + new_h, left : left + new_w] = resized
    boxes[:, [0, 2]] += left
    boxes[:, [1, 3]] += top
    return out, boxes


def resize_long_side(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple:
    """Resize so max(H, W) == size, keeping the aspect ratio (no padding): mosaic tiles."""
    new_h, new_w, _, _ = letterbox_params(image.shape[0], image.shape[1], size)
    return resize(image, boxes, new_w, new_h)


# ---------------------------------------------------------------------------------------------
# Random geometry
# ---------------------------------------------------------------------------------------------


def hflip(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, p: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right with probability ``p``: x -> W - x. Shapes unchanged."""
    if rng.random() >= p:
        return image, boxes
    width = image.shape[1]
    boxes = boxes.copy()
    boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    return np.ascontiguousarray(image[:, ::-1]), boxes


def random_affine(
    image: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    *,
    out_size: int,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: float = 0.1,
    pad_value: int = PAD_VALUE,
    min_size: float = MIN_BOX_SIZE,
    min_visible: float = MIN_VISIBLE,
) -> tuple[np.ndarray, np.ndarray]:
    """Random zoom about the image centre + translation, cropped/padded to out_size².

    Follows ultralytics RandomPerspective (degrees = shear = perspective = 0): the input centre
    goes to ``out_size * (0.5 + U(-translate, translate))`` on each axis and the image is scaled
    by ``U(*scale)``. With a 2s×2s mosaic canvas and ``out_size = s`` this is ultralytics'
    ``border = -s/2`` crop. Boxes map exactly (axis-aligned), then ``clip_and_filter``.

    image: [H, W, 3] uint8; boxes: [n, 4 + E] f32. Returns ([out_size, out_size, 3] uint8, boxes).
    """
    _check_image(image)
    h, w = image.shape[:2]
    s = float(rng.uniform(scale[0], scale[1]))
    tx = out_size * (0.5 + float(rng.uniform(-translate, translate)))
    ty = out_size * (0.5 + float(rng.uniform(-translate, translate)))
    # forward: x_out = s * (x_in - w/2) + tx; Pillow wants the inverse (output -> input).
    inverse = (1 / s, 0.0, w / 2 - tx / s, 0.0, 1 / s, h / 2 - ty / s)
    warped = Image.fromarray(image).transform(
        (out_size, out_size),
        Image.Transform.AFFINE,
        inverse,
        resample=Image.BILINEAR,
        fillcolor=(pad_value,) * 3,
    )
    boxes = boxes.copy()
    boxes[:, [0, 2]] = s * (boxes[:, [0, 2]] - w / 2) + tx
    boxes[:, [1, 3]] = s * (boxes[:, [1, 3]] - h / 2) + ty
    boxes = clip_and_filter(boxes, out_size, out_size, min_size=min_size, min_visible=min_visible)
    return np.asarray(warped), boxes


def mosaic4(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    size: int,
    pad_value: int = PAD_VALUE,
) -> tuple[np.ndarray, np.ndarray]:
    """2×2 mosaic on a 2s×2s canvas around a random centre (ultralytics Mosaic._mosaic4).

    images: 4 × [Hi, Wi, 3] uint8 (each is first resized so its long side is ``size``);
    boxes: 4 × [ni, 4 + E] f32. Returns ([2·size, 2·size, 3] uint8, [Σ kept, 4 + E] f32);
    follow with ``random_affine(..., out_size=size)`` to crop back to size².
    Tile 0 sits top-left of the centre, 1 top-right, 2 bottom-left, 3 bottom-right; each tile
    is cut only by the canvas edge, so clipping boxes to the canvas is exact.
    """
    if len(images) != 4 or len(boxes) != 4:
        raise ValueError(f"mosaic4 needs 4 images and 4 box arrays, got {len(images)}")
    s2 = 2 * size
    canvas = np.full((s2, s2, 3), pad_value, np.uint8)
    xc = int(rng.uniform(size / 2, 3 * size / 2))
    yc = int(rng.uniform(size / 2, 3 * size / 2))
    placed = []
    for tile, (img, bxs) in enumerate(zip(images, boxes)):
        img, bxs = resize_long_side(img, bxs, size)
        h, w = img.shape[:2]
        if tile == 0:
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
        elif tile == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s2), yc
            x1b, y1b = 0, h - (y2a - y1a)
        elif tile == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s2, yc + h)
            x1b, y1b = w - (x2a - x1a), 0
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s2), min(s2, yc + h)
            x1b, y1b = 0, 0
        canvas[y1a:y2a, x1a:x2a] = img[y1b : y1b + (y2a - y1a), x1b : x1b + (x2a - x1a)]
        bxs = bxs.copy()
        bxs[:, [0, 2]] += x1a - x1b
        bxs[:, [1, 3]] += y1a - y1b
        placed.append(bxs)
    merged = np.concatenate(placed, axis=0)
    return canvas, clip_and_filter(merged, s2, s2)


# ---------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------


def hsv_jitter(
    image: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    *,
    hue: float = 15.0,
    saturation: float = 30.0,
    value: float = 30.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Shift hue by U(±hue) on a 0..180 circle, add U(±saturation), U(±value) on 0..255.

    The albumentations HueSaturationValue semantics the original used (docs/original.md §5), done
    with three 256-entry lookup tables on Pillow's HSV image (its hue circle is 0..255).
    Boxes pass through. image: [H, W, 3] uint8 -> [H, W, 3] uint8.
    """
    _check_image(image)
    dh = rng.uniform(-hue, hue) * 256.0 / 180.0
    ds = rng.uniform(-saturation, saturation)
    dv = rng.uniform(-value, value)
    levels = np.arange(256, dtype=np.float64)
    lut_h = np.mod(np.round(levels + dh), 256).astype(np.uint8)
    lut_s = np.clip(np.round(levels + ds), 0, 255).astype(np.uint8)
    lut_v = np.clip(np.round(levels + dv), 0, 255).astype(np.uint8)
    h, s, v = Image.fromarray(image).convert("HSV").split()
    hsv = Image.merge(
        "HSV", (h.point(lut_h.tolist()), s.point(lut_s.tolist()), v.point(lut_v.tolist()))
    )
    return np.asarray(hsv.convert("RGB")), boxes


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
) -> np.ndarray:
    """torchvision-style ColorJitter factors U(1 ± x), applied in random order (Pillow)."""
    _check_image(image)
    pil = Image.fromarray(image)
    ops = [
        (ImageEnhance.Brightness, brightness),
        (ImageEnhance.Contrast, contrast),
        (ImageEnhance.Color, saturation),
    ]
    for k in rng.permutation(len(ops)):
        enhancer, amount = ops[k]
        factor = float(rng.uniform(max(0.0, 1 - amount), 1 + amount))
        pil = enhancer(pil).enhance(factor)
    return np.asarray(pil)


# ---------------------------------------------------------------------------------------------
# Composite recipes
# ---------------------------------------------------------------------------------------------


def support_transform(
    image: np.ndarray, rng: np.random.Generator, *, size: int = 256, mode: str = "weak"
) -> np.ndarray:
    """Reference photo -> [size, size, 3] uint8.

    Plain resize to size² (the original's A.Resize; aspect not kept), then by ``mode``:
    "none" nothing; "weak" horizontal flip (p 0.5) + colour jitter (±0.2); "strong" weak plus
    a random D4 rotation (k·90°, the original's strong mode).
    """
    if mode not in ("none", "weak", "strong"):
        raise ValueError(f"support mode must be 'none', 'weak' or 'strong', got {mode!r}")
    image, _ = resize(image, as_boxes(None), size, size)
    if mode == "none":
        return image
    image, _ = hflip(image, as_boxes(None), rng, p=0.5)
    image = color_jitter(image, rng)
    if mode == "strong":
        image = np.ascontiguousarray(np.rot90(image, k=int(rng.integers(4))))
    return image


def unletterbox(boxes: np.ndarray, frame_hw: tuple[int, int], size: int) -> np.ndarray:
    """Boxes in the letterboxed ``size``² input → boxes in the original frame, clipped to it.

    Inverts `letterbox` (``x_lb = x * new_w / width + left``). Host side.

    Args:
      boxes: [..., 4] f32, xyxy pixels in the letterboxed square.
      frame_hw: (height, width) of the original frame in pixels.
      size: side of the letterboxed square.
    Returns:
      [..., 4] f32 xyxy frame pixels, x in [0, width], y in [0, height].
    """
    height, width = frame_hw
    new_h, new_w, top, left = letterbox_params(height, width, size)
    boxes = np.asarray(boxes, dtype=np.float32)
    x = (boxes[..., [0, 2]] - left) * (width / new_w)
    y = (boxes[..., [1, 3]] - top) * (height / new_h)
    x = np.clip(x, 0.0, width)
    y = np.clip(y, 0.0, height)
    return np.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1).astype(np.float32)
