"""Room layout: floor, ceiling, walls with door and window openings, and furniture placed without
interpenetration (axis-aligned bounding boxes never overlap), on the floor or against walls."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

from ..labels import IGNORE_LABEL, NO_INSTANCE, SCANNET20
from . import shapes
from .materials import Material

ROOM_TYPES = {
    "bedroom": (["bed"], ["cabinet", "desk", "chair", "picture", "curtain", "bookshelf", "otherfurniture", "sofa",
                          "picture"]),
    "living": (["sofa", "table"], ["chair", "chair", "bookshelf", "picture", "curtain", "otherfurniture", "cabinet",
                                   "picture", "table"]),
    "kitchen": (["counter", "refrigerator", "sink"], ["cabinet", "table", "chair", "chair", "picture",
                                                       "otherfurniture", "curtain", "counter"]),
    "bathroom": (["toilet", "sink", "bathtub", "shower curtain"], ["cabinet", "picture", "curtain",
                                                                    "otherfurniture"]),
    "office": (["desk", "chair"], ["bookshelf", "cabinet", "table", "chair", "chair", "picture", "otherfurniture",
                                   "sofa", "desk"]),
}
WALL_THICKNESS = 0.12
GAP = 0.01


@dataclass
class Room:
    """A laid-out room: a triangle mesh with per-face semantic, instance and material ids."""

    size: tuple[float, float, float]
    kind: str
    vertices: list[np.ndarray] = field(default_factory=list)
    faces: list[np.ndarray] = field(default_factory=list)
    semantic: list[np.ndarray] = field(default_factory=list)
    instance: list[np.ndarray] = field(default_factory=list)
    material: list[np.ndarray] = field(default_factory=list)
    materials: list[Material] = field(default_factory=list)
    boxes: list[dict] = field(default_factory=list)      # thing instances: exact mesh bounds
    occupied: list[np.ndarray] = field(default_factory=list)  # (2,3) AABBs, incl. door swing zones
    lights: np.ndarray | None = None
    _nv: int = 0
    _next_instance: int = 1

    def add(self, mesh: trimesh.Trimesh, mat: Material, semantic: int, instance: int) -> None:
        self.vertices.append(np.asarray(mesh.vertices, dtype=np.float64))
        self.faces.append(np.asarray(mesh.faces, dtype=np.int64) + self._nv)
        self._nv += len(mesh.vertices)
        n = len(mesh.faces)
        self.semantic.append(np.full(n, semantic, np.uint8))
        self.instance.append(np.full(n, instance, np.int32))
        self.material.append(np.full(n, len(self.materials), np.int32))
        self.materials.append(mat)

    def new_instance(self) -> int:
        self._next_instance += 1
        return self._next_instance - 1

    def mesh(self) -> dict[str, np.ndarray]:
        return {"vertices": np.concatenate(self.vertices), "faces": np.concatenate(self.faces),
                "semantic": np.concatenate(self.semantic), "instance": np.concatenate(self.instance),
                "material": np.concatenate(self.material)}

    def free(self, lo: np.ndarray, hi: np.ndarray) -> bool:
        X, Y, H = self.size
        if (lo[:2] < -1e-6).any() or hi[0] > X + 1e-6 or hi[1] > Y + 1e-6 or hi[2] > H:
            return False
        return all((hi <= o[0] + 1e-9).any() or (lo >= o[1] - 1e-9).any() for o in self.occupied)


def _quad(p0, p1, p2, p3, toward=None) -> trimesh.Trimesh:
    """A single-sided rectangle p0-p1-p2-p3; with ``toward``, its front faces that point.

    Surfaces are single-sided (the ray caster may cull back faces), so every architectural quad
    is oriented towards where it is seen from: the room for walls, the opening for its reveals.
    """
    v = np.array([p0, p1, p2, p3], float)
    faces = [[0, 1, 2], [0, 2, 3]]
    if toward is not None and np.dot(np.cross(v[1] - v[0], v[2] - v[0]), np.asarray(toward) - v.mean(0)) < 0:
        faces = [[0, 2, 1], [0, 3, 2]]
    return trimesh.Trimesh(vertices=v, faces=faces, process=False)


def _wall_frame(k: int, X: float, Y: float):
    """Origin, along-wall direction and inward normal of wall k (0: y=0, 1: x=X, 2: y=Y, 3: x=0)."""
    return [((0, 0), (1, 0), (0, 1), X), ((X, 0), (0, 1), (-1, 0), Y),
            ((X, Y), (-1, 0), (0, -1), X), ((0, Y), (0, -1), (1, 0), Y)][k]


def _wall_point(k, X, Y, s, e, z):
    o, a, n, _ = _wall_frame(k, X, Y)
    return np.array([o[0] + s * a[0] + e * n[0], o[1] + s * a[1] + e * n[1], z])


def _wall_rect(k, X, Y, s0, s1, z0, z1, e=0.0) -> trimesh.Trimesh:
    """A rectangle in the plane of wall k at inward offset e, facing into the room."""
    return _quad(_wall_point(k, X, Y, s0, e, z0), _wall_point(k, X, Y, s1, e, z0),
                 _wall_point(k, X, Y, s1, e, z1), _wall_point(k, X, Y, s0, e, z1),
                 toward=_wall_point(k, X, Y, (s0 + s1) / 2, e + 1.0, (z0 + z1) / 2))


def _rotation_z(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def _extent(obj: shapes.Obj, theta: float) -> np.ndarray:
    """Extent of the object's actual geometry (handles and rods included) after rotating by theta."""
    pts = np.concatenate([m.vertices for m, _ in obj.parts]) @ _rotation_z(theta)[:3, :3].T
    return pts.max(0) - pts.min(0)


