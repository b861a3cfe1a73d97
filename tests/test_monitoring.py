"""The monitoring profile: the Grafana dashboard JSON against the panel fields it uses and the metrics the app exposes, Prometheus and Grafana provisioning, the compose file and the app image."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
MONITORING = REPO_ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "medimg-app.json"
PANEL_TYPES = {"timeseries", "stat", "table", "heatmap", "bargauge", "gauge", "text"}
GRID_COLUMNS = 24
PROMQL_FUNCTIONS = {"sum", "rate", "increase", "histogram_quantile", "by", "label_values"}


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exposed() -> dict[str, set[str]]:
    """Sample names of the app's /metrics text and the labels each carries, after one answer."""
    from prometheus_client.parser import text_string_to_metric_families

    from serve.metrics import AppMetrics

    metrics = AppMetrics({"name": "m", "version": "1", "aliases": "champion", "uri": "models:/m"}, ["a", "b"])
    metrics.requests.labels("/predict", "POST", "200").inc()
    metrics.latency.labels("/predict").observe(0.1)
    metrics.rejected.labels("not_an_image").inc()
    answer = {"findings": [{"name": "a", "probability": 0.7, "above_threshold": True}], "predicted": ["a"]}
    metrics.observe_answer(answer, explain=True, seconds=0.05)
    body, _ = metrics.exposition()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


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


def test_every_query_names_metrics_and_labels_the_app_exposes(dashboard, exposed):
    variable_queries = [variable["definition"] for variable in dashboard["templating"]["list"]]
    for query in [*panel_queries(dashboard), *variable_queries]:
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query
        names = set(re.findall(r"\b(medimg_\w+|process_\w+)", query))
        assert names, query
        for name in names:
            assert name in exposed, f"{name} in {query!r} is not exposed by serve/metrics.py"
        labels = set(re.findall(r"by \(([^)]*)\)", query))
        labels = {label.strip() for group in labels for label in group.split(",")}
        labels |= set(re.findall(r"[{,]\s*(\w+)\s*(?:=~|!=|=)", query))
        labels |= set(re.findall(r"label_values\(\w+, (\w+)\)", query))
        carried = set().union(*(exposed[name] for name in names))
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


def test_app_image_installs_requirements_that_pin_what_the_model_and_the_app_import():
    from serve.pyfunc import SERVING_PACKAGES

    dockerfile = (MONITORING / "Dockerfile.app").read_text()
    assert "COPY requirements.txt /tmp/requirements.txt" in dockerfile
    assert "pip install --no-cache-dir -r /tmp/requirements.txt" in dockerfile
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    pinned = {line.split("==")[0].lower() for line in lines if "==" in line and not line.startswith("#")}
    assert pinned >= {*SERVING_PACKAGES, "fastapi", "uvicorn", "python-multipart", "prometheus_client"}
