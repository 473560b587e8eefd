"""A deterministic synthetic person re-identification data set in Market-1501 layout.

The package's built-in default data: no files to download, seeded, rendered
with numpy and encoded with TensorFlow (`tf.io.encode_jpeg` / `encode_png`).

What it models, and why:

* Identities: each person id has its own body shape (height, build, shoulder
  and hip width, leg length, limb thickness, head size, hair) and clothing
  (upper and lower colours from a small shared palette, sleeve and trouser
  length or a skirt, an optional stripe/check/chest pattern, an optional bag).
  Colours come from a 16-colour palette with a small per-id shift (and
  trousers are mostly dark), so many ids share a colour: telling ids apart
  needs the combination of colours, pattern, shape and bag.
* Cameras: each camera has its own lighting (gain, colour cast, contrast,
  noise level) and its own framing (person scale and vertical placement).
* Scenes: a pool of `2 * num_cameras` cluttered backgrounds (gradients,
  buildings with windows, bushes, poles, textures, painted in the clothing
  palette too). Camera c films scenes 2c, 2c+1 and 2c+2 (mod pool), so every
  scene recurs behind many different people and neighbouring cameras share
  one scene. A model that matches whole images is drawn to the same-scene
  images of *other* people; only the body carries the identity.
* Images: every image of an id differs by position, scale, arm swing, stride,
  facing (front/back, which flips the bag side and shows hair or face),
  lighting and noise, and a 0..4 px shift of its scene; about 15 % have a
  pole in front of the person (left out of the mask).
* Masks: the exact union of the rendered body parts (including hair and the
  carried bag, as a person segmentation model would), 0 = background,
  255 = body.

Layout written (Market-1501, as its authors publish it):
`ROOT/bounding_box_train/PPPP_cCsS_FFFFFF_KK.jpg`, `bounding_box_test/`,
`query/`, and the masks `bounding_box_train_seg/NAME.png`,
`bounding_box_test_seg/`, `query_seg/`. In a name, `PPPP` is the person id
(`0000` distractor, `-1` junk, as in Market-1501), `C` the camera (1-based),
`S` the scene within that camera (1..3), `FFFFFF` a frame number, `KK` the
box number. Train and test ids are disjoint. For every test id, the query
holds the first image from each camera and the gallery the others (so every
query has a gallery match in every other camera), plus junk images (id -1:
a person cut by the crop border) and distractors (id 0000: small people who
are in neither split), about 5 % and 10 % of the gallery.

Sizes with the defaults (120 train ids, 60 test ids, 4 cameras, 4 images per
camera): train 1,920, query 240, gallery 828 (720 + 72 distractors + 36 junk),
about 35 MB; rendering is vectorised over chunks of images, and writing takes
a few seconds on 2 CPU cores.

Determinism: the same arguments give byte-identical files with the same numpy
and TensorFlow builds on the same kind of CPU (float32 maths and libjpeg);
another platform may differ in the last bit of a few pixels.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from mgcam_tf.errors import ConfigError, DataError

__all__ = ["write_synthetic_market", "FORMAT_VERSION"]

# Bump when the rendering changes, so that a stored data set of an older
# generator is rewritten rather than reused.
FORMAT_VERSION = 3

_META_NAME = "synthetic.json"
_TMP_MARK = ".synthetic-tmp-"
_ACTIVE_TMP: set[str] = set()  # temporary folders this process is writing right now
_SCENES_PER_CAMERA = 3
_SCENE_PAD = 2           # scene is rendered this many px larger on each side: shift jitter
_JPEG_QUALITY = 92
_OCCLUDED_FRACTION = 0.15  # images with a pole in front of the person
_CHUNK = 64              # images rendered at once: [64, 128, 64] float32 temporaries stay in cache

# Clothing palette (RGB). A small palette on purpose: ids share colours.
_PALETTE = np.array([
    (30, 30, 35), (225, 225, 220), (128, 128, 128), (35, 45, 100),
    (50, 90, 190), (120, 170, 220), (180, 35, 40), (225, 140, 170),
    (40, 120, 60), (110, 110, 50), (225, 200, 60), (225, 120, 40),
    (110, 70, 40), (200, 180, 140), (110, 60, 140), (30, 130, 130),
], np.float32)
# Trousers and skirts are mostly dark, as in the street: black, grey, navy,
# blue, brown and beige take 3/4 of them, so lower colours often coincide.
_LOWER_P = np.full(len(_PALETTE), 0.22 / 10)
_LOWER_P[[0, 2, 3, 4, 12, 13]] = (0.2, 0.12, 0.15, 0.15, 0.08, 0.08)
_SKIN = np.array([(235, 200, 170), (205, 160, 120), (160, 110, 75), (100, 70, 50)], np.float32)
_HAIR = np.array([(20, 18, 18), (60, 40, 25), (110, 75, 40), (200, 170, 110), (150, 150, 150)],
                 np.float32)
_SHOES = np.array([(20, 20, 20), (60, 45, 35), (230, 230, 230), (90, 90, 100)], np.float32)


# --------------------------------------------------------------------------- identities

@dataclasses.dataclass(frozen=True)
class _Identities:
    """Per-identity attributes, each an array with a leading [num_identities] axis."""
    height: np.ndarray       # [I] person height as a fraction of the image height
    head_r: np.ndarray       # [I] head vertical radius, in person heights
    shoulder: np.ndarray     # [I] shoulder half width, in person heights
    hip: np.ndarray          # [I] hip half width
    hip_v: np.ndarray        # [I] hip level below the top of the head
    arm_r: np.ndarray        # [I] arm radius
    arm_len: np.ndarray      # [I] arm length
    leg_r: np.ndarray        # [I] leg radius at the hip
    long_hair: np.ndarray    # [I] bool
    sleeve: np.ndarray       # [I] fraction of the arm covered by the sleeve
    lower_kind: np.ndarray   # [I] 0 trousers, 1 shorts, 2 skirt
    pattern: np.ndarray      # [I] 0 none, 1 horizontal stripes, 2 vertical stripes, 3 check, 4 chest block
    period: np.ndarray       # [I] pattern period, in person heights
    bag: np.ndarray          # [I] 0 none, 1 shoulder bag, 2 hand bag, 3 backpack
    upper: np.ndarray        # [I, 3] RGB
    lower: np.ndarray        # [I, 3]
    pattern_rgb: np.ndarray  # [I, 3]
    bag_rgb: np.ndarray      # [I, 3]
    skin: np.ndarray         # [I, 3]
    hair: np.ndarray         # [I, 3]
    shoes: np.ndarray        # [I, 3]

    def take(self, index: np.ndarray) -> "_Identities":
        """The attributes of identities `index` ([N] int), one row per image."""
        return _Identities(**{f.name: getattr(self, f.name)[index]
                              for f in dataclasses.fields(self)})


def _sample_identities(rng: np.random.Generator, n: int) -> _Identities:
    """Draws `n` identities. Build scales widths together (slim vs broad people)."""
    def colour(table: np.ndarray, jitter: float, p: np.ndarray | None = None) -> np.ndarray:
        base = table[rng.choice(len(table), size=n, p=p)]
        return np.clip(base + rng.uniform(-jitter, jitter, (n, 3)), 0, 255).astype(np.float32)

    build = rng.uniform(0.85, 1.2, n)
    upper_i = rng.integers(0, len(_PALETTE), n)
    # The pattern colour differs from the upper colour, else the pattern is invisible.
    pattern_i = (upper_i + rng.integers(1, len(_PALETTE), n)) % len(_PALETTE)
    pattern_rgb = np.clip(_PALETTE[pattern_i] + rng.uniform(-6, 6, (n, 3)), 0, 255)
    upper = np.clip(_PALETTE[upper_i] + rng.uniform(-6, 6, (n, 3)), 0, 255)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return _Identities(
        height=f32(rng.uniform(0.74, 0.9, n)),
        head_r=f32(rng.uniform(0.058, 0.072, n)),
        shoulder=f32(rng.uniform(0.105, 0.125, n) * build),
        hip=f32(rng.uniform(0.082, 0.1, n) * build),
        hip_v=f32(rng.uniform(0.49, 0.56, n)),
        arm_r=f32(rng.uniform(0.024, 0.03, n) * build),
        arm_len=f32(rng.uniform(0.3, 0.35, n)),
        leg_r=f32(rng.uniform(0.034, 0.042, n) * build),
        long_hair=rng.random(n) < 0.3,
        sleeve=f32(np.where(rng.random(n) < 0.4, 0.35, 1.05)),
        lower_kind=rng.choice(3, size=n, p=[0.65, 0.2, 0.15]),
        pattern=rng.choice(5, size=n, p=[0.45, 0.18, 0.12, 0.1, 0.15]),
        period=f32(rng.uniform(0.03, 0.055, n)),
        bag=rng.choice(4, size=n, p=[0.5, 0.2, 0.15, 0.15]),
        upper=f32(upper),
        lower=colour(_PALETTE, 6, _LOWER_P),
        pattern_rgb=f32(pattern_rgb),
        bag_rgb=colour(_PALETTE, 6),
        skin=colour(_SKIN, 8),
        hair=colour(_HAIR, 8),
        shoes=colour(_SHOES, 8),
    )


# --------------------------------------------------------------------------- scenes and cameras

def _render_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One cluttered background scene, float32 [height, width, 3] in 0..255."""
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5
    x = np.arange(width, dtype=np.float32)[None, :] + 0.5

    def pick() -> np.ndarray:
        # Half the scene colours come from the clothing palette: the background
        # must not be separable from the body by colour alone.
        if rng.random() < 0.5:
            return _PALETTE[rng.integers(len(_PALETTE))] + rng.uniform(-20, 20, 3)
        return rng.uniform(20, 235, 3)

    horizon = rng.uniform(0.35, 0.7) * height
    top0, top1, floor0, floor1 = pick(), pick(), pick(), pick()
    t_top = np.clip(y / horizon, 0, 1)[..., None]
    t_floor = np.clip((y - horizon) / max(height - horizon, 1.0), 0, 1)[..., None]
    img = np.where((y < horizon)[..., None], top0 + (top1 - top0) * t_top,
                   floor0 + (floor1 - floor0) * t_floor) * np.ones((1, width, 1))
    # Floor tiles: lines that converge a little, like a perspective pavement.
    tile = rng.uniform(6, 14)
    tiles = (np.sin((x - width / 2) / (1 + (y - horizon) / height) / tile * np.pi) > 0.85) | (
        np.sin(y / tile * 2 * np.pi) > 0.9)
    img = np.where((tiles & (y > horizon))[..., None], img * 0.75, img)
    # Buildings / shop fronts, some with a window grid.
    for _ in range(rng.integers(2, 6)):
        x0, y0 = rng.uniform(-0.2, 0.9) * width, rng.uniform(-0.1, 0.6) * height
        w, h = rng.uniform(0.2, 0.7) * width, rng.uniform(0.15, 0.6) * height
        inside = (x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h)
        img = np.where(inside[..., None], pick(), img)
        if rng.random() < 0.6:
            step_x, step_y = rng.uniform(6, 12), rng.uniform(8, 16)
            win = inside & (((x - x0) % step_x) > step_x * 0.45) & (((y - y0) % step_y) > step_y * 0.4)
            img = np.where(win[..., None], pick(), img)
    # Bushes / trees / round signs with a noisy texture.
    for _ in range(rng.integers(1, 5)):
        cx, cy = rng.uniform(0, width), rng.uniform(0.2, 1.0) * height
        rx, ry = rng.uniform(0.1, 0.4) * width, rng.uniform(0.05, 0.2) * height
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        texture = 1 + 0.25 * np.sin(x * rng.uniform(0.5, 1.5)) * np.sin(y * rng.uniform(0.5, 1.5))
        img = np.where(inside[..., None], pick() * texture[..., None], img)
    # Poles and bars: thin vertical and horizontal strokes, body-sized edges.
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.6:
            px, pw = rng.uniform(0, width), rng.uniform(1.5, 5)
            stroke = (np.abs(x - px) < pw) & (y > rng.uniform(0, 0.5) * height)
        else:
            py, ph = rng.uniform(0, height), rng.uniform(1.5, 4)
            stroke = np.abs(y - py) < ph
        img = np.where(stroke[..., None], pick(), img)
    # Fine texture everywhere (brick, foliage, dirt), fixed per scene.
    img = img * (1 + rng.normal(0, 0.04, (height, width, 1))) + rng.normal(0, 4, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Cameras:
    """Per-camera imaging conditions, leading axis [num_cameras]."""
    gain: np.ndarray      # [C] overall brightness
    cast: np.ndarray      # [C, 3] per-channel colour cast
    contrast: np.ndarray  # [C]
    noise: np.ndarray     # [C] Gaussian noise std, 0..255 units
    scale: np.ndarray     # [C] how large people appear
    lift: np.ndarray      # [C] feet distance from the bottom edge, in px
    scenes: np.ndarray    # [C, 3] scene indices into the pool


def _sample_cameras(rng: np.random.Generator, num_cameras: int, height: int) -> _Cameras:
    pool = 2 * num_cameras
    scenes = np.array([[(2 * c + k) % pool for k in range(_SCENES_PER_CAMERA)]
                       for c in range(num_cameras)])
    return _Cameras(
        gain=rng.uniform(0.75, 1.15, num_cameras).astype(np.float32),
        cast=rng.uniform(0.82, 1.18, (num_cameras, 3)).astype(np.float32),
        contrast=rng.uniform(0.8, 1.1, num_cameras).astype(np.float32),
        noise=rng.uniform(2, 6, num_cameras).astype(np.float32),
        scale=rng.uniform(0.92, 1.06, num_cameras).astype(np.float32),
        lift=(rng.uniform(0.01, 0.05, num_cameras) * height).astype(np.float32),
        scenes=scenes,
    )


# --------------------------------------------------------------------------- rendering

def _segment_distance2(u: np.ndarray, v: np.ndarray, a: tuple[np.ndarray, np.ndarray],
                       b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance of every pixel to the segment a-b, and the position t (0 at a, 1 at b).

    u: [N, 1, W] and v: [N, H, 1] pixel coordinates; a, b: pairs of [N, 1, 1]
    end points. Returns (dist2, t), both float32 [N, H, W]. Squared, because
    every caller compares it with a squared radius: no square root needed.
    """
    du, dv = b[0] - a[0], b[1] - a[1]
    inv = 1.0 / (du * du + dv * dv + 1e-9)
    pu, pv = u - a[0], v - a[1]              # [N, 1, W], [N, H, 1]
    t = (pu * (du * inv)) + (pv * (dv * inv))  # the only full-size products start here
    np.clip(t, 0.0, 1.0, out=t)
    eu = pu - t * du
    ev = t * dv
    np.subtract(pv, ev, out=ev)
    eu *= eu
    ev *= ev
    eu += ev
    return eu, t


# Part labels of the label map: index into the per-image colour table.
_PART_BG, _PART_HAIR, _PART_BAG, _PART_LOWER, _PART_SKIN, _PART_SHOES, _PART_UPPER, _PART_PATTERN = range(8)


def _render_people(ids: _Identities, backgrounds: np.ndarray, *, center_x: np.ndarray,
                  feet_y: np.ndarray, scale: np.ndarray, side: np.ndarray, back_view: np.ndarray,
                  arm_swing: np.ndarray, stride: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paints N people over their backgrounds.

    ids: identity attributes with leading axis [N] (one row per image).
    backgrounds: float32 [N, H, W, 3], 0..255; painted over in place.
    center_x, feet_y: [N] body centre column and feet row, in px (may put the
        person partly outside the crop).
    scale: [N] person height in px.
    side: [N] +1 or -1, mirrors the asymmetric parts (bag, stripes' phase).
    back_view: [N] bool, seen from behind: hair instead of face, backpack shown.
    arm_swing, stride: [N] radians, walking pose.
    Returns (backgrounds, now the image float32 [N, H, W, 3] 0..255 before
    lighting; mask bool [N, H, W]).
    """
    n, height, width, _ = backgrounds.shape
    f32 = np.float32
    col = lambda a: np.asarray(a, f32).reshape(n, 1, 1)  # noqa: E731
    flag = lambda a: np.asarray(a, bool).reshape(n, 1, 1)  # noqa: E731
    p = col(scale)
    # Person coordinates: v = 0 at the top of the head, 1 at the soles; u in
    # person heights from the body axis, mirrored by `side`.
    yy = (np.arange(height, dtype=f32) + f32(0.5))[None, :, None]
    xx = (np.arange(width, dtype=f32) + f32(0.5))[None, None, :]
    # v is [N, H, 1] and u [N, 1, W]: a condition on one of them costs a row
    # or a column, and only combining both makes a full [N, H, W] array.
    v = (yy - (col(feet_y) - p)) / p
    u = (xx - col(center_x)) / p * col(side)

    # Parts are painted back to front into a label map (one byte per pixel)
    # and a shading map; colours are looked up once at the end. Painting RGB
    # per part costs several times more.
    labels = np.zeros((n, height, width), np.uint8)
    shading = np.ones((n, height, width), f32)

    def paint(region: np.ndarray, label: int | np.ndarray, shade: float | np.ndarray = 1.0) -> None:
        np.copyto(labels, label, where=region, casting="unsafe")
        np.copyto(shading, shade, where=region, casting="unsafe")

    head_r, sh, hip, hip_v = col(ids.head_r), col(ids.shoulder), col(ids.hip), col(ids.hip_v)
    head_rx, head_cy = head_r * f32(0.8), head_r
    sh_v = 2 * head_r + f32(0.018)
    back = flag(back_view)
    long_hair = flag(ids.long_hair)
    abs_u = np.abs(u)

    # Long hair falls behind the shoulders: painted first, the torso covers it.
    paint(long_hair & (abs_u < head_rx * 1.15) & (v > head_cy) & (v < sh_v + 0.09), _PART_HAIR)
    # Backpack seen from the front: only its sides show, behind the torso.
    backpack = flag(ids.bag == 3)
    pack = backpack & (abs_u < sh + 0.025) & (v > sh_v + 0.02) & (v < sh_v + 0.2)
    paint(pack & ~back, _PART_BAG, 0.8)

    # Legs: tapered capsules from the hips to the feet, spread by `stride`.
    leg_len = 1.0 - hip_v - 0.01
    kind = np.asarray(ids.lower_kind).reshape(n, 1, 1)
    skin_from = np.select([kind == 1, kind == 2], [0.45, 0.5], 1.2).astype(f32)
    for sign in (-1.0, 1.0):
        ang = col(stride) * f32(sign)
        a = (sign * hip * f32(0.55), hip_v)
        b = (a[0] + leg_len * np.sin(ang), hip_v + leg_len * np.cos(ang))
        d2, t = _segment_distance2(u, v, a, b)
        r2 = (col(ids.leg_r) * (1 - f32(0.3) * t)) ** 2
        part = np.where(t < skin_from, _PART_LOWER, _PART_SKIN)
        part[t > 0.93] = _PART_SHOES
        paint(d2 < r2, part, 1 - f32(0.3) * d2 / r2)
    # Skirt: a trapezoid over the upper legs.
    skirt_h = f32(0.2)
    tt = np.clip((v - hip_v) / skirt_h, 0, 1)
    paint((kind == 2) & (v >= hip_v - 0.01) & (v < hip_v + skirt_h) & (abs_u < hip * (1.05 + 0.5 * tt)),
          _PART_LOWER)

    # Torso: a trapezoid from the shoulders to the hips, rounded shoulders.
    tv = np.clip((v - sh_v) / (hip_v - sh_v), 0, 1)
    half = sh + (hip - sh) * tv
    d2_sh, _ = _segment_distance2(u, v, (-sh + 0.03, sh_v + 0.03), (sh - 0.03, sh_v + 0.03))
    torso = ((v >= sh_v + 0.03) & (v <= hip_v + 0.02) & (abs_u <= half)) | (d2_sh < 0.03 ** 2)
    period = col(ids.period)
    phase, phase_u = (v - sh_v) / period, u / period
    pat = np.asarray(ids.pattern).reshape(n, 1, 1)
    on_pattern = (
        ((pat == 1) & (phase % 1 < 0.45))
        | ((pat == 2) & (phase_u % 1 < 0.45))
        | ((pat == 3) & ((np.floor(phase) + np.floor(phase_u)) % 2 == 0))
        | ((pat == 4) & (np.abs(u + 0.02) < 0.045) & (v > sh_v + 0.06) & (v < sh_v + 0.14)))
    paint(torso, np.where(on_pattern, _PART_PATTERN, _PART_UPPER), 1 - f32(0.25) * (u / half) ** 2)
    # Backpack seen from behind covers the back; straps show from the front.
    paint(pack & back & (abs_u < sh * 0.85), _PART_BAG)
    paint(backpack & ~back & torso & (np.abs(abs_u - sh * 0.55) < 0.012) & (v < sh_v + 0.2), _PART_BAG, 0.8)
    # Shoulder bag: a strap across the chest to a bag on the far hip.
    shoulder_bag = flag(ids.bag == 1)
    d2_strap, _ = _segment_distance2(u, v, (-sh * 0.8, sh_v + 0.01), (sh + 0.03, hip_v - 0.02))
    paint(shoulder_bag & (d2_strap < 0.011 ** 2), _PART_BAG, 0.8)
    paint(shoulder_bag & (np.abs(u - sh - 0.04) < 0.045) & (np.abs(v - hip_v + 0.01) < 0.045), _PART_BAG)

    # Arms: capsules from the shoulders, swinging opposite to each other.
    hand = None
    for sign in (-1.0, 1.0):
        ang = col(arm_swing) * f32(sign) + f32(sign * 0.12)  # arms hang a little away from the body
        a = (sign * (sh - 0.015), sh_v + 0.03)
        hand = (a[0] + col(ids.arm_len) * np.sin(ang), a[1] + col(ids.arm_len) * np.cos(ang))
        d2, t = _segment_distance2(u, v, a, hand)
        r2 = col(ids.arm_r) ** 2
        paint(d2 < r2, np.where(t < col(ids.sleeve), _PART_UPPER, _PART_SKIN), 1 - f32(0.3) * d2 / r2)
    # Hand bag hangs from the +u hand (the last one drawn).
    paint(flag(ids.bag == 2) & (np.abs(u - hand[0]) < 0.04) & (v > hand[1] - 0.01) & (v < hand[1] + 0.09),
          _PART_BAG)

    # Neck and head; hair on top, all hair when seen from behind.
    paint((abs_u < head_rx * 0.45) & (v > head_cy) & (v < sh_v + 0.02), _PART_SKIN)
    head = (u / head_rx) ** 2 + ((v - head_cy) / head_r) ** 2 < 1
    paint(head, _PART_SKIN)
    paint(head & (back | (v < head_cy - head_r * 0.35) | (long_hair & (abs_u > head_rx * 0.7))), _PART_HAIR)

    table = np.stack([np.zeros((n, 3), f32), ids.hair, ids.bag_rgb, ids.lower, ids.skin, ids.shoes,
                      ids.upper, ids.pattern_rgb], axis=1).astype(f32)   # [N, 8, 3]
    # One flat gather: row 8 * image + label of the [N * 8, 3] table.
    flat = labels + (np.arange(n, dtype=np.int32) * table.shape[1])[:, None, None]
    person = np.take(table.reshape(-1, 3), flat, axis=0)
    person *= shading[..., None]
    mask = labels > _PART_BG
    np.copyto(backgrounds, person, where=mask[..., None])
    return backgrounds, mask


# --------------------------------------------------------------------------- the data set plan

@dataclasses.dataclass
class _Plan:
    """What every image shows. Arrays are [N] over all images of all splits."""
    split: np.ndarray     # [N] 0 train, 1 query, 2 gallery
    pid: np.ndarray       # [N] Market id: >0 person, 0 distractor, -1 junk
    identity: np.ndarray  # [N] row in the identity table
    camera: np.ndarray    # [N] 0-based
    scene: np.ndarray     # [N] 0-based within the camera
    kind: np.ndarray      # [N] 0 normal, 1 junk, 2 distractor
    frame: np.ndarray     # [N]
    box: np.ndarray       # [N]


_SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")


def _plan(rng: np.random.Generator, num_train_ids: int, num_test_ids: int, num_cameras: int,
          images_per_camera: int) -> tuple[_Plan, int]:
    """Assigns ids, cameras, scenes and names. Returns the plan and the identity count."""
    total = num_train_ids + num_test_ids
    pids = np.arange(1, total + 1)
    train_pids = np.sort(rng.choice(pids, num_train_ids, replace=False))
    test_pids = np.setdiff1d(pids, train_pids)
    rows: list[tuple[int, int, int, int, int]] = []  # split, pid, identity, camera, kind
    for split, group in ((0, train_pids), (2, test_pids)):
        for pid in group:
            for cam in range(num_cameras):
                for k in range(images_per_camera):
                    # The first image of a test id in each camera is its query.
                    rows.append((1 if split == 2 and k == 0 else split, pid, pid - 1, cam, 0))
    gallery_core = num_test_ids * num_cameras * (images_per_camera - 1)
    n_distractor = max(1, round(0.1 * gallery_core))
    n_junk = max(1, round(0.05 * gallery_core))
    # Distractors and junk are people of neither split: fresh identity rows.
    for j in range(n_distractor + n_junk):
        kind = 2 if j < n_distractor else 1
        rows.append((2, 0 if kind == 2 else -1, total + j, int(rng.integers(num_cameras)), kind))
    arr = np.array(rows, np.int64)
    n = len(arr)
    # Frames: consecutive-ish per person and camera, like a tracklet in Market-1501.
    base = rng.integers(1, 1_000_000 - 25 * images_per_camera,
                        (total + n_distractor + n_junk, num_cameras))  # six digits at most
    step = np.zeros(n, np.int64)
    seen: dict[tuple[int, int], int] = {}
    for i, (_, _, ident, cam, _) in enumerate(arr):
        key = (int(ident), int(cam))
        step[i] = seen.get(key, 0)
        seen[key] = step[i] + 1
    frame = base[arr[:, 2], arr[:, 3]] + 25 * step
    plan = _Plan(split=arr[:, 0], pid=arr[:, 1], identity=arr[:, 2], camera=arr[:, 3],
                 scene=rng.integers(0, _SCENES_PER_CAMERA, n), kind=arr[:, 4], frame=frame,
                 box=rng.integers(1, 4, n))
    return plan, total + n_distractor + n_junk


def _name(pid: int, camera: int, scene: int, frame: int, box: int) -> str:
    """Market-1501 stem `PPPP_cCsS_FFFFFF_KK` (junk keeps Market's `-1` prefix)."""
    head = "-1" if pid < 0 else f"{pid:04d}"
    return f"{head}_c{camera + 1}s{scene + 1}_{frame:06d}_{box:02d}"


def _render_chunk(plan: _Plan, index: np.ndarray, ids: _Identities, cams: _Cameras,
                  scenes: np.ndarray, rng: np.random.Generator, height: int,
                  width: int) -> tuple[np.ndarray, np.ndarray]:
    """Renders images `index` of the plan: (uint8 [n, H, W, 3], uint8 [n, H, W] 0/255)."""
    n = len(index)
    cam = plan.camera[index]
    kind = plan.kind[index]
    who = ids.take(plan.identity[index])
    # Background: the camera's scene, shifted by up to +-_SCENE_PAD px.
    scene_id = cams.scenes[cam, plan.scene[index]]
    off = rng.integers(0, 2 * _SCENE_PAD + 1, (n, 2))
    bg = np.stack([scenes[s, oy:oy + height, ox:ox + width]
                   for s, (oy, ox) in zip(scene_id, off)])
    # Framing and pose jitter.
    scale = who.height * height * cams.scale[cam] * rng.uniform(0.95, 1.05, n)
    feet = height - cams.lift[cam] - rng.uniform(0, 3, n)
    cx = width / 2 + rng.uniform(-3, 3, n)
    # Distractors: small people anywhere; junk: a person cut by the crop border.
    small = kind == 2
    scale = np.where(small, scale * rng.uniform(0.4, 0.6, n), scale)
    feet = np.where(small, rng.uniform(0.45, 1.0, n) * height, feet)
    cx = np.where(small, rng.uniform(0.2, 0.8, n) * width, cx)
    junk = kind == 1
    cut_x = rng.random(n) < 0.5
    cx = np.where(junk & cut_x, width / 2 + rng.choice([-1, 1], n) * rng.uniform(0.45, 0.6, n) * width, cx)
    feet = np.where(junk & ~cut_x, feet + rng.uniform(0.35, 0.5, n) * scale, feet)
    img, mask = _render_people(
        who, bg, center_x=cx, feet_y=feet, scale=scale,
        side=rng.choice([-1.0, 1.0], n), back_view=rng.random(n) < 0.4,
        arm_swing=rng.uniform(-0.4, 0.4, n), stride=rng.uniform(0.0, 0.22, n))
    # Occluders: in some images a pole stands in front of the person. The
    # mask leaves it out, as a segmentation of the visible body would.
    occluded = rng.random(n) < _OCCLUDED_FRACTION
    pole_x = (width * rng.uniform(0.3, 0.7, n))[:, None]
    pole_w = rng.uniform(1.0, 3.0, n)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    pole = (occluded[:, None] & (np.abs(xs - pole_x) < pole_w))[:, None, :]   # [n, 1, W]
    pole_rgb = (_PALETTE[rng.integers(0, len(_PALETTE), n)] * 0.8)[:, None, None, :]
    np.copyto(img, pole_rgb, where=pole[..., None])
    mask &= ~pole
    # Lighting: camera gain, colour cast and contrast, a little per image, noise.
    # ((x - 128) * contrast + 128) * gain * cast, folded into x * a + b.
    gain = (cams.gain[cam] * rng.uniform(0.88, 1.12, n))[:, None]
    cast = cams.cast[cam] * rng.uniform(0.94, 1.06, (n, 3))
    contrast = cams.contrast[cam][:, None]
    a = (contrast * gain * cast).astype(np.float32)[:, None, None, :]
    b = (128.0 * (1.0 - contrast) * gain * cast).astype(np.float32)[:, None, None, :]
    # Uniform noise of the camera's std: as good as Gaussian after JPEG, and
    # several times cheaper to draw.
    noise = rng.random(img.shape, dtype=np.float32)
    noise -= 0.5
    noise *= (cams.noise[cam] * np.float32(12 ** 0.5))[:, None, None, None]
    img *= a
    img += b
    img += noise
    np.clip(img, 0, 255, out=img)
    return np.rint(img).astype(np.uint8), mask.astype(np.uint8) * np.uint8(255)


# --------------------------------------------------------------------------- writing

def _arguments(num_train_ids: int, num_test_ids: int, num_cameras: int, images_per_camera: int,
               seed: int, height: int, width: int) -> dict:
    return {"num_train_ids": num_train_ids, "num_test_ids": num_test_ids,
            "num_cameras": num_cameras, "images_per_camera": images_per_camera,
            "seed": seed, "height": height, "width": width}


def _check_arguments(args: dict) -> None:
    minimum = {"num_train_ids": 1, "num_test_ids": 1, "num_cameras": 2,
               "images_per_camera": 2, "seed": 0, "height": 32, "width": 16}
    for key, low in minimum.items():
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"write_synthetic_market: {key} must be an int, got {value!r}")
        if value < low:
            raise ConfigError(f"write_synthetic_market: {key} must be >= {low}, got {value}")
    if args["num_cameras"] > 9:
        raise ConfigError("write_synthetic_market: num_cameras must be <= 9 "
                          f"(Market-1501 names hold one camera digit), got {args['num_cameras']}")
    if args["images_per_camera"] > 1000:
        raise ConfigError("write_synthetic_market: images_per_camera must be <= 1000, "
                          f"got {args['images_per_camera']}")
    if args["num_train_ids"] + args["num_test_ids"] > 9999:
        raise ConfigError("write_synthetic_market: num_train_ids + num_test_ids must be <= 9999 "
                          "(Market-1501 names hold four id digits)")


def _read_meta(root: pathlib.Path) -> dict | None:
    try:
        return json.loads((root / _META_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: pathlib.Path, args: dict) -> bool:
    meta = _read_meta(root)
    return bool(meta and meta.get("format_version") == FORMAT_VERSION
                and meta.get("arguments") == args)


def _clean_stale_tmp(root: pathlib.Path) -> None:
    """Removes temporary siblings left by writers that died (their pid no longer runs)."""
    prefix = f".{root.name}{_TMP_MARK}"
    for path in root.parent.glob(prefix + "*"):
        try:
            pid = int(path.name[len(prefix):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid():
            # Ours: stale unless another thread of this process is writing it.
            alive = str(path) in _ACTIVE_TMP
        else:
            from mgcam_tf import process_lock

            alive = process_lock.pid_alive(pid)
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


def _generate(out: pathlib.Path, args: dict) -> dict:
    """Renders and writes every image and mask under `out`; returns the split sizes."""
    seed = int(args["seed"])
    height, width = int(args["height"]), int(args["width"])
    # Independent streams: the plan, identities, scenes, cameras and per-image
    # jitter do not shift one another when one of them draws more numbers.
    streams = np.random.SeedSequence([seed, 0x5EED]).spawn(5)
    rng_plan, rng_ids, rng_scene, rng_cam, rng_img = (np.random.default_rng(s) for s in streams)
    plan, num_identities = _plan(rng_plan, args["num_train_ids"], args["num_test_ids"],
                                 args["num_cameras"], args["images_per_camera"])
    ids = _sample_identities(rng_ids, num_identities)
    cams = _sample_cameras(rng_cam, args["num_cameras"], height)
    pad = 2 * _SCENE_PAD
    scenes = np.stack([_render_scene(rng_scene, height + pad, width + pad)
                       for _ in range(2 * args["num_cameras"])])
    for d in _SPLIT_DIRS:
        (out / d).mkdir()
        (out / f"{d}_seg").mkdir()
    names = [_name(*map(int, t)) for t in zip(plan.pid, plan.camera, plan.scene, plan.frame, plan.box)]
    if len(set(names)) != len(names):
        raise AssertionError("synthetic data: duplicate file names")  # a bug, never a user error

    def write(index: np.ndarray, images: np.ndarray, masks: np.ndarray) -> None:
        for i, image, mask in zip(index, images, masks):
            d = _SPLIT_DIRS[plan.split[i]]
            jpeg = tf.io.encode_jpeg(image, quality=_JPEG_QUALITY).numpy()
            png = tf.io.encode_png(mask[:, :, None]).numpy()
            (out / d / f"{names[i]}.jpg").write_bytes(jpeg)
            (out / f"{d}_seg" / f"{names[i]}.png").write_bytes(png)

    # Encoding and writing one chunk overlaps with rendering the next (numpy
    # and TF ops release the GIL). Leaving the `with` waits for the writer, so
    # nothing writes into `out` after an exception has reached the caller.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
        pending: concurrent.futures.Future | None = None
        for start in range(0, len(names), _CHUNK):
            index = np.arange(start, min(start + _CHUNK, len(names)))
            chunk = _render_chunk(plan, index, ids, cams, scenes, rng_img, height, width)
            if pending is not None:
                pending.result()  # re-raises a writer error here
            pending = writer.submit(write, index, *chunk)
        if pending is not None:
            pending.result()
    return {
        "train": int(np.sum(plan.split == 0)),
        "query": int(np.sum(plan.split == 1)),
        "gallery": int(np.sum(plan.split == 2)),
        "gallery_distractors": int(np.sum(plan.kind == 2)),
        "gallery_junk": int(np.sum(plan.kind == 1)),
    }


def write_synthetic_market(root: str | os.PathLike, *, num_train_ids: int = 120,
                           num_test_ids: int = 60, num_cameras: int = 4,
                           images_per_camera: int = 4, seed: int = 0, height: int = 128,
                           width: int = 64) -> pathlib.Path:
    """Writes the synthetic data set in Market-1501 layout under `root` and returns root.

    Every id is seen `images_per_camera` times by each of `num_cameras`
    cameras; images are `height` x `width` RGB JPEGs with PNG masks (0/255)
    of the same size. The write is atomic: the data set is built in a
    temporary sibling folder, `ROOT/synthetic.json` (the arguments and the
    split sizes) is written last, then the folder is renamed to `root`. If
    `root` already holds a complete data set written with the same
    arguments, it returns at once without rewriting. A `root` that holds a
    synthetic data set of other arguments is replaced; any other non-empty
    folder is left alone and raises `DataError`.

    Raises ConfigError for arguments out of range, DataError for a `root`
    that holds something else.
    """
    root = pathlib.Path(root)
    args = _arguments(num_train_ids, num_test_ids, num_cameras, images_per_camera, seed,
                      height, width)
    _check_arguments(args)
    args = {k: int(v) for k, v in args.items()}
    if _is_complete(root, args):
        return root
    if root.exists() and not root.is_dir():
        raise DataError(f"synthetic data: {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and _read_meta(root) is None:
        raise DataError(f"synthetic data: {root} is not empty and holds no {_META_NAME}; "
                        "refusing to overwrite it (choose another folder)")
    root.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)
    tmp = _make_tmp(root)
    try:
        counts = _generate(tmp, args)
        meta = {"generator": "mgcam_tf.data.synthetic", "format_version": FORMAT_VERSION,
                "arguments": args, "counts": counts, "layout": "market1501"}
        # Written last: its presence is what marks a data set complete.
        (tmp / _META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if root.is_dir():
            # An empty folder, or our own data set of other arguments: move it
            # aside first so that `root` is never seen half written, and put it
            # back if the new one cannot take its place.
            old = _make_tmp(root)
            try:
                os.rename(root, old / "old")
                try:
                    os.rename(tmp, root)
                except BaseException:
                    os.rename(old / "old", root)
                    raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
                _ACTIVE_TMP.discard(str(old))
        else:
            try:
                os.rename(tmp, root)
            except OSError:
                # Another writer finished first; its data set is as good as ours.
                if not _is_complete(root, args):
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _ACTIVE_TMP.discard(str(tmp))
    return root


def _make_tmp(root: pathlib.Path) -> pathlib.Path:
    """A fresh sibling folder of root named `.ROOT.synthetic-tmp-PID-XXXX`, marked in use."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}{_TMP_MARK}{os.getpid()}-",
                                        dir=root.parent))
    _ACTIVE_TMP.add(str(tmp))
    return tmp
