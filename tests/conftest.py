"""Session-wide test settings and shared fixtures: quiet TensorFlow, CPU only, no tracking outside tmp dirs; a trained served model and a served model with known answers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests run from the repository root so `models`, `serve`, `train`, ... import (the helpers below import them too).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from serving_helpers import MODEL_NAME, audited_runner, load_pyfunc, running_server, tracking_at  # noqa: E402
from stores import seed_database, sqlite_store  # noqa: E402

from serve.common import free_port  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def keep_artifacts_beside_the_database() -> None:
    """Every sqlite store this test process opens keeps its artifacts in `mlruns/` beside its database file, and a
    new one starts as a copy of the migrated template (tests/stores.py).

    MLflow gives a store opened without an artifact root `./mlruns` of the working folder, the repository root
    here: every test that logged into a tmp_path store in-process wrote its artifacts into the repository. A store
    opened by a subprocess gets the subprocess's working folder, which tests set to a tmp_path. A relative database
    path, or an artifact root that a caller names, is left as MLflow has it.
    """
    from mlflow.tracking._tracking_service import utils

    open_sqlite_store = utils._tracking_store_registry._registry["sqlite"]

    def beside_the_database(store_uri, artifact_uri=None):
        database = Path(store_uri.removeprefix("sqlite:///"))
        if store_uri.startswith("sqlite:///") and database.is_absolute():
            seed_database(database)
            if artifact_uri is None:
                artifact_uri = str(database.parent / "mlruns")
        return open_sqlite_store(store_uri, artifact_uri)

    utils._tracking_store_registry.register("sqlite", beside_the_database)


keep_artifacts_beside_the_database()


# make test runs the files on three pytest-xdist workers, a file per worker at a time (--dist loadfile).
# The longest files start first, so that none of them is left alone at the end (ranked by the per-file sums of
# `--durations=0` over a whole run on a quiet machine, 2026-12-07; make test passes --no-loadscope-reorder, else
# xdist would order files by test count).
LONGEST_FIRST = (
    "test_first_run.py",
    "test_mlflow_server.py",
    "test_webhooks.py",
    "test_pipeline.py",
    "test_benches.py",
    "test_tune.py",
    "test_following.py",
    "test_training.py",
    "test_batch.py",
    "test_pacs.py",
    "test_models.py",
    "test_gpu_bench.py",
    "test_app.py",
    "test_prepare.py",
    "test_feed.py",
    "test_aws.py",
    "test_dicom.py",
    "test_evaluate.py",
    "test_clinical.py",
    "test_cli.py",
    "test_explain.py",
    "test_promote.py",
    "test_s3_artifacts.py",
    "test_serving.py",
    "test_contract.py",
    "test_monitoring.py",
    "test_data.py",
    "test_chestxray14.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    # A stable sort: tests keep their order within a file, which module fixtures and ordered tests rely on.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Files whose tests share a session fixture that starts a server go to the same worker, after the file named, so the
# server starts once (a `mlflow models serve` costs about 10 s of CPU): `server` (test_dicom, test_serving) and
# `spot_scoring_server` (test_app, test_explain).
SCHEDULED_WITH = {"test_serving.py": "test_dicom.py", "test_explain.py": "test_app.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile with SCHEDULED_WITH: a file named there is part of its partner file's work unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedServerScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            directory, slash, name = super()._split_scope(nodeid).rpartition("/")
            return directory + slash + SCHEDULED_WITH.get(name, name)

    return SharedServerScheduling(config, log)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def postgres_bin() -> Path:
    """The PostgreSQL server binaries. Missing ones skip the test on a developer machine but fail it in CI
    (CI set), so the PostgreSQL, tracking-server and shared-study tests can never be skipped there silently."""
    from mlflow_server.postgres import find_pg_bin_dir

    try:
        return Path(find_pg_bin_dir())
    except ValueError as missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {missing}")
        pytest.skip(str(missing))


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool (Debian package `prometheus`): skips on a developer machine without it, fails in CI."""
    import shutil

    path = shutil.which("promtool")
    if path is None:
        missing = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Prometheus rule and exposition checks: {missing}")
        pytest.skip(missing)
    return path


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh embedded sqlite tracking store for one test, also exported to subprocesses."""
    uri = sqlite_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def repository_mlruns() -> dict[Path, int]:
    """The folders of ./mlruns in the repository (two levels: experiments and their runs or models) with their times."""
    root = REPO_ROOT / "mlruns"
    if not root.is_dir():
        return {}
    folders = [root, *(child for child in root.iterdir() if child.is_dir())]
    folders += [grandchild for child in folders[1:] for grandchild in child.iterdir() if grandchild.is_dir()]
    return {folder: folder.stat().st_mtime_ns for folder in folders}


@pytest.fixture(scope="session", autouse=True)
def repository_mlruns_seen() -> dict[Path, int]:
    """./mlruns of the repository as the session found it (a developer's own may exist), before any other fixture."""
    return repository_mlruns()


@pytest.fixture(autouse=True)
def writes_nothing_into_the_repository_mlruns(repository_mlruns_seen):
    """A test, with the fixtures it set up, never writes MLflow artifacts into ./mlruns of the repository."""
    yield
    now = repository_mlruns()
    changed = sorted(
        str(path.relative_to(REPO_ROOT)) for path, time in now.items() if repository_mlruns_seen.get(path) != time
    )
    # Each write is reported once, by the test during which it happened.
    repository_mlruns_seen.clear()
    repository_mlruns_seen.update(now)
    assert not changed, f"the test or a fixture it set up wrote into the repository's mlruns: {changed[:5]}"


# mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID so that subprocesses inherit it; a test
# that sets an experiment in-process must not steer the `mlflow run` subprocesses of later tests.
MLFLOW_RUN_CONTEXT = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")
SESSION_RUN_CONTEXT = {name: os.environ.get(name) for name in MLFLOW_RUN_CONTEXT}


@pytest.fixture(autouse=True)
def isolated_mlflow_run_context():
    """After each test, the MLflow run context of the environment is the one the session started with."""
    saved = SESSION_RUN_CONTEXT
    yield
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    # mlflow.set_experiment also keeps the experiment id in a process-wide variable; a later test with its own
    # store would otherwise start runs in an experiment id its store does not have.
    mlflow.tracking.fluent._active_experiment_id = None
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# A served model whose answers are known in advance, shared by the app, browser and explanation tests.
SPOT_MODEL_NAME = "spot-classifier"
SPOT_CLASSES = ["red_spot", "green_spot", "bright_spot"]
SPOT_IMAGE_SIZE = 32


def build_spot_model(image_size: int = SPOT_IMAGE_SIZE):
    """A Keras model that finds red, green and bright squares, with weights set by hand instead of trained.

    A 1x1 convolution `evidence` turns each pixel into three non-negative features (red excess, green
    excess, brightness above a quarter of full scale); their image means drive one sigmoid per class.
    A square of a sixteenth of the image scores above 0.85 and a plain dark image 0.18, and Grad-CAM of
    each class lights up exactly the pixels of its square, so tests can check where a heatmap points.
    """
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="image")
    evidence = keras.layers.Conv2D(3, 1, activation="relu", name="evidence")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pooling")(evidence)
    outputs = keras.layers.Dense(3, activation="sigmoid", name="predictions")(pooled)
    model = keras.Model(inputs, outputs, name="spot_model")
    kernel = np.array([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5], [1 / 3, 1 / 3, 1 / 3]]).T / 255.0
    model.get_layer("evidence").set_weights([kernel.reshape(1, 1, 3, 3), np.array([0.0, 0.0, -0.25])])
    model.get_layer("predictions").set_weights([np.eye(3) * 80.0, np.full(3, -1.5)])
    return model


