"""Procedural drawing for the synthetic dataset (numpy + Pillow only).

Pieces: noise fields, an aerial-like background (fields, crop rows, roads, bushes), random
objects (composite shapes with a colour pattern) as RGBA sprites, sprite scaling/rotation,
alpha compositing that returns the drawn coverage, and ground-level reference photos.
Every function draws its randomness from the `np.random.Generator` it is given, so the same
generator state gives the same pixels.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

Rng = np.random.Generator


def value_noise(rng: Rng, height: int, width: int, scales: tuple[int, ...] = (64, 16, 4),
                ) -> np.ndarray:
    """Smooth multi-octave noise [height, width] float32 in [0, 1].

    Each octave is a random grid with one value per `scale` pixels, bicubically upsampled;
    coarser octaves weigh more.
    """
    total = np.zeros((height, width), np.float32)
    weight_sum = 0.0
    for k, scale in enumerate(scales):
        grid = rng.random((height // scale + 2, width // scale + 2)).astype(np.float32)
        big = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
        weight = 0.5**k
        total += weight * np.asarray(big)
        weight_sum += weight
    total /= weight_sum
    lo, hi = total.min(), total.max()
    return (total - lo) / max(hi - lo, 1e-6)


_FIELD_COLOURS = np.array([  # RGB of vegetation, soil, dry grass, seen from above
    [74, 110, 52], [96, 128, 60], [120, 140, 70], [140, 120, 80], [160, 140, 100],
    [110, 95, 70], [180, 165, 110], [60, 90, 45], [130, 150, 90]], np.float32)


def aerial_background(rng: Rng, height: int, width: int) -> np.ndarray:
    """An aerial-like landscape [height, width, 3] float32 in [0, 255].

    Voronoi field patches with per-field colour and crop rows, noise shading, 1-3 roads and
    scattered bushes.
    """
    # Fields: nearest of a few random seeds, computed at 1/4 resolution then upsampled.
    h4, w4 = height // 4 + 1, width // 4 + 1
    seeds = rng.random((int(rng.integers(6, 14)), 2)) * [h4, w4]
    yy, xx = np.mgrid[0:h4, 0:w4]
    dist = (yy[None] - seeds[:, :1, None]) ** 2 + (xx[None] - seeds[:, 1:, None]) ** 2
    label_small = np.argmin(dist, axis=0).astype(np.uint8)
    labels = np.asarray(Image.fromarray(label_small).resize((width, height),
                                                           Image.Resampling.NEAREST))
    colours = _FIELD_COLOURS[rng.integers(0, len(_FIELD_COLOURS), len(seeds))]
    colours *= rng.uniform(0.85, 1.15, (len(seeds), 1))
    image = colours[labels]  # [H, W, 3]
    # Crop rows: a sinusoid along a random direction per field, on some fields.
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angles = rng.uniform(0, np.pi, len(seeds))
    periods = rng.uniform(3, 7, len(seeds))
    has_rows = rng.random(len(seeds)) < 0.6
    phase = (x * np.cos(angles)[labels] + y * np.sin(angles)[labels]) / periods[labels]
    rows = np.where(has_rows[labels], 0.88 + 0.12 * np.sin(2 * np.pi * phase), 1.0)
    image *= rows[..., None]
    image *= (0.75 + 0.5 * value_noise(rng, height, width, (48, 12, 3)))[..., None]
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):  # roads: polylines across the image
        points = [(float(rng.uniform(-0.1, 1.1) * width), float(rng.uniform(-0.1, 1.1) * height))
                  for _ in range(int(rng.integers(2, 5)))]
        road = int(rng.integers(4, 9))
        tone = int(rng.integers(110, 170))
        draw.line(points, fill=(tone - 30,) * 3, width=road + 2, joint="curve")
        draw.line(points, fill=(tone, tone - 5, tone - 15), width=road, joint="curve")
    for _ in range(int(rng.integers(10, 30))):  # bushes
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(2, 6)
        g = int(rng.integers(40, 80))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(g - 15, g + 20, g - 25))
    return np.asarray(canvas, np.float32)


def _random_colour(rng: Rng) -> tuple[int, int, int]:
    """A saturated colour (objects stand out from the muted landscape, like gear in SAR)."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _shape_mask(rng: Rng, size: int) -> Image.Image:
    """A composite of 1-3 primitives (polygon, ellipse, rounded rectangle) as an 'L' mask."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    c = size / 2
    main_half = main_aspect = 0.0
    for k in range(int(rng.integers(1, 4))):
        # The first primitive is large and centred; the others overlap it (one connected part).
        half = size * (rng.uniform(0.28, 0.42) if k == 0 else rng.uniform(0.12, 0.25))
        aspect = rng.uniform(0.5, 1.0)
        if k == 0:
            cx, cy, main_half, main_aspect = c, c, half, aspect
        else:
            cx = c + rng.uniform(-0.6, 0.6) * main_half
            cy = c + rng.uniform(-0.6, 0.6) * main_half * main_aspect
        box = [cx - half, cy - half * aspect, cx + half, cy + half * aspect]
        kind = rng.integers(0, 3)
        if kind == 0:  # polygon with well-spread vertices (no slivers)
            n = int(rng.integers(3, 9))
            angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n + rng.uniform(
                0, 2 * np.pi)
            radii = half * rng.uniform(0.7, 1.0, n)
            draw.polygon([(float(cx + r * np.cos(a)), float(cy + r * aspect * np.sin(a)))
                          for a, r in zip(angles, radii)], fill=255)
        elif kind == 1:
            draw.ellipse(box, fill=255)
        else:
            draw.rounded_rectangle(box, radius=float(half * rng.uniform(0.1, 0.5)), fill=255)
    return mask


def _pattern(rng: Rng, size: int) -> np.ndarray:
    """A colour texture [size, size, 3] float32: stripes, checks, dots or blotches."""
    colours = np.array([_random_colour(rng) for _ in range(3)], np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(0, 4)
    period = size * rng.uniform(0.08, 0.25)
    if kind == 0:  # stripes at a random angle
        a = rng.uniform(0, np.pi)
        index = (np.floor((x * np.cos(a) + y * np.sin(a)) / period) % 2).astype(int)
    elif kind == 1:  # checks
        index = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(int)
    elif kind == 2:  # dots on a base colour
        index = (np.hypot(x % period - period / 2, y % period - period / 2) < period / 3.5)
        index = index.astype(int)
    else:  # blotches of three colours
        noise = value_noise(rng, size, size, (size // 4, size // 8))
        index = np.digitize(noise, [0.4, 0.65])
    texture = colours[index]
    shade = 0.8 + 0.35 * (1 - y / size)[..., None]  # lit from the top
    return texture * shade


def random_object(rng: Rng, size: int = 128) -> np.ndarray:
    """A random textured object as an RGBA sprite [size, size, 4] uint8 (alpha = shape).

    Drawn at twice the size and downsampled, so edges are antialiased; a darker rim makes the
    outline visible on any background.
    """
    big = 2 * size
    mask = _shape_mask(rng, big)
    rim = mask.filter(ImageFilter.MinFilter(7))  # eroded mask: pixels not in it form the rim
    rgb = _pattern(rng, big)
    rgb = np.where((np.asarray(rim) < 128)[..., None], rgb * 0.55, rgb)
    rgba = np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), np.asarray(mask)])
    return np.asarray(Image.fromarray(rgba).resize((size, size), Image.Resampling.BOX))


def transform_sprite(sprite: np.ndarray, length: float, angle: float,
                     squash: float = 1.0) -> np.ndarray:
    """Scale an RGBA sprite so its canvas side is `length` px, squash its height, rotate.

    sprite: [S, S, 4] uint8; angle in degrees (counter-clockwise); squash in (0, 1] shortens
    the vertical axis (a tilted view). Returns [h, w, 4] uint8 (canvas grows to fit).
    Resampling uses premultiplied alpha so transparent pixels do not bleed dark fringes.
    """
    side = max(int(round(length)), 2)
    image = Image.fromarray(sprite).convert("RGBa")
    image = image.resize((side, max(int(round(side * squash)), 2)), Image.Resampling.BILINEAR)
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    return np.asarray(image.convert("RGBA"))


def paste(canvas: np.ndarray, rgba: np.ndarray, x: int, y: int) -> np.ndarray:
    """Alpha-blend `rgba` onto `canvas` in place with its top-left corner at (x, y).

    canvas: [H, W, 3] float32; rgba: [h, w, 4] uint8, may lie partly or wholly outside.
    Returns the coverage [H, W] float32 in [0, 1] (the sprite's alpha where it landed).
    """
    height, width = canvas.shape[:2]
    coverage = np.zeros((height, width), np.float32)
    h, w = rgba.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x0 >= x1 or y0 >= y1:
        return coverage
    part = rgba[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32)
    alpha = part[..., 3:] / 255.0
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += alpha * part[..., :3]
    coverage[y0:y1, x0:x1] = alpha[..., 0]
    return coverage


def canopy_patch(rng: Rng, size: int) -> np.ndarray:
    """A tree-canopy blob (the occluder) as RGBA [size, size, 4] uint8 with a crisp edge."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(6):  # a cluster of overlapping crowns
        r = size * rng.uniform(0.18, 0.3)
        cx, cy = size / 2 + rng.uniform(-0.2, 0.2, 2) * size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    leaves = value_noise(rng, size, size, (max(size // 4, 2), max(size // 12, 1)))
    green = np.stack([30 + 40 * leaves, 70 + 60 * leaves, 25 + 30 * leaves], -1)
    return np.dstack([green.astype(np.uint8), np.asarray(mask)])


def _colour_jitter(rng: Rng, image: Image.Image) -> Image.Image:
    """Brightness/contrast/saturation jitter and a small hue shift (RGB in, RGB out)."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.75, 1.25))
    hue, saturation, value = image.convert("HSV").split()
    shift = int(rng.integers(-6, 7))
    hue = Image.fromarray(((np.asarray(hue, np.int16) + shift) % 256).astype(np.uint8))
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def reference_photo(rng: Rng, sprite: np.ndarray, width: int, height: int) -> np.ndarray:
    """A ground-level-like photo of the object → [height, width, 3] uint8.

    Plain or noisy floor/wall background, the object large (45-80 % of the short side),
    rotated and foreshortened, with a soft shadow and colour jitter.
    """
    base = np.array([rng.uniform(150, 235)] * 3) + rng.uniform(-20, 20, 3)
    if rng.random() < 0.5:  # plain background with a gentle gradient
        ramp = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.1), height)
        background = base[None, None] * ramp[:, None, None] * np.ones((1, width, 1))
    else:  # noisy/textured background (gravel, carpet, grass)
        noise = value_noise(rng, height, width, (32, 8, 2))
        background = base[None, None] * (0.7 + 0.5 * noise)[..., None]
    canvas = background.astype(np.float32)
    length = min(width, height) * rng.uniform(0.45, 0.8)
    obj = transform_sprite(sprite, length, rng.uniform(-30, 30), squash=rng.uniform(0.7, 1.0))
    h, w = obj.shape[:2]
    x, y = (width - w) // 2 + int(rng.integers(-10, 11)), (height - h) // 2 + int(
        rng.integers(-10, 11))
    shadow = Image.fromarray(obj[..., 3]).filter(ImageFilter.GaussianBlur(4))
    shadow_rgba = np.zeros((h, w, 4), np.uint8)
    shadow_rgba[..., 3] = (np.asarray(shadow) * 0.45).astype(np.uint8)
    paste(canvas, shadow_rgba, x + 5, y + 6)
    paste(canvas, obj, x, y)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return np.asarray(_colour_jitter(rng, image))
