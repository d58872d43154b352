"""Decode once, read forever: the preprocessing cache behind every trial.

A 20k-image dataset must never be decoded per trial. :func:`build_cache` decodes, resizes and
preprocesses every good manifest row once per

    (manifest fingerprint, resolution, resize mode, preprocessing, cache dtype)

into ``<cache_dir>/<key>/``:

``images.npy``        (N, R, R) uint8 or uint16, memory-mapped by every trial
``labels.npy``        (N,) int64 class indices
``masks.npy``         (N, R, R) uint8 class index per pixel, same geometry as the image (resize
                      and crop preprocessing: :func:`lungray.data.masks.row_mask`), for
                      datasets with masks (:mod:`lungray.data.masks`: phantom lesions, RSNA
                      boxes filled, Radiography Database lung masks); ``meta.json`` names the
                      ``mask_kind`` (``null`` and no file otherwise)
``lung_masks.npy``   (N, R, R) uint8 0/1 lung fields, for the phantom (which also has lesion masks
                      in ``masks.npy``); ``meta.json`` ``lung_masks: true``. The Radiography
                      Database's lung masks are its ``masks.npy`` (``mask_kind: lung``)
``hashes.npy``        (N, 8) uint64 dihedral perceptual hashes of the decoded image with its
                      burned-in annotations inpainted (leakage audit, :mod:`lungray.data.burnin`)
``kp_*.npy``, ``thumbs.npy``  keypoint features of the decoded image for the leakage audit's second
                      stage (:class:`lungray.data.keypoints.Features`: ORB descriptors of the image and
                      its mirror, positions, counts, a 128-px thumbnail and its annotation mask;
                      about 28 KB per image). Phantom rows get them too, from the generated image
``manifest.parquet``  the N good rows in array order, ``sha256``/``phash``/``width``/``height``
                      filled (and, for DICOM, ``modality`` and the hashed ``patient_id``)
``quarantined.parquet`` every row that was not cached, with its ``problem`` reason
``meta.json``         class names, key, fingerprint, resolution, dtype, preprocessing, counts

Decoding runs as Ray tasks over chunks of rows when the dataset is large (``ray.init`` on the
local machine if no cluster is connected, shut down again afterwards), serially otherwise, with a
progress bar (:mod:`lungray.data.progress`: tqdm on a terminal, one line off it). A row whose decode fails is quarantined with the reason instead of killing
the job. Everything is written into a temporary sibling folder and renamed into place, so a
crash never leaves a half-written cache, and a second call with the same key returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from lungray.data.decode import NPZ_SEP, PHANTOM_SCHEME, ImageError
from lungray.errors import DataError

log = logging.getLogger(__name__)

#: bump when the decode/resize/hash rules change, so old caches are not reused
#: (2: keypoint features for the leakage audit, :data:`lungray.data.keypoints.FEATURE_VERSION`;
#: 3: hashes of the image with burned-in annotations inpainted, phantom rows described and
#: with lung masks, the manifest's ``site`` column)
CACHE_VERSION = 3
#: rows per Ray task (big enough to amortise task overhead, small enough for a smooth progress bar)
CHUNK_ROWS = 128
#: datasets at least this large decode with Ray when ``parallel`` is left to ``None``
PARALLEL_MIN_ROWS = 2000
#: perceptual hashes are computed on the decoded image shrunk to at most this size (pHash
#: itself works on a 32x32 thumbnail, so nothing is lost and 3000 px CRs stay cheap)
HASH_SIZE = 128


def cache_key(fingerprint: str, resolution: int, resize: str, preprocess: str, dtype: str, masks: str = "") -> str:
    """The cache folder name for a manifest fingerprint and the decode settings.

    ``masks`` is :func:`lungray.data.masks.mask_fingerprint` (``""`` without masks, which keeps
    the key of mask-less datasets unchanged, while a dataset with masks never reuses a cache
    written before masks existed). The keypoint feature version is part of every key, so a
    cache built by an older leakage audit is never reused.
    """
    from lungray.data.keypoints import FEATURE_VERSION

    parts: list[Any] = [CACHE_VERSION, FEATURE_VERSION, fingerprint, int(resolution), resize, preprocess, dtype]
    if masks:
        parts.append(masks)
    s = json.dumps(parts)
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def is_complete(root: str | Path) -> bool:
    """A cache folder is complete when its ``meta.json`` exists (it is written last)."""
    return (Path(root) / "meta.json").is_file()


# --------------------------------------------------------------------------------------------
# per-row work (runs in Ray workers: module-level and self-contained)
# --------------------------------------------------------------------------------------------


def _hash_input(img: np.ndarray) -> np.ndarray:
    """What the perceptual hash sees: the image at most ``HASH_SIZE`` px a side with its burned-in
    annotations inpainted (:func:`lungray.data.burnin.content_image`), so two patients of one site
    do not hash alike because they share its text and label box (issue 18)."""
    from lungray.data.burnin import content_image

    return content_image(img, HASH_SIZE)


def _array_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def decode_rows(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Decode a chunk of manifest paths (see :func:`_decode_rows`) with BLAS held to one thread.

    The per-image hash products are tiny (32x32) and a multi-threaded OpenBLAS made serial
    decoding up to 3x slower (bench/bench_data.py); the parallelism is across chunks (Ray
    tasks), not inside one.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _decode_rows(*args, **kwargs)


def _decode_rows(
    paths: Sequence[str],
    resolution: int,
    resize_mode: str,
    preprocess: str,
    dtype: str,
    salt: str,
    mask_kind: Optional[str] = None,
    mask_specs: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Decode a chunk of manifest paths into cache-ready arrays.

    Returns ``images`` (k, R, R) in ``dtype``, ``hashes`` (k, 8) uint64, keypoint features
    (``kp_desc``, ``kp_xy``, ``kp_count``, ``thumbs``: :class:`lungray.data.keypoints.Features`) and per-row lists
    ``sha256``, ``width``, ``height``, ``modality``, ``patient_id``, ``problem`` ('' when the
    row decoded). Failed rows get zero images and a problem reason. With ``mask_kind``
    (``lesion_boxes`` or ``lung``) and one ``mask_specs`` entry per path (boxes JSON or mask
    file), also ``masks`` (k, R, R) uint8 in the image's geometry and ``mask_problem`` per row
    (a mask file that cannot be read leaves the image usable and its mask all ``IGNORE``).
    """
    from lungray.data.burnin import burnin_mask, content_image
    from lungray.data.decode import decode, dicom_info, npz_row, resize, sniff, to_storage
    from lungray.data.hashing import dihedral_hashes, sha256_file
    from lungray.data.masks import IGNORE, row_mask
    from lungray.data.keypoints import Features, describe
    from lungray.data.preprocess import apply_preprocessing

    k = len(paths)
    images = np.zeros((k, resolution, resolution), dtype=dtype)
    masks = np.full((k, resolution, resolution), IGNORE, dtype=np.uint8) if mask_kind else None
    mask_problem = [""] * k
    hashes = np.zeros((k, 8), dtype=np.uint64)
    feats = Features.empty(k)
    out: dict[str, list] = {key: [""] * k for key in ("sha256", "modality", "patient_id", "problem")}
    out["width"] = [0] * k
    out["height"] = [0] * k
    for i, path in enumerate(paths):
        try:
            img = decode(path)
            out["height"][i], out["width"][i] = int(img.shape[0]), int(img.shape[1])
            marks = burnin_mask(img)  # once, for the hash and the keypoints
            hashes[i] = dihedral_hashes(content_image(img, HASH_SIZE, marks))
            feats.desc[i], feats.xy[i], feats.count[i], feats.thumbs[i], feats.masks[i] = describe(img, marks)
            small = resize(img, resolution, resize_mode)
            images[i] = to_storage(apply_preprocessing(preprocess, small, resolution), dtype)
            if masks is not None:
                try:
                    masks[i] = row_mask(mask_kind, mask_specs[i], img.shape[0], img.shape[1], resolution, resize_mode, preprocess)
                except (DataError, ValueError) as e:
                    mask_problem[i] = f"mask unusable ({str(e).splitlines()[0][:160]})"
            if NPZ_SEP in path:
                out["sha256"][i] = _array_sha256(npz_row(path))
            else:
                out["sha256"][i] = sha256_file(path)
                if sniff(path) == "dicom":
                    info = dicom_info(path, salt)
                    out["modality"][i] = info["modality"]
                    out["patient_id"][i] = info["patient_id"]
        except ImageError as e:
            out["problem"][i] = e.reason
        except DataError as e:
            out["problem"][i] = str(e)
        except Exception as e:  # a decoder bug on one file must not kill a 20k-image job
            out["problem"][i] = f"decode failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    res = {"images": images, "hashes": hashes, **_feature_dict(feats), **out}
    if masks is not None:
        res["masks"] = masks
        res["mask_problem"] = mask_problem
    return res