@pytest.fixture(scope="session")
def spot_model(tmp_path_factory) -> dict:
    """The spot model registered as `spot-classifier` version 1 with alias `champion` in a session sqlite store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from serve.pyfunc import ClassifierConfig, log_classifier

    directory = tmp_path_factory.mktemp("spot_tracking")
    tracking_uri = sqlite_store(directory / "mlflow.db")
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("spot", artifact_location=(directory / "artifacts").as_uri())
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            model = build_spot_model()
            config = ClassifierConfig(class_names=SPOT_CLASSES, task="multilabel", image_size=SPOT_IMAGE_SIZE)
            example = np.zeros((SPOT_IMAGE_SIZE, SPOT_IMAGE_SIZE, 3), dtype=np.uint8)
            log_classifier(model, config, example, registered_model_name=SPOT_MODEL_NAME)
    finally:
        # Back to the tracking URI of the environment, as the other tracking fixtures leave it.
        mlflow.set_tracking_uri(None)
    client.set_registered_model_alias(SPOT_MODEL_NAME, "champion", "1")
    return {
        "tracking_uri": tracking_uri,
        "name": SPOT_MODEL_NAME,
        "uri": f"models:/{SPOT_MODEL_NAME}@champion",
        "classes": SPOT_CLASSES,
        "image_size": SPOT_IMAGE_SIZE,
    }


def squares_image(size: int, squares: dict[tuple[int, int, int], tuple[int, int, int]]) -> np.ndarray:
    """A black RGB uint8 image with filled squares: {(red, green, blue): (top, left, side)}."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    for colour, (top, left, side) in squares.items():
        image[top : top + side, left : left + side] = colour
    return image


