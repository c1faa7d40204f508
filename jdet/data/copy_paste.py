"""Copy-paste synthesis: a reference photo's object pasted into a frame without it.

Real datasets have few annotated frames per object and many frames without it. A frame of a
video where its object is not annotated, with the object cut from one of the video's reference
photos pasted in, is one more positive: on a real background, at a real box's size, under the
video's own light. The reference photos are ground-level shots with their own background, so
the object is cut out first:

- `foreground_mask(photo)`: the background's colours are learnt from the photo's border
  (k-means of the border pixels); a pixel far from all of them (Otsu's threshold on that
  distance) is foreground; the mask is closed, its holes filled, and the connected component
  that covers the most of the photo's central region is kept, with any other at least a
  quarter its size (an object of several parts). When the photo's border *is*
  the object (no clear background: a quarter of the border is foreground by that rule, or
  nothing object-like is left) the result is the whole photo, which is what a crop of the
  object would be anyway.
- `cutout(photo)`: RGBA of the mask's bounding box, the alpha feathered by a pixel.
- `paste(frame, rgba, size, rng, ...)`: the object scaled to a box of `size` (w, h), rotated,
  blurred, its colour statistics moved toward a reference patch (the real box's pixels), and
  alpha-blended at a random place → (frame, box).

`jdet.data.loader` uses them when `EpisodeConfig.copy_paste` > 0 (the share of positive
query frames that are made this way; config `data.copy_paste`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    centres = x[rng.choice(len(x), size=min(k, len(x)), replace=False)]
    for _ in range(iters):
        assign = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(len(centres)):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    hist, edges = np.histogram(values, bins=bins)
    hist = hist.astype(np.float64)
    mids = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids) / np.maximum(w0, 1e-9)
    m1 = (np.sum(hist * mids) - np.cumsum(hist * mids)) / np.maximum(w1, 1e-9)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(mids[int(np.argmax(between[:-1]))])


def foreground_mask(photo: np.ndarray, border: float = 0.06, k: int = 6) -> np.ndarray:
    """[H, W, 3] uint8 photo of an object on its own background → [H, W] bool foreground."""
    img = np.asarray(photo, np.float32)
    h, w = img.shape[:2]
    b = max(2, int(round(border * min(h, w))))
    ring = np.concatenate(
        [img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3)]
        + [img[b:-b, :b].reshape(-1, 3), img[b:-b, -b:].reshape(-1, 3)]
    )
    rng = np.random.default_rng(0)  # the same mask for the same photo
    sample = ring[rng.choice(len(ring), size=min(len(ring), 2000), replace=False)]
    centres = _kmeans(sample, k, rng)
    dist = np.full((h, w), np.inf, np.float32)
    for c in centres:
        dist = np.minimum(dist, np.sqrt(((img - c) ** 2).sum(-1)))
    thr = max(_otsu(dist), 20.0)  # at least a visible colour difference
    fg = dist > thr
    ring_mask = np.ones((h, w), bool)
    ring_mask[b:-b, b:-b] = False
    if fg[ring_mask].mean() > 0.25:  # the border's colours do not describe the border
        return np.ones((h, w), bool)
    fg = ndimage.binary_closing(fg, iterations=2)
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.ones((h, w), bool)
    centre = np.zeros((h, w), bool)
    centre[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    index = np.arange(1, n + 1)
    overlap = ndimage.sum(centre, labels, index=index)
    areas = ndimage.sum(fg, labels, index=index)
    main = int(np.argmax(overlap))
    # The central component, and any other at least a quarter its size (several coins).
    keep = np.isin(labels, index[(areas >= 0.25 * areas[main]) | (index == main + 1)])
    if keep.sum() < 0.01 * h * w:  # nothing object-like: the photo is the object
        return np.ones((h, w), bool)
    return keep


def cutout(photo: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The object of a reference photo as RGBA [h, w, 4] uint8, cropped to its mask."""
    mask = foreground_mask(photo) if mask is None else mask
    ys, xs = np.nonzero(mask)
    y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    alpha = Image.fromarray((mask[y1:y2, x1:x2] * 255).astype(np.uint8))
    alpha = np.asarray(alpha.filter(ImageFilter.GaussianBlur(1.0)))
    return np.dstack([photo[y1:y2, x1:x2], alpha]).astype(np.uint8)


def _match_colour(rgb: np.ndarray, alpha: np.ndarray, patch: np.ndarray, strength: float):
    """Move the object's per-channel mean and spread toward `patch`'s, by `strength`."""
    w = alpha.astype(np.float32)[..., None] / 255.0
    total = max(float(w.sum()), 1.0)
    mean = (rgb * w).sum((0, 1)) / total
    std = np.sqrt(((rgb - mean) ** 2 * w).sum((0, 1)) / total) + 1.0
    p = patch.reshape(-1, 3).astype(np.float32)
    target_mean, target_std = p.mean(0), p.std(0) + 1.0
    new_mean = (1 - strength) * mean + strength * target_mean
    new_std = (1 - strength) * std + strength * target_std
    return np.clip((rgb - mean) / std * new_std + new_mean, 0, 255)


def paste(
    frame: np.ndarray,
    rgba: np.ndarray,
    size: tuple[float, float],
    rng: np.random.Generator,
    *,
    max_angle: float = 25.0,
    max_blur: float = 1.2,
    colour_patch: np.ndarray | None = None,
    colour_strength: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the object into a copy of `frame` [H, W, 3] uint8 at a random place.

    size: the (w, h) in frame pixels of the box it should fill before rotation (e.g. a real
    box of the same object); the rotation's bounding box can be larger. Returns the new frame
    and the pasted object's box [4] (x1, y1, x2, y2) from its visible alpha."""
    H, W = frame.shape[:2]
    bw = int(np.clip(round(size[0]), 4, W))
    bh = int(np.clip(round(size[1]), 4, H))
    obj = Image.fromarray(rgba, "RGBA").resize((bw, bh), Image.BILINEAR)
    angle = float(rng.uniform(-max_angle, max_angle))
    obj = obj.rotate(angle, resample=Image.BILINEAR, expand=True)
    sigma = float(rng.uniform(0.0, max_blur))
    if sigma > 0.2:
        obj = obj.filter(ImageFilter.GaussianBlur(sigma))
    arr = np.asarray(obj, np.float32)
    rgb, alpha = arr[..., :3], arr[..., 3]
    if colour_patch is not None and colour_patch.size:
        rgb = _match_colour(rgb, alpha, colour_patch, colour_strength)
    oh, ow = alpha.shape
    ow, oh = min(ow, W), min(oh, H)
    rgb, alpha = rgb[:oh, :ow], alpha[:oh, :ow]
    x = int(rng.integers(0, W - ow + 1))
    y = int(rng.integers(0, H - oh + 1))
    out = frame.copy()
    a = alpha[..., None] / 255.0
    region = out[y : y + oh, x : x + ow].astype(np.float32)
    out[y : y + oh, x : x + ow] = np.clip(a * rgb + (1 - a) * region + 0.5, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(alpha > 127)
    if len(ys) == 0:
        box = np.array([x, y, x + ow, y + oh], np.float32)
    else:
        box = np.array([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1], np.float32)
    return out, box
