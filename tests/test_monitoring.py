"""Monitoring: serve.monitoring's figures on known numbers, the trained model's reference, drift on a live app's /metrics judged by promtool, the rules' unit tests, the Grafana dashboard against live metrics and recording rules, provisioning, compose and the app image."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from PIL import Image

from serve.contract import IMAGE_COLUMN, PREDICTED_COLUMN

REPO_ROOT = Path(__file__).resolve().parents[1]
MONITORING = REPO_ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "medimg-app.json"
PANEL_TYPES = {"timeseries", "stat", "table", "heatmap", "bargauge", "gauge", "text"}
GRID_COLUMNS = 24
PROMQL_FUNCTIONS = {"sum", "max", "rate", "increase", "histogram_quantile", "by", "label_values"}
RULES = MONITORING / "rules" / "medimg.rules.yml"
RULE_TESTS = MONITORING / "rules" / "medimg.rules.test.yml"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_has_the_fields_grafana_needs_to_import_it(dashboard):
    assert dashboard["uid"] == "medimg-app" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["time"] == {"from": "now-6h", "to": "now"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(panel_id, int) for panel_id in ids)
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"} and all(isinstance(value, int) for value in grid.values())
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS and grid["h"] > 0, panel["title"]
        assert panel["title"] and panel["targets"], panel["id"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert isinstance(panel["fieldConfig"]["defaults"], dict) and panel["fieldConfig"]["overrides"] == []


def test_panels_do_not_overlap(dashboard):
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_dashboard_charts_what_the_issue_asks_for(dashboard):
    queries = "\n".join(panel_queries(dashboard))
    assert "rate(medimg_http_requests_total" in queries
    assert "histogram_quantile(0.5, sum by (le) (rate(medimg_http_request_duration_seconds_bucket" in queries
    assert "histogram_quantile(0.95, sum by (le) (rate(medimg_http_request_duration_seconds_bucket" in queries
    assert "sum by (reason) (rate(medimg_rejected_inputs_total" in queries
    heatmap = next(panel for panel in dashboard["panels"] if panel["type"] == "heatmap")
    assert heatmap["repeat"] == "class" and heatmap["targets"][0]["format"] == "heatmap"
    assert 'medimg_predicted_probability_bucket{class=~"$class"}' in heatmap["targets"][0]["expr"]
    # The drift figures beside the thresholds their alerts use, and the estimates with their caveat.
    for name in ("medimg_drift_score_psi{", "medimg:drift_score_psi:threshold{", "medimg_drift_input_psi"):
        assert name in queries
    for name in ("medimg_drift_positive_ratio{", "medimg_reference_positive_ratio{", "medimg_estimated_auroc{"):
        assert name in queries
    assert "medimg_monitoring_reference_available" in queries
    estimates = next(panel for panel in dashboard["panels"] if "medimg_estimated_auroc" in str(panel["targets"]))
    assert "while calibration holds" in estimates["title"]


def recorded_labels(exposed: dict[str, set[str]]) -> dict[str, set[str]]:
    """The series the recording rules write and the labels each carries (what `by` keeps, else its inputs' labels)."""
    recorded = {}
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            kept = re.findall(r"by \(([^)]*)\)", rule["expr"])
            if kept:
                labels = {label.strip() for label in kept[0].split(",")} - {"le"}
            else:
                labels = set().union(*(exposed.get(name, set()) for name in metric_names(rule["expr"])))
            recorded[rule["record"]] = labels
    return recorded


def metric_names(query: str) -> set[str]:
    """Names of medimg metrics and recorded series (level:medimg_metric:operation) and process metrics in a query."""
    return set(re.findall(r"(?<![\w:$])((?:[a-z_]+:)?medimg[\w:]*|process_\w+)", query))


def test_every_query_names_metrics_and_labels_that_a_live_app_or_a_recording_rule_gives(dashboard, exposed):
    # Prometheus adds the target's labels to every scraped series.
    known = {name: labels | {"job", "instance"} for name, labels in exposed.items()}
    known.update(recorded_labels(known))
    variable_queries = [variable["definition"] for variable in dashboard["templating"]["list"]]
    for query in [*panel_queries(dashboard), *variable_queries]:
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query
        names = metric_names(query)
        assert names, query
        for name in names:
            assert name in known, f"{name} in {query!r} is neither on a live app's /metrics nor recorded"
        labels = set(re.findall(r"by \(([^)]*)\)", query))
        labels = {label.strip() for group in labels for label in group.split(",")}
        labels |= set(re.findall(r"[{,]\s*(\w+)\s*(?:=~|!=|=)", query))
        labels |= set(re.findall(r"label_values\(\w+, (\w+)\)", query))
        carried = set().union(*(known[name] for name in names)) | {"le"}
        assert labels <= carried, f"{query!r} uses labels {sorted(labels - carried)} that its metrics do not carry"
        functions = set(re.findall(r"([a-z_]+)\s*\(", query)) - names
        assert functions <= PROMQL_FUNCTIONS, query


def test_datasource_uid_and_dashboard_folder_match_the_provisioning(dashboard):
    datasources = load_yaml(MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    used = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    used |= {target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel["targets"]}
    used |= {variable["datasource"]["uid"] for variable in dashboard["templating"]["list"]}
    assert used == {source["uid"]}
    (provider,) = load_yaml(MONITORING / "grafana" / "provisioning" / "dashboards" / "medimg.yaml")["providers"]
    grafana = load_yaml(MONITORING / "docker-compose.yaml")["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in grafana["volumes"] if volume.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_prometheus_scrapes_the_app_service_on_its_container_port():
    config = load_yaml(MONITORING / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"] == [{"targets": ["app:8080"]}]
    compose = load_yaml(MONITORING / "docker-compose.yaml")
    assert [port.rsplit(":", 1)[1] for port in compose["services"]["app"]["ports"]] == ["8080"]
    assert job["basic_auth"]["password_file"] == "/run/secrets/mlflow_admin_password"
    assert "mlflow_admin_password" in compose["services"]["prometheus"]["secrets"]
    dockerfile = (MONITORING / "Dockerfile.app").read_text()
    assert '"--host", "0.0.0.0", "--port", "8080"]' in dockerfile and "EXPOSE 8080" in dockerfile


def test_compose_profiles_ports_and_secrets():
    compose = load_yaml(MONITORING / "docker-compose.yaml")
    services = compose["services"]
    assert services["app"]["profiles"] == ["app", "monitoring"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    for name, service in services.items():
        for port in service["ports"]:
            assert port.startswith("${") and ":-127.0.0.1}" in port, f"{name} publishes {port} beyond this machine"
        environment = service.get("environment", {})
        assert not [key for key in environment if "PASSWORD" in key and not key.endswith("_FILE")], name
        assert "image" in service and not service["image"].endswith(":latest") or "build" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (MONITORING / source).exists(), volume
    included = [MONITORING / path for entry in compose["include"] for path in entry["path"]]
    assert all(path.exists() for path in included)
    tracking = load_yaml(included[0])
    assert {"mlflow_admin_password"} <= set(tracking["secrets"]) and "frontend" in tracking["networks"]
    assert (REPO_ROOT / services["app"]["build"]["dockerfile"]).exists()
    # The same project as the tracking server's compose file, so they share the database and artifacts.
    assert compose["name"] == tracking["name"]


def test_tracking_server_override_keeps_mlflows_allowed_hosts_and_adds_the_app():
    from mlflow.server.security_utils import get_default_allowed_hosts

    override = load_yaml(MONITORING / "tracking-override.yaml")
    value = override["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    default = re.fullmatch(r"\$\{MLFLOW_SERVER_ALLOWED_HOSTS:-(.*)\}", value)[1].split(",")
    assert default == [*get_default_allowed_hosts(), "mlflow:5000"]
    compose = load_yaml(MONITORING / "docker-compose.yaml")
    assert compose["services"]["app"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_app_image_installs_the_serving_images_requirements_that_pin_what_the_model_and_the_app_import():
    from serve.image import APP_PACKAGES
    from serve.pyfunc import SERVING_PACKAGES

    dockerfile = (MONITORING / "Dockerfile.app").read_text()
    assert "COPY docker/serving/requirements.txt /tmp/requirements.txt" in dockerfile
    assert "python -m pip install -r /tmp/requirements.txt" in dockerfile
    lines = (REPO_ROOT / "docker" / "serving" / "requirements.txt").read_text().splitlines()
    pinned = {line.split("==")[0].lower() for line in lines if "==" in line and not line.startswith("#")}
    substitutes = {"tensorflow": "tensorflow-cpu", "mlflow": "mlflow-skinny"}
    assert pinned >= {substitutes.get(name, name) for name in (*SERVING_PACKAGES, *APP_PACKAGES)}
    assert "pylibjpeg-libjpeg" not in pinned


# Prometheus's own tools on the rules, the configuration and the exposition.


def minutes(duration: str) -> int:
    """A promtool duration of whole minutes or hours ("15m", "2h") in minutes."""
    return int(duration[:-1]) * {"m": 1, "h": 60}[duration[-1]]


def test_every_alert_has_a_firing_and_a_quiet_case_and_promtool_passes_them(promtool):
    alerts = {
        rule["alert"]: minutes(rule["for"])
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert set(alerts) == {
        "MedimgScoreDrift",
        "MedimgInputDrift",
        "MedimgPositiveRateShift",
        "MedimgHighRejectionRate",
        "MedimgSlowAnswers",
        "MedimgNoAnswers",
        "MedimgServedVersionBehindAlias",
    }
    fires, quiet = set(), set()
    for test in load_yaml(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            if case["exp_alerts"]:
                fires.add(case["alertname"])
            # Quiet once its `for` has passed, on series that never trip it (not merely still pending).
            elif minutes(case["eval_time"]) > alerts[case["alertname"]] and not any(
                other["exp_alerts"] for other in test["alert_rule_test"] if other["alertname"] == case["alertname"]
            ):
                quiet.add(case["alertname"])
    assert fires == set(alerts) and quiet == set(alerts), f"fire: {sorted(fires)}, quiet: {sorted(quiet)}"
    result = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULES.parent, capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"SUCCESS" in result.stdout


def test_prometheus_configuration_and_its_rules_pass_promtool(promtool):
    assert load_yaml(MONITORING / "prometheus.yml")["rule_files"] == ["rules/medimg.rules.yml"]
    result = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=MONITORING, capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"SUCCESS: 1 rule files found" in result.stdout
    prometheus = load_yaml(MONITORING / "docker-compose.yaml")["services"]["prometheus"]
    assert "./rules:/etc/prometheus/rules:ro" in prometheus["volumes"]


# serve.monitoring on numbers whose answers are known.


def test_psi_is_zero_for_equal_shares_and_matches_its_definition():
    from serve.monitoring import SMOOTHING, psi

    assert psi([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0, abs=1e-3)
    reference, window = np.array([50.0, 50.0]), np.array([90.0, 10.0])
    expected = (reference + SMOOTHING) / (reference + SMOOTHING).sum()
    actual = (window + SMOOTHING) / (window + SMOOTHING).sum()
    assert psi(reference, window) == pytest.approx(np.sum((actual - expected) * np.log(actual / expected)))
    assert psi(reference, window) == pytest.approx(psi(window, reference))


def test_psi_critical_is_the_chi_square_quantile_and_noise_passes_it_one_time_in_a_hundred():
    from scipy.stats import chi2

    from serve.monitoring import categorical_psi, psi_critical

    for degrees in (2, 5, 9):
        assert psi_critical(1000, 500, degrees + 1) == pytest.approx(0.003 * chi2.ppf(0.99, degrees), rel=0.01)
    generator = np.random.default_rng(0)
    shares = [0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.02]
    above = 0
    for _ in range(2000):
        reference, window = generator.multinomial(1000, shares), generator.multinomial(500, shares)
        value, critical = categorical_psi(dict(enumerate(reference)), dict(enumerate(window)))
        above += value > critical
    assert 0.003 < above / 2000 < 0.025


def test_expected_auroc_counts_every_weighted_pair_with_ties_as_half():
    from serve.monitoring import expected_auroc

    p = np.array([0.2, 0.2, 0.5, 0.9, 0.9, 0.05])
    concordant = pairs = 0.0
    for i in range(len(p)):
        for j in range(len(p)):
            if i != j:
                weight = p[i] * (1 - p[j])
                pairs += weight
                concordant += weight * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    assert expected_auroc(p) == pytest.approx(concordant / pairs)
    assert np.isnan(expected_auroc(np.zeros(5)))


def test_estimates_match_the_true_values_while_calibration_holds():
    from sklearn.metrics import roc_auc_score

    from serve.monitoring import expected_auroc, expected_sensitivity

    generator = np.random.default_rng(3)
    probabilities = generator.beta(0.6, 0.9, 20_000)
    # Labels drawn with the probabilities themselves: calibration holds exactly.
    labels = generator.random(20_000) < probabilities
    assert expected_auroc(probabilities) == pytest.approx(roc_auc_score(labels, probabilities), abs=0.01)
    called = probabilities >= 0.3
    assert expected_sensitivity(probabilities, called) == pytest.approx(called[labels].mean(), abs=0.01)


def test_header_statistics_read_size_bit_depth_and_modality_without_decoding_pixels(tmp_path):
    from dicom_files import image_dataset, radiograph, write_sixteen_bit_png

    from serve.monitoring import ImageStats, header_statistics

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
    assert header_statistics(buffer.getvalue()) == ImageStats(width=40, height=30, bit_depth=8, modality="none")
    png = write_sixteen_bit_png(tmp_path / "twelve.png", radiograph(48, 40, bits=12), significant_bits=12)
    assert header_statistics(png.read_bytes()) == ImageStats(width=40, height=48, bit_depth=12, modality="none")
    dataset = image_dataset(None, modality="DX", bits_stored=14, shape=(300, 200))
    dataset.save_as(tmp_path / "header.dcm", enforce_file_format=True)
    # The header alone: this DICOM has no pixel data at all.
    stats = header_statistics((tmp_path / "header.dcm").read_bytes())
    assert stats == ImageStats(width=200, height=300, bit_depth=14, modality="DX")
    assert stats.categories() == {"size": "512", "bit_depth": "14", "modality": "DX"}
    assert header_statistics(b"not an image at all") == ImageStats()


def test_an_explained_answer_gives_the_mean_intensity_without_a_second_decode():
    from serve.contract import EXPLAINED_INPUT_COLUMN
    from serve.explain import png_base64
    from serve.monitoring import image_statistics

    model_input = np.full((32, 32, 3), 40, dtype=np.uint8)
    model_input[:16] = 200
    row = {EXPLAINED_INPUT_COLUMN: png_base64(model_input)}
    # Bytes no decoder reads: the mean can only come from the answer's model-input PNG.
    stats = image_statistics(b"undecodable upload", image_size=32, answer_row=row)
    assert stats.mean_intensity == pytest.approx(120.0) and stats.width is None
    assert image_statistics(b"undecodable upload", image_size=32).mean_intensity is None


def test_a_reference_survives_classifier_json_and_an_older_file_means_no_reference(tmp_path):
    from serve.monitoring import DriftMonitor, ImageStats, ModelReference
    from serve.pyfunc import ClassifierConfig

    scores = np.array([[0.05, 0.9], [0.5, 0.2], [0.95, 0.4], [0.3, 0.7]])
    stats = [ImageStats(mean_intensity=value, modality="CR") for value in (10.0, 100.0, 130.0, 250.0)]
    reference = ModelReference.build(
        scores, task="multilabel", outputs=["a", "b"], thresholds=[0.5, 0.6], image_size=32, image_stats=stats
    )
    assert reference.classes["a"].score_counts == [1, 0, 0, 1, 0, 1, 0, 0, 0, 1]
    assert reference.classes["a"].positive_rate == 0.5 and reference.classes["b"].positive_rate == 0.5
    assert reference.inputs == {
        "intensity": {"0-16": 1, "96-112": 1, "128-144": 1, "240-256": 1},
        "modality": {"CR": 4},
    }
    config = ClassifierConfig(["a", "b"], "multilabel", 32, thresholds=[0.5, 0.6], reference=reference.to_dict())
    config.save(str(tmp_path / "classifier.json"))
    assert ModelReference.from_config(ClassifierConfig.load(str(tmp_path / "classifier.json"))) == reference
    stored = json.loads((tmp_path / "classifier.json").read_text())
    del stored["reference"]
    (tmp_path / "older.json").write_text(json.dumps(stored))
    older = ClassifierConfig.load(str(tmp_path / "older.json"))
    assert older.reference is None and ModelReference.from_config(older) is None
    monitor = DriftMonitor.for_config(older, window=2)
    for _ in range(3):
        monitor.observe({"a": 0.9, "b": 0.1, PREDICTED_COLUMN: "a"})
    monitor.observe({"a": 0.9, PREDICTED_COLUMN: "a"})
    assert monitor.figures() == {"reference_available": 0.0, "window_answers": 2.0} and monitor.answers_total == 3
    assert monitor.reference_state == "none" and monitor.image_statistics(b"") is None


# The served model of the suite, its reference and its monitor in a live app.


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """The app behind uvicorn on a free loopback port, in a thread of this process; yields its URL."""
    import uvicorn

    from serve.common import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def samples_of(text: str) -> dict[tuple, float]:
    """A /metrics text as {(sample name, sorted label pairs): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value_of(samples: dict, name: str, /, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def served_classifier(registered_model, loaded_model):
    """The suite's trained model as the app serves it: the session's loaded pyfunc, named by serve.model_uri."""
    import mlflow

    from serve.app import ModelInfo, ServedModel
    from serve.model_uri import resolve_model_uri

    mlflow.set_tracking_uri(registered_model["tracking_uri"])
    try:
        return ServedModel(loaded_model, ModelInfo.of(resolve_model_uri(registered_model["uri"])))
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def validation_split(registered_model):
    """The validation images and labels of the suite's model, from the settings its run logged."""
    from mlflow.tracking import MlflowClient

    from train.job.stages import load_data
    from train.settings import MainSettings

    params = MlflowClient(registered_model["tracking_uri"]).get_run(registered_model["run_id"]).data.params
    settings = MainSettings.from_dict({name: params[name] for name in MainSettings.model_fields if name in params})
    elements = list(load_data(settings).splits["val"].dataset.as_numpy_iterator())
    return np.stack([image for image, _ in elements]), np.stack([label for _, label in elements])


CELLS = 300


@pytest.fixture(scope="module")
def cell_batches(validation_split):
    """300 new synthetic cells drawn like the validation split, and the same cells inverted and darkened."""
    from train.data.synthetic import generate

    images, _ = validation_split
    cells, _, _ = generate(CELLS, images.shape[1], "binary", seed=7)
    cells = cells.astype(np.float64)
    return {"like validation": cells, "inverted": 255.0 - cells, "darkened": cells * 0.5}


def answer_rows(served, images: np.ndarray) -> tuple[list[bytes], list[dict]]:
    """Each image as PNG bytes and the model's answer row for it (one pyfunc call for all of them)."""
    encoded = [png_bytes(image) for image in images]
    frame = pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(data).decode("ascii") for data in encoded]})
    return encoded, served.pyfunc.predict(frame).to_dict("records")


@pytest.fixture(scope="module")
def answered(served_classifier, cell_batches) -> dict[str, list]:
    """Per batch of cells, each answer row with its image's statistics, as the app's monitor records them."""
    monitor = served_classifier.monitor(CELLS)
    found = {}
    for name, images in cell_batches.items():
        encoded, rows = answer_rows(served_classifier, images)
        found[name] = [
            (row, monitor.image_statistics(data, answer_row=row)) for data, row in zip(encoded, rows, strict=True)
        ]
    return found


def live_metrics(served, answers: list, requests_first=()) -> str:
    """/metrics of a live app whose monitor observed `answers`, after the (method, path, files) requests given."""
    from serve.app import create_app

    app = create_app(served, max_upload_bytes=10**6)
    for row, stats in answers:
        app.state.follower.current.drift.observe(row, stats)
    with serving(app) as url:
        for method, path, files in requests_first:
            requests.request(method, f"{url}{path}", files=files, timeout=60)
        response = requests.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


@pytest.fixture(scope="module")
def drift_metrics(served_classifier, answered) -> dict[str, str]:
    """/metrics of a live app after 300 answers on each batch of cells (one app per batch; the answers of 300
    uploads are made in one model call and observed as the app observes its own)."""
    return {name: live_metrics(served_classifier, answers) for name, answers in answered.items()}


@pytest.fixture(scope="module")
def exposed(served_classifier, answered, cell_batches) -> dict[str, set[str]]:
    """Sample names of a live app's /metrics, and the labels each carries, after drifted answers and requests of
    every kind (an answer, a rejected upload, a health check)."""
    from prometheus_client.parser import text_string_to_metric_families

    image = png_bytes(cell_batches["inverted"][0])
    calls = [("POST", "/predict", {"file": ("cell.png", image)})]
    calls += [("POST", "/predict", {"file": ("notes.txt", b"plain text")}), ("GET", "/health", None)]
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(live_metrics(served_classifier, answered["inverted"], calls)):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_the_reference_is_the_validation_split_scored_by_the_served_model(
    served_classifier, validation_split, registered_model, tmp_path
):
    from serve.monitoring import ModelReference, score_histogram

    reference = ModelReference.from_config(served_classifier.config)
    images, labels = validation_split
    assert reference is not None and reference.split == "val" and reference.examples == len(images)
    encoded, rows = answer_rows(served_classifier, images)
    scores = np.array([row["parasitized"] for row in rows])
    (item,) = reference.classes.values()
    assert list(reference.classes) == ["parasitized"] and item.threshold == served_classifier.config.thresholds[0]
    assert item.score_counts == score_histogram(scores)
    assert item.positive_rate == pytest.approx(np.mean(scores >= item.threshold))
    assert reference.mean_intensity == pytest.approx(images.mean(), abs=0.01)
    assert sum(reference.inputs["intensity"].values()) == len(images)
    # Generated cells have no files: no header facts to compare.
    assert set(reference.inputs) == {"intensity"}
    from mlflow.tracking import MlflowClient

    from train.tracking.names import MONITORING_REFERENCE_ARTIFACT

    client = MlflowClient(registered_model["tracking_uri"])
    local = client.download_artifacts(registered_model["run_id"], MONITORING_REFERENCE_ARTIFACT, str(tmp_path))
    assert json.loads(Path(local).read_text()) == served_classifier.config.reference


def test_a_split_read_from_files_gives_the_reference_their_header_facts(tmp_path):
    from dicom_files import image_dataset, radiograph

    from serve.monitoring import ModelReference
    from train.data.pipeline import files_split
    from train.data.spec import LoadedDataset
    from train.job.stages import Predictions, reference_of
    from train.settings import MainSettings

    paths = []
    for index in range(3):
        path = tmp_path / f"image{index}.png"
        Image.fromarray(np.full((30, 40, 3), 100, dtype=np.uint8)).save(path)
        paths.append(path)
    dataset = image_dataset(radiograph(300, 200, bits=12), modality="DX")
    dataset.save_as(tmp_path / "scan.dcm", enforce_file_format=True)
    paths.append(tmp_path / "scan.dcm")
    labels = np.array([[0.0], [1.0], [0.0], [1.0]])
    split = files_split(paths, labels, 32)
    data = LoadedDataset("folder", "binary", ["normal", "finding"], 1, {"val": split}, "digest", str(tmp_path))
    val = Predictions(
        labels, np.array([[0.1], [0.8], [0.3], [0.95]]), np.zeros((0,)), np.array([90.0, 100.0, 110.0, 20.0])
    )
    settings = MainSettings.from_dict({"image_size": "32", "dataset": "synthetic"})
    reference = ModelReference.from_dict(reference_of(val, val.probabilities, [0.5], data, settings))
    assert reference.inputs["size"] == {"64": 3, "512": 1} and reference.inputs["bit_depth"] == {"8": 3, "12": 1}
    assert reference.inputs["modality"] == {"none": 3, "DX": 1}
    assert reference.inputs["intensity"] == {"16-32": 1, "80-96": 1, "96-112": 2}
    assert reference.classes["finding"].positive_rate == 0.5 and reference.examples == 4


MODEL_LABELS = {"model_name": "served-classifier", "model_version": "1"}
DRIFT_ALERTS = ("MedimgScoreDrift", "MedimgInputDrift", "MedimgPositiveRateShift")


def rule_test_of(metrics_text: str, expected: dict[str, list]) -> dict:
    """A promtool rule test: the app's monitoring series held for 30 minutes, and the alerts expected at 25 minutes."""
    series = []
    for (name, labels), value in samples_of(metrics_text).items():
        if name.startswith(("medimg_drift_", "medimg_reference_", "medimg_monitoring_", "medimg_estimated_")):
            pairs = ",".join(f'{key}="{text}"' for key, text in (*labels, ("job", "medimg-app"), ("instance", "app")))
            series.append({"series": f"{name}{{{pairs}}}", "values": f"{value!r}x30"})
    cases = [{"eval_time": "25m", "alertname": name, "exp_alerts": alerts} for name, alerts in expected.items()]
    test = {"interval": "1m", "input_series": series, "alert_rule_test": cases}
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [test]}


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["like validation", "inverted", "darkened"])
def test_drift_alerts_hold_after_300_shifted_answers_and_only_then(drift_metrics, promtool, tmp_path, batch):
    text = drift_metrics[batch]
    samples = samples_of(text)
    labels = {**MODEL_LABELS, "class": "parasitized"}
    assert value_of(samples, "medimg_monitoring_window_answers", **MODEL_LABELS) == CELLS
    assert value_of(samples, "medimg_monitoring_reference_available", **MODEL_LABELS) == 1
    psi = value_of(samples, "medimg_drift_score_psi", **labels)
    threshold = max(0.25, value_of(samples, "medimg_drift_score_psi_critical", **labels))
    expected = dict.fromkeys(DRIFT_ALERTS, [])
    intensity = {**MODEL_LABELS, "feature": "intensity"}
    input_psi = value_of(samples, "medimg_drift_input_psi", **intensity)
    input_threshold = max(0.25, value_of(samples, "medimg_drift_input_psi_critical", **intensity))
    if batch == "like validation":
        assert psi < threshold and input_psi < input_threshold
    else:
        assert psi > threshold and input_psi > input_threshold
        description = (
            f"PSI {psi:.2f} of the calibrated parasitized scores of served-classifier version 1 against its "
            "validation split, above the drift threshold for 15 minutes."
        )
        summary = "Scores of parasitized drifted from the validation split"
        alert = {"severity": "warning", "job": "medimg-app", "instance": "app", **labels}
        expected = {
            "MedimgScoreDrift": [
                {"exp_labels": alert, "exp_annotations": {"summary": summary, "description": description}}
            ]
        }
    # Prometheus's own rule engine decides on these numbers: no drift alert on cells like the validation split.
    (tmp_path / "live.test.yml").write_text(yaml.safe_dump(rule_test_of(text, expected)))
    result = subprocess.run([promtool, "test", "rules", "live.test.yml"], cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, result.stdout.decode()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["like validation", "inverted"])
def test_live_metrics_pass_promtool_check_metrics(drift_metrics, promtool, batch):
    result = subprocess.run([promtool, "check", "metrics"], input=drift_metrics[batch].encode(), capture_output=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout.decode() + result.stderr.decode()


@pytest.mark.slow
def test_predict_feeds_the_monitor_and_its_image_statistics_follow(served_classifier, cell_batches):
    from serve.app import create_app

    app = create_app(served_classifier, max_upload_bytes=10**6)
    images = np.rint(cell_batches["darkened"][:3])
    with serving(app) as url:
        for image in images:
            response = requests.post(f"{url}/predict", files={"file": ("cell.png", png_bytes(image))}, timeout=60)
            assert response.status_code == 200, response.text
        samples = samples_of(requests.get(f"{url}/metrics", timeout=30).text)
        info = requests.get(f"{url}/info", timeout=30).json()["monitoring"]
        # The image statistics arrive after each response has left: the mean intensity of all three, soon.
        deadline, mean = time.monotonic() + 10, None
        while mean is None or abs(mean - images.mean()) > 0.01:
            assert time.monotonic() < deadline, f"input mean {mean} after 10 s, expected {images.mean()}"
            time.sleep(0.05)
            later = samples_of(requests.get(f"{url}/metrics", timeout=30).text)
            mean = later.get(("medimg_drift_input_mean_intensity", tuple(sorted(MODEL_LABELS.items()))))
    assert value_of(samples, "medimg_monitoring_answers_total", **MODEL_LABELS) == 3
    assert value_of(samples, "medimg_monitoring_window_answers", **MODEL_LABELS) == 3
    assert info["reference"] == "available" and info["window"] == 500 and info["figures"]["window_answers"] == 3
    model = {"name": "served-classifier", "version": "1", "aliases": "champion", "reference": "available"}
    assert value_of(samples, "medimg_model_info", **model, uri="models:/served-classifier@champion") == 1


def test_the_alert_rules_count_drift_above_the_psi_floor_of_the_code(repo_root):
    """monitoring/rules/ and serve.monitoring (bench/drift.py reads it) hold one PSI floor."""
    from serve.monitoring import PSI_FLOOR

    rules = (repo_root / "monitoring" / "rules" / "medimg.rules.yml").read_text()
    floors = re.findall(r"clamp_min\(medimg_drift_\w+_psi_critical, ([0-9.]+)\)", rules)
    assert len(floors) == 2
    assert {float(floor) for floor in floors} == {PSI_FLOOR}
