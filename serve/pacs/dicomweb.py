"""The PACS as the worker sees it: reads studies and instances over QIDO-RS and WADO-RS and Orthanc's change feed, writes results over STOW-RS (dicomweb-client); credentials from the environment only.

Every failure is classified so the worker knows what to do with it, and its message never quotes a URL
(URLs hold UIDs) or a server's answer: `PacsUnavailable` (no connection, a timeout, HTTP 5xx, 401, 403,
408, 429: retry the whole batch later with back-off), and three faults of one instance, recorded and
not retried: `InstanceGone` (deleted before it was retrieved), `InstanceUnreadable` (WADO-RS answered
with something else than the instance) and `StoreRejected` (the PACS refused the image's results).

Credentials (never command-line arguments, which other users of the machine can read):
MEDIMG_PACS_USERNAME with MEDIMG_PACS_PASSWORD or MEDIMG_PACS_PASSWORD_FILE (HTTP basic), or
MEDIMG_PACS_TOKEN or MEDIMG_PACS_TOKEN_FILE (an OAuth bearer token).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

USERNAME_ENVIRONMENT = "MEDIMG_PACS_USERNAME"
PASSWORD_ENVIRONMENT = "MEDIMG_PACS_PASSWORD"
PASSWORD_FILE_ENVIRONMENT = "MEDIMG_PACS_PASSWORD_FILE"
TOKEN_ENVIRONMENT = "MEDIMG_PACS_TOKEN"
TOKEN_FILE_ENVIRONMENT = "MEDIMG_PACS_TOKEN_FILE"
# HTTP answers that mean "not now" rather than "never": the study is tried again after a back-off.
UNAVAILABLE_STATUSES = frozenset({401, 403, 408, 429})
GONE_STATUSES = frozenset({404, 410})
# Attributes asked of QIDO-RS for each instance: enough to decide eligibility without retrieving it.
INSTANCE_FIELDS = ("Modality", "SOPClassUID", "SeriesDescription", "Manufacturer")
# Orthanc's change feed: a page of changes per request.
CHANGES_PAGE = 200


class PacsUnavailable(Exception):
    """The PACS cannot be reached or refuses service now; `reason` is short and holds no URL."""

    def __init__(self, operation: str, reason: str):
        super().__init__(f"{operation}: {reason}")
        self.operation, self.reason = operation, reason


class InstanceGone(Exception):
    """The instance was deleted from the PACS before the worker retrieved it."""


class InstanceUnreadable(Exception):
    """WADO-RS answered for one instance with something that is not a DICOM instance; `reason` holds no UID."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StoreRejected(Exception):
    """The PACS refused to store the results of one image; `reason` is short and holds no UID."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _read_secret(environment: Mapping[str, str], value_name: str, file_name: str) -> str:
    if environment.get(value_name):
        return environment[value_name].strip()
    if environment.get(file_name):
        try:
            with open(environment[file_name], encoding="utf-8") as handle:
                return handle.readline().strip()
        except OSError as error:
            raise ValueError(f"{file_name}: cannot read {environment[file_name]} ({error.strerror})") from None
    return ""


def session_from_environment(environment: Mapping[str, str]):
    """A requests session with the PACS credentials of the environment (basic auth or a bearer token), if any."""
    import requests

    username = environment.get(USERNAME_ENVIRONMENT, "").strip()
    password = _read_secret(environment, PASSWORD_ENVIRONMENT, PASSWORD_FILE_ENVIRONMENT)
    token = _read_secret(environment, TOKEN_ENVIRONMENT, TOKEN_FILE_ENVIRONMENT)
    if token and username:
        raise ValueError(
            f"set either {TOKEN_ENVIRONMENT} (a bearer token) or {USERNAME_ENVIRONMENT} (basic auth), not both"
        )
    if username and not password:
        raise ValueError(
            f"{USERNAME_ENVIRONMENT} is set: set {PASSWORD_ENVIRONMENT} or {PASSWORD_FILE_ENVIRONMENT} too"
        )
    if password and not username:
        raise ValueError(f"a PACS password is set: set {USERNAME_ENVIRONMENT} too")
    session = requests.Session()
    if username:
        session.auth = (username, password)
    elif token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def classify(operation: str, error: Exception) -> Exception:
    """The worker's exception for a failed request: PacsUnavailable, or, when one instance is at fault,
    InstanceGone, InstanceUnreadable or StoreRejected (so one odd instance never holds up the feed)."""
    import requests

    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        if status >= 500 or status in UNAVAILABLE_STATUSES:
            return PacsUnavailable(operation, f"HTTP {status}")
        if operation == "retrieve":
            return InstanceGone() if status in GONE_STATUSES else InstanceUnreadable(f"HTTP {status}")
        if operation == "store":
            return StoreRejected(f"HTTP {status}")
        return PacsUnavailable(operation, f"HTTP {status}")
    if isinstance(error, requests.RequestException):
        return PacsUnavailable(operation, type(error).__name__)
    # An answer that is not what DICOMweb promises: of one instance, or of a server (a proxy's page, say).
    if operation == "retrieve":
        return InstanceUnreadable(f"unexpected answer ({type(error).__name__})")
    return PacsUnavailable(operation, f"unexpected answer ({type(error).__name__})")


def first_value(row: Mapping, keyword: str):
    """The first value of an attribute in a DICOM JSON object (QIDO-RS answer row), or None."""
    from pydicom.datadict import tag_for_keyword

    element = row.get(f"{tag_for_keyword(keyword):08X}") or {}
    values = element.get("Value") or [None]
    return values[0]


@dataclass(frozen=True)
class InstanceRow:
    """One instance of a study as QIDO-RS lists it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    series_description: str
    manufacturer: str

    @classmethod
    def of(cls, study_uid: str, row: Mapping) -> InstanceRow:
        text = {
            keyword: str(first_value(row, keyword) or "").strip()
            for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "SeriesDescription")
        }
        return cls(
            study_uid=study_uid,
            series_uid=text["SeriesInstanceUID"],
            sop_uid=text["SOPInstanceUID"],
            sop_class_uid=text["SOPClassUID"],
            modality=text["Modality"].upper(),
            series_description=text["SeriesDescription"],
            manufacturer=str(first_value(row, "Manufacturer") or "").strip(),
        )