@pytest.fixture(scope="session")
def paint_squares():
    """squares_image for tests: images whose spot-model findings and their places are known."""
    return squares_image


@pytest.fixture
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return free_port()


def serving_environment(tracking_uri: str, **extra: str) -> dict:
    """The environment of a served-model subprocess: this venv first on PATH, the given tracking store."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **extra}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return env


# The scoring server is shared by test_app and test_explain (scheduled together, see SCHEDULED_WITH); the app lives as
# long as the module that uses it.
@pytest.fixture(scope="session")
def spot_scoring_server(spot_model, tmp_path_factory) -> str:
    """`mlflow models serve` of the spot model on a free port; yields its URL."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("spot_scoring_server")
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "models", "serve", "-m", spot_model["uri"]]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    env = serving_environment(spot_model["tracking_uri"])
    # The model must carry its own code: the server runs outside the repository, without PYTHONPATH.
    env.pop("PYTHONPATH", None)
    with running_server(command, ready_url=f"{url}/ping", log_path=workdir / "server.log", env=env, cwd=workdir):
        yield url


# `python -m serve.app` under the write audit: uploads never reach the disk (Python's tempfile included).
AUDITED_APP = audited_runner("serve.app", "--port")
APP_MAX_UPLOAD_MB = 3


@pytest.fixture(scope="module")
def spot_app(spot_model, tmp_path_factory) -> dict:
    """`python -m serve.app --model models:/spot-classifier --max-upload-mb 3` on a free port, in an empty
    working folder with its own TMPDIR; yields its URL, log file and those two folders."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("spot_app")
    cwd, tmpdir = workdir / "cwd", workdir / "tmp"
    cwd.mkdir()
    tmpdir.mkdir()
    url = f"http://127.0.0.1:{port}"
    # models:/NAME without version or alias: the app picks @champion.
    command = [sys.executable, "-c", AUDITED_APP, "--model", f"models:/{spot_model['name']}", "--port", str(port)]
    command += ["--max-upload-mb", str(APP_MAX_UPLOAD_MB)]
    env = serving_environment(spot_model["tracking_uri"], TMPDIR=str(tmpdir), PYTHONPATH=str(REPO_ROOT))
    log_path = workdir / "app.log"
    with running_server(command, ready_url=f"{url}/health", log_path=log_path, env=env, cwd=cwd):
        yield {"url": url, "log": log_path, "cwd": cwd, "tmpdir": tmpdir, "max_upload_bytes": APP_MAX_UPLOAD_MB * 10**6}


# The trained served model: one tiny model, trained, registered and served once per session for every test that needs it.


@contextlib.contextmanager
def shared_by_workers(tmp_path_factory, worker_id: str, name: str):
    """A folder that every pytest-xdist worker of this session sees, held under an exclusive lock: the first worker
    to get it fills it, the others wait and find it filled. Without xdist, a folder of the session."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            folder.mkdir(exist_ok=True)
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def train_registered_model(tracking_uri: str) -> str:
    """Train the tiny served model in-process into `tracking_uri`, register it with the alias `champion`; its run id."""
    from mlflow.tracking import MlflowClient

    from train.job.trainer import train
    from train.settings import MainSettings

    with tracking_at(tracking_uri):
        # The Default experiment of the fixture's own store.
        settings = MainSettings.from_dict(
            {"image_size": "32", "epochs": "1", "batch_size": "16", "max_examples": "120", "register_as": MODEL_NAME}
        )
        run_id = train(settings).run_id
        client = MlflowClient(tracking_uri)
        (version,) = client.search_model_versions(f"name='{MODEL_NAME}'")
        client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    return run_id


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory, worker_id):
    """One tiny model trained in-process, registered as MODEL_NAME with the alias `champion`.

    Trained once per test session, by the first worker that needs it; each worker then gets its own copy of the
    tracking database (the artifacts, written once, are shared), so the runs its tests add stay its own.
    MLFLOW_TRACKING_URI is set only while training, so later tests keep the environment they expect.
    """
    with shared_by_workers(tmp_path_factory, worker_id, "registered_model") as shared:
        trained = shared / "run_id"
        if not trained.exists():
            trained.write_text(train_registered_model(sqlite_store(shared / "mlflow.db")))
        run_id = trained.read_text()
        directory = tmp_path_factory.mktemp("tracking")
        shutil.copyfile(shared / "mlflow.db", directory / "mlflow.db")
    tracking_uri = f"sqlite:///{directory / 'mlflow.db'}"
    return {"tracking_uri": tracking_uri, "run_id": run_id, "uri": f"models:/{MODEL_NAME}@champion"}