_FEATURE_FILES = {"kp_desc": "desc", "kp_xy": "xy", "kp_count": "count", "thumbs": "thumbs", "kp_mask": "masks"}


def _feature_dict(f: Any) -> dict[str, np.ndarray]:
    return {name: getattr(f, attr) for name, attr in _FEATURE_FILES.items()}


def load_features(root: str | Path, mmap: bool = True) -> Any:
    """The keypoint features of a cache (:class:`lungray.data.keypoints.Features`), memory-mapped."""
    from lungray.data.keypoints import Features

    root = Path(root)
    missing = [f"{n}.npy" for n in _FEATURE_FILES if not (root / f"{n}.npy").is_file()]
    if missing:
        raise DataError(
            f"decoded cache {root} has no keypoint features ({', '.join(missing)} missing): it was built by an older "
            "lungray; delete the folder and run again to rebuild it"
        )
    mode = "r" if mmap else None
    return Features(**{attr: np.load(root / f"{n}.npy", mmap_mode=mode) for n, attr in _FEATURE_FILES.items()})


def _phantom_rows(paths: Sequence[str], resolution: int, preprocess: str, dtype: str) -> dict[str, Any]:
    """Phantom rows: generated at the study resolution (image i only depends on its spec and i),
    hashed and described for the leakage audit exactly as a decoded file is."""
    from lungray.data.adapters import parse_phantom_uri, phantom_arrays
    from lungray.data.decode import to_storage
    from lungray.data.masks import preprocess_mask
    from lungray.data.preprocess import apply_preprocessing

    parsed = [parse_phantom_uri(p) for p in paths]
    groups: dict[Any, list[int]] = {}
    for i, (spec, idx) in enumerate(parsed):
        groups.setdefault(spec, []).append(i)
    k = len(paths)
    images = np.zeros((k, resolution, resolution), dtype=dtype)
    masks = np.zeros((k, resolution, resolution), dtype=np.uint8)
    lungs = np.zeros((k, resolution, resolution), dtype=np.uint8)
    raw = np.zeros((k, resolution, resolution), dtype=np.uint8)
    sha = [""] * k
    for spec, rows in groups.items():
        n = max(parsed[i][1] for i in rows) + 1
        ph = phantom_arrays(int(n), spec, int(resolution))
        idx = np.array([parsed[i][1] for i in rows], dtype=np.int64)
        raw[rows] = ph.images[idx]
        for i, j in zip(rows, idx):  # the image's geometry (center_crop), as a decoded file's masks
            masks[i] = preprocess_mask(ph.masks[j], preprocess)
            lungs[i] = preprocess_mask(ph.lung_masks[j], preprocess)
    for i in range(k):
        images[i] = to_storage(apply_preprocessing(preprocess, raw[i].astype(np.float32) / 255.0, resolution), dtype)
        sha[i] = _array_sha256(raw[i])
    hashes, feats = _audit_features(raw)
    return {
        "images": images,
        "masks": masks,
        "lung_masks": lungs,
        "hashes": hashes,
        **_feature_dict(feats),
        "sha256": sha,
        "width": [resolution] * k,
        "height": [resolution] * k,
        "modality": [""] * k,
        "patient_id": [""] * k,
        "problem": [""] * k,
    }


