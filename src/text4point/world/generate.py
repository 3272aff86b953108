"""Generate the offline world: scenes of every split, written in the canonical layout (``scene.py``)."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import trimesh
from tqdm import tqdm

from .. import faults
from ..fsutil import atomic_dir, write_json
from ..labels import IGNORE_LABEL, SCANNET20
from ..scene import SPLITS, write_boxes, write_dataset_meta, write_image, write_matrix, write_mesh, write_points
from .materials import albedo, shade
from .render import SCANNET_COLOR, SCANNET_DEPTH, Renderer, scaled_intrinsics, trajectory
from .room import build_room


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def scene_id(split: str, index: int) -> str:
    return f"{split}_{index:04d}"


def generate_scene(out_dir: Path, split: str, index: int, cfg: dict, seed: int) -> dict:
    """Build, sample and render one room into ``out_dir/<scene_id>`` (atomically); return its statistics."""
    t0 = time.perf_counter()
    rng = scene_rng(seed, split, index)
    sid = scene_id(split, index)
    room = build_room(rng, cfg["room_size"], cfg["objects_per_room"])
    mesh = room.mesh()
    with atomic_dir(out_dir / sid) as d:
        # --- scene point cloud sampled from the mesh (baked lighting, like a scan's vertex colours)
        tm = trimesh.Trimesh(vertices=mesh["vertices"], faces=mesh["faces"], process=False)
        n_points = int(cfg["point_density"] * tm.area)
        xyz, face = trimesh.sample.sample_surface(tm, n_points, seed=int(rng.integers(2**31)))
        a = albedo(room.materials, mesh["material"][face], xyz)
        rgb = shade(a, xyz, tm.face_normals[face], room.lights) ** (1 / 2.2) * 255 + rng.normal(0, 1.5, a.shape)
        write_points(d / "points.ply", xyz, np.clip(rgb, 0, 255).round(), mesh["semantic"][face],
                     mesh["instance"][face])
        vcol = np.zeros((len(mesh["vertices"]), 3))
        vcol[mesh["faces"].reshape(-1)] = np.repeat(
            np.array([m.color for m in room.materials])[mesh["material"]], 3, axis=0)
        write_mesh(d / "mesh.ply", mesh["vertices"], (vcol ** (1 / 2.2) * 255).round(), mesh["faces"],
                   mesh["semantic"], mesh["instance"])
        write_boxes(d / "boxes.json", [b for b in room.boxes if b["semantic"] in SCANNET20.thing_ids], SCANNET20)

        # --- RGB-D frames along the trajectory
        csize, dsize = tuple(cfg["color_size"]), tuple(cfg["depth_size"])
        Kc, Kd = scaled_intrinsics(SCANNET_COLOR, csize), scaled_intrinsics(SCANNET_DEPTH, dsize)
        for name, m in (("intrinsic_color", Kc), ("intrinsic_depth", Kd), ("extrinsic_color", np.eye(4)),
                        ("extrinsic_depth", np.eye(4))):
            (d / "intrinsic").mkdir(exist_ok=True)
            write_matrix(d / "intrinsic" / f"{name}.txt", m)
        n = cfg["frames_per_scene"]
        poses = trajectory(rng, room.size, n, room.occupied)
        n_invalid = int(round(cfg["invalid_pose_fraction"] * n))
        invalid = set(rng.choice(np.arange(1, n), size=min(n_invalid, n - 1), replace=False).tolist())
        renderer = Renderer(mesh, room.materials, room.lights)
        for sub in ("color", "depth", "pose", "label", "instance"):
            (d / sub).mkdir()
        valid_depth = []
        for i, pose in enumerate(poses):
            color, sem, ins = renderer.color(Kc, pose, csize, rng)
            depth = renderer.depth(Kd, pose, dsize, rng, cfg["depth_dropout"])
            valid_depth.append(float((depth > 0).mean()))
            write_image(d / "color" / f"{i}.jpg", color)
            write_image(d / "depth" / f"{i}.png", depth)
            write_image(d / "label" / f"{i}.png", sem)
            write_image(d / "instance" / f"{i}.png", ins)
            write_matrix(d / "pose" / f"{i}.txt", np.full((4, 4), -np.inf) if i in invalid else pose)
            faults.point("data.frame", frame=i)
        present = sorted({SCANNET20.classes[s] for s in np.unique(mesh["semantic"]) if s != IGNORE_LABEL})
        stats = {"scene_id": sid, "split": split, "room_type": room.kind, "room_size": [round(x, 3) for x in room.size],
                 "points": n_points, "faces": int(len(mesh["faces"])), "objects": len(room.boxes),
                 "classes": present, "frames": n, "invalid_poses": len(invalid),
                 "valid_depth_fraction": round(float(np.mean(valid_depth)), 4),
                 "seconds": round(time.perf_counter() - t0, 3)}
        write_json(d / "scene.json", {"scene_id": sid, "num_frames": n, "color_size": list(csize),
                                      "depth_size": list(dsize), "depth_shift": 1000.0, "source": "world",
                                      "has_mesh": True, "room_type": room.kind})
    return stats


def _job(args):
    return generate_scene(*args)


def generate_world(out_root: Path, cfg: dict, seed: int, progress: bool = True) -> dict:
    """Write every split's scenes and the dataset metadata under ``out_root``; return statistics."""
    t0 = time.perf_counter()
    scenes_dir = Path(out_root) / "scenes"
    scenes_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(scenes_dir, split, i, cfg, seed) for split in SPLITS for i in range(cfg["scenes"][split])]
    workers = min(int(cfg["workers"]), max(1, len(jobs)))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            stats = list(tqdm(pool.map(_job, jobs), total=len(jobs), desc="world scenes", disable=not progress))
    else:
        stats = [_job(j) for j in tqdm(jobs, desc="world scenes", disable=not progress)]
    splits = {split: [scene_id(split, i) for i in range(cfg["scenes"][split])] for split in SPLITS}
    elapsed = time.perf_counter() - t0
    frames = sum(s["frames"] for s in stats)
    summary = {
        "scenes": {k: len(v) for k, v in splits.items()},
        "frames": frames,
        "invalid_poses": sum(s["invalid_poses"] for s in stats),
        "points": sum(s["points"] for s in stats),
        "objects": sum(s["objects"] for s in stats),
        "classes_present": sorted({c for s in stats for c in s["classes"]}),
        "valid_depth_fraction": round(float(np.mean([s["valid_depth_fraction"] for s in stats])), 4),
        "seconds": round(elapsed, 2),
        "seconds_per_scene": round(float(np.median([s["seconds"] for s in stats])), 3),
        "frames_per_second": round(frames / elapsed, 2),
    }
    write_dataset_meta(Path(out_root), SCANNET20, "world", splits, extra={"world": summary})
    return {"summary": summary, "scenes": stats}
