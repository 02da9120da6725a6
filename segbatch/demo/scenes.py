"""Synthetic dash-cam street scenes labelled with CamVid's 11 classes.

A pure-numpy renderer of a randomised straight street seen from a car: a road
in perspective with lane marks, pavements, building facades, trees, poles with
signs, fences, cars, pedestrians and cyclists.  :func:`make_scene` draws the
whole layout of a street (a few hundred metres of it) from one seed and
:func:`render` draws that layout from a camera ``t`` metres along the street,
so a video is one scene rendered at increasing ``t``.  Things are painted far
to near, and every paint writes the image and the label mask through the same
pixel mask, so the mask always matches the picture exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from segbatch.errors import InputError
from segbatch.model.catalog import CAMVID_PALETTE

# CamVid's 11 classes in CamVid's order, under the demo's own (lower-case) names, painted in CamVid's colours.
CLASSES: tuple[str, ...] = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "cyclist")
PALETTE = CAMVID_PALETTE
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, CYCLIST = range(len(CLASSES))

RGB = tuple[float, float, float]
Region = tuple[slice, slice, "np.ndarray | None"]  # rows, columns, boolean mask within them (None: all)

STREET_LENGTH = 1000.0  # metres of street that carry buildings and objects
_NEAR = 0.3  # near clipping depth, metres
_DETAIL_PX = 16.0  # objects shorter than this on screen skip parts too small to see
_TAG = 0x5CE7E  # keeps these seeds apart from other uses of the same integer
# Texture noise amplitude per class (0..255 scale): foliage is busy, signs and sky are smooth.
_GRAIN = np.array([2, 6, 4, 5, 8, 18, 3, 6, 4, 6, 6], np.float32)

_FACADE_COLOURS = ((170, 90, 70), (205, 185, 150), (150, 150, 155), (225, 215, 195), (120, 80, 60), (185, 165, 120), (100, 110, 125), (235, 230, 220))
_CAR_COLOURS = ((235, 235, 235), (30, 30, 35), (165, 165, 170), (160, 25, 25), (30, 55, 130), (60, 95, 65), (205, 175, 45), (95, 95, 105))
_CLOTHES = ((40, 40, 60), (30, 30, 30), (150, 30, 30), (40, 90, 160), (200, 200, 190), (90, 70, 50), (60, 120, 60), (180, 140, 40))
_SKIN = ((235, 195, 165), (205, 155, 115), (150, 100, 65), (95, 65, 45))
_SIGN_COLOURS = ((200, 30, 30), (30, 70, 175), (235, 205, 40), (235, 235, 235))
_FENCE_COLOURS = ((120, 85, 55), (150, 150, 150), (50, 90, 60), (200, 200, 195))


@dataclass(frozen=True)
class _Facade:
    """One building's wall facing the street, between depths z0 and z1."""

    x: float  # lateral position of the wall plane (negative = left of the camera)
    z0: float
    z1: float
    height: float
    colour: RGB
    window: RGB
    bay: float  # window spacing along the street
    storey: float


@dataclass(frozen=True)
class _Fence:
    """A fence run along the back of the pavement."""

    x: float
    z0: float
    z1: float
    height: float
    colour: RGB


@dataclass(frozen=True)
class _Prop:
    """One object standing at (x, z); ``kind`` picks its drawer."""

    kind: str  # "tree", "pole", "car", "pedestrian" or "cyclist"
    x: float
    z: float
    size: float  # rough height in metres, to skip things too far away to cover a pixel
    length: float  # extent along the street behind z (cars only)
    params: tuple[float, ...]
    colours: tuple[RGB, ...]


@dataclass(frozen=True)
class Scene:
    """The random layout of one street: camera, road, sky, buildings, objects, lighting (all from ``seed``)."""

    seed: int
    horizon: float  # horizon row as a fraction of the image height
    focal: float  # focal length as a fraction of the image width
    centre: float  # vanishing point column as a fraction of the image width
    cam_height: float
    road: tuple[float, float]  # lateral road edges
    marks: tuple[tuple[float, RGB, bool], ...]  # lane marks: x, colour, solid
    dash: tuple[float, float]  # dash period (m) and painted fraction
    road_colour: RGB
    pavement_colour: RGB
    sky: tuple[RGB, RGB]  # top and horizon colours
    clouds: tuple[tuple[float, float, float, float, float], ...]  # u, v, rx, ry (image fractions), opacity
    facades: tuple[_Facade, ...]  # far to near
    fences: tuple[_Fence, ...]  # far to near
    props: tuple[_Prop, ...]  # far to near
    fog: float  # haze distance, metres
    light: tuple[float, float]  # brightness, contrast
    tint: RGB
    grain: float


