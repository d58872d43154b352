"""``-v`` shows lungray's debug lines and tracebacks, not every library's debug log (issue 13 item 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_verbose_data_check_does_not_flood_with_pil_debug_lines(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("Normal", "COVID"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(tmp_path / cls / f"{cls}-{i}.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "lungray", "-v", "data", "check", str(tmp_path), "--source", "folder",
                        "--min-eval-per-class", "1", "--min-val-per-class", "1", "--val-size", "0"],
                       capture_output=True, text=True, env=env, timeout=300)
    console = p.stdout + p.stderr
    assert p.returncode == 0, console[-2000:]
    # PIL writes "STREAM b'IHDR' 16 13"-style DEBUG lines for every PNG chunk it reads
    assert "STREAM b'" not in console and "PIL" not in console, console[-2000:]
    assert len(console.splitlines()) < 30, console
