"""lungray's data layer: adapters -> manifest -> check -> decode cache -> splits -> leakage audit.

The public entry point is :func:`prepare_data`, which returns a
:class:`~lungray.data.prepared.PreparedData` (the contract with training). Attributes are
imported lazily so that ``import lungray.data.adapters`` (done by config validation) stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["prepare_data", "PreparedData", "check_dataset", "ImageDataset"]


def __getattr__(name: str) -> Any:
    if name == "prepare_data":
        from lungray.data.prepare import prepare_data

        return prepare_data
    if name == "PreparedData":
        from lungray.data.prepared import PreparedData

        return PreparedData
    if name == "check_dataset":
        from lungray.data.check import check_dataset

        return check_dataset
    if name == "ImageDataset":
        from lungray.data.dataset import ImageDataset

        return ImageDataset
    raise AttributeError(f"module 'lungray.data' has no attribute '{name}'")
