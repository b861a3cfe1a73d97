"""Writes DICOM test files in every transfer syntax medimg decodes, and 16-bit PNGs; reads nothing, writes tmp files.

pydicom encodes RLE, JPEG 2000 (pylibjpeg-openjpeg) and deflate; GDCM (requirements-dev.txt) writes
JPEG Lossless and JPEG-LS, and imagecodecs HTJ2K, for which pydicom has no encoder. The code under test
decodes with the pylibjpeg plugins of requirements.txt, never with GDCM or imagecodecs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

# Transfer syntaxes written through GDCM, by the name of its gdcm.TransferSyntax constant.
GDCM_SYNTAXES = {
    "1.2.840.10008.1.2.4.70": "JPEGLosslessProcess14_1",
    "1.2.840.10008.1.2.4.57": "JPEGLosslessProcess14",
    "1.2.840.10008.1.2.4.80": "JPEGLSLossless",
}


def radiograph(rows: int = 48, columns: int = 40, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth grayscale picture that spans the full range of `bits` (0 and 2**bits - 1 both occur)."""
    coarse = np.random.default_rng(seed).random((5, 4))
    picture = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((columns, rows), Image.Resampling.BICUBIC))
    picture = (picture - picture.min()) / (picture.max() - picture.min())
    return np.rint(picture * (2**bits - 1)).astype(np.uint16)


def image_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    modality: str = "CR",
    shape: tuple[int, int] = (64, 64),
):
    """An uncompressed (Explicit VR Little Endian) DICOM data set; pixels [rows, columns] or [frames, rows, columns].

    pixels=None leaves out the pixel data (a header of `shape`).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("memory", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.PatientID = "SYNTHETIC"
    if pixels is not None and pixels.ndim == 3:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.Rows, dataset.Columns = pixels.shape[-2:] if pixels is not None else shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 0
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if pixels is not None:
        dataset.PixelData = pixels.astype("<u2").tobytes()
    return dataset


def gdcm_transcode(source: Path, target: Path, syntax: str) -> Path:
    """Rewrite a DICOM file in a JPEG Lossless or JPEG-LS transfer syntax with GDCM."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {source}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_SYNTAXES[syntax])))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {GDCM_SYNTAXES[syntax]}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {target}")
    return target


def write_variant(dataset, path: Path, syntax: str) -> Path:
    """Save `dataset` as `path` in transfer syntax `syntax` (a UID), or "raw": no preamble and no file meta."""
    import copy

    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        HTJ2KLossless,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        RLELossless,
    )

    dataset = copy.deepcopy(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    if syntax == "raw":
        # What older writers and some PACS exports produce: the bare data set, implicit VR little endian.
        dataset.preamble = None
        del dataset.file_meta
        dataset.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    elif syntax in GDCM_SYNTAXES:
        source = path.with_name(path.name + ".source.dcm")
        dataset.save_as(source, enforce_file_format=True)
        gdcm_transcode(source, path, syntax)
        source.unlink()
    elif syntax == HTJ2KLossless:
        import imagecodecs
        from pydicom.encaps import encapsulate

        dataset.PixelData = encapsulate([imagecodecs.htj2k_encode(dataset.pixel_array, reversible=True)])
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.save_as(path, enforce_file_format=True)
    elif syntax in (RLELossless, JPEG2000Lossless):
        dataset.compress(syntax)
        dataset.save_as(path, enforce_file_format=True)
    elif syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.save_as(path, enforce_file_format=True)
    else:
        raise ValueError(f"no writer for transfer syntax {syntax}")
    return path


def write_sixteen_bit_png(path: Path, pixels: np.ndarray, significant_bits: int | None = None) -> Path:
    """A 16-bit grayscale PNG of `pixels`, with an sBIT chunk when significant_bits is given."""
    info = PngInfo()
    if significant_bits is not None:
        info.add(b"sBIT", bytes([significant_bits]))
    Image.fromarray(pixels.astype(np.uint16)).save(path, format="PNG", pnginfo=info)
    return path


# The SOP class a modality stores its images in, by Modality.
MODALITY_SOP_CLASSES = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
}


def write_study(
    folder: Path,
    modality: str,
    images: int,
    *,
    patient_name: str,
    patient_id: str,
    study_date: str,
    seed: int = 0,
) -> list[Path]:
    """A study as a modality sends it: `images` 48x40 12-bit images of one series, with patient and study attributes;
    returns the paths of its files (in `folder`)."""
    import datetime

    from pydicom.uid import generate_uid

    study_uid, series_uid = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, images + 1):
        dataset = image_dataset(radiograph(48, 40, seed=seed + number), modality=modality)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = MODALITY_SOP_CLASSES[modality]
        dataset.PatientName, dataset.PatientID = patient_name, patient_id
        dataset.PatientBirthDate, dataset.PatientSex = "19700101", "F"
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.StudyDate, dataset.StudyTime = study_date, datetime.datetime.now().strftime("%H%M%S")
        dataset.StudyID, dataset.AccessionNumber, dataset.ReferringPhysicianName = "1", f"ACC{seed}", ""
        dataset.SeriesNumber, dataset.InstanceNumber = 1, number
        dataset.Manufacturer = "Test Modality Inc"
        paths.append(folder / f"{modality}{seed}-{number}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths
