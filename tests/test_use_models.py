"""cnnlab-eval, -predict, -export and -explain on a model trained through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cnnlab.cli import evaluate, explain, export, predict
from cnnlab.config.schema import validate
from cnnlab.data.mnist_like import FashionMNIST
from cnnlab.inference import evaluate as evaluation
from cnnlab.inference import explain as explaining
from cnnlab.inference import export as exporting
from cnnlab.inference.loading import load, load_test_split, rebuild
from conftest import needs_fmnist, read_results, run_cli, run_dirs

pytestmark = needs_fmnist


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A real run: a small ResNet trained for 40 steps on 1,000 Fashion-MNIST images."""
    cwd = tmp_path_factory.mktemp("trained")
    proc = run_cli(
        [
            "name=tiny",
            "data.samples_per_class=100",
            "data.batch_size=50",
            "data.val_size=500",
            "trainer.max_epochs=2",
        ],
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run] = run_dirs(cwd)
    return run


@pytest.fixture(scope="session")
def eval_report(run_dir) -> dict:
    """What cnnlab-eval writes for the run (its tested checkpoint, the run's own test split)."""
    # The default device and precision: those the run was tested with on this machine.
    assert evaluate.main([str(run_dir)]) == 0
    tested = Path(read_results(run_dir)["tested_checkpoint"])
    return json.loads(tested.with_name(tested.stem + ".eval.json").read_text())


