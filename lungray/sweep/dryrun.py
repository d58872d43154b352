"""``--dry-run``: the grid, what one trial needs and what the cluster lacks, without data or training."""

from __future__ import annotations

from typing import Optional

from lungray.config import StudyConfig
from lungray.errors import ConfigError
from lungray.sweep import grid as G
from lungray.sweep.results import SweepResult


def dry_run(cfg: StudyConfig, address: Optional[str], autoscaling_config: Optional[str], echo) -> SweepResult:
    """Print the grid, what a trial needs and what the cluster lacks; check sizes and weights.

    Never refuses for the cluster (a GPU study planned on a CPU laptop still shows its grid);
    training sizes the dataset cannot supply (with ``--data``) are an error after the grid.
    """
    from lungray.sweep.checks import dataset_checks, weights_checks

    data_lines, problems, n_pool = dataset_checks(cfg)
    if n_pool is not None and cfg.pool_sizes:
        cfg = cfg.with_pool_size(n_pool)
    checks = data_lines + weights_checks(cfg)
    cluster = dry_run_cluster(address, autoscaling_config)
    error = None
    try:
        pre: Optional[G.Preflight] = G.preflight(cfg, cluster)
    except ConfigError as e:
        pre, error = None, str(e)
    # each problem once: the first is the error line the dry run exits with, the others above it
    checks += [f"data problem: {p}" for p in problems[1:]]
    echo(G.dry_run_text(cfg, pre, cluster, error=error, checks=checks))
    if problems:
        from lungray.errors import DataError

        raise DataError(problems[0] + (f" (+{len(problems) - 1} more above)" if len(problems) > 1 else ""))
    import pandas as pd

    return SweepResult(experiment_dir=None, config=cfg, preflight=pre, trials=pd.DataFrame(G.grid_rows(cfg)), dry_run=True,
                       notes=[f"cluster lacks: {error}"] if error else [])


def dry_run_cluster(address: Optional[str], autoscaling_config: Optional[str]) -> G.ClusterSpec:
    """The cluster a dry run plans for: a named or ``RAY_ADDRESS`` cluster (joined, then left),
    else this machine without starting Ray, plus the autoscaler's node types when known."""
    from lungray.sweep.cluster import cluster_spec, init_ray, local_cluster_spec, resolve_address

    if resolve_address(address) is not None:
        import ray

        started = init_ray(address)
        try:
            cluster = cluster_spec(autoscaling_config)
        finally:
            if started:
                ray.shutdown()
    else:
        cluster = local_cluster_spec()
        from lungray.sweep.cluster import _load_yaml, autoscaling_config_path

        p = autoscaling_config_path(autoscaling_config)
        if p is not None:
            cluster = cluster.with_autoscaling(_load_yaml(p))
    return cluster
