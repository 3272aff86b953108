"""Surface materials: a base colour per part and a procedural texture evaluated at world positions.

Textures are functions of the 3D position, so the scene point cloud and every rendered frame see
the same pattern on the same surface (what makes pixel<->point correspondences meaningful).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEXTURES = ("paint", "wood", "fabric", "tile", "metal", "glass", "leather", "ceramic")


@dataclass(frozen=True)
class Material:
    color: tuple[float, float, float]  # linear RGB in [0, 1]
    texture: str
    scale: float = 1.0                 # spatial frequency multiplier of the pattern
    axis: int = 0                      # world axis of wood grain / stripes

    def __post_init__(self):
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}; expected one of {TEXTURES}")


def _hash_noise(p: np.ndarray, freq: float, salt: float) -> np.ndarray:
    """Value noise in [0, 1): a hash of the integer lattice cell, trilinearly interpolated."""
    q = p * freq
    i = np.floor(q)
    f = q - i
    f = f * f * (3 - 2 * f)

    def h(ix, iy, iz):
        v = np.sin(ix * 127.1 + iy * 311.7 + iz * 74.7 + salt) * 43758.5453
        return v - np.floor(v)

    x0, y0, z0 = i[:, 0], i[:, 1], i[:, 2]
    out = 0.0
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1 - f[:, 2]
                out = out + wx * wy * wz * h(x0 + dx, y0 + dy, z0 + dz)
    return out


def albedo(materials: list[Material], material_ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Textured surface colour (N,3) in [0,1] of points ``pos`` on parts with ``material_ids``."""
    base = np.array([m.color for m in materials], dtype=np.float64)[material_ids]
    mod = np.ones(len(pos))
    kinds = np.array([TEXTURES.index(m.texture) for m in materials])[material_ids]
    scale = np.array([m.scale for m in materials])[material_ids]
    axis = np.array([m.axis for m in materials])[material_ids]
    for k, name in enumerate(TEXTURES):
        sel = np.nonzero(kinds == k)[0]
        if sel.size == 0:
            continue
        p, s = pos[sel], scale[sel][:, None]
        if name == "paint":
            m = 0.95 + 0.08 * _hash_noise(p * s, 6.0, 1.0)
        elif name == "wood":
            along = p[np.arange(len(sel)), axis[sel]]
            across = p.sum(1) - along
            warp = 2.5 * _hash_noise(p * s, 3.0, 2.0)
            m = 0.78 + 0.22 * (0.5 + 0.5 * np.sin(across * 40.0 * s[:, 0] + warp + 0.3 * along))
        elif name == "fabric":
            weave = np.sin(p[:, 0] * 140 * s[:, 0]) * np.sin(p[:, 1] * 140 * s[:, 0] + p[:, 2] * 140 * s[:, 0])
            m = 0.88 + 0.06 * weave + 0.08 * _hash_noise(p, 9.0, 3.0)
        elif name == "tile":
            g = np.abs((p * (2.5 * s) + 0.5) % 1.0 - 0.5)  # distance to the nearest grout line, per axis
            grout = (np.sort(g, axis=1)[:, -2:] > 0.46).any(1)
            m = np.where(grout, 0.55, 0.97 + 0.05 * _hash_noise(p * (2.5 * s), 1.0, 4.0))
        elif name == "metal":
            m = 0.9 + 0.12 * np.sin(p[:, 2] * 60.0 + 4 * _hash_noise(p, 2.0, 5.0))
        elif name == "leather":
            m = 0.85 + 0.2 * _hash_noise(p * s, 25.0, 6.0)
        elif name == "ceramic":
            m = 1.0 + 0.02 * _hash_noise(p, 4.0, 7.0)
        else:  # glass
            m = 0.9 + 0.15 * _hash_noise(p, 1.5, 8.0)
        mod[sel] = m
    return np.clip(base * mod[:, None], 0.0, 1.0)


def shade(albedo_rgb: np.ndarray, pos: np.ndarray, normals: np.ndarray, lights: np.ndarray,
          view_dirs: np.ndarray | None = None) -> np.ndarray:
    """Ambient + Lambert shading from point lights (the room's ceiling lamps), in [0,1].

    With ``view_dirs`` (rays from the camera), normals are flipped to face the viewer, as a
    renderer of single-sided walls must; without, the unsigned cosine is used (baked colour for
    the scene point cloud, like a scan's vertex colours).
    """
    n = normals
    if view_dirs is not None:
        flip = np.sign(-(n * view_dirs).sum(1, keepdims=True))
        n = n * np.where(flip == 0, 1, flip)
    light = np.zeros(len(pos))
    for lp in lights:
        d = lp[None] - pos
        dist = np.linalg.norm(d, axis=1) + 1e-9
        cos = (n * d).sum(1) / dist
        cos = np.abs(cos) if view_dirs is None else np.clip(cos, 0, None)
        light += cos / (1.0 + 0.08 * dist ** 2)
    light = 0.38 + 0.62 * light / max(len(lights), 1)
    return np.clip(albedo_rgb * light[:, None], 0.0, 1.0)
