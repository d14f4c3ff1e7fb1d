"""The viewers the README names, started as real servers on loopback ports the way it starts them,
reading one finished run back through their HTTP APIs: TensorBoard and the MLflow UI."""

from __future__ import annotations

import csv
import importlib
import os
import sys
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest

from conftest import needs_fmnist, read_results, run_cli, run_dirs

# The servers start with the screenshot script's own functions: what the test passes, the README's
# screenshots were taken with.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
viewers = importlib.import_module("viewer_screenshots")


def viewers_installed() -> bool:
    # mlflow-skinny (a core dependency) logs runs but has no server (no Flask) and no pandas.
    try:
        metadata.version("mlflow")
    except metadata.PackageNotFoundError:
        return False
    return True


pytestmark = [
    needs_fmnist,
    pytest.mark.slow,
    pytest.mark.skipif(
        not viewers_installed() and os.environ.get("CI") != "true",
        reason="the viewers extra is not installed (uv sync --extra viewers; make env installs it)",
    ),
]

# One epoch of three batches of LeNet-5, tested on 200 images: every logger writes its files.
TINY = [
    "model=lenet5",
    "data.samples_per_class=10",
    "data.val_size=100",
    "data.batch_size=30",
    "data.eval_batch_size=200",
    "trainer.max_epochs=1",
    "trainer.limit_test_batches=1",
    "logger=[csv,tensorboard,mlflow]",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One finished run, shared by every viewer: its run dir, under <tmp>/outputs."""
    cwd = tmp_path_factory.mktemp("viewers")
    proc = run_cli(TINY, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = run_dirs(cwd)
    return run_dir


@pytest.fixture(scope="module")
def outputs(run) -> Path:
    return run.parents[1]


@pytest.fixture(scope="module")
def tensorboard(outputs, tmp_path_factory):
    port = viewers.free_port()
    log = tmp_path_factory.mktemp("logs") / "tensorboard.log"
    with viewers.serve(viewers.tensorboard_command(outputs, port), "/", port, log) as url:
        yield url


@pytest.fixture(scope="module")
def mlflow_ui(outputs, tmp_path_factory):
    port = viewers.free_port()
    log = tmp_path_factory.mktemp("logs") / "mlflow.log"
    command = viewers.mlflow_command(outputs, port)
    with viewers.serve(command, "/health", port, log, viewers.MLFLOW_ENV) as url:
        yield url


def csv_column(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row[key]]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200, url
        return response.read()


def test_tensorboard_serves_the_runs_curves_and_test_metrics(run, outputs, tensorboard):
    tags = viewers.tensorboard_tags(tensorboard)
    name = str((run / "tensorboard").relative_to(outputs))
    assert list(tags) == [name]
    assert {"train_loss_epoch", "val_acc", "test_acc", "test_acc_class/Trouser"} <= set(tags[name])

    def series(tag: str) -> list[list[float]]:
        query = urllib.parse.urlencode({"run": name, "tag": tag})
        return viewers.get_json(f"{tensorboard}/data/plugin/scalars/scalars?{query}")

    # [wall time, step, value] per point, the values those of the run's own metrics.csv.
    assert [value for _, _, value in series("val_acc")] == csv_column(run, "val_acc")
    [[_, _, test_acc]] = series("test_acc")
    assert test_acc == pytest.approx(read_results(run)["test_acc"], abs=1e-7)
    images = viewers.get_json(f"{tensorboard}/data/plugin/images/tags")
    assert {"confusion_matrix", "misclassified"} <= set(images[name])
    assert b"<tb-webapp>" in fetch(tensorboard + "/")  # the page a browser opens


def test_mlflow_ui_serves_the_finished_run_and_its_images(run, mlflow_ui):
    results = read_results(run)
    found = viewers.latest_mlflow_run(mlflow_ui)
    info, data = found["info"], found["data"]
    assert info["status"] == "FINISHED" and info["run_name"] == "lenet5-fashion_mnist"
    metrics = {m["key"]: m["value"] for m in data["metrics"]}
    assert metrics["test_acc"] == pytest.approx(results["test_acc"], abs=1e-7)
    assert metrics["test_acc_class/Trouser"] == pytest.approx(results["per_class_acc"]["Trouser"])
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["choices/model"] == "lenet5" and params["data/batch_size"] == "30"

    # The run page's artifact view lists both images and fetches them through the server.
    listing = viewers.get_json(f"{mlflow_ui}/api/2.0/mlflow/artifacts/list?run_id={info['run_id']}")
    assert {f["path"] for f in listing["files"]} >= {"confusion_matrix.png", "misclassified.png"}
    query = urllib.parse.urlencode({"path": "confusion_matrix.png", "run_uuid": info["run_id"]})
    assert fetch(f"{mlflow_ui}/get-artifact?{query}").startswith(b"\x89PNG")
    # The UI itself: the JavaScript app that mlflow-skinny does not ship.
    assert b"<title>MLflow</title>" in fetch(mlflow_ui + "/")


def test_mlflow_search_runs_reads_the_store_into_a_table(run, outputs, monkeypatch):
    """The README's one-liner for pulling runs into a pandas table (pandas comes with the extra)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{outputs}/mlflow.db")
    table = mlflow.search_runs(experiment_names=["cnnlab"])
    assert len(table) == 1 and table.loc[0, "status"] == "FINISHED"
    assert table.loc[0, "metrics.test_acc"] == pytest.approx(read_results(run)["test_acc"])
