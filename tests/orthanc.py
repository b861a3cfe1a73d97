"""A real Orthanc PACS for the PACS worker's tests and benchmark: reads Debian's Orthanc, its DICOMweb plugin and DCMTK's storescu, writes an Orthanc configuration and database in a given folder.

    server = OrthancServer(folder)
    server.start()                        # free HTTP and DICOM ports, DICOMweb at server.dicomweb_url
    server.send([path, ...])              # storescu, the way a modality sends
    server.stop(); server.start()         # the same ports and database again

Standard library only, so `bench/pacs.py` imports it as `tests.orthanc` and the tests as `orthanc`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from serve.common import free_port, stop_process_group

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "Orthanc")
DICOMWEB_PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
AE_TITLE = "ORTHANC"
# Debian packages that provide what the tests run: Orthanc, its DICOMweb plugin, storescu and dciodvfy.
DEBIAN_PACKAGES = {"Orthanc": "orthanc", "DICOMweb plugin": "orthanc-dicomweb", "storescu": "dcmtk"}
DEBIAN_PACKAGES["dciodvfy"] = "dicom3tools"


def missing_tools() -> list[str]:
    """Debian packages whose programs the PACS tests need and this machine lacks."""
    missing = []
    if not any(shutil.which(name) for name in ORTHANC_BINARIES):
        missing.append(DEBIAN_PACKAGES["Orthanc"])
    if not any(Path(path).exists() for path in DICOMWEB_PLUGINS):
        missing.append(DEBIAN_PACKAGES["DICOMweb plugin"])
    for program in ("storescu", "dciodvfy"):
        if not shutil.which(program):
            missing.append(DEBIAN_PACKAGES[program])
    return missing


class OrthancServer:
    """One Orthanc on 127.0.0.1 with its DICOMweb plugin, its database in `folder`; stopped and started at will."""

    def __init__(self, folder: Path, *, stable_age_seconds: int = 2):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.log_path = self.folder / "orthanc.log"
        self.process: subprocess.Popen | None = None
        binary = next(path for path in (shutil.which(name) for name in ORTHANC_BINARIES) if path)
        plugin = next(path for path in DICOMWEB_PLUGINS if Path(path).exists())
        self.command = [binary, str(self.folder / "orthanc.json")]
        configuration = {
            "Name": "medimg-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AE_TITLE,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # Seconds without a new instance before a study is stable (Orthanc's default is 60).
            "StableAge": stable_age_seconds,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(configuration, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def answers(self) -> bool:
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{self.url}/system", timeout=2) as response,
        ):
            return response.status == 200
        return False

    def start(self, timeout: float = 60) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"Orthanc did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop Orthanc and wait until it exited (it holds its database until then)."""
        if self.process is None:
            return
        stop_process_group(self.process, grace=30)
        self.process = None

    def send(self, paths: list[Path]) -> None:
        """Send DICOM files with DCMTK's storescu, as a modality does (C-STORE to Orthanc's DICOM port)."""
        command = ["storescu", "-aec", AE_TITLE, "-aet", "MEDIMGTEST", "127.0.0.1", str(self.dicom_port)]
        done = subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr.strip()[-1000:]}")

    def get(self, path: str):
        """A JSON answer of Orthanc's REST API."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.loads(response.read())

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])
