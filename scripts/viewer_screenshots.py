"""Screenshots of the viewers the README names, against a directory of runs: TensorBoard's scalars
page and the MLflow UI's page of the latest run, taken with headless Chromium (Debian package
``chromium``) into docs/images/.

    python scripts/viewer_screenshots.py [OUTPUTS] [--train] [--out docs/images]

OUTPUTS is the runs' ``paths.output_root`` (default ``outputs``); ``--train`` first trains one
short run into it with the CSV, TensorBoard and MLflow loggers. The servers are started as the
README starts them, on free loopback ports, and stopped at the end. tests/test_viewers.py starts
them with the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

HOST = "127.0.0.1"
# Ten short epochs: curves of ten points in about a minute on two cores.
TRAIN = [
    "debug=limit",
    "trainer.max_epochs=10",
    "data.samples_per_class=100",
    "logger=[csv,tensorboard,mlflow]",
]
# Scalars page filtered to the training curves, and the run page in MLflow's model-training view
# (its default view is GenAI's, which files the run under "Evaluation runs").
TENSORBOARD_PAGE = "/#scalars&tagFilter=^(train|val)_(acc|loss)&_smoothingWeight=0"
MLFLOW_PAGE = "/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def tool(name: str) -> str:
    """A console script of the environment this Python runs in (the project's .venv)."""
    return str(Path(sys.executable).with_name(name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tensorboard_command(outputs: Path, port: int) -> list[str]:
    return [tool("tensorboard"), "--logdir", str(outputs), "--host", HOST, "--port", str(port)]


def mlflow_command(outputs: Path, port: int) -> list[str]:
    # One worker: a local viewer for one person; the default four start four copies of the app.
    return [
        *[tool("mlflow"), "ui", "--backend-store-uri", f"sqlite:///{outputs.resolve()}/mlflow.db"],
        *["--host", HOST, "--port", str(port), "--workers", "1"],
    ]


# MLflow's server otherwise starts five job-queue consumers for its GenAI features, which
# browsing training runs never uses.
MLFLOW_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextmanager
def serve(
    command: list[str], ready_path: str, port: int, log: Path, env: dict | None = None
) -> Iterator[str]:
    """Run a server in its own process group until the block ends; yield its base URL once
    ``ready_path`` answers 200. MLflow's workers are children of the command, hence the group."""
    url = f"http://{HOST}:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        wait_until_ready(url + ready_path, proc, log)
        yield url
    finally:
        stop(proc)


def wait_until_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()}")
        # Refused, reset, timed out or an error status (urlopen raises for one): not up yet.
        with suppress(OSError), urllib.request.urlopen(url, timeout=5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer in {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    # Whatever of the group outlived its leader (or ignored SIGTERM) goes too.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def tensorboard_tags(url: str, timeout: float = 60) -> dict[str, dict]:
    """run -> its scalar tags, once TensorBoard has read the event files: it answers HTTP
    before its first pass over the log directory has finished."""
    deadline = time.monotonic() + timeout
    while not (tags := get_json(url + "/data/plugin/scalars/tags")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"TensorBoard at {url} found no scalars in {timeout:.0f} s")
        time.sleep(0.5)
    return tags


def latest_mlflow_run(url: str, experiment: str = "cnnlab") -> dict:
    api = url + "/api/2.0/mlflow"
    found = get_json(f"{api}/experiments/get-by-name?experiment_name={experiment}")
    runs = get_json(
        f"{api}/runs/search",
        {
            "experiment_ids": [found["experiment"]["experiment_id"]],
            "order_by": ["attributes.start_time DESC"],
            "max_results": 1,
        },
    )
    return runs["runs"][0]


def screenshot(url: str, png: Path, size: tuple[int, int]) -> None:
    """Both pages are JavaScript apps: the virtual time budget lets them fetch and draw before
    the capture. A fresh profile and no background services keep Chromium off the network."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"],
                *["--no-first-run", "--disable-background-networking"],
                *["--disable-component-update", "--disable-sync", "--hide-scrollbars"],
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                "--virtual-time-budget=15000",
                f"--screenshot={png}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"{png}: {png.stat().st_size // 1024} KiB of {url}")


def train(outputs: Path) -> None:
    overrides = [*TRAIN, f"paths.output_root={outputs.resolve()}"]
    subprocess.run([sys.executable, "-m", "cnnlab.cli.train", *overrides], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outputs", nargs="?", type=Path, default=Path("outputs"))
    parser.add_argument("--train", action="store_true", help="train one short run first")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args(argv)
    if args.train:
        train(args.outputs)
    if not (args.outputs / "mlflow.db").is_file():
        sys.exit(f"no {args.outputs}/mlflow.db: train with logger=mlflow first (or --train)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as logs:
        port = free_port()
        with serve(tensorboard_command(args.outputs, port), "/", port, Path(logs, "tb.log")) as url:
            tensorboard_tags(url)
            screenshot(url + TENSORBOARD_PAGE, args.out / "viewer-tensorboard.png", (1280, 800))
        port = free_port()
        command, log = mlflow_command(args.outputs, port), Path(logs, "mlflow.log")
        with serve(command, "/health", port, log, MLFLOW_ENV) as url:
            info = latest_mlflow_run(url)["info"]
            page = MLFLOW_PAGE.format(experiment_id=info["experiment_id"], run_id=info["run_id"])
            screenshot(url + page, args.out / "viewer-mlflow.png", (1280, 1400))
    return 0


if __name__ == "__main__":
    sys.exit(main())
