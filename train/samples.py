"""Writes sample inputs for the demo model (`python -m train.samples [folder]`): a PNG, a JPEG and a DICOM of synthetic cells; reads nothing.

The files are drawn by the synthetic dataset's generator (one parasitized, one uninfected cell and a
parasitized one as DICOM secondary capture), so the demo model has something real to score over REST:
`python -m serve.client --url http://127.0.0.1:5001 samples/*`. No patient data: the DICOM names a
synthetic patient.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from train.data.synthetic import render_cell

SAMPLE_SIZE = 128
# (file name, seed, parasitized)
SAMPLES = (("cell.png", 3, True), ("cell.jpg", 4, False), ("cell.dcm", 5, True))


def cell(seed: int, parasitized: bool) -> np.ndarray:
    return render_cell(np.random.default_rng([seed, 0]), SAMPLE_SIZE, {"dots": parasitized})


def write_dicom(path: Path, image: np.ndarray) -> None:
    """An RGB secondary-capture DICOM (Part 10, explicit VR little endian) holding `image`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.Modality = "OT"
    dataset.PatientName, dataset.PatientID = "Synthetic^Cell", "SYNTHETIC-0"
    dataset.Rows, dataset.Columns = image.shape[:2]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    dataset.save_as(path, enforce_file_format=True)


def write_samples(folder: str | Path) -> list[Path]:
    """Write the three sample files into `folder`; return their paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, seed, parasitized in SAMPLES:
        path, image = folder / name, cell(seed, parasitized)
        if path.suffix == ".dcm":
            write_dicom(path, image)
        elif path.suffix == ".jpg":
            Image.fromarray(image).save(path, quality=95)
        else:
            Image.fromarray(image).save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m train.samples", description="Write a PNG, a JPEG and a DICOM of synthetic cells for the demo."
    )
    parser.add_argument("folder", nargs="?", default="samples", help="where to write them (default: samples)")
    for written_path in write_samples(parser.parse_args(argv).folder):
        print(written_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