def _audit_features(images: np.ndarray) -> tuple[np.ndarray, Any]:
    """Dihedral content hashes and keypoint features of a stack of images, in threads (OpenCV and
    numpy release the GIL: 2 CPUs describe 1000 64-px films in about 2 s instead of 4)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from lungray.data.hashing import dihedral_hashes
    from lungray.data.keypoints import Features, describe

    k = len(images)
    hashes = np.zeros((k, 8), dtype=np.uint64)
    feats = Features.empty(k)

    from lungray.data.burnin import burnin_mask, content_image

    def one(i: int) -> None:
        marks = burnin_mask(images[i])  # once, for the hash and the keypoints
        hashes[i] = dihedral_hashes(content_image(images[i], HASH_SIZE, marks))
        feats.desc[i], feats.xy[i], feats.count[i], feats.thumbs[i], feats.masks[i] = describe(images[i], marks)

    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as ex:
        list(ex.map(one, range(k)))
    return hashes, feats


# --------------------------------------------------------------------------------------------
# the builder
# --------------------------------------------------------------------------------------------


def _run_chunks(
    chunks: list[list[str]],
    args: tuple,
    *,
    chunk_kwargs: Optional[list[dict[str, Any]]] = None,
    parallel: bool,
    num_cpus: Optional[int],
    progress: bool,
    total: int,
):
    """Yield (chunk_index, result) as chunks finish (Ray tasks or in-process)."""
    from lungray.data.progress import progress_bar

    bar = progress_bar(total=total, desc="decoding images", unit="img", enabled=progress)
    try:
        if not parallel:
            for ci, ch in enumerate(chunks):
                res = decode_rows(ch, *args, **(chunk_kwargs[ci] if chunk_kwargs else {}))
                bar.update(len(ch))
                yield ci, res
            return
        import ray

        started = False
        if not ray.is_initialized():
            ray.init(
                num_cpus=num_cpus or max(1, (os.cpu_count() or 1)),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            started = True
        try:
            task = ray.remote(num_cpus=1, max_retries=1)(decode_rows)
            # keep the object store small: at most 4 chunks per CPU in flight
            limit = max(2, int(4 * (num_cpus or ray.available_resources().get("CPU", 1) or 1)))
            pending: dict[Any, int] = {}
            next_chunk = 0
            while next_chunk < len(chunks) or pending:
                while next_chunk < len(chunks) and len(pending) < limit:
                    kw = chunk_kwargs[next_chunk] if chunk_kwargs else {}
                    pending[task.remote(chunks[next_chunk], *args, **kw)] = next_chunk
                    next_chunk += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    ci = pending.pop(ref)
                    res = ray.get(ref)
                    bar.update(len(chunks[ci]))
                    yield ci, res
        finally:
            if started:
                ray.shutdown()
    finally:
        bar.close()


def _compact(full: np.ndarray, keep: np.ndarray, path: Path, block: int = 1024) -> None:
    """Write rows ``keep`` of a memory-mapped array to a new ``.npy`` in blocks (bounded memory)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=full.dtype, shape=(len(keep),) + full.shape[1:])
    for s in range(0, len(keep), block):
        out[s : s + block] = full[keep[s : s + block]]
    out.flush()
    del out


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_budget(n: int, resolution: int, dtype: str, with_masks: bool, n_phantom: int, cache_dir: Path,
                 *, free_disk: Optional[int] = None, available: Optional[int] = None) -> None:
    """Refuse, in one line and before anything is allocated, a cache this machine cannot hold
    (issue 23: ``data.resolution=100000`` asked numpy for 3.27 TiB).

    Disk: the cache's arrays (images, masks) are memory-mapped files in ``cache_dir``. Memory:
    the phantom's rows are rendered in memory (images and masks, and the copy stored), so
    ``4 * n_phantom * R^2`` bytes must fit in 80 % of the memory available now."""
    r2 = int(resolution) ** 2
    disk = int(n) * r2 * (np.dtype(dtype).itemsize + (1 if with_masks else 0))
    if free_disk is None:
        probe = Path(cache_dir)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free_disk = shutil.disk_usage(probe).free
    if disk > free_disk:
        raise DataError(
            f"the decoded cache of {n} images at {resolution} px needs {_gb(disk)} in {cache_dir}, where {_gb(free_disk)} "
            "is free: lower data.resolution or point data.cache_dir at a bigger disk"
        )
    mem = 4 * int(n_phantom) * r2
    if mem:
        if available is None:
            import psutil

            available = int(psutil.virtual_memory().available)
        if mem > 0.8 * available:
            raise DataError(
                f"rendering {n_phantom} phantom images at {resolution} px needs about {_gb(mem)} of memory, and "
                f"{_gb(available)} is available: lower data.resolution or data.phantom_n"
            )


