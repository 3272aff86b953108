"""RGB-D frames of a room, ray-cast with Embree (trimesh's embreex backend).

Cameras follow ScanNet: pinhole intrinsics scaled from ScanNet's colour (1296x968) and depth
(640x480) sensors, OpenCV axes (x right, y down, z forward), camera-to-world poses, depth in
millimetres. Pixel (u, v) integer coordinates are pixel centres: u = fx * x / z + cx.
"""

from __future__ import annotations

import numpy as np
import trimesh
from trimesh.ray.ray_pyembree import RayMeshIntersector

from ..labels import IGNORE_LABEL, NO_INSTANCE
from .materials import Material, albedo, shade

SCANNET_COLOR = dict(size=(1296, 968), fx=1170.187988, fy=1170.187988, cx=647.75, cy=483.75)
SCANNET_DEPTH = dict(size=(640, 480), fx=571.623718, fy=571.623718, cx=319.5, cy=239.5)
MIN_DEPTH, MAX_DEPTH = 0.4, 6.0  # Kinect-like working range in metres


def scaled_intrinsics(sensor: dict, size: tuple[int, int]) -> np.ndarray:
    """4x4 intrinsic matrix (ScanNet's file format) of ``sensor`` resampled to ``size`` (w, h)."""
    sx, sy = size[0] / sensor["size"][0], size[1] / sensor["size"][1]
    K = np.eye(4)
    K[0, 0], K[1, 1] = sensor["fx"] * sx, sensor["fy"] * sy
    K[0, 2], K[1, 2] = (sensor["cx"] + 0.5) * sx - 0.5, (sensor["cy"] + 0.5) * sy - 0.5
    return K


def look_pose(eye: np.ndarray, yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world pose of a camera at ``eye`` looking along (yaw, pitch), z up in the world."""
    f = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    c, s = np.cos(roll), np.sin(roll)
    r, d = c * r + s * d, -s * r + c * d
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = r, d, f, eye
    return T


def trajectory(rng: np.random.Generator, room_size, n: int, occupied: list[np.ndarray]) -> list[np.ndarray]:
    """Poses along a loop at human height that looks around the room (outward, with sway)."""
    X, Y, _ = room_size
    ax, ay = max(0.25, X / 2 - 1.3) * rng.uniform(0.7, 1.0), max(0.25, Y / 2 - 1.3) * rng.uniform(0.7, 1.0)
    cx, cy = X / 2, Y / 2
    height = rng.uniform(1.4, 1.65)
    th0, phase = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    direction = 1 if rng.random() < 0.5 else -1
    poses = []
    for i in range(n):
        th = th0 + direction * 2 * np.pi * i / n
        eye = np.array([cx + ax * np.cos(th), cy + ay * np.sin(th), height + 0.04 * np.sin(3 * th)])
        for box in occupied:  # never inside furniture: rise above anything the loop crosses
            lo, hi = box
            if (eye[:2] > lo[:2] - 0.2).all() and (eye[:2] < hi[:2] + 0.2).all() and eye[2] < hi[2] + 0.3:
                eye[2] = min(hi[2] + 0.3, room_size[2] - 0.3)
        yaw = th + 0.9 * np.sin(2 * th + phase) + rng.normal(0, 0.03)
        pitch = -0.32 + 0.12 * np.sin(th + phase) + rng.normal(0, 0.02)
        poses.append(look_pose(eye, yaw, pitch, rng.normal(0, 0.02)))
    return poses


class Renderer:
    """Ray-casts colour, depth and label images of one room mesh."""

    def __init__(self, mesh: dict, materials: list[Material], lights: np.ndarray):
        self.tm = trimesh.Trimesh(vertices=mesh["vertices"], faces=mesh["faces"], process=False)
        self.caster = RayMeshIntersector(self.tm)
        self.normals = np.asarray(self.tm.face_normals)
        self.v0 = self.tm.vertices[self.tm.faces[:, 0]]
        self.semantic, self.instance, self.material = mesh["semantic"], mesh["instance"], mesh["material"]
        self.materials, self.lights = materials, lights
        self.glass = np.array([m.texture == "glass" for m in materials])[self.material]

    def cast(self, K: np.ndarray, pose: np.ndarray, size: tuple[int, int]):
        """Rays through every pixel centre: (face id or -1, depth along the optical axis, world points, dirs)."""
        w, h = size
        u, v = np.meshgrid(np.arange(w), np.arange(h))
        cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)],
                       -1).reshape(-1, 3)
        dirs = cam @ pose[:3, :3].T  # optical-axis component stays 1, so ray parameter t == depth z
        origins = np.broadcast_to(pose[:3, 3], dirs.shape)
        tri = self.caster.intersects_first(origins, dirs)
        hit = tri >= 0
        z = np.zeros(len(dirs))
        n = self.normals[tri[hit]]
        z[hit] = ((self.v0[tri[hit]] - origins[hit]) * n).sum(1) / (dirs[hit] * n).sum(1)
        pts = origins + dirs * z[:, None]
        return tri, z, pts, dirs

    def color(self, K, pose, size, rng: np.random.Generator):
        """Colour (h,w,3 uint8) and 2D semantic (uint8, 255 ignore) / instance (uint16) label images."""
        w, h = size
        tri, z, pts, dirs = self.cast(K, pose, size)
        hit = tri >= 0
        rgb = np.zeros((len(tri), 3))
        t = tri[hit]
        a = albedo(self.materials, self.material[t], pts[hit])
        rgb[hit] = shade(a, pts[hit], self.normals[t], self.lights,
                         dirs[hit] / np.linalg.norm(dirs[hit], axis=1, keepdims=True))
        rgb = rgb.reshape(h, w, 3)
        yy, xx = np.mgrid[0:h, 0:w]
        vignette = 1 - 0.25 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 2
        rgb = rgb * vignette[..., None] * rng.uniform(0.92, 1.08)  # auto-exposure flicker
        rgb = np.clip(rgb, 0, 1) ** (1 / 2.2) * 255 + rng.normal(0, 2.0, rgb.shape)
        sem = np.full(len(tri), IGNORE_LABEL, np.uint8)
        ins = np.full(len(tri), NO_INSTANCE, np.uint16)
        sem[hit], ins[hit] = self.semantic[t], self.instance[t]
        return (np.clip(rgb, 0, 255).round().astype(np.uint8), sem.reshape(h, w), ins.reshape(h, w))

    def depth(self, K, pose, size, rng: np.random.Generator, dropout: float) -> np.ndarray:
        """Kinect-like depth (h,w uint16 millimetres, 0 = missing).

        Axial noise sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 m (Nguyen et al., 2012); missing pixels
        outside the working range, at grazing incidence, on glass, at depth discontinuities
        (the projector's shadow) and at random (``dropout``).
        """
        w, h = size
        tri, z, pts, dirs = self.cast(K, pose, size)
        hit = tri >= 0
        valid = hit & (z > MIN_DEPTH) & (z < MAX_DEPTH)
        cos = np.zeros(len(tri))
        dn = dirs[hit] / np.linalg.norm(dirs[hit], axis=1, keepdims=True)
        cos[hit] = np.abs((self.normals[tri[hit]] * dn).sum(1))
        valid &= cos > 0.17
        valid[hit] &= ~self.glass[tri[hit]]
        zn = z + rng.normal(0, 1, len(z)) * (0.0012 + 0.0019 * (z - 0.4) ** 2)
        zimg = np.where(valid, zn, 0).reshape(h, w)
        jump = np.zeros((h, w), bool)
        dz = np.abs(np.diff(z.reshape(h, w), axis=1)) > 0.08 * np.maximum(z.reshape(h, w)[:, 1:], 0.5)
        jump[:, 1:] |= dz
        valid = valid.reshape(h, w) & ~(jump & (rng.random((h, w)) < 0.6)) & (rng.random((h, w)) >= dropout)
        return np.where(valid, np.round(zimg * 1000), 0).clip(0, 65535).astype(np.uint16)
