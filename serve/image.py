"""The serving image of one registered model: reads the registry (any model URI) and requirements.txt, writes a build context and builds docker/serving/Dockerfile with the site's options.

    python -m serve.image --model models:/demo-classifier@champion [--tag medimg-serve-demo-classifier:3]

The image holds a copy of the resolved version's files (with which version it is, so that answers and /metrics
name it without a tracking server), this repository's serve/ and models/ packages, and the served model's
pinned requirements with tensorflow-cpu and mlflow-skinny in place of tensorflow and mlflow. Site options, as
flags or environment variables: the base image (MEDIMG_BASE_IMAGE), a CA bundle and a pip.conf given to pip as
BuildKit secrets (MEDIMG_CA_BUNDLE, MEDIMG_PIP_CONF), the JPEG decoder (MEDIMG_JPEG_DECODER: gdcm, or libjpeg
under the GPLv3), extra `docker build` flags (MEDIMG_DOCKER_BUILD_FLAGS, e.g. `--network host`) and the docker
client (DOCKER). docs/CONTAINERS.md has the details.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from serve.common import first_line

REPOSITORY = Path(__file__).resolve().parents[1]
DOCKERFILE = REPOSITORY / "docker" / "serving" / "Dockerfile"
# Written from requirements.txt by `python -m serve.image --requirements` and committed, so that a reviewer reads
# what the image installs; monitoring/Dockerfile.app installs the same file. `--requirements --check` in the tests.
IMAGE_REQUIREMENTS = DOCKERFILE.with_name("requirements.txt")
LIBJPEG_REQUIREMENTS = DOCKERFILE.with_name("requirements-libjpeg.txt")
LICENCES_SCRIPT = REPOSITORY / "docker" / "licences.py"
# The repository packages the image runs (`python -m serve.app`); the model carries its own copy for its pyfunc.
CODE_PACKAGES = ("serve", "models")
# Packages of the app around the model (serve.app), besides the model's own requirements.
APP_PACKAGES = ("fastapi", "uvicorn", "python-multipart", "prometheus_client")
# A CPU serving image takes the CPU build of TensorFlow and MLflow without its tracking server and UI.
SERVING_SUBSTITUTES = {"tensorflow": "tensorflow-cpu", "mlflow": "mlflow-skinny"}
GPL_DECODER = "pylibjpeg-libjpeg"
JPEG_DECODERS = ("gdcm", "libjpeg")
IMAGE_PORT = 8080


class ImageBuildError(RuntimeError):
    """The image could not be built; the message is one line (the docker output above it says more)."""


@dataclass
class ImageOptions:
    """How a site builds: base image, pip's CA bundle and configuration (secrets), decoder, docker flags."""

    base_image: str = ""
    ca_bundle: str = ""
    pip_conf: str = ""
    jpeg_decoder: str = "gdcm"
    docker: str = "docker"
    build_flags: list[str] = field(default_factory=list)

    @classmethod
    def from_environment(cls, environment=os.environ) -> ImageOptions:
        return cls(
            base_image=environment.get("MEDIMG_BASE_IMAGE", ""),
            ca_bundle=environment.get("MEDIMG_CA_BUNDLE", ""),
            pip_conf=environment.get("MEDIMG_PIP_CONF", ""),
            jpeg_decoder=environment.get("MEDIMG_JPEG_DECODER", "") or "gdcm",
            docker=environment.get("DOCKER", "") or "docker",
            build_flags=shlex.split(environment.get("MEDIMG_DOCKER_BUILD_FLAGS", "")),
        )

    def check(self) -> None:
        """ValueError with one line for a decoder that does not exist or a secret file that cannot be read."""
        if self.jpeg_decoder not in JPEG_DECODERS:
            raise ValueError(f"JPEG decoder must be one of {', '.join(JPEG_DECODERS)}, got {self.jpeg_decoder!r}")
        for label, path in (("CA bundle", self.ca_bundle), ("pip.conf", self.pip_conf)):
            if path and not Path(path).is_file():
                raise ValueError(f"{label} {path} is not a readable file")

    def docker_arguments(self) -> list[str]:
        """`docker build` arguments for these options (secrets by file, so nothing lands in a layer)."""
        arguments = ["--build-arg", f"JPEG_DECODER={self.jpeg_decoder}"]
        if self.base_image:
            arguments += ["--build-arg", f"BASE_IMAGE={self.base_image}"]
        for secret, path in (("ca_bundle", self.ca_bundle), ("pip_conf", self.pip_conf)):
            if path:
                arguments += ["--secret", f"id={secret},src={Path(path).resolve()}"]
        return arguments + list(self.build_flags)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    model_uri: str


def image_requirements() -> list[str]:
    """The serving image's pip requirements: the served model's pins (substituted) and the app's."""
    from serve.pyfunc import SERVING_PACKAGES, pinned_requirements

    lines = []
    for name, line in pinned_requirements((*SERVING_PACKAGES, *APP_PACKAGES)).items():
        substitute = SERVING_SUBSTITUTES.get(name)
        lines.append(line.replace(name, substitute, 1) if substitute else line)
    return sorted(lines, key=str.lower)


def written_requirements() -> dict[Path, str]:
    """What `--requirements` writes: the image's requirements and the optional GPL decoder's pin."""
    from serve.pyfunc import pinned_requirements

    header = "# Written by `python -m serve.image --requirements` from requirements.txt; do not edit.\n"
    return {
        IMAGE_REQUIREMENTS: header + "\n".join(image_requirements()) + "\n",
        LIBJPEG_REQUIREMENTS: header + pinned_requirements([GPL_DECODER])[GPL_DECODER] + "\n",
    }