def _place(room: Room, obj: shapes.Obj, theta: float, lo_target: np.ndarray, instance: int) -> dict:
    """Rotate ``obj`` by theta about z, translate its AABB minimum to ``lo_target`` and add it."""
    R = _rotation_z(theta)
    pts = np.concatenate([m.vertices for m, _ in obj.parts]) @ R[:3, :3].T
    T = R.copy()
    T[:3, 3] = lo_target - pts.min(0)
    sem = SCANNET20.index(obj.cls)
    lo, hi = None, None
    for m, mat in obj.parts:
        mm = m.copy()
        mm.apply_transform(T)
        room.add(mm, mat, sem, instance)
        lo = mm.bounds[0] if lo is None else np.minimum(lo, mm.bounds[0])
        hi = mm.bounds[1] if hi is None else np.maximum(hi, mm.bounds[1])
    room.occupied.append(np.stack([lo, hi]))
    box = {"instance": instance, "semantic": sem, "center": ((lo + hi) / 2).round(5).tolist(),
           "size": (hi - lo).round(5).tolist()}
    room.boxes.append(box)
    return box


WALL_THETA = (np.pi, -np.pi / 2, 0.0, np.pi / 2)  # rotation that turns an object's front (-y) into the room


def _wall_target(k, X, Y, s_min, w_rot, d_rot, z0, e=GAP):
    """AABB minimum for an object whose back touches wall k (inward offset e) starting at s_min along it."""
    if k == 0:
        return np.array([s_min, e, z0])
    if k == 1:
        return np.array([X - e - d_rot, s_min, z0])
    if k == 2:
        return np.array([s_min, Y - e - d_rot, z0])
    return np.array([e, s_min, z0])


