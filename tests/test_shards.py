"""Sharded streaming with LitData: cnnlab-shards writes, data=shards trains from a local folder
and from an S3-compatible server (moto's, a real process on a loopback port, reached over HTTP
by the same boto3 client a user's run uses), and bad input_dirs get one paragraph."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from litdata import optimize

from cnnlab.cli.shards import main as shards_main
from cnnlab.data.images import Geometry
from cnnlab.data.shards import ShardImages, Shards, collate_encoded
from cnnlab.errors import CnnlabError
from conftest import needs_fmnist, read_results, run_cli, run_dirs

FMNIST = ["data.samples_per_class=20", "data.val_size=100", "data.classes=[0,1,8]"]
TRAIN = ["data=shards", "data.num_classes=3", "data.channels=1", "data.image_size=28",
         "data.resize=squash", "model=lenet5", "data.batch_size=20", "trainer.max_epochs=1",
         "optimizer.lr=0.01"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "fm"
    assert shards_main([str(out), "data=fashion_mnist", *FMNIST, "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def s3(shards, tmp_path_factory):
    """A moto S3 server on a loopback port holding the shards under s3://cnnlab/fm, and the
    environment that points boto3 at it."""
    import boto3

    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log_path, "w") as log:
        command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p"]
        server = subprocess.Popen([*command, str(port)], stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                              aws_access_key_id="test", aws_secret_access_key="test",
                              region_name="us-east-1")  # fmt: skip
        client.create_bucket(Bucket="cnnlab")
        for path in shards.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), "cnnlab", f"fm/{path.relative_to(shards)}")
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


@needs_fmnist
def test_shards_hold_the_splits_and_their_counts(shards):
    meta = json.loads((shards / "cnnlab.json").read_text())
    assert meta["class_names"] == ["T-shirt/top", "Trouser", "Bag"]
    assert meta["counts"]["train"] == [20, 20, 20] and sum(meta["counts"]["test"]) == 3000
    dm = Shards(str(shards), num_classes=3, channels=1, image_size=28, resize="squash",
                batch_size=20, num_workers=0)  # fmt: skip
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (20, 1, 28, 28) and len(dm.train_dataloader()) == 3
    assert x.dtype == torch.uint8 and set(y.tolist()) <= {0, 1, 2}


@pytest.mark.heavy
@needs_fmnist
def test_trains_from_local_shards(shards, tmp_path):
    proc = run_cli([*TRAIN, f"data.input_dir={shards}", "data.num_workers=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = read_results(run_dirs(tmp_path)[0])
    assert results["status"] == "completed" and results["test_acc"] > 0.5


@pytest.mark.slow
@needs_fmnist
def test_trains_from_an_s3_compatible_server(s3, tmp_path):
    proc = run_cli([*TRAIN, "data.input_dir=s3://cnnlab/fm", "data.num_workers=1"],
                   cwd=tmp_path, env=s3)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = read_results(run_dirs(tmp_path)[0])
    assert results["status"] == "completed" and results["test_acc"] > 0.5
    # Streamed chunks are cached under paths.cache_dir, not in the working directory.
    assert list((tmp_path / ".cache" / "cnnlab" / "litdata").rglob("*.bin"))


@needs_fmnist
def test_bad_input_dirs_name_it_and_how_to_write_shards(s3, shards, tmp_path, monkeypatch):
    def message(input_dir: str) -> str:
        with pytest.raises(CnnlabError) as e:
            Shards(input_dir, num_classes=3)
        text = str(e.value)
        assert input_dir in text and "cnnlab-shards OUT data=" in text and "\n" not in text
        return text

    assert "is not a folder" in message(str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    assert "not a cnnlab shards directory" in message(str(tmp_path / "plain"))
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    assert "has no cnnlab.json" in message("s3://cnnlab/nothing-here")
    assert "has no cnnlab.json" in message("s3://no-such-bucket/fm")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert "unreachable" in message("s3://cnnlab/fm")
    proc = run_cli([*TRAIN, f"data.input_dir={tmp_path / 'plain'}"], cwd=tmp_path)
    assert proc.returncode == 2 and "cnnlab-shards" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shards_command_rejects_other_overrides(tmp_path, capsys):
    assert shards_main([str(tmp_path / "o"), "model=lenet5"]) == 2
    assert "cnnlab-shards takes data=<option>" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def jpeg_item(path: str):
    yield {"image": Path(path).read_bytes(), "label": int(Path(path).stem) % 2}


def test_encoded_shard_items_decode_on_the_device_as_the_workers_do(tmp_path):
    """data.decode=gpu's path for shards, on the CPU device: the stored JPEGs (RGB and grey)
    go to the device as bytes with the crops the workers would draw, and come out the same."""
    from test_image_folder import photo

    for i in range(6):
        img = photo(i, (240, 180))
        (img.convert("L") if i == 0 else img).save(tmp_path / f"{i}.jpg")
    out = str(tmp_path / "train")
    # The store cnnlab-shards writes per split (the same bytes and labels), for one split only.
    optimize(fn=jpeg_item, inputs=sorted(map(str, tmp_path.glob("*.jpg"))), output_dir=out,
             chunk_bytes="64MB", num_workers=1, start_method="fork")  # fmt: skip
    geometry = Geometry(32, train=True, scale=(0.2, 1.0))
    plain = ShardImages(out, 3, geometry, seed=5)
    encoded = ShardImages(out, 3, geometry, encoded=True, seed=5)
    expected = [plain[i] for i in range(len(plain))]
    batch, labels = collate_encoded([encoded[i] for i in range(len(encoded))])
    assert len(expected) == 6 and all(isinstance(x, bytes) for x in batch.images)
    images, source, unreadable = batch.decode("cpu")
    assert unreadable == [] and source == list(range(6))
    assert torch.equal(images, torch.stack([x for x, _ in expected]))
    assert torch.equal(labels, torch.stack([y for _, y in expected]))


@pytest.mark.heavy
@needs_fmnist
def test_sigkilled_shards_run_resumes_bit_exactly(tmp_path):
    """Random crops in two workers, killed mid-epoch: the resumed run's weights and logs equal
    an uninterrupted run's."""
    from test_resume import killed_and_resumed, metrics_rows, weights

    out = tmp_path / "fm"
    assert shards_main([str(out), "data=fashion_mnist", "data.samples_per_class=50",
                        "data.val_size=200", "--workers", "1"]) == 0  # fmt: skip
    args = ["data=shards", f"data.input_dir={out}", "data.num_classes=10", "data.channels=1",
            "data.image_size=28", "data.crop_scale=[0.5,1.0]", "data.num_workers=2",
            "data.batch_size=10", "model=lenet5", "optimizer.lr=0.01", "trainer.max_epochs=2",
            "trainer.deterministic=true", "callbacks=ema", "test=false",
            "callbacks.last_checkpoint.every_n_train_steps=15",
            "callbacks.progress.every_n_steps=5"]  # fmt: skip
    whole_dir, run_dir = killed_and_resumed(args, tmp_path, "epoch 1 step 20/", (50, 100), 900)
    expected, got = weights(whole_dir), weights(run_dir)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert metrics_rows(run_dir) == metrics_rows(whole_dir)