def build_cache(
    manifest: pd.DataFrame,
    cfg: Any,
    cache_dir: str | Path,
    *,
    progress: bool = True,
    parallel: Optional[bool] = None,
    num_cpus: Optional[int] = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Path:
    """Decode the good rows of ``manifest`` into the cache; return the cache folder.

    ``cfg`` is a :class:`~lungray.config.DataConfig` (resolution, resize, preprocess,
    cache_dtype, source). ``parallel``: ``True`` Ray tasks, ``False`` in-process, ``None`` Ray
    from :data:`PARALLEL_MIN_ROWS` rows on (phantom rows are generated in-process, always).
    A complete cache with the same key is reused without decoding anything.
    """
    from lungray.data.manifest import class_names_of, id_salt, manifest_fingerprint, validate_manifest
    from lungray.data.masks import mask_fingerprint, mask_kind_of

    validate_manifest(manifest)
    names = class_names_of(manifest)
    fp = manifest_fingerprint(manifest)
    mask_kind = mask_kind_of(manifest)
    key = cache_key(fp, cfg.resolution, cfg.resize, cfg.preprocess, cfg.cache_dtype, mask_fingerprint(manifest, mask_kind))
    cache_dir = Path(cache_dir)
    target = cache_dir / key
    if is_complete(target):
        log.info("reusing decoded cache %s", target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)

    good_mask = (manifest["problem"] == "").to_numpy()
    good = manifest[good_mask].reset_index(drop=True)
    upfront_bad = manifest[~good_mask]
    paths = good["path"].tolist()
    n = len(paths)
    R, dtype = int(cfg.resolution), str(cfg.cache_dtype)
    source = str(manifest.attrs.get("source") or getattr(cfg, "source", ""))
    salt = id_salt(source or "dataset")
    is_phantom = np.array([p.startswith(PHANTOM_SCHEME) for p in paths], dtype=bool)

    check_budget(n, R, dtype, bool(mask_kind), int(is_phantom.sum()), cache_dir)  # before any array exists
    tmp = cache_dir / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    t0 = time.time()
    try:
        images = np.lib.format.open_memmap(tmp / "images.full.npy", mode="w+", dtype=dtype, shape=(n, R, R))
        hashes = np.zeros((n, 8), dtype=np.uint64)
        masks = np.lib.format.open_memmap(tmp / "masks.full.npy", mode="w+", dtype=np.uint8, shape=(n, R, R)) if mask_kind else None
        # lung fields beside lesion masks: the phantom knows both (lung-region studies, issue 24)
        lungs = np.lib.format.open_memmap(tmp / "lung_masks.full.npy", mode="w+", dtype=np.uint8, shape=(n, R, R)) if is_phantom.any() else None
        mask_problem = [""] * n
        from lungray.data.keypoints import Features

        proto = _feature_dict(Features.empty(1))
        feats = {name: np.lib.format.open_memmap(tmp / f"{name}.full.npy", mode="w+", dtype=a.dtype, shape=(n, *a.shape[1:]))
                 for name, a in proto.items()}
        cols: dict[str, list] = {c: [""] * n for c in ("sha256", "modality", "patient_id", "problem")}
        cols["width"] = [0] * n
        cols["height"] = [0] * n

        def _store(rows: np.ndarray, res: dict[str, Any]) -> None:
            images[rows] = res["images"]
            hashes[rows] = res["hashes"]
            for name, arr in feats.items():
                arr[rows] = res[name]
            if masks is not None and "masks" in res:
                masks[rows] = res["masks"]
            if lungs is not None and "lung_masks" in res:
                lungs[rows] = res["lung_masks"]
            for r, v in zip(rows, res.get("mask_problem", ())):
                mask_problem[r] = v
            for c in cols:
                vals = res[c]
                for r, v in zip(rows, vals):
                    cols[c][r] = v

        ph_rows = np.flatnonzero(is_phantom)
        if len(ph_rows):
            _store(ph_rows, _phantom_rows([paths[i] for i in ph_rows], R, cfg.preprocess, dtype))
        file_rows = np.flatnonzero(~is_phantom)
        if len(file_rows):
            use_ray = parallel if parallel is not None else len(file_rows) >= PARALLEL_MIN_ROWS
            row_chunks = [file_rows[i : i + chunk_rows] for i in range(0, len(file_rows), chunk_rows)]
            chunks = [[paths[i] for i in rc] for rc in row_chunks]
            args = (R, cfg.resize, cfg.preprocess, dtype, salt)
            chunk_kwargs = None
            if mask_kind in ("lesion_boxes", "lung"):
                col = good["boxes" if mask_kind == "lesion_boxes" else "mask_path"].astype(str).tolist()
                chunk_kwargs = [{"mask_kind": mask_kind, "mask_specs": [col[i] for i in rc]} for rc in row_chunks]
            for ci, res in _run_chunks(
                chunks, args, chunk_kwargs=chunk_kwargs, parallel=bool(use_ray), num_cpus=num_cpus, progress=progress, total=len(file_rows)
            ):
                _store(row_chunks[ci], res)
        images.flush()

        # assemble the manifest of cached rows; quarantine decode failures
        decoded = good.copy()
        decoded["sha256"] = cols["sha256"]
        decoded["width"] = np.asarray(cols["width"], dtype=np.int64)
        decoded["height"] = np.asarray(cols["height"], dtype=np.int64)
        decoded["phash"] = [f"{int(h):016x}" for h in hashes[:, 0]]
        for c in ("modality", "patient_id"):
            fill = np.asarray(cols[c], dtype=object)
            cur = decoded[c].to_numpy(dtype=object)
            decoded[c] = np.where((cur == "") & (fill != ""), fill, cur)
        decoded["problem"] = cols["problem"]
        ok = (decoded["problem"] == "").to_numpy()
        keep = np.flatnonzero(ok)
        _compact(images, keep, tmp / "images.npy")
        del images
        (tmp / "images.full.npy").unlink()
        kept = decoded.iloc[keep].reset_index(drop=True)
        kept.attrs["class_names"] = list(names)
        kept.attrs["source"] = source
        np.save(tmp / "labels.npy", kept["class_index"].to_numpy().astype(np.int64))
        np.save(tmp / "hashes.npy", hashes[keep])
        for name, arr in feats.items():
            _compact(arr, keep, tmp / f"{name}.npy")
            (tmp / f"{name}.full.npy").unlink()
        del feats
        if lungs is not None:
            _compact(lungs, keep, tmp / "lung_masks.npy")
            del lungs
            (tmp / "lung_masks.full.npy").unlink()
        n_mask_unknown = 0
        if masks is not None:
            _compact(masks, keep, tmp / "masks.npy")
            del masks
            (tmp / "masks.full.npy").unlink()
            no_file = (good["mask_path"].astype(str) == "").to_numpy() if mask_kind == "lung" else np.zeros(n, dtype=bool)
            n_mask_unknown = int(sum(bool(mask_problem[i]) or bool(no_file[i]) for i in keep))
            bad_masks = [(good["image_id"].iloc[i], mask_problem[i]) for i in keep if mask_problem[i]]
            if bad_masks:
                log.warning("%d mask file(s) could not be used (their masks are unknown): %s: %s", len(bad_masks), *bad_masks[0])
        if mask_kind == "lesion_boxes":
            from lungray.data.masks import box_space_note

            odd = box_space_note(kept["image_id"].tolist(), kept["width"].tolist(), kept["height"].tolist())
            if odd:
                log.warning("%s", odd)
        kept.to_parquet(tmp / "manifest.parquet", index=False)
        quarantined = pd.concat([upfront_bad, decoded[~ok]], ignore_index=True)
        quarantined.attrs["class_names"] = list(names)
        quarantined.to_parquet(tmp / "quarantined.parquet", index=False)
        from lungray import __version__

        meta = {
            "key": key,
            "fingerprint": fp,
            "class_names": list(names),
            "source": source,
            "resolution": R,
            "resize": cfg.resize,
            "preprocess": cfg.preprocess,
            "dtype": dtype,
            "n_images": int(len(keep)),
            "n_quarantined": int(len(quarantined)),
            "mask_kind": mask_kind,
            "n_masks_unknown": n_mask_unknown,
            "lung_masks": bool(is_phantom.any()),
            "decode_seconds": round(time.time() - t0, 3),
            "cache_version": CACHE_VERSION,
            "lungray_version": __version__,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if is_complete(target):  # another process finished the same cache first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("decoded %d images into %s in %.1fs", len(keep), target, time.time() - t0)
    return target


def load_quarantined(root: str | Path) -> pd.DataFrame:
    """Rows that were not cached, with their reasons."""
    p = Path(root) / "quarantined.parquet"
    return pd.read_parquet(p) if p.exists() else pd.DataFrame()
