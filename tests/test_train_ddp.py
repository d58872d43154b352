"""run_trial under torch.distributed (2 CPU processes, gloo): DDP, sharded data, rank-0 writes.

What a multi-GPU Ray Train worker group does, without Ray: every rank trains on its shard of
the same permutation, every rank reports each epoch (Ray's report is a barrier), only rank 0
passes checkpoint directories and writes files, and all ranks end with identical metrics.
"""

from __future__ import annotations

import json
import os

import numpy as np

from test_train_loop import make_trial, tiny  # noqa: F401  (fixture)


def _worker(rank: int, world: int, rdzv: str, data, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    try:
        from lungray.train import run_trial

        reports = []
        res = run_trial(
            make_trial(schedule={"epochs": 2, "checkpoint_min_seconds": 0}),
            data,
            workdir=os.path.join(out_dir, "work"),
            report=lambda m, c: reports.append([m["epoch"], c]),
        )
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(
                {
                    "metrics": res.metrics,
                    "reports": reports,
                    "best": res.best_checkpoint,
                    "world": res.resolved["world_size"],
                    "steps": res.resolved["steps_per_epoch"],
                    "probs": res.predictions["prob_COVID"].tolist(),
                },
                f,
            )
    finally:
        dist.destroy_process_group()


def test_two_rank_ddp_trial(tiny, tmp_path):  # noqa: F811
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "rdzv"), tiny, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == 6  # 96 images -> 48 per rank -> 6 batches of 8
    # every rank reports every epoch; only rank 0 hands over checkpoint directories
    assert [e for e, _ in r0["reports"]] == [e for e, _ in r1["reports"]] == [1, 2]
    assert all(c is not None for _, c in r0["reports"]) and all(c is None for _, c in r1["reports"])
    assert r0["best"] is not None and r1["best"] is None
    # synchronised weights -> identical validation decisions and held-out results on both ranks
    assert json.dumps(r0["metrics"], sort_keys=True) == json.dumps(r1["metrics"], sort_keys=True)
    np.testing.assert_array_equal(r0["probs"], r1["probs"])