def build_room(rng: np.random.Generator, room_size, objects_per_room) -> Room:
    (xr, yr, hr) = room_size
    X, Y, H = float(rng.uniform(*xr)), float(rng.uniform(*yr)), float(rng.uniform(*hr))
    kind = list(ROOM_TYPES)[rng.integers(len(ROOM_TYPES))]
    room = Room(size=(X, Y, H), kind=kind)

    # --- architecture: floor, ceiling, walls with openings (doors and windows)
    floor_mat = Material(shapes._pick(rng, rng.choice(["wood", "grey", "white"])), rng.choice(["wood", "tile"]),
                         scale=float(rng.uniform(0.8, 1.3)), axis=int(rng.integers(2)))
    room.add(_quad((0, 0, 0), (X, 0, 0), (X, Y, 0), (0, Y, 0), toward=(X / 2, Y / 2, 1)), floor_mat,
             SCANNET20.index("floor"), room.new_instance())
    room.add(_quad((0, 0, H), (0, Y, H), (X, Y, H), (X, 0, H), toward=(X / 2, Y / 2, 0)),
             Material((0.93, 0.93, 0.92), "paint"), IGNORE_LABEL, NO_INSTANCE)
    wall_mat = Material(shapes._pick(rng, rng.choice(["white", "white", "curtain", "grey"])), "paint",
                        scale=float(rng.uniform(0.8, 1.2)))
    openings: dict[int, list[tuple]] = {k: [] for k in range(4)}
    door_wall = int(rng.integers(4))
    n_windows = int(rng.integers(0 if kind == "bathroom" else 1, 3))
    for kind_, k in [("door", door_wall)] + [("window", int(rng.integers(4))) for _ in range(n_windows)]:
        L = _wall_frame(k, X, Y)[3]
        w = rng.uniform(0.8, 0.95) if kind_ == "door" else rng.uniform(0.8, 1.6)
        z0, z1 = ((0.0, rng.uniform(2.0, 2.1)) if kind_ == "door"
                  else (rng.uniform(0.8, 1.0), min(H - 0.25, rng.uniform(2.0, 2.2))))
        for _ in range(20):
            s0 = rng.uniform(0.25, L - w - 0.25)
            if all(s0 + w + 0.3 < a or s0 > b + 0.3 for a, b, *_ in openings[k]):
                openings[k].append((s0, s0 + w, z0, z1, kind_))
                break
    wall_sem = SCANNET20.index("wall")
    for k in range(4):
        L = _wall_frame(k, X, Y)[3]
        wall_inst = room.new_instance()
        cuts = sorted(openings[k])
        s = 0.0
        for s0, s1, z0, z1, what in cuts:
            room.add(_wall_rect(k, X, Y, s, s0, 0, H), wall_mat, wall_sem, wall_inst)
            if z0 > 0:
                room.add(_wall_rect(k, X, Y, s0, s1, 0, z0), wall_mat, wall_sem, wall_inst)
            room.add(_wall_rect(k, X, Y, s0, s1, z1, H), wall_mat, wall_sem, wall_inst)
            t = WALL_THICKNESS
            centre = _wall_point(k, X, Y, (s0 + s1) / 2, -t / 2, (z0 + z1) / 2)
            # reveals (jambs, head, sill): part of the wall, facing into the opening
            for sa in (s0, s1):
                room.add(_quad(_wall_point(k, X, Y, sa, 0, z0), _wall_point(k, X, Y, sa, -t, z0),
                               _wall_point(k, X, Y, sa, -t, z1), _wall_point(k, X, Y, sa, 0, z1), centre),
                         wall_mat, wall_sem, wall_inst)
            room.add(_quad(_wall_point(k, X, Y, s0, 0, z1), _wall_point(k, X, Y, s1, 0, z1),
                           _wall_point(k, X, Y, s1, -t, z1), _wall_point(k, X, Y, s0, -t, z1), centre),
                     wall_mat, wall_sem, wall_inst)
            if z0 > 0:
                room.add(_quad(_wall_point(k, X, Y, s0, -t, z0), _wall_point(k, X, Y, s1, -t, z0),
                               _wall_point(k, X, Y, s1, 0, z0), _wall_point(k, X, Y, s0, 0, z0), centre),
                         wall_mat, wall_sem, wall_inst)
            inst = room.new_instance()
            lo = np.minimum(_wall_point(k, X, Y, s0, -t, z0), _wall_point(k, X, Y, s1, -t / 3, z1))
            hi = np.maximum(_wall_point(k, X, Y, s0, -t, z0), _wall_point(k, X, Y, s1, -t / 3, z1))
            if what == "door":
                panel = Material(shapes._pick(rng, rng.choice(["wood", "white"])), "wood", axis=2)
                room.add(_wall_rect(k, X, Y, s0, s1, z0, z1, e=-t / 2), panel, SCANNET20.index("door"), inst)
                hs = s1 - 0.1 if rng.random() < 0.5 else s0 + 0.06
                a, b = _wall_point(k, X, Y, hs, -t / 2, 0.98), _wall_point(k, X, Y, hs + 0.04, -t / 2 + 0.06, 1.02)
                knob = trimesh.creation.box(bounds=np.stack([np.minimum(a, b), np.maximum(a, b)]))
                room.add(knob, Material((0.8, 0.75, 0.5), "metal"), SCANNET20.index("door"), inst)
                lo = np.minimum(lo, knob.bounds[0])
                hi = np.maximum(hi, knob.bounds[1])
                # keep the door's swing free of furniture
                swing_lo = np.minimum(_wall_point(k, X, Y, s0, 0, 0), _wall_point(k, X, Y, s1, 0.9, z1))
                swing_hi = np.maximum(_wall_point(k, X, Y, s0, 0, 0), _wall_point(k, X, Y, s1, 0.9, z1))
                room.occupied.append(np.stack([swing_lo, swing_hi]))
            else:
                glass = Material((0.62, 0.74, 0.85), "glass")
                frame = Material(shapes._pick(rng, rng.choice(["white", "wood"])), "paint")
                room.add(_wall_rect(k, X, Y, s0, s1, z0, z1, e=-2 * t / 3), glass, SCANNET20.index("window"), inst)
                mid = (s0 + s1) / 2
                a, b = _wall_point(k, X, Y, mid - 0.025, -2 * t / 3, z0), _wall_point(k, X, Y, mid + 0.025, -t / 3, z1)
                bar = trimesh.creation.box(bounds=np.stack([np.minimum(a, b), np.maximum(a, b)]))
                room.add(bar, frame, SCANNET20.index("window"), inst)
                # furniture taller than the sill must not stand in front of a window
                win_lo = np.minimum(_wall_point(k, X, Y, s0, 0, z0), _wall_point(k, X, Y, s1, 1.0, z1))
                win_hi = np.maximum(_wall_point(k, X, Y, s0, 0, z0), _wall_point(k, X, Y, s1, 1.0, z1))
                room.occupied.append(np.stack([win_lo, win_hi]))
            room.boxes.append({"instance": inst, "semantic": SCANNET20.index(what),
                               "center": ((lo + hi) / 2).round(5).tolist(), "size": (hi - lo).round(5).tolist()})
            s = s1
        room.add(_wall_rect(k, X, Y, s, L, 0, H), wall_mat, wall_sem, wall_inst)
    windows = [(k, o) for k in range(4) for o in openings[k] if o[4] == "window"]

    # --- furniture
    required, optional = ROOM_TYPES[kind]
    target = int(rng.integers(objects_per_room[0], objects_per_room[1] + 1))
    todo = list(required) + list(rng.choice(optional, size=max(0, target - len(required)), replace=True))
    placed: dict[str, list[dict]] = {}
    for cls in todo:
        if cls == "shower curtain" and "bathtub" not in placed:
            continue
        if cls == "curtain" and not windows:
            continue
        box = _place_object(room, cls, rng, windows, placed)
        if box is not None:
            placed.setdefault(cls, []).append(box)
    # a little unlabeled clutter on the floor (ScanNet's ignore label: boxes, bins)
    for _ in range(int(rng.integers(0, 3))):
        o = shapes.Obj("clutter", (0, 0, 0))
        w, d, h = rng.uniform(0.2, 0.45), rng.uniform(0.2, 0.45), rng.uniform(0.15, 0.5)
        o.box((0, 0, 0), (w, d, h), shapes._mat(rng, rng.choice(["wood", "grey", "art"]), "paint"))
        for _ in range(30):
            lo = np.array([rng.uniform(0, X - w), rng.uniform(0, Y - d), 0.0])
            if room.free(lo, lo + (w, d, h)):
                m, mat = o.parts[0]
                m = m.copy()
                m.apply_translation(lo)
                room.add(m, mat, IGNORE_LABEL, NO_INSTANCE)
                room.occupied.append(np.stack([lo, lo + (w, d, h)]))
                break
    n_lights = 1 if X * Y < 20 else 2
    room.lights = np.array([[X * (i + 1) / (n_lights + 1), Y / 2 + rng.uniform(-0.3, 0.3), H - 0.15]
                            for i in range(n_lights)])
    return room