class Pacs:
    """A DICOMweb server (and, for the Orthanc feed, Orthanc's REST API beside it)."""

    def __init__(self, dicomweb_url: str, session, *, timeout: float, orthanc_url: str = ""):
        from dicomweb_client.api import DICOMwebClient

        self.session = session
        self.timeout = timeout
        self.orthanc_url = orthanc_url.rstrip("/")
        self.client = DICOMwebClient(dicomweb_url.rstrip("/"), session=session, timeout=timeout)
        # The worker backs off itself (one log line per outage); the client's own retries would hide outages.
        self.client.set_http_retry_params(retry=False)

    def _call(self, operation: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:  # Classified into the three kinds the worker acts on.
            raise classify(operation, error) from None

    def instances(self, study_uid: str) -> list[InstanceRow]:
        """Every instance of a study (QIDO-RS), with the attributes that decide eligibility."""
        rows = self._call(
            "search",
            self.client.search_for_instances,
            study_instance_uid=study_uid,
            fields=list(INSTANCE_FIELDS),
            get_remaining=True,
        )
        return [InstanceRow.of(study_uid, row) for row in rows]

    def studies_since(self, study_date: str) -> list[tuple[str, int]]:
        """(StudyInstanceUID, number of instances) of every study dated `study_date` (YYYYMMDD) or later (QIDO-RS)."""
        rows = self._call(
            "search",
            self.client.search_for_studies,
            search_filters={"StudyDate": f"{study_date}-"},
            fields=["NumberOfStudyRelatedInstances"],
            get_remaining=True,
        )
        found = []
        for row in rows:
            uid = str(first_value(row, "StudyInstanceUID") or "").strip()
            if uid:
                found.append((uid, int(first_value(row, "NumberOfStudyRelatedInstances") or 0)))
        return found

    def retrieve(self, row: InstanceRow) -> tuple[bytes, object]:
        """The instance as Part 10 bytes (in the transfer syntax it was stored in) and as a pydicom data set (WADO-RS)."""
        import pydicom

        dataset = self._call("retrieve", self.client.retrieve_instance, row.study_uid, row.series_uid, row.sop_uid)
        buffer = io.BytesIO()
        try:
            pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        except Exception as error:  # pydicom raises several types for data sets it cannot encode.
            raise InstanceUnreadable(f"cannot be encoded ({type(error).__name__})") from None
        return buffer.getvalue(), dataset

    def store(self, datasets: Sequence, study_uid: str) -> None:
        """Store data sets in their study (STOW-RS); StoreRejected when the PACS refuses any of them."""
        answer = self._call("store", self.client.store_instances, datasets, study_instance_uid=study_uid)
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        if failed:
            reasons = sorted({str(item.get("FailureReason", "")) for item in failed})
            raise StoreRejected(f"refused with failure reason {', '.join(reasons)}")

    def orthanc(self, path: str, **params) -> dict:
        """A JSON answer of Orthanc's REST API (the change feed and its resources)."""
        if not self.orthanc_url:
            raise ValueError("the Orthanc feed needs the Orthanc URL")
        response = self._call(
            "changes", self.session.get, f"{self.orthanc_url}{path}", params=params or None, timeout=self.timeout
        )
        if response.status_code in GONE_STATUSES:
            return {}
        try:
            response.raise_for_status()
            return response.json()
        except Exception as error:  # HTTP errors and answers that are not JSON, classified.
            raise classify("changes", error) from None