@dataclass(frozen=True)
class _View:
    """Pinhole camera for one frame: world (x right, y up, z along the street) to pixel coordinates."""

    f: float
    cx: float
    yh: float
    cam: float
    t: float
    h: int
    w: int

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        d = z - self.t
        return self.cx + self.f * x / d, self.yh + self.f * (self.cam - y) / d

    def spot(self, x: float, z: float) -> _Spot:
        s = self.f / (z - self.t)
        return _Spot(self.cx + x * s, self.yh + self.cam * s, s, z - self.t)


@dataclass(frozen=True)
class _Spot:
    """A ground point on screen: upright objects there map metres to pixels by one scale ``s``."""

    u: float
    v: float
    s: float
    d: float

    def pt(self, dx: float, dy: float) -> tuple[float, float]:
        return self.u + dx * self.s, self.v - dy * self.s


class _Canvas:
    """Image, labels and per-pixel depth (for haze) painted together."""

    def __init__(self, h: int, w: int) -> None:
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.zeros((h, w), np.uint8)
        self.depth = np.zeros((h, w), np.float32)


def _frac(a: np.ndarray) -> np.ndarray:
    """Fractional part: the phase of repeating patterns (dashes, windows, slats)."""
    return cast(np.ndarray, a - np.floor(a))


def _hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic noise in [0, 1) per integer world cell, so texture sticks to the ground and moves with it."""
    k = a.astype(np.int64) * 73856093 ^ b.astype(np.int64) * 19349663
    k = (k ^ (k >> 13)) * 1274126177  # int64 wrap-around is part of the mixing
    return ((k >> 16) & 1023).astype(np.float32) / np.float32(1024.0)


def _polygon_region(pts: Sequence[tuple[float, float]] | None, h: int, w: int) -> Region | None:
    """Pixels whose centres lie inside a convex polygon, computed only in its bounding box to stay cheap."""
    if pts is None:
        return None
    p = np.asarray(pts, np.float64)
    q = np.concatenate([p[1:], p[:1]])
    area = float(np.sum(p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]))
    (u0, v0), (u1, v1) = p.min(0), p.max(0)
    y0, y1 = max(math.ceil(v0 - 0.5), 0), min(math.ceil(v1 - 0.5), h)
    x0, x1 = max(math.ceil(u0 - 0.5), 0), min(math.ceil(u1 - 0.5), w)
    if y0 >= y1 or x0 >= x1 or area == 0:
        return None
    e = (q - p) * math.copysign(1.0, area)
    ys = np.arange(y0, y1)[None, :, None] + 0.5 - p[:, 1, None, None]
    xs = np.arange(x0, x1)[None, None, :] + 0.5 - p[:, 0, None, None]
    inside = (e[:, 0, None, None] * ys - e[:, 1, None, None] * xs >= 0).all(0)
    return slice(y0, y1), slice(x0, x1), cast(np.ndarray, inside)


def _rect_region(u0: float, u1: float, v0: float, v1: float, h: int, w: int) -> Region | None:
    """Axis-aligned box by slicing alone (most body parts are boxes, so this is the hot path)."""
    u0, u1, v0, v1 = min(u0, u1), max(u0, u1), min(v0, v1), max(v0, v1)
    y0, y1 = max(math.ceil(v0 - 0.5), 0), min(math.ceil(v1 - 0.5), h)
    x0, x1 = max(math.ceil(u0 - 0.5), 0), min(math.ceil(u1 - 0.5), w)
    return None if y0 >= y1 or x0 >= x1 else (slice(y0, y1), slice(x0, x1), None)


def _ellipse_r2(cu: float, cv: float, rx: float, ry: float, h: int, w: int) -> tuple[slice, slice, np.ndarray] | None:
    """Normalised squared radius over an ellipse's bounding box (<= 1 inside), for hard and soft ellipses."""
    y0, y1 = max(math.floor(cv - ry), 0), min(math.ceil(cv + ry), h)
    x0, x1 = max(math.floor(cu - rx), 0), min(math.ceil(cu + rx), w)
    if y0 >= y1 or x0 >= x1 or rx <= 0 or ry <= 0:
        return None
    r2 = ((np.arange(x0, x1)[None, :] + 0.5 - cu) / rx) ** 2 + ((np.arange(y0, y1)[:, None] + 0.5 - cv) / ry) ** 2
    return slice(y0, y1), slice(x0, x1), r2


def _paint(cv: _Canvas, region: Region | None, colour: RGB | np.ndarray, label: int, depth: float | np.ndarray) -> None:
    """Write colour, label and depth through one mask, which is what keeps the labels exact."""
    if region is None:
        return
    ys, xs, m = region
    sel = ... if m is None else m
    cv.img[ys, xs][sel] = colour
    cv.lab[ys, xs][sel] = label
    cv.depth[ys, xs][sel] = depth