@pytest.fixture(scope="session")
def loaded_model(registered_model):
    return load_pyfunc(registered_model)


@pytest.fixture(scope="session")
def server(registered_model, tmp_path_factory):
    """`mlflow models serve -m models:/served-classifier@champion --env-manager local` on a free port."""
    from serving_helpers import MAX_PIXELS

    port = free_port()
    workdir = tmp_path_factory.mktemp("server")
    env = serving_environment(registered_model["tracking_uri"], MEDIMG_MAX_PIXELS=str(MAX_PIXELS))
    # The model must carry its own code: the server runs outside the repository, without PYTHONPATH.
    env.pop("PYTHONPATH", None)
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "models", "serve", "-m"]
    command += [registered_model["uri"], "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running_server(command, ready_url=f"{url}/ping", log_path=workdir / "server.log", env=env, cwd=workdir):
        yield url


# A real browser: Debian's Chromium and chromedriver through selenium (no browser downloads).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium driven by chromedriver through selenium; skipped where they are missing, except in CI."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        missing = "Chromium and chromedriver are missing: install the Debian packages chromium and chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc with its DICOMweb plugin (Debian `orthanc`, `orthanc-dicomweb`) on free HTTP and DICOM ports,
    its database in a session folder; the PACS worker tests also need `storescu` (dcmtk) and `dciodvfy`
    (dicom3tools). Missing packages skip the tests on a developer machine but fail them in CI (CI set)."""
    from orthanc import OrthancServer, missing_tools

    missing = missing_tools()
    if missing:
        message = f"the PACS tests need the Debian packages {', '.join(missing)} (apt-get install {' '.join(missing)})"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PACS tests: {message}")
        pytest.skip(message)
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()
