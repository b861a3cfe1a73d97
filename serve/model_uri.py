"""One meaning for a model URI in every command: reads the MLflow registry and logged models, returns the concrete version to load.

| URI | means |
|---|---|
| `models:/NAME@ALIAS` | the version the alias points at |
| `models:/NAME/N` | version N |
| `models:/NAME/latest` | the newest version |
| `models:/NAME` | `NAME@champion` when that alias is set, else the newest version |
| `models:/m-<id>` | a logged model (MLflow 3), registered or not |
| `runs:/<run id>/<path>` | the model a run logged under `path` |
| a folder, `file://`, `s3://`, ... | that model folder; registry information only from its `medimg_registered_model.json` (a serving image's copy) |

`evaluate`, `pipeline`, `promote`, `batch`, `python -m serve.app`, `python -m serve.client --serve` and
`python -m serve.pacs` all resolve through `resolve_model_uri`, so one URI scores one version everywhere.
`check_model_uri` checks the form alone (no tracking store needed) for settings validation.
Stages (`models:/NAME/Production`) are not used by medimg: use an alias.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from serve.common import first_line

CHAMPION_ALIAS = "champion"
LATEST = "latest"
MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
RUN_ID = re.compile(r"[0-9a-f]{32}")
REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))?/?")
RUN_URI = re.compile(r"runs:/(?P<run_id>[^/]+)(?P<path>/.*)?")
# Written beside a registered version's files when they are copied out of the registry (a serving image): which
# version they are, so that answers and /metrics still name it where no tracking store can be reached.
IDENTITY_FILE = "medimg_registered_model.json"
FORMS = "models:/<name>@<alias>, models:/<name>/<version>, models:/<name>, models:/<model id>, runs:/<run id>/model"


class ModelUriError(ValueError):
    """A model URI that is malformed or does not resolve; the message is one line that says what to use."""


@dataclass(frozen=True)
class ResolvedModel:
    """The concrete model behind a URI: `load_uri` loads exactly the version that name/version describe."""

    uri: str
    load_uri: str
    name: str = ""
    version: str = ""
    model_id: str = ""
    run_id: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def registered(self) -> str:
        """`NAME/N` for a registered version, else ''."""
        return f"{self.name}/{self.version}" if self.name else ""

    @property
    def label(self) -> str:
        """How logs and run names call it: `NAME version N`, else the URI."""
        return f"{self.name} version {self.version}" if self.name else self.uri


def check_model_uri(uri: str) -> None:
    """ModelUriError unless `uri` has one of the accepted forms (a registry URI, a run URI, a model folder or URL)."""
    text = uri.strip()
    if not text:
        raise ModelUriError(f"a model URI is required: {FORMS}")
    registry = REGISTRY_URI.fullmatch(text)
    if text.startswith("models:/"):
        if registry is None:
            raise ModelUriError(f"model URI {uri!r} is malformed; use {FORMS}")
        version = registry["version"]
        if version and not version.isdigit() and version != LATEST:
            raise ModelUriError(
                f"model URI {uri!r}: stages are not used; use models:/{registry['name']}@<alias> or a version number"
            )
        return
    if text.startswith("runs:/"):
        match = RUN_URI.fullmatch(text)
        if match is None or not RUN_ID.fullmatch(match["run_id"]):
            raise ModelUriError(f"model URI {uri!r}: a run URI is runs:/<32-character run id>/<artifact path>")
        return
    if "://" not in text and not os.path.isdir(text):
        raise ModelUriError(f"model URI {uri!r} is neither a model URI nor a model folder; use {FORMS}")


def resolve_model_uri(uri: str, client=None) -> ResolvedModel:
    """The version, logged model and run behind `uri`; ModelUriError with one line when it does not resolve."""
    from mlflow.exceptions import MlflowException

    check_model_uri(uri)
    text = uri.strip()
    if (identity := _copied_identity(text)) is not None:
        return identity
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
    try:
        registry = REGISTRY_URI.fullmatch(text)
        if registry is not None:
            if MODEL_ID.fullmatch(registry["name"]) and not registry["alias"] and not registry["version"]:
                logged = client.get_logged_model(registry["name"])
                return ResolvedModel(text, text, model_id=logged.model_id, run_id=logged.source_run_id or "")
            return _registered(text, client, registry["name"], registry["alias"], registry["version"])
        run = RUN_URI.fullmatch(text)
        if run is not None:
            client.get_run(run["run_id"])
            return ResolvedModel(text, text, run_id=run["run_id"])
    except MlflowException as error:
        raise ModelUriError(f"model URI {uri!r} does not resolve: {first_line(error.message)}") from None
    return ResolvedModel(text, text)


def write_identity(resolved: ResolvedModel, folder: str | Path) -> None:
    """Record in a copied model folder which registered version it is (read back by resolve_model_uri)."""
    stored = {key: value for key, value in asdict(resolved).items() if key not in ("load_uri", "aliases")}
    stored["uri"] = f"models:/{resolved.name}/{resolved.version}" if resolved.name else resolved.uri
    (Path(folder) / IDENTITY_FILE).write_text(json.dumps(stored, indent=2) + "\n", encoding="utf-8")


def _copied_identity(text: str) -> ResolvedModel | None:
    """The registered version a local model folder was copied from, when it says so; None for other URIs."""
    folder = Path(text.removeprefix("file://"))
    if "://" in text.removeprefix("file://") or not (folder / IDENTITY_FILE).is_file():
        return None
    stored = json.loads((folder / IDENTITY_FILE).read_text(encoding="utf-8"))
    # Aliases are left out: they move in the registry after the copy was made.
    known = {item.name for item in fields(ResolvedModel)} - {"load_uri", "aliases"}
    return ResolvedModel(load_uri=text, **{key: str(value) for key, value in stored.items() if key in known})


def _registered(uri: str, client, name: str, alias: str | None, version: str | None) -> ResolvedModel:
    if alias:
        found = client.get_model_version_by_alias(name, alias)
    elif version and version != LATEST:
        found = client.get_model_version(name, version)
    else:
        found = _default_version(client, name, champion_first=version is None)
    number = str(found.version)
    model_id = getattr(found, "model_id", None) or ""
    if not model_id and str(found.source or "").startswith("models:/m-"):
        model_id = str(found.source).removeprefix("models:/")
    return ResolvedModel(
        uri=uri,
        load_uri=f"models:/{name}/{number}",
        name=name,
        version=number,
        model_id=model_id,
        run_id=found.run_id or "",
        aliases=tuple(sorted(_aliases_of(client, name, number))),
    )


def _default_version(client, name: str, *, champion_first: bool):
    """NAME@champion when champion_first and the alias exists, else the newest version of NAME."""
    from mlflow.exceptions import MlflowException

    if champion_first:
        with contextlib.suppress(MlflowException):
            return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    versions = client.search_model_versions(f"name='{name}'", max_results=1, order_by=["version_number DESC"])
    if not versions:
        raise ModelUriError(f"registered model {name!r} has no versions; register one first (e.g. `make demo`)")
    return versions[0]


def _aliases_of(client, name: str, version: str) -> list[str]:
    """The aliases on a version (searches leave a version's own list empty; the registered model lists them)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return []
    return [alias for alias, number in aliases.items() if str(number) == version]
