"""A labelled sample sheet of the phantom (``lungray phantom``, ``python -m lungray.data.phantom``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from lungray.data.phantom.dataset import PhantomCase, class_names_for, render_case, spec_of
from lungray.data.phantom.layout import layout
from lungray.data.phantom.dicom import write_dicom
from lungray.errors import ConfigError


def write_sample_sheet(
    path: Union[str, Path],
    n_classes: int = 4,
    per_class: int = 4,
    resolution: int = 256,
    difficulty: float = 1.0,
    seed: int = 0,
    dicom_dir: Optional[Union[str, Path]] = None,
    *,
    outline: bool = True,
    **knobs: Any,
) -> Path:
    """Write a labelled grid PNG: one row per class, ``per_class`` cases each.

    The first film of the first ``per_class`` patients of each class (in phantom order) is
    shown, titled with its site; ``outline`` draws the lesion-mask contour (orange) and the lung
    fields (blue) so a reader can see what the finding is and where the lung masks lie. With
    ``dicom_dir`` the shown cases are also written there as DICOM files. ``knobs``: the other
    :class:`~lungray.data.phantom.layout.PhantomSpec` fields.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = class_names_for(n_classes)
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    spec = spec_of(n_classes, difficulty, seed, **knobs)
    chosen: dict[int, list[PhantomCase]] = {k: [] for k in range(n_classes)}
    limit, i = per_class * n_classes * 4, 0
    while not all(len(v) == per_class for v in chosen.values()):
        limit *= 2  # labels are balanced per patient block, so this ends after a few rounds
        lay = layout(limit, spec)
        for i in range(i, limit):
            lab = int(lay.label[i])
            if len(chosen[lab]) < per_class and lay.copy_of[i] < 0 and (i == 0 or lay.patient[i] != lay.patient[i - 1]):
                chosen[lab].append(render_case(i, n_classes, resolution, difficulty, seed, **knobs))
        i = limit

    tile = 2.3
    fig = Figure(figsize=(tile * per_class, tile * n_classes + 0.5), dpi=max(100, min(200, resolution // 2)))
    FigureCanvasAgg(fig)
    fig.suptitle(f"lungray phantom  ({n_classes} classes, {resolution} px, difficulty {difficulty:g}, seed {seed})", fontsize=10)
    for row, cname in enumerate(names):
        for col, case in enumerate(chosen[row]):
            ax = fig.add_subplot(n_classes, per_class, row * per_class + col + 1)
            ax.imshow(case.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest" if resolution < 128 else "antialiased")
            if outline and case.lung_mask.any():
                ax.contour(case.lung_mask, levels=[0.5], colors=["#3b8bd9"], linewidths=0.6, alpha=0.7)
            if outline and case.mask.any():
                ax.contour(case.mask, levels=[0.5], colors=["#ff6a00"], linewidths=0.8, alpha=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{cname}\n{case.image_id[-6:]} · {case.patient_id.split('-')[-1]} · site {case.site}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    if dicom_dir is not None:
        for cases in chosen.values():
            for c in cases:
                write_dicom(Path(dicom_dir) / f"{c.image_id}.dcm", c.image, patient_id=c.patient_id, image_id=c.image_id, class_name=c.class_name)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lungray.data.phantom", description="Write a sample sheet of the lungray phantom.")
    p.add_argument("--out", default="phantom_sheet.png", help="PNG to write")
    p.add_argument("--classes", type=int, default=4, choices=[2, 4])
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--difficulty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dicom-dir", default=None, help="also write the shown cases as DICOM files here")
    p.add_argument("--no-outline", action="store_true", help="do not draw the lesion-mask contours")
    a = p.parse_args(argv)
    try:
        out = write_sample_sheet(a.out, a.classes, a.per_class, a.resolution, a.difficulty, a.seed, a.dicom_dir, outline=not a.no_outline)
    except ConfigError as e:
        print(f"lungray: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