@pytest.fixture(scope="session")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 Fashion-MNIST test images (uint8, N x 1 x 28 x 28) and labels."""
    data = FashionMNIST(root=None, download=False)
    data.setup("test")
    images, labels = data.test_set[list(range(200))]
    return images, labels


def test_eval_reproduces_the_runs_test_results(run_dir, eval_report):
    results = read_results(run_dir)
    assert eval_report["test_acc"] == results["test_acc"]
    assert eval_report["test_acc_top5"] == results["test_acc_top5"]
    assert eval_report["per_class_acc"] == results["per_class_acc"]
    assert eval_report["confusion_matrix"] == results["confusion_matrix"]
    assert len(eval_report["predictions"]) == 10_000
    tested = Path(results["tested_checkpoint"])
    assert tested.with_name(tested.stem + ".eval.png").stat().st_size > 10_000


def test_eval_with_flip_tta_and_other_data(run_dir, eval_report, image_tree, capsys):
    """TTA changes the numbers; another data set's test split is read with the run's
    preprocessing (its 3-channel 28x28 PNGs become the 1-channel input the model takes)."""
    # The image tree holds 3 classes, the model predicts 10: a clear refusal, no traceback.
    overrides = ["data=image_folder", f"data.root={image_tree}"]
    assert evaluate.main([str(run_dir), "--device", "cpu", *overrides]) == 2
    assert "3 classes but the model" in capsys.readouterr().err
    trained = load(run_dir, "cpu")
    flipped = evaluation.evaluate(trained, load_test_split(trained.config), tta="hflip")
    assert flipped["predictions"] != eval_report["predictions"]


def test_predict_agrees_with_eval_on_test_images(
    run_dir, eval_report, test_images, tmp_path, capsys
):
    images, _ = test_images
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images[:100]):
        # Every third image in another mode than training's; the decoder converts it back.
        picture = Image.fromarray(image[0].numpy())
        (picture.convert("RGBA") if i % 3 == 0 else picture).save(folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    code = predict.main(
        [
            str(run_dir),
            str(folder),
            str(tmp_path / "missing.png"),
            "--json",
            "-k",
            "5",
            "--batch-size",
            "32",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    output = json.loads(captured.out)
    rows = output["predictions"]
    assert [Path(r["file"]).name for r in rows] == [f"{i:03d}.png" for i in range(100)]
    assert [r["top"][0]["index"] for r in rows] == eval_report["predictions"][:100]
    assert all(0 < sum(t["prob"] for t in r["top"]) <= 1 + 1e-6 for r in rows)
    assert all(r["top"][0]["prob"] >= r["top"][1]["prob"] for r in rows)
    failed = " ".join(e["error"] for e in output["errors"])
    assert "broken.png" in failed and "missing.png" in failed
    assert "broken.png" in captured.err

    # Nothing decodable at all: a non-zero exit with a message naming the file.
    assert predict.main([str(run_dir), str(folder / "broken.png"), "--device", "cpu"]) == 2
    assert "broken.png" in capsys.readouterr().err


def preprocess_as_documented(images: torch.Tensor, info: dict) -> np.ndarray:
    """A consumer's preprocessing from the export's metadata alone."""
    mean = torch.tensor(info["mean"])[:, None, None]
    std = torch.tensor(info["std"])[:, None, None]
    return ((images.float() / 255 - mean) / std).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_agrees_with_pytorch(run_dir, test_images, fmt, tmp_path, capsys):
    path = tmp_path / f"model.{fmt}"
    assert export.main([str(run_dir), "--format", fmt, "-o", str(path)]) == 0
    assert "): ok" in capsys.readouterr().out
    trained = load(run_dir, "cpu")
    images, _ = test_images
    expected = trained.logits(images)
    if fmt == "onnx":
        proto = onnx.load(str(path))
        info = json.loads({p.key: p.value for p in proto.metadata_props}["cnnlab"])
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(
            session.run(None, {"input": preprocess_as_documented(images, info)})[0]
        )
    else:
        extra = {"cnnlab.json": ""}
        with exporting.quiet_export():
            network = torch.jit.load(str(path), _extra_files=extra)
        info = json.loads(extra["cnnlab.json"])
        got = network(torch.from_numpy(preprocess_as_documented(images, info))).detach()
    assert info["class_names"] == trained.class_names
    assert info["input_size"] == [1, 28, 28]
    difference = float((got - expected).abs().max())
    print(f"{fmt}: max abs logit difference {difference:.3g} on {len(images)} test images")
    assert difference < 1e-4


def test_grad_cam_maps(run_dir, test_images):
    trained = load(run_dir, "cpu")
    images, _ = test_images
    x = trained.inputs(images[:8])
    model = trained.module.model
    layer = explaining.default_layer(model, x)
    assert layer == "layer3"  # the ResNet's last stage, not a convolution inside it
    ranked = trained.logits(images[:8]).argsort(dim=1)
    top, bottom = ranked[:, -1], ranked[:, 0]
    cam_top = explaining.grad_cam(trained.module, model.get_submodule(layer), x, top)
    cam_bottom = explaining.grad_cam(trained.module, model.get_submodule(layer), x, bottom)
    assert cam_top.shape == cam_bottom.shape == (8, 28, 28)
    assert (cam_top >= 0).all() and (cam_bottom >= 0).all()
    assert cam_top.amax() > 0
    assert not torch.allclose(cam_top, cam_bottom)


def test_explain_writes_its_pictures(run_dir, image_tree, tmp_path):
    out = tmp_path / "explain"
    pictures = str(image_tree / "trouser")
    args = [str(run_dir), pictures, "--max-images", "4", "--class", "Trouser", "-o", str(out)]
    assert explain.main([*args, "--feature-layer", "layer1", "--device", "cpu"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["features-layer1.png", "filters.png", "gradcam.png"]
    assert all((out / name).stat().st_size > 5_000 for name in written)


def test_model_with_auxiliary_heads_exports_main_logits_only(
    compose_cfg, image_tree, tmp_path, capsys
):
    """GoogLeNet returns three logits in training; its exports keep the main ones only."""
    config = validate(compose_cfg(["model=googlenet", "data.image_size=32"]))
    torch.manual_seed(0)
    module = rebuild(config, list(FashionMNIST.class_names_))
    # What cnnlab-train's checkpoints hold for these commands; untrained weights do for exports.
    info = {"class_names": module.class_names, "config": OmegaConf.to_container(config)}
    checkpoint = tmp_path / "googlenet.ckpt"
    torch.save({"state_dict": module.state_dict(), "cnnlab": info}, checkpoint)
    onnx_path = tmp_path / "googlenet.onnx"
    assert export.main([str(checkpoint), "-o", str(onnx_path), "--check-count", "8"]) == 0
    assert "): ok" in capsys.readouterr().out
    graph = onnx.load(str(onnx_path)).graph
    assert [o.name for o in graph.output] == ["logits"]
    assert not any("aux" in i.name for i in graph.initializer)

    # Grad-CAM's default layer is the last block that runs, not an auxiliary head defined later.
    x = torch.randn(1, 1, 32, 32)
    assert explaining.default_layer(module.model.eval(), x) == "inception5b"
    assert predict.main([str(checkpoint), str(image_tree / "bag"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 40


@pytest.mark.parametrize("command", [evaluate, predict, export, explain])
def test_bad_sources_get_one_paragraph_messages(command, tmp_path, capsys):
    images = [] if command in (evaluate, export) else [str(tmp_path)]
    not_torch = tmp_path / "notes.ckpt"
    not_torch.write_text("hello")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    for source, expected in (
        (tmp_path / "no-such-run", "does not exist"),
        (not_torch, "not a checkpoint that PyTorch can read"),
        (foreign, "not a cnnlab checkpoint"),
    ):
        assert command.main([str(source), *images]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cnnlab: error: ") and str(source) in err and expected in err
        assert "Traceback" not in err
