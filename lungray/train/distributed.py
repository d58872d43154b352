"""What a trial does differently with several DDP workers: wrap the model (Ray Train's
``prepare_model`` inside a Ray Train worker, torch DDP otherwise), wait for every rank, and give
every rank rank 0's batch-norm statistics before evaluating. All are no-ops for one
worker, the default.

One subject of the trial loop (issue 22.2), used by :mod:`lungray.train.loop`.
"""

from __future__ import annotations

from typing import Any


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def sync_buffers(model: Any, world: int) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank before evaluating.

    DDP averages gradients, so parameters agree across ranks, but each rank updates its BN
    running statistics from its own shard after DDP's start-of-forward broadcast; without this
    the ranks would evaluate slightly different models and could disagree on early stopping.
    """
    if world <= 1:
        return
    import torch.distributed as dist

    from lungray.train.evaluate import unwrap

    for buf in unwrap(model).buffers():
        dist.broadcast(buf.data, src=0)


def wrap_distributed(model: Any, device: Any, world: int) -> Any:
    """DDP for world_size > 1: Ray's ``prepare_model`` inside Ray Train, torch DDP otherwise."""
    if world <= 1:
        return model
    try:
        import ray.train

        ray.train.get_context()  # raises outside a Ray Train worker
        in_ray_train = True
    except Exception:
        in_ray_train = False
    if in_ray_train:
        import ray.train.torch as rtt

        return rtt.prepare_model(model, move_to_device=False)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DDP(model, device_ids=ids)
