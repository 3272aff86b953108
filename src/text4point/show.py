"""Looking at the data: a scene's points coloured by class, and one frame's colour, depth and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .labels import IGNORE_LABEL
from .plotting import class_colours, save_png
from .scene import Dataset, FrameDefect


def show(root: Path, out_dir: Path, scenes: int = 1, split: str = "val") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ds = Dataset(root)
    names = ds.label_set.classes
    colors = class_colours(len(names))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for sid in ds.split(split)[:scenes]:
        sc = ds.scene(sid)
        pts = sc.points()
        sem = pts["semantic"]
        rgb = np.where((sem == IGNORE_LABEL)[:, None], 0.8, colors[np.minimum(sem, len(names) - 1)])
        order = np.argsort(pts["xyz"][:, 2])  # draw high points last (top-down view)
        fig, ax = plt.subplots(1, 2, figsize=(13, 6))
        ax[0].scatter(pts["xyz"][order, 0], pts["xyz"][order, 1], c=pts["rgb"][order] / 255.0, s=1, linewidths=0)
        ax[0].set_title(f"{sid}: colour (top view)")
        ax[1].scatter(pts["xyz"][order, 0], pts["xyz"][order, 1], c=rgb[order], s=1, linewidths=0)
        for b in sc.boxes():
            (cx, cy, _), (sx, sy, _) = b["center"], b["size"]
            ax[1].add_patch(plt.Rectangle((cx - sx / 2, cy - sy / 2), sx, sy, fill=False, lw=0.8, ec="k"))
        ax[1].set_title(f"{sid}: semantic classes and boxes")
        present = sorted(set(np.unique(sem).tolist()) - {IGNORE_LABEL})
        ax[1].legend(handles=[Patch(color=colors[i], label=names[i]) for i in present] +
                     [Patch(color=(0.8, 0.8, 0.8), label="ignore")], loc="center left", bbox_to_anchor=(1, 0.5))
        for a in ax:
            a.set_aspect("equal")
            a.set_xlabel("x (m)")
            a.set_ylabel("y (m)")
        p = out_dir / f"{sid}_scene.png"
        save_png(fig, p)
        plt.close(fig)
        written.append(p)

        if sc.num_frames:
            for i in sc.frame_ids:
                try:
                    sc.pose(i)
                    color, depth = sc.color(i), sc.depth(i)
                    break
                except FrameDefect:
                    continue
            else:
                continue
            panels = [("colour", color, {}), ("depth (m)", np.where(depth > 0, depth, np.nan), {"cmap": "viridis"})]
            if sc.frame_path("label", i).exists():
                lab = sc.label(i).astype(float)
                lab_rgb = np.where((lab == IGNORE_LABEL)[..., None], 0.8,
                                   colors[np.minimum(lab, len(names) - 1).astype(int)])
                panels.append(("semantic labels", lab_rgb, {}))
            fig, ax = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
            for a, (title, img, kw) in zip(ax, panels):
                im = a.imshow(img, **kw)
                a.set_title(f"{sid} frame {i}: {title}")
                a.axis("off")
                if kw:
                    fig.colorbar(im, ax=a, fraction=0.035)
            p = out_dir / f"{sid}_frame.png"
            save_png(fig, p)
            plt.close(fig)
            written.append(p)
    return written
