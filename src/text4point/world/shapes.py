"""Parametric furniture: each ScanNet class is built from parts with its own size range, palette and texture.

An object is built in a local frame: footprint x in [0, w], y in [0, d], z up from its base; the
front faces -y and the back (y = d) is what goes against a wall. ``room.py`` rotates it by a
multiple of 90 degrees and places it, so every object's bounding box stays axis-aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

from .materials import Material

# (w, d, h) ranges in metres, whether the object goes against a wall, and its palette/textures.
SPECS: dict[str, dict] = {
    "cabinet": dict(size=((0.6, 1.6), (0.4, 0.6), (0.8, 2.0)), wall=True),
    "bed": dict(size=((1.0, 1.8), (1.9, 2.2), (0.45, 0.6)), wall=True),
    "chair": dict(size=((0.42, 0.55), (0.45, 0.55), (0.8, 1.0)), wall=False),
    "sofa": dict(size=((1.6, 2.4), (0.8, 1.0), (0.75, 0.95)), wall=True),
    "table": dict(size=((0.8, 1.8), (0.6, 1.0), (0.70, 0.78)), wall=False),
    "desk": dict(size=((1.0, 1.6), (0.55, 0.8), (0.72, 0.77)), wall=True),
    "bookshelf": dict(size=((0.6, 1.2), (0.28, 0.4), (1.2, 2.0)), wall=True),
    "picture": dict(size=((0.4, 1.0), (0.03, 0.04), (0.3, 0.8)), wall=True),
    "counter": dict(size=((1.2, 2.6), (0.55, 0.65), (0.88, 0.92)), wall=True),
    "curtain": dict(size=((0.5, 0.8), (0.08, 0.12), (2.0, 2.3)), wall=True),
    "refrigerator": dict(size=((0.6, 0.9), (0.6, 0.75), (1.5, 1.9)), wall=True),
    "shower curtain": dict(size=((0.8, 1.6), (0.05, 0.06), (1.8, 2.0)), wall=False),
    "toilet": dict(size=((0.38, 0.45), (0.65, 0.75), (0.75, 0.85)), wall=True),
    "sink": dict(size=((0.45, 0.6), (0.4, 0.5), (0.8, 0.9)), wall=True),
    "bathtub": dict(size=((1.5, 1.8), (0.7, 0.8), (0.5, 0.6)), wall=True),
    "otherfurniture": dict(size=((0.4, 0.9), (0.4, 0.9), (0.4, 0.9)), wall=False),
}

PALETTES = {
    "wood": [(0.55, 0.36, 0.2), (0.7, 0.5, 0.3), (0.42, 0.26, 0.14), (0.8, 0.65, 0.45), (0.3, 0.18, 0.1)],
    "white": [(0.92, 0.92, 0.9), (0.85, 0.86, 0.88), (0.95, 0.93, 0.88)],
    "grey": [(0.5, 0.5, 0.52), (0.35, 0.35, 0.37), (0.65, 0.65, 0.66)],
    "fabric": [(0.25, 0.35, 0.6), (0.6, 0.2, 0.2), (0.3, 0.5, 0.3), (0.7, 0.6, 0.45), (0.45, 0.45, 0.5),
               (0.2, 0.2, 0.22), (0.8, 0.5, 0.2)],
    "metal": [(0.75, 0.76, 0.78), (0.6, 0.6, 0.62), (0.85, 0.85, 0.87)],
    "curtain": [(0.8, 0.7, 0.5), (0.3, 0.3, 0.55), (0.6, 0.25, 0.3), (0.85, 0.85, 0.8), (0.35, 0.5, 0.45)],
    "shower": [(0.9, 0.9, 0.95), (0.6, 0.8, 0.9), (0.95, 0.85, 0.9)],
    "art": [(0.8, 0.3, 0.2), (0.2, 0.4, 0.7), (0.9, 0.8, 0.3), (0.3, 0.6, 0.4), (0.6, 0.3, 0.6)],
}


@dataclass
class Obj:
    cls: str
    size: tuple[float, float, float]                 # w, d, h of the local bounding box
    parts: list[tuple[trimesh.Trimesh, Material]] = field(default_factory=list)

    def box(self, lo, hi, mat: Material) -> None:
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        self.parts.append((trimesh.creation.box(bounds=np.stack([lo, hi])), mat))

    def cyl(self, x, y, z0, z1, r, mat: Material, sections: int = 12) -> None:
        m = trimesh.creation.cylinder(radius=r, height=z1 - z0, sections=sections)
        m.apply_translation((x, y, (z0 + z1) / 2))
        self.parts.append((m, mat))


def _pick(rng: np.random.Generator, palette: str) -> tuple[float, float, float]:
    c = np.array(PALETTES[palette][rng.integers(len(PALETTES[palette]))])
    return tuple(np.clip(c * rng.uniform(0.9, 1.1, 3), 0, 1))


def _mat(rng, palette, texture, axis=None) -> Material:
    return Material(_pick(rng, palette), texture, scale=float(rng.uniform(0.8, 1.25)),
                    axis=int(rng.integers(2)) if axis is None else axis)


def sample_size(cls: str, rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(rng.uniform(lo, hi)) for lo, hi in SPECS[cls]["size"])


def build(cls: str, size: tuple[float, float, float], rng: np.random.Generator) -> Obj:
    """Build an object of class ``cls`` with bounding box ``size`` (w, d, h) from its parts."""
    w, d, h = size
    o = Obj(cls, size)
    if cls == "cabinet":
        body = _mat(rng, rng.choice(["wood", "white", "grey"]), "wood" if rng.random() < 0.6 else "paint")
        o.box((0, 0.02, 0), (w, d, h), body)
        n = max(1, int(round(w / 0.45)))
        door = Material(tuple(np.clip(np.array(body.color) * 1.1, 0, 1)), body.texture, body.scale, body.axis)
        handle = _mat(rng, "metal", "metal")
        for i in range(n):
            x0, x1 = i * w / n + 0.01, (i + 1) * w / n - 0.01
            o.box((x0, 0.0, 0.05), (x1, 0.02, h - 0.03), door)
            hx = x1 - 0.05 if i % 2 == 0 else x0 + 0.03
            o.box((hx, -0.025, h * 0.45), (hx + 0.02, 0.0, h * 0.45 + 0.12), handle)
    elif cls == "bed":
        frame = _mat(rng, "wood", "wood")
        o.box((0, 0, 0.1), (w, d, 0.3), frame)
        for x in (0.03, w - 0.08):
            for y in (0.03, d - 0.08):
                o.box((x, y, 0), (x + 0.05, y + 0.05, 0.1), frame)
        o.box((0.03, 0.03, 0.3), (w - 0.03, d - 0.05, h), _mat(rng, "white", "fabric"))
        o.box((0.02, 0.02, h - 0.02), (w - 0.02, d * 0.72, h + 0.04), _mat(rng, "fabric", "fabric"))
        pillow = _mat(rng, "white", "fabric")
        npil = 2 if w > 1.3 else 1
        for i in range(npil):
            x0 = 0.08 + i * (w - 0.16) / npil
            o.box((x0, d - 0.5, h), (x0 + (w - 0.16) / npil - 0.06, d - 0.12, h + 0.14), pillow)
        o.box((0, d - 0.06, 0), (w, d, h + rng.uniform(0.45, 0.65)), frame)
    elif cls == "chair":
        seat_h = rng.uniform(0.42, 0.48)
        frame = _mat(rng, rng.choice(["wood", "metal", "grey"]), rng.choice(["wood", "metal", "paint"]))
        r = 0.02
        for x in (r + 0.01, w - r - 0.01):
            for y in (r + 0.01, d - r - 0.01):
                o.cyl(x, y, 0, seat_h - 0.04, r, frame, 8)
        seat = _mat(rng, "fabric", rng.choice(["fabric", "leather"]))
        o.box((0, 0, seat_h - 0.04), (w, d, seat_h), seat)
        o.box((0.01, d - 0.04, seat_h), (w - 0.01, d, h), seat if rng.random() < 0.5 else frame)
    elif cls == "sofa":
        fab = _mat(rng, "fabric", rng.choice(["fabric", "leather"]))
        arm = rng.uniform(0.15, 0.25)
        seat_h = rng.uniform(0.4, 0.48)
        o.box((0, 0, 0.08), (w, d, seat_h - 0.12), fab)
        feet = _mat(rng, "wood", "wood")
        for x in (0.05, w - 0.1):
            for y in (0.05, d - 0.1):
                o.box((x, y, 0), (x + 0.05, y + 0.05, 0.08), feet)
        ncush = 2 if w < 2.0 else 3
        cw = (w - 2 * arm) / ncush
        for i in range(ncush):
            o.box((arm + i * cw + 0.01, 0.02, seat_h - 0.12), (arm + (i + 1) * cw - 0.01, d - 0.2, seat_h), fab)
        o.box((arm, d - 0.2, seat_h - 0.12), (w - arm, d, h), fab)
        for x0 in (0, w - arm):
            o.box((x0, 0, 0.08), (x0 + arm, d, seat_h + 0.18), fab)
    elif cls in ("table", "desk"):
        top = _mat(rng, rng.choice(["wood", "white", "grey"]), "wood" if rng.random() < 0.7 else "paint")
        t = rng.uniform(0.025, 0.045)
        o.box((0, 0, h - t), (w, d, h), top)
        if cls == "table" or rng.random() < 0.4:
            leg = top if rng.random() < 0.5 else _mat(rng, "metal", "metal")
            for x in (0.03, w - 0.08):
                for y in (0.03, d - 0.08):
                    o.box((x, y, 0), (x + 0.05, y + 0.05, h - t), leg)
        else:
            o.box((0, 0.05, 0), (0.03, d, h - t), top)
            dw = rng.uniform(0.35, 0.45)
            o.box((w - dw, 0.05, 0), (w, d, h - t), top)
            handle = _mat(rng, "metal", "metal")
            for k in range(3):
                z = (k + 0.5) * (h - t) / 3
                o.box((w - dw / 2 - 0.05, 0.03, z), (w - dw / 2 + 0.05, 0.05, z + 0.02), handle)
    elif cls == "bookshelf":
        wood = _mat(rng, rng.choice(["wood", "white"]), "wood")
        t = 0.02
        o.box((0, 0, 0), (t, d, h), wood)
        o.box((w - t, 0, 0), (w, d, h), wood)
        o.box((t, d - t, 0), (w - t, d, h), wood)
        nshelf = max(2, int(h / 0.35))
        for k in range(nshelf + 1):
            z = k * (h - t) / nshelf
            o.box((t, 0, z), (w - t, d - t, z + t), wood)
            if k < nshelf:  # books on the shelf
                x = t + 0.01
                while x < w - t - 0.05:
                    bw = rng.uniform(0.02, 0.05)
                    bh = rng.uniform(0.6, 0.95) * ((h - t) / nshelf - t)
                    o.box((x, rng.uniform(0.02, 0.06), z + t), (x + bw, d - t - 0.01, z + t + bh),
                          _mat(rng, rng.choice(["art", "fabric"]), "paint"))
                    x += bw + rng.uniform(0.0, 0.03)
    elif cls == "picture":
        frame = _mat(rng, rng.choice(["wood", "grey", "white"]), "wood")
        f = 0.03
        o.box((0, 0, 0), (w, d, f), frame)
        o.box((0, 0, h - f), (w, d, h), frame)
        o.box((0, 0, 0), (f, d, h), frame)
        o.box((w - f, 0, 0), (w, d, h), frame)
        canvas = Material(_pick(rng, "art"), rng.choice(["paint", "fabric", "wood"]), float(rng.uniform(0.3, 3.0)))
        o.box((f, 0.01, f), (w - f, d, h - f), canvas)
    elif cls == "counter":
        base = _mat(rng, rng.choice(["wood", "white", "grey"]), "paint")
        o.box((0, 0.05, 0), (w, d, h - 0.04), base)
        o.box((0, 0, h - 0.04), (w, d, h), _mat(rng, rng.choice(["grey", "white"]), rng.choice(["ceramic", "tile"])))
    elif cls == "curtain":
        cloth = _mat(rng, "curtain", "fabric")
        folds = max(3, int(w / 0.1))
        for k in range(folds):
            y0 = 0.0 if k % 2 == 0 else d * 0.5
            o.box((k * w / folds, y0, 0.02), ((k + 1) * w / folds + 0.005, y0 + d * 0.5, h), cloth)
    elif cls == "refrigerator":
        body = _mat(rng, rng.choice(["white", "metal"]), rng.choice(["paint", "metal"]))
        o.box((0, 0.02, 0), (w, d, h), body)
        split = h * rng.uniform(0.6, 0.7)
        o.box((0.01, 0, 0.02), (w - 0.01, 0.02, split - 0.01), body)
        o.box((0.01, 0, split + 0.01), (w - 0.01, 0.02, h - 0.01), body)
        handle = _mat(rng, "grey", "metal")
        o.box((w - 0.07, -0.04, split - 0.45), (w - 0.05, 0.0, split - 0.1), handle)
        o.box((w - 0.07, -0.04, split + 0.08), (w - 0.05, 0.0, split + 0.35), handle)
    elif cls == "shower curtain":
        cloth = _mat(rng, "shower", "fabric")
        z0 = 0.25
        folds = max(4, int(w / 0.12))
        for k in range(folds):
            y0 = 0.0 if k % 2 == 0 else d * 0.5
            o.box((k * w / folds, y0, z0), ((k + 1) * w / folds + 0.005, y0 + d * 0.5, h - 0.04), cloth)
        o.cyl(w / 2, d / 2, h - 0.04, h, 0.015, _mat(rng, "metal", "metal"), 8)  # rod stub (part of it)
        o.box((0, d / 2 - 0.012, h - 0.03), (w, d / 2 + 0.012, h), _mat(rng, "metal", "metal"))
    elif cls == "toilet":
        porc = Material((0.95, 0.95, 0.96), "ceramic")
        o.box((w * 0.2, d * 0.3, 0), (w * 0.8, d * 0.8, 0.35), porc)
        o.cyl(w / 2, d * 0.4, 0.25, 0.4, w / 2, porc, 16)
        o.box((0, d - 0.2, 0.35), (w, d, h), porc)
        o.box((w * 0.05, d * 0.05, 0.4), (w * 0.95, d * 0.75, 0.42), _mat(rng, "white", "ceramic"))
    elif cls == "sink":
        porc = Material((0.94, 0.94, 0.95), "ceramic")
        o.cyl(w / 2, d * 0.6, 0, h - 0.15, 0.08, porc, 12)
        o.box((0, 0, h - 0.15), (w, d, h - 0.12), porc)
        o.box((0, 0, h - 0.12), (0.03, d, h), porc)
        o.box((w - 0.03, 0, h - 0.12), (w, d, h), porc)
        o.box((0, 0, h - 0.12), (w, 0.03, h), porc)
        o.box((0, d - 0.05, h - 0.12), (w, d, h), porc)
        o.cyl(w / 2, d - 0.03, h, h + 0.12, 0.012, _mat(rng, "metal", "metal"), 8)
    elif cls == "bathtub":
        porc = Material((0.95, 0.95, 0.95), "ceramic")
        t = 0.07
        o.box((0, 0, 0), (w, d, 0.12), porc)
        o.box((0, 0, 0.12), (w, t, h), porc)
        o.box((0, d - t, 0.12), (w, d, h), porc)
        o.box((0, t, 0.12), (t, d - t, h), porc)
        o.box((w - t, t, 0.12), (w, d - t, h), porc)
    elif cls == "otherfurniture":
        kind = rng.integers(3)
        mat = _mat(rng, rng.choice(["wood", "fabric", "grey"]), rng.choice(["wood", "fabric", "leather"]))
        if kind == 0:  # ottoman
            o.box((0, 0, 0.05), (w, d, h), mat)
            for x in (0.02, w - 0.06):
                for y in (0.02, d - 0.06):
                    o.box((x, y, 0), (x + 0.04, y + 0.04, 0.05), mat)
        elif kind == 1:  # side table with a lower shelf
            o.box((0, 0, h - 0.03), (w, d, h), mat)
            o.box((0.03, 0.03, 0.12), (w - 0.03, d - 0.03, 0.14), mat)
            for x in (0.0, w - 0.04):
                for y in (0.0, d - 0.04):
                    o.box((x, y, 0), (x + 0.04, y + 0.04, h - 0.03), mat)
        else:  # stool
            o.cyl(w / 2, d / 2, h - 0.05, h, min(w, d) / 2, mat, 16)
            o.cyl(w / 2, d / 2, 0, h - 0.05, 0.04, _mat(rng, "metal", "metal"), 8)
    else:
        raise ValueError(f"no shape for class {cls!r}")
    return o