def _place_object(room: Room, cls: str, rng, windows, placed) -> dict | None:
    X, Y, H = room.size
    spec = shapes.SPECS[cls]
    for _ in range(60):
        size = shapes.sample_size(cls, rng)
        obj = shapes.build(cls, size, rng)
        w, d, h = obj.size
        if cls == "shower curtain":
            tub = placed["bathtub"][0]
            k = tub["wall"]
            along = 0 if k in (0, 2) else 1
            tub_lo = np.array(tub["center"]) - np.array(tub["size"]) / 2
            w = tub["size"][along]
            obj = shapes.build(cls, (w, size[1], size[2]), rng)
            depth = tub["size"][1 - along]
            ext = _extent(obj, WALL_THETA[k])
            target = _wall_target(k, X, Y, tub_lo[along], ext[along], ext[1 - along], 0.0, e=GAP + depth + 0.005)
            lo, hi = target, target + ext
            if room.free(lo, hi):
                return _with_wall(_place(room, obj, WALL_THETA[k], target, room.new_instance()), k)
            return None
        if cls == "curtain":
            k, (s0, s1, z0, z1, _) = windows[int(rng.integers(len(windows)))]
            side = rng.integers(2)
            s_min = s0 - w - 0.02 if side == 0 else s1 + 0.02
            # convert along-wall coordinate to the world coordinate of the AABB minimum
            s_world = _along_to_world(k, X, Y, s_min, w)
            ext = _extent(obj, WALL_THETA[k])
            along = 0 if k in (0, 2) else 1
            target = _wall_target(k, X, Y, s_world, ext[along], ext[1 - along], 0.02, e=GAP)
            lo, hi = target, target + ext
            if room.free(lo, hi):
                return _with_wall(_place(room, obj, WALL_THETA[k], target, room.new_instance()), k)
            continue
        if spec["wall"]:
            k = int(rng.integers(4))
            L = _wall_frame(k, X, Y)[3]
            if L < w + 0.1:
                continue
            z0 = 0.0
            if cls == "picture":
                z0 = float(rng.uniform(1.3, 1.75) - h / 2)
                # pictures hang on the wall over low furniture: only their own slab must be free
            ext = _extent(obj, WALL_THETA[k])
            along = 0 if k in (0, 2) else 1
            s_world = float(rng.uniform(0.05, L - ext[along] - 0.05))
            target = _wall_target(k, X, Y, s_world, ext[along], ext[1 - along], z0)
            lo, hi = target, target + ext
            if room.free(lo, hi):
                return _with_wall(_place(room, obj, WALL_THETA[k], target, room.new_instance()), k)
        else:
            theta = float(rng.integers(4)) * np.pi / 2
            ext = _extent(obj, theta)
            anchor = None
            if cls == "chair":
                hosts = placed.get("table", []) + placed.get("desk", [])
                if hosts and rng.random() < 0.8:
                    anchor = hosts[int(rng.integers(len(hosts)))]
            if anchor is not None:
                c, s = np.array(anchor["center"]), np.array(anchor["size"])
                side = int(rng.integers(4))
                jitter = rng.uniform(-0.3, 0.3)
                if side in (0, 1):
                    x = c[0] + jitter * s[0] - ext[0] / 2
                    y = c[1] - s[1] / 2 - ext[1] - 0.03 if side == 0 else c[1] + s[1] / 2 + 0.03
                else:
                    y = c[1] + jitter * s[1] - ext[1] / 2
                    x = c[0] - s[0] / 2 - ext[0] - 0.03 if side == 2 else c[0] + s[0] / 2 + 0.03
                lo = np.array([x, y, 0.0])
            else:
                lo = np.array([rng.uniform(0.3, max(0.31, X - ext[0] - 0.3)),
                               rng.uniform(0.3, max(0.31, Y - ext[1] - 0.3)), 0.0])
            if room.free(lo, lo + ext):
                return _place(room, obj, theta, lo, room.new_instance())
    return None


def _with_wall(box: dict, k: int) -> dict:
    box = dict(box)
    box["wall"] = k
    return box


def _along_to_world(k: int, X: float, Y: float, s_min: float, w: float) -> float:
    """World coordinate (x for walls 0/2, y for 1/3) of the AABB minimum of a span [s_min, s_min+w] along wall k."""
    if k == 0:
        return s_min
    if k == 1:
        return s_min
    if k == 2:
        return X - s_min - w
    return Y - s_min - w
