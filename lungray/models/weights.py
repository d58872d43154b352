"""Where a model's pretrained weights come from, and whether they are on this machine already.

``pretrained: true`` downloads ImageNet weights when a trial builds its model: timm's from the
Hugging Face hub (``model.safetensors``, else ``pytorch_model.bin``, cached under
``$HF_HUB_CACHE``) or from a URL, torchvision's from a URL into torch's hub cache
(``torch.hub.get_dir()/checkpoints``). On an air-gapped cluster that download fails in every
trial, after every retry. :func:`weights_status` looks the weights up the way the loaders do,
without downloading, so ``--dry-run`` can say which are missing; :func:`fetch_weights`
downloads them once in the sweep driver, so a real run that cannot get them stops before the
first trial with one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from lungray.errors import ConfigError

TV_PREFIX = "tv:"
#: lungray models whose ``pretrained: true`` means a timm trunk's weights
OWN_HUB_TRUNKS = {"ae_encoder": "densenet121"}


@dataclass(frozen=True)
class WeightsStatus:
    """``model``'s weights: ``source`` (hub id / URL / file), where they were looked for, found or not."""

    model: str
    source: str
    location: str
    cached: bool

    def line(self) -> str:
        if self.cached:
            return f"{self.model}: pretrained weights cached ({self.location})"
        # what lungray.sweep.runner does: fetch_weights in the driver, once, before the first trial
        return (
            f"{self.model}: pretrained weights NOT cached here ({self.source}; looked in {self.location}): a real run "
            "downloads them once, in the sweep driver before the first trial, and stops with one line if it cannot "
            "(offline: pre-fetch them or set model.pretrained to a local file); trials on other nodes of a cluster read "
            "their own node's cache, so share it or pre-fetch there too"
        )


def _hub_name(name: str) -> str:
    """The timm/torchvision name whose weights ``name`` loads: an own model's trunk, or a
    segmentation U-Net's encoder (``unet:resnet34`` -> ``resnet34``: smp's ``tu-`` encoders
    are timm models and share its cache)."""
    from lungray.models.segmentation import is_segmentation_model, parse_segmentation_name

    if is_segmentation_model(name):
        return parse_segmentation_name(name)[1] or name
    return OWN_HUB_TRUNKS.get(name, name)


def _hf_cached(repo: str, filenames: tuple[str, ...], cache_dir: Optional[Union[str, Path]]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for f in filenames:
        hit = try_to_load_from_cache(repo_id, f, cache_dir=str(cache_dir) if cache_dir else None, revision=revision or None)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _hub_checkpoint(url: str, torch_hub_dir: Optional[Union[str, Path]]) -> Path:
    import torch

    base = Path(torch_hub_dir) if torch_hub_dir else Path(torch.hub.get_dir())
    return base / "checkpoints" / os.path.basename(url.split("?")[0])


def _hf_cache_dir(hf_cache: Optional[Union[str, Path]]) -> str:
    if hf_cache:
        return str(hf_cache)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def weights_status(
    cfg: Any,
    *,
    hf_cache: Optional[Union[str, Path]] = None,
    torch_hub_dir: Optional[Union[str, Path]] = None,
) -> Optional[WeightsStatus]:
    """Whether ``cfg.pretrained`` weights are available without a download; ``None`` when not pretrained."""
    label = getattr(cfg, "key", cfg.name)
    if cfg.pretrained is False:
        return None
    if isinstance(cfg.pretrained, str):
        p = Path(cfg.pretrained).expanduser()
        return WeightsStatus(label, "local file", str(p), p.exists())
    name = _hub_name(cfg.name)
    if name.startswith(TV_PREFIX):
        import torchvision

        try:
            url = torchvision.models.get_model_weights(name[len(TV_PREFIX) :]).DEFAULT.url
        except (ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"{label}: torchvision has no pretrained weights for {name} ({e})") from None
        f = _hub_checkpoint(url, torch_hub_dir)
        return WeightsStatus(label, url, str(f), f.is_file())
    import timm

    pcfg = timm.get_pretrained_cfg(name)
    if pcfg is None:
        raise ConfigError(f"{label}: timm has no pretrained weights for '{name}'; set pretrained: false or a local file")
    hub = pcfg.hf_hub_id
    if hub:  # timm prefers the hub whenever the model has a hub id (timm.models._builder)
        files = (pcfg.hf_hub_filename,) if pcfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        hit = _hf_cached(hub, files, hf_cache)
        return WeightsStatus(label, f"hf-hub {hub}", hit or _hf_cache_dir(hf_cache), hit is not None)
    if pcfg.url:
        f = _hub_checkpoint(pcfg.url, torch_hub_dir)
        return WeightsStatus(label, pcfg.url, str(f), f.is_file())
    raise ConfigError(f"{label}: timm lists no download location for '{name}'; set model.pretrained to a local file")


def fetch_weights(cfg: Any) -> WeightsStatus:
    """Download ``cfg``'s pretrained weights into the local caches (the loaders' own paths).

    Raises a one-line :class:`ConfigError` when they cannot be fetched, so a sweep stops before
    its first trial instead of failing in every one.
    """
    st = weights_status(cfg)
    if st is None or st.cached:
        return st  # type: ignore[return-value]
    name = _hub_name(cfg.name)
    try:
        if name.startswith(TV_PREFIX):
            import torch

            torch.hub.load_state_dict_from_url(st.source, map_location="cpu", weights_only=True)
        else:
            import timm
            from huggingface_hub import hf_hub_download

            pcfg = timm.get_pretrained_cfg(name)
            if pcfg.hf_hub_id:
                repo, _, rev = pcfg.hf_hub_id.partition("@")
                last: Optional[Exception] = None
                for f in ((pcfg.hf_hub_filename,) if pcfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")):
                    try:
                        hf_hub_download(repo, f, revision=rev or None)
                        last = None
                        break
                    except Exception as e:  # noqa: BLE001 - try the next file name, report the last
                        last = e
                if last is not None:
                    raise last
            else:
                import torch

                torch.hub.load_state_dict_from_url(pcfg.url, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - network, auth, disk: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"{st.model}: pretrained weights ({st.source}) are not cached and could not be downloaded "
            f"({type(e).__name__}: {msg[:160]}); fetch them on a machine with internet access into {st.location}, "
            "or set model.pretrained to a local weights file"
        ) from None
    return weights_status(cfg) or st