def _face(view: _View, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> list[tuple[float, float]] | None:
    """Project a box face along the street (x0 == x1: wall, y0 == y1: ground or roof), near-clipped so faces beside the camera still draw."""
    z0 = max(z0, view.t + _NEAR)
    if z1 <= z0:
        return None
    return [view.project(x0, y0, z0), view.project(x0, y0, z1), view.project(x1, y1, z1), view.project(x1, y1, z0)]


def _wall_coords(view: _View, region: Region, x: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World z, height and depth of the painted pixels of a wall at lateral ``x``, for textures fixed to it."""
    rows, cols = np.nonzero(cast(np.ndarray, region[2]))  # a polygon's region always carries its mask
    u, v = cols + region[1].start + 0.5, rows + region[0].start + 0.5
    d = np.minimum(view.f * abs(x) / np.maximum((u - view.cx) * np.sign(x), 1e-3), 1e4)
    return view.t + d, view.cam - (v - view.yh) * d / view.f, d


def _shape(cv: _Canvas, sp: _Spot, pts: Sequence[tuple[float, float]], colour: RGB, label: int) -> None:
    """Paint a convex outline given in metres around a ground spot."""
    _paint(cv, _polygon_region([sp.pt(x, y) for x, y in pts], *cv.lab.shape), colour, label, sp.d)


def _rect(cv: _Canvas, sp: _Spot, x0: float, x1: float, y0: float, y1: float, colour: RGB, label: int) -> None:
    """Paint an axis-aligned box given in metres around a ground spot (the cheap, common case)."""
    (u0, v0), (u1, v1) = sp.pt(x0, y0), sp.pt(x1, y1)
    _paint(cv, _rect_region(u0, u1, v0, v1, *cv.lab.shape), colour, label, sp.d)


def _ellipse(cv: _Canvas, sp: _Spot, x: float, y: float, rx: float, ry: float, colour: RGB, label: int, hole: float = 0.0) -> None:
    """Paint an ellipse given in metres around a ground spot, minus an optional concentric hole (wheels)."""
    box = _ellipse_r2(*sp.pt(x, y), rx * sp.s, ry * sp.s, *cv.lab.shape)
    if box is not None:
        _paint(cv, (box[0], box[1], (box[2] <= 1.0) & (box[2] >= hole * hole)), colour, label, sp.d)


def _bar(cv: _Canvas, sp: _Spot, a: tuple[float, float], b: tuple[float, float], width: float, colour: RGB, label: int) -> None:
    """Paint a thick segment (limbs, bike frames), at least a pixel wide so it never breaks up."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    n = max(width, 1.0 / sp.s) / 2 / max(np.hypot(dx, dy), 1e-9)
    ox, oy = -dy * n, dx * n
    _shape(cv, sp, [(a[0] + ox, a[1] + oy), (b[0] + ox, b[1] + oy), (b[0] - ox, b[1] - oy), (a[0] - ox, a[1] - oy)], colour, label)


def _draw_sky(cv: _Canvas, scene: Scene, view: _View, rows: int) -> None:
    """Vertical gradient with soft elliptical clouds; all of it labelled sky (label 0, depth 0: no haze)."""
    top, low = np.array(scene.sky, np.float32)
    s = ((np.arange(rows, dtype=np.float32) + 0.5) / max(view.yh, 1.0))[:, None, None]
    cv.img[:rows] = top + (low - top) * s
    cloud = np.float32(min(255.0, 1.15 * low.max()))
    for u, v, rx, ry, opacity in scene.clouds:
        box = _ellipse_r2(u * view.w, v * view.yh, rx * view.w, ry * view.w, rows, view.w)
        if box is not None:
            block = cv.img[box[0], box[1]]
            block += (cloud - block) * (opacity * np.sqrt(np.clip(1.0 - box[2], 0.0, 1.0)))[..., None]


def _draw_ground(cv: _Canvas, scene: Scene, view: _View, rows: int) -> None:
    """Road between its edges, pavement elsewhere, dashed lane marks; textures use world coords so they flow."""
    v = np.arange(rows, view.h)[:, None] + 0.5
    d = np.minimum(view.f * view.cam / (v - view.yh), 1e4)
    x = (np.arange(view.w)[None, :] + 0.5 - view.cx) * d / view.f
    z = view.t + d
    road = (x >= scene.road[0]) & (x <= scene.road[1])
    cell = np.where(road, 0.4, 0.8)  # fine asphalt grain, coarser paving slabs
    shade = 0.9 + _hash(np.floor(x / cell), np.floor(z / cell)) * np.where(road, 0.12, 0.25).astype(np.float32)
    shade += 0.2 * (~road & (np.minimum(np.abs(x - scene.road[0]), np.abs(x - scene.road[1])) < 0.25))  # kerb
    img = np.array([scene.pavement_colour, scene.road_colour], np.float32)[road.view(np.uint8)] * shade[..., None]
    half = np.maximum(0.075, 0.6 * d / view.f)
    dashed = _frac(z / scene.dash[0]) < scene.dash[1]
    for mx, colour, solid in scene.marks:
        img[(np.abs(x - mx) < half) & (solid | dashed)] = colour
    cv.img[rows:] = img
    cv.lab[rows:] = np.where(road, ROAD, PAVEMENT)
    cv.depth[rows:] = d


def _draw_facade(cv: _Canvas, view: _View, fa: _Facade) -> None:
    """Paint a building wall in perspective; windows sit at world positions, so they slide with parallax."""
    reg = _polygon_region(_face(view, fa.x, fa.x, 0.0, fa.height, fa.z0, fa.z1), view.h, view.w)
    if reg is None:
        return
    z, y, d = _wall_coords(view, reg, fa.x)
    bay, storey = np.floor((z - fa.z0) / fa.bay), np.floor(y / fa.storey)
    window = (np.abs(_frac((z - fa.z0) / fa.bay) - 0.5) < 0.22) & (np.abs(_frac(y / fa.storey) - 0.55) < 0.25) & (y < fa.height - 0.8)
    lit = 0.7 + 0.6 * _hash(bay, storey)[:, None]
    colour = np.where(window[:, None], np.array(fa.window, np.float32) * lit, np.array(fa.colour, np.float32))
    colour[y > fa.height - 0.5] *= 0.7  # cornice
    _paint(cv, reg, colour, BUILDING, d)


def _draw_fence(cv: _Canvas, view: _View, fe: _Fence) -> None:
    """Low slatted band along the back of the pavement."""
    reg = _polygon_region(_face(view, fe.x, fe.x, 0.0, fe.height, fe.z0, fe.z1), view.h, view.w)
    if reg is None:
        return
    z, y, d = _wall_coords(view, reg, fe.x)
    gap = (_frac(z / 0.3) < 0.35) & (y < fe.height - 0.12)
    _paint(cv, reg, np.where(gap[:, None], np.array(fe.colour, np.float32) * 0.6, np.array(fe.colour, np.float32)), FENCE, d)


def _draw_tree(cv: _Canvas, view: _View, p: _Prop) -> None:
    """Trunk and a crown of three blobs; both are labelled tree, as in CamVid."""
    trunk_h, r, ax, ay, bx, by = p.params
    bark, leaves = p.colours
    sp = view.spot(p.x, p.z)
    hw = max(0.13, 0.5 / sp.s)
    _rect(cv, sp, -hw, hw, 0.0, trunk_h + r, bark, TREE)
    top = trunk_h + r
    _ellipse(cv, sp, ax * r, top + ay * r, 0.7 * r, 0.65 * r, cast(RGB, tuple(c * 0.8 for c in leaves)), TREE)
    _ellipse(cv, sp, 0.0, top, r, 0.9 * r, leaves, TREE)
    _ellipse(cv, sp, bx * r, top + by * r, 0.6 * r, 0.55 * r, cast(RGB, tuple(c * 1.15 for c in leaves)), TREE)


def _draw_pole(cv: _Canvas, view: _View, p: _Prop) -> None:
    """Pole (>= 1 px wide so it never flickers away) with a sign on top, or a street-lamp arm."""
    height, kind, size = p.params
    metal, plate = p.colours
    sp = view.spot(p.x, p.z)
    hw = max(0.06, 0.5 / sp.s)
    _rect(cv, sp, -hw, hw, 0.0, height, metal, POLE)
    if kind == 0:
        arm = -np.sign(p.x) * 1.3
        _rect(cv, sp, 0.0, arm, height - 0.12, height, metal, POLE)
        _rect(cv, sp, arm - 0.25, arm + 0.25, height - 0.22, height - 0.05, metal, POLE)
    elif kind == 1:
        _rect(cv, sp, -size / 2, size / 2, height - size, height, plate, SIGN)
    elif kind == 2:
        _ellipse(cv, sp, 0.0, height - size / 2, size / 2, size / 2, plate, SIGN)
    else:
        _shape(cv, sp, [(-size / 2, height - size), (size / 2, height - size), (0.0, height)], plate, SIGN)


def _draw_car(cv: _Canvas, view: _View, p: _Prop) -> None:
    """Shadow, near side in perspective, then the rear (or front) face: a box with windows, wheels and lights."""
    w, h, facing = p.params
    body, glass = p.colours
    x0, x1, z0, z1 = p.x - w / 2, p.x + w / 2, p.z, p.z + p.length
    depth = max(z0 - view.t, _NEAR)
    detailed = view.f * h / depth >= _DETAIL_PX
    if detailed:
        shadow = _polygon_region(_face(view, x0 - 0.2, x1 + 0.2, 0.0, 0.0, z0 - 0.3, z1 + 0.3), view.h, view.w)
        if shadow is not None:
            ys, xs, m = shadow
            block = cv.img[ys, xs]
            block[m & ((cv.lab[ys, xs] == ROAD) | (cv.lab[ys, xs] == PAVEMENT))] *= 0.55
    side = x0 if p.x > 0 else x1
    _paint(cv, _polygon_region(_face(view, side, side, 0.3, 1.05, z0, z1), view.h, view.w), cast(RGB, tuple(c * 0.8 for c in body)), CAR, depth)
    if detailed:
        inward = 0.15 if p.x > 0 else -0.15
        _paint(cv, _polygon_region(_face(view, side + inward, side + inward, 1.05, h - 0.05, z0 + 0.9, z1 - 1.0), view.h, view.w), glass, CAR, depth)
        roof = _face(view, x0 + 0.3, x1 - 0.3, h, h, z0, z1 - 1.0)
        _paint(cv, _polygon_region(roof, view.h, view.w), cast(RGB, tuple(min(c * 1.1, 255.0) for c in body)), CAR, depth)
        for wz in (z0 + 0.75, z1 - 0.75):
            if wz - view.t > _NEAR:
                _ellipse(cv, view.spot(side, wz), 0.0, 0.32, 0.16, 0.32, (25.0, 25.0, 25.0), CAR)
    if z0 - view.t <= _NEAR:
        return
    sp = view.spot(p.x, z0)
    a = w / 2
    _rect(cv, sp, -a, a, 0.3, 1.05, body, CAR)
    _shape(cv, sp, [(-a + 0.1, 1.05), (a - 0.1, 1.05), (a - 0.3, h), (-a + 0.3, h)], body, CAR)
    _shape(cv, sp, [(-a + 0.22, 1.12), (a - 0.22, 1.12), (a - 0.38, h - 0.07), (-a + 0.38, h - 0.07)], glass, CAR)
    if detailed:
        _rect(cv, sp, -a, a, 0.3, 0.45, cast(RGB, tuple(c * 0.6 for c in body)), CAR)
        lamp = (200.0, 30.0, 30.0) if facing > 0 else (240.0, 235.0, 200.0)
        for s in (-1.0, 1.0):
            _rect(cv, sp, s * (a - 0.05), s * (a - 0.35), 0.0, 0.35, (25.0, 25.0, 25.0), CAR)
            _rect(cv, sp, s * (a - 0.05), s * (a - 0.35), 0.8, 0.95, lamp, CAR)


def _draw_pedestrian(cv: _Canvas, view: _View, p: _Prop) -> None:
    """Standing person: legs, torso, arms and head, scaled by height so children and adults both occur."""
    (k,) = p.params
    legs, shirt, skin = p.colours
    sp = view.spot(p.x, p.z)
    if sp.s * p.size >= _DETAIL_PX:
        for s in (-1.0, 1.0):
            _rect(cv, sp, s * 0.03 * k, s * 0.16 * k, 0.0, 0.88 * k, legs, PEDESTRIAN)
            _rect(cv, sp, s * 0.2 * k, s * 0.28 * k, 0.8 * k, 1.42 * k, cast(RGB, tuple(c * 0.85 for c in shirt)), PEDESTRIAN)
    else:
        _rect(cv, sp, -0.16 * k, 0.16 * k, 0.0, 0.88 * k, legs, PEDESTRIAN)
    _rect(cv, sp, -0.2 * k, 0.2 * k, 0.85 * k, 1.45 * k, shirt, PEDESTRIAN)
    _ellipse(cv, sp, 0.0, 1.58 * k, 0.1 * k, 0.13 * k, skin, PEDESTRIAN)


def _draw_cyclist(cv: _Canvas, view: _View, p: _Prop) -> None:
    """Bicycle side-on (two rings and a frame) with its rider: the silhouette that sets cyclists apart."""
    k, facing = p.params
    bike, shirt, legs, skin = p.colours
    sp = view.spot(p.x, p.z)
    detailed = sp.s * p.size >= _DETAIL_PX

    def at(dx: float, dy: float) -> tuple[float, float]:
        return facing * dx * k, dy * k

    rear, front, seat, bars, crank = at(-0.55, 0.34), at(0.55, 0.34), at(-0.2, 0.95), at(0.45, 1.0), at(0.0, 0.34)
    shoulder, knee = at(0.2, 1.5), at(0.15, 0.68)
    rim = 0.34 * k
    for hub in (rear, front):
        _ellipse(cv, sp, hub[0], hub[1], rim, rim, (30.0, 30.0, 30.0), CYCLIST, hole=max(0.0, 1 - max(0.2, 1 / (rim * sp.s))))
    if detailed:
        for a, b in ((rear, seat), (seat, crank), (rear, crank), (crank, bars), (seat, bars), (bars, front)):
            _bar(cv, sp, a, b, 0.05 * k, bike, CYCLIST)
        _bar(cv, sp, seat, knee, 0.14 * k, legs, CYCLIST)
        _bar(cv, sp, knee, at(0.05, 0.36), 0.12 * k, legs, CYCLIST)
        _bar(cv, sp, shoulder, bars, 0.09 * k, shirt, CYCLIST)
    else:
        _bar(cv, sp, seat, crank, 0.14 * k, legs, CYCLIST)
    _bar(cv, sp, seat, shoulder, 0.3 * k, shirt, CYCLIST)
    _ellipse(cv, sp, *at(0.28, 1.7), 0.12 * k, 0.13 * k, skin, CYCLIST)


_DRAWERS = {"tree": _draw_tree, "pole": _draw_pole, "car": _draw_car, "pedestrian": _draw_pedestrian, "cyclist": _draw_cyclist}


def _colour(rng: np.random.Generator, choices: Sequence[tuple[int, int, int]], jitter: float = 14.0) -> RGB:
    """One of a few plausible base colours, jittered so no two objects are quite alike."""
    base = np.asarray(choices[int(rng.integers(len(choices)))], np.float64)
    r, g, b = np.clip(base + rng.uniform(-jitter, jitter, 3), 0, 255)
    return float(r), float(g), float(b)


def _positions(rng: np.random.Generator, mean_gap: float, min_gap: float, start: float = -30.0) -> np.ndarray:
    """Places along the street with random gaps (never closer than ``min_gap``) up to its far end."""
    n = int((STREET_LENGTH - start) / mean_gap * 1.5) + 8
    z = start + np.cumsum(min_gap + rng.exponential(max(mean_gap - min_gap, 0.1), n))
    return z[z < STREET_LENGTH]


def _buildings(rng: np.random.Generator, line: float, side: float) -> tuple[list[_Facade], list[_Fence]]:
    """Lay out a row of facades behind one pavement, with fenced gaps between some of them."""
    facades, fences = [], []
    fence_colour = _colour(rng, _FENCE_COLOURS)
    z = -40.0
    while z < STREET_LENGTH:
        if rng.random() < 0.3:
            gap = rng.uniform(3.0, 15.0)
            if rng.random() < 0.8:
                fences.append(_Fence(line, z, z + gap, rng.uniform(0.9, 1.6), fence_colour))
            z += gap
        length, setback, height = rng.uniform(8.0, 30.0), rng.uniform(0.0, 2.5), rng.uniform(5.0, 24.0)
        colours = (_colour(rng, _FACADE_COLOURS, 20.0), _colour(rng, ((60, 75, 95), (40, 45, 55))))
        facades.append(_Facade(line + side * setback, z, z + length, height, *colours, rng.uniform(1.8, 3.5), rng.uniform(2.8, 3.6)))
        if rng.random() < 0.35:
            fences.append(_Fence(line, z, z + length, rng.uniform(0.9, 1.4), fence_colour))
        z += length
    return facades, fences


def _props(
    rng: np.random.Generator, lanes: int, lane_w: float, cam_lane: int, left: float, road: tuple[float, float], parking: np.ndarray, pavement: np.ndarray
) -> list[_Prop]:
    """Place cars in the other lanes and parking strips, and trees, poles, pedestrians and cyclists along both sides."""
    props: list[_Prop] = []

    def car(x: float, z: float, facing: float) -> None:
        van = rng.random() < 0.15
        length, width = rng.uniform(4.8, 6.0) if van else rng.uniform(3.9, 4.8), rng.uniform(1.7, 1.95)
        height = rng.uniform(1.9, 2.3) if van else rng.uniform(1.4, 1.65)
        colours = (_colour(rng, _CAR_COLOURS), _colour(rng, ((45, 55, 70), (25, 30, 35)), 8.0))
        props.append(_Prop("car", x, z, 1.6, length, (width, height, facing), colours))

    two_way = lanes == 2 or rng.random() < 0.5
    for lane in sorted(set(range(lanes)) - {cam_lane}):  # never in the camera's own lane
        for z in _positions(rng, rng.uniform(20.0, 60.0), 7.0):
            car(left + (lane + 0.5) * lane_w, z, -1.0 if two_way and 2 * lane < lanes else 1.0)
    for side, edge in enumerate(road):
        out = 1.0 if side else -1.0  # direction from the road towards this side's buildings
        if parking[side]:
            for z in _positions(rng, rng.uniform(7.0, 20.0), 5.2):
                car(edge - out * 1.15, z, 1.0)
        for z in _positions(rng, rng.uniform(8.0, 25.0), 4.0) if rng.random() < 0.75 else ():
            trunk, r = rng.uniform(1.8, 3.2), rng.uniform(1.2, 2.5)
            colours: tuple[RGB, ...] = (_colour(rng, ((90, 65, 45), (70, 60, 50))), _colour(rng, ((60, 100, 40), (40, 80, 35), (90, 120, 50)), 18.0))
            props.append(_Prop("tree", edge + out * rng.uniform(0.7, 1.3), z, trunk + 2 * r, 0.0, (trunk, r, *rng.uniform(-0.7, 0.7, 4)), colours))
        for z in _positions(rng, rng.uniform(8.0, 20.0), 3.0):
            kind = int(rng.choice([0, 1, 1, 2, 2, 3]))  # lamp, square, round or triangular sign
            height = rng.uniform(5.5, 8.0) if kind == 0 else rng.uniform(2.6, 3.4)
            colours = (_colour(rng, ((110, 110, 115), (60, 65, 60))), _colour(rng, _SIGN_COLOURS))
            props.append(_Prop("pole", edge + out * 0.35, z, height, 0.0, (height, kind, rng.uniform(0.6, 1.0)), colours))
        for z in _positions(rng, rng.uniform(3.0, 12.0), 0.8):
            k, x = rng.uniform(0.65, 1.1), edge + out * rng.uniform(0.5, pavement[side] - 0.4)
            props.append(_Prop("pedestrian", x, z, 1.75 * k, 0.0, (k,), (_colour(rng, _CLOTHES), _colour(rng, _CLOTHES), _colour(rng, _SKIN, 8.0))))
        x = left + lanes * lane_w - 0.6 if side else left + 0.6  # the outer edge of the traffic lanes
        for z in _positions(rng, rng.uniform(10.0, 30.0), 4.0) if abs(x) > 1.4 else ():
            colours = (_colour(rng, _CAR_COLOURS), _colour(rng, _CLOTHES), _colour(rng, _CLOTHES), _colour(rng, _SKIN, 8.0))
            props.append(_Prop("cyclist", x, z, 1.8, 0.0, (rng.uniform(0.9, 1.1), float(rng.choice([-1.0, 1.0]))), colours))
    return props


def make_scene(seed: int) -> Scene:
    """Draw the whole layout of one street (camera, road, buildings, objects, light) from a non-negative seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG]))
    lanes, lane_w = int(rng.choice([2, 2, 3, 4])), rng.uniform(3.0, 3.6)
    cam_lane = int(rng.integers(lanes))
    left = -(cam_lane + 0.5) * lane_w + rng.uniform(-0.3, 0.3)  # left edge of the traffic lanes
    parking = rng.random(2) < 0.45
    road = (float(left - 2.3 * parking[0]), float(left + lanes * lane_w + 2.3 * parking[1]))
    pavement = rng.uniform(2.5, 6.0, 2)
    white = (235.0, 235.0, 230.0)
    centre = ((225.0, 185.0, 40.0) if rng.random() < 0.4 else white, bool(rng.random() < 0.3))  # colour, solid
    marks = tuple((left + k * lane_w, *(centre if 2 * k == lanes else (white, False))) for k in range(1, lanes))
    props = _props(rng, lanes, lane_w, cam_lane, left, road, parking, pavement)
    facades, fences = _buildings(rng, road[0] - pavement[0], -1.0)
    more_facades, more_fences = _buildings(rng, road[1] + pavement[1], 1.0)
    blue, grey, pave = rng.uniform(), rng.uniform(70, 110), rng.uniform(130, 180)
    clouds = tuple(
        (rng.uniform(), rng.uniform(0.05, 0.75), rng.uniform(0.06, 0.2), rng.uniform(0.02, 0.06), rng.uniform(0.4, 0.9)) for _ in range(int(rng.integers(0, 6)))
    )
    return Scene(
        seed=seed,
        horizon=rng.uniform(0.35, 0.5),
        focal=rng.uniform(0.75, 1.0),
        centre=rng.uniform(0.45, 0.55),
        cam_height=rng.uniform(1.2, 1.7),
        road=road,
        marks=marks,
        dash=(rng.uniform(6.0, 12.0), rng.uniform(0.3, 0.5)),
        road_colour=(grey, grey, grey + rng.uniform(-5, 8)),
        pavement_colour=(pave, pave * 0.97, pave * 0.92),
        sky=((140 - 80 * blue, 145 - 25 * blue, 150 + 50 * blue), (200 - 25 * blue, 200 + 5 * blue, 205 + 30 * blue)),  # grey to blue
        clouds=clouds,
        facades=tuple(sorted(facades + more_facades, key=lambda f: -f.z0)),
        fences=tuple(sorted(fences + more_fences, key=lambda f: -f.z0)),
        props=tuple(sorted(props, key=lambda p: -p.z)),
        fog=rng.uniform(150.0, 400.0),
        light=(rng.uniform(0.75, 1.2), rng.uniform(0.8, 1.2)),
        tint=tuple(rng.uniform(0.92, 1.08, 3)),
        grain=rng.uniform(0.6, 1.4),
    )


def _finish(cv: _Canvas, scene: Scene) -> np.ndarray:
    """Haze by depth, per-class texture noise, then the scene's brightness, contrast and tint."""
    h, w = cv.lab.shape
    sky = np.array(scene.sky[1], np.float32)
    rng = np.random.default_rng(np.random.SeedSequence([scene.seed, _TAG, h, w]))
    noise = rng.standard_normal((h // 2 + 1, w // 2 + 1), np.float32).repeat(2, 0).repeat(2, 1)[:h, :w]
    img = cv.img
    img -= sky
    img *= np.exp(-cv.depth / np.float32(scene.fog))[..., None]
    img += sky
    img += (noise * (_GRAIN * np.float32(scene.grain))[cv.lab])[..., None]
    brightness, contrast = scene.light
    gain = np.array(scene.tint, np.float32) * np.float32(brightness)
    img *= gain * np.float32(contrast)
    img += gain * np.float32(128.0 * (1.0 - contrast)) + np.float32(0.5)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def render(scene: Scene, height: int, width: int, t: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (H, W, 3) and label mask uint8 (H, W) with values 0..10; t = camera position in metres along the street (forward motion)."""
    if height < 16 or width < 16:
        raise InputError(f"scenes are at least 16x16 pixels, not {height}x{width}")
    view = _View(scene.focal * width, scene.centre * width, scene.horizon * height, scene.cam_height, t, height, width)
    cv = _Canvas(height, width)
    sky_rows = min(int(np.floor(view.yh + 0.5)), height)
    _draw_sky(cv, scene, view, sky_rows)
    _draw_ground(cv, scene, view, sky_rows)
    far = 3.0 * scene.fog  # haze hides everything beyond this
    for fa in scene.facades:
        if fa.z1 - t > _NEAR and fa.z0 - t < far:
            _draw_facade(cv, view, fa)
    for fe in scene.fences:
        if fe.z1 - t > _NEAR and fe.z0 - t < far:
            _draw_fence(cv, view, fe)
    for p in scene.props:
        d = p.z - t  # <= 0 for a car the camera is passing, whose side still shows
        big_enough = d <= 0 or view.f * p.size / d >= 3.0  # under 3 px tall is not worth drawing
        if p.z + p.length - t > _NEAR and d < far and big_enough:
            _DRAWERS[p.kind](cv, view, p)
    return _finish(cv, scene), cv.lab


def render_image(seed: int, height: int = 360, width: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """One still (image, mask) of scene ``seed`` from the start of its street."""
    return render(make_scene(seed), height, width, 0.0)


def render_video(seed: int, frames: int, height: int, width: int, speed: float = 1.0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image, mask) frames of scene ``seed`` with the camera moving forward ``speed`` metres per frame."""
    scene = make_scene(seed)
    for k in range(frames):
        yield render(scene, height, width, k * speed)


def _dataset_seed(seed: int, index: int) -> int:
    """Give dataset image ``index`` its own scene seed, drawn from (seed, index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_dataset(out_dir: Path, count: int, height: int, width: int, seed: int = 0) -> None:
    """Write out_dir/images/NNNNN.png (RGB) and out_dir/masks/NNNNN.png (8-bit class index, same stem) for `count` scenes, image k drawn from seed (seed, k)."""
    from PIL import Image

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        image, mask = render_image(_dataset_seed(seed, k), height, width)
        Image.fromarray(image, "RGB").save(out_dir / "images" / f"{k:05d}.png")
        Image.fromarray(mask, "L").save(out_dir / "masks" / f"{k:05d}.png")
