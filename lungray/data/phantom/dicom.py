"""The phantom as DICOM files: an RSNA-like folder of CR images, with synthetic identifiers only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from lungray.data.phantom.dataset import PhantomData
from lungray.errors import ConfigError


def write_dicom(
    path: Union[str, Path],
    image: np.ndarray,
    *,
    bits: int = 8,
    photometric: str = "MONOCHROME2",
    patient_id: str = "PHANTOM",
    image_id: str = "phantom",
    class_name: Optional[str] = None,
) -> Path:
    """Write one uint8 phantom image as an uncompressed CR DICOM file.

    ``bits`` 8 stores the bytes as they are; 12 or 16 rescales to that many stored bits in
    16-bit words (as CR detectors do). ``MONOCHROME1`` stores inverted values (bone dark in the
    raw pixels), which the data layer must invert back. No real identifiers: the PatientID is the
    synthetic patient id and the name is a fixed placeholder. UIDs are derived from the image id,
    so the same call writes the same bytes.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    if bits not in (8, 12, 16):
        raise ConfigError(f"DICOM bits must be 8, 12 or 16, got {bits}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ConfigError(f"DICOM photometric must be MONOCHROME1 or MONOCHROME2, got {photometric}")
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ConfigError(f"write_dicom expects a 2-D uint8 image, got {image.dtype} {image.shape}")
    top = (1 << bits) - 1
    if bits == 8:
        px = image.copy()
    else:
        px = np.round(image.astype(np.float64) * (top / 255.0)).astype(np.uint16)
    if photometric == "MONOCHROME1":
        px = (top - px.astype(np.int64)).astype(px.dtype)

    sop = generate_uid(entropy_srcs=["lungray-phantom", image_id, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["lungray-phantom", patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["lungray-phantom", image_id, "series"])
    ds.Modality = "CR"
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = patient_id
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SeriesDescription = "lungray phantom"
    if class_name is not None:
        ds.ImageComments = f"lungray phantom class={class_name}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(px).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_phantom_dicoms(out_dir: Union[str, Path], data: PhantomData, *, bits: int = 8, photometric: str = "MONOCHROME2") -> list[Path]:
    """Write every image of ``data`` as ``<out_dir>/<image_id>.dcm`` (an RSNA-like folder)."""
    out = Path(out_dir)
    return [
        write_dicom(
            out / f"{data.ids[i]}.dcm",
            data.images[i],
            bits=bits,
            photometric=photometric,
            patient_id=str(data.patient_ids[i]),
            image_id=str(data.ids[i]),
            class_name=data.class_names[int(data.labels[i])],
        )
        for i in range(len(data))
    ]