def write_requirements(check: bool = False) -> list[Path]:
    """Write the image's requirement files (or, with `check`, only compare); return the files that differ(ed)."""
    stale = [path for path, text in written_requirements().items() if not path.is_file() or path.read_text() != text]
    if not check:
        for path in stale:
            path.write_text(written_requirements()[path], encoding="utf-8")
    return stale


def default_tag(resolved) -> str:
    """`medimg-serve-<name>:<version>` (Docker's lower-case repository rules) for a registered version."""
    if not resolved.name:
        raise ValueError(f"{resolved.uri} is not a registered version: name the image with --tag")
    slug = re.sub(r"[^a-z0-9]+", "-", resolved.name.lower()).strip("-") or "model"
    return f"medimg-serve-{slug}:{resolved.version}"


def assemble_context(resolved, context: Path) -> None:
    """The build context: the model's files with its identity, the code packages, requirements, Dockerfile."""
    import mlflow

    from serve.model_uri import write_identity

    model = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved.load_uri, dst_path=str(context / "dl")))
    shutil.move(str(model), context / "model")
    write_identity(resolved, context / "model")
    if stale := write_requirements(check=True):
        names = ", ".join(str(path.relative_to(REPOSITORY)) for path in stale)
        raise ValueError(f"{names} differ from requirements.txt: run `python -m serve.image --requirements`")
    for path in (IMAGE_REQUIREMENTS, LIBJPEG_REQUIREMENTS):
        shutil.copy(path, context / path.name)
    # The copy's own requirements say what it runs with here, so MLflow finds no mismatch when it loads it.
    shutil.copy(IMAGE_REQUIREMENTS, context / "model" / "requirements.txt")
    for package in CODE_PACKAGES:
        shutil.copytree(
            REPOSITORY / package, context / "medimg" / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(DOCKERFILE, context / "Dockerfile")
    shutil.copy(LICENCES_SCRIPT, context / "licences.py")


def build_image(uri: str, tag: str = "", options: ImageOptions | None = None) -> BuiltImage:
    """Resolve `uri`, assemble the context and build; ValueError for bad input, ImageBuildError when docker fails."""
    from serve.model_uri import resolve_model_uri

    options = options or ImageOptions.from_environment()
    options.check()
    resolved = resolve_model_uri(uri)
    tag = tag or default_tag(resolved)
    with tempfile.TemporaryDirectory(prefix="medimg-serving-image-") as workdir:
        context = Path(workdir)
        assemble_context(resolved, context)
        labels = {
            "MODEL_URI": f"models:/{resolved.name}/{resolved.version}" if resolved.name else resolved.uri,
            "MODEL_NAME": resolved.name,
            "MODEL_VERSION": resolved.version,
            "GIT_COMMIT": _git_commit(),
            "BUILD_DATE": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        command = [options.docker, "build", "-t", tag, *options.docker_arguments()]
        command += [argument for key, value in labels.items() for argument in ("--build-arg", f"{key}={value}")]
        result = subprocess.run([*command, str(context)], env={**os.environ, "DOCKER_BUILDKIT": "1"})
    if result.returncode != 0:
        raise ImageBuildError(f"docker build of {tag} failed (exit {result.returncode}); see its output above")
    inspected = subprocess.run(
        [options.docker, "inspect", "--type=image", "--format", "{{.Id}}", tag], capture_output=True, text=True
    )
    return BuiltImage(tag=tag, image_id=inspected.stdout.strip(), model_uri=labels["MODEL_URI"])


def _git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def build_parser() -> argparse.ArgumentParser:
    defaults = ImageOptions.from_environment()
    parser = argparse.ArgumentParser(prog="python -m serve.image", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model URI: models:/NAME@ALIAS, models:/NAME/N, models:/NAME")
    parser.add_argument(
        "--requirements", action="store_true", help="write docker/serving/requirements*.txt from requirements.txt"
    )
    parser.add_argument("--check", action="store_true", help="with --requirements: exit 1 when a file would change")
    parser.add_argument("--tag", default="", help="image tag (default medimg-serve-<name>:<version>)")
    parser.add_argument("--base-image", default=defaults.base_image, help="FROM image (default: the Dockerfile's)")
    parser.add_argument("--ca-bundle", default=defaults.ca_bundle, help="PEM file pip trusts while building")
    parser.add_argument("--pip-conf", default=defaults.pip_conf, help="pip.conf with the site's index and credentials")
    parser.add_argument("--jpeg-decoder", default=defaults.jpeg_decoder, choices=JPEG_DECODERS)
    parser.add_argument("--docker", default=defaults.docker, help="docker client that can build with BuildKit")
    parser.add_argument(
        "--build-flags", default=shlex.join(defaults.build_flags), help="extra `docker build` flags, one string"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.requirements:
        stale = write_requirements(check=arguments.check)
        for path in stale:
            print(f"{path.relative_to(REPOSITORY)} {'differs' if arguments.check else 'written'}")
        return 1 if stale and arguments.check else 0
    if not arguments.model:
        parser.error("--model is required (or --requirements)")
    options = ImageOptions(
        base_image=arguments.base_image,
        ca_bundle=arguments.ca_bundle,
        pip_conf=arguments.pip_conf,
        jpeg_decoder=arguments.jpeg_decoder,
        docker=arguments.docker,
        build_flags=shlex.split(arguments.build_flags),
    )
    try:
        built = build_image(arguments.model, arguments.tag, options)
    except ValueError as error:
        print(f"error: {first_line(error, limit=None)}", file=sys.stderr)
        return 2
    except ImageBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{built.tag} ({built.image_id}) serves {built.model_uri}")
    print(f"run it: {options.docker} run --rm -p {IMAGE_PORT}:{IMAGE_PORT} {built.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
