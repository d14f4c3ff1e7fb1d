"""What multi-crop testing and model ensembles buy, and what they cost.

AlexNet (Krizhevsky et al., 2012, sections 4.1 and 6) and VGG (Simonyan and Zisserman, 2015,
sections 3.2 and 4.3) report test accuracy with ten crops per image and with the softmax outputs of
several models averaged; practitioners quote such gains as 1-2% for 3-15x the test-time compute.
This command measures both on the test split of trained runs (completed runs at or below the paths;
a skipped run counts as the run it repeats): one model, one model with a TTA mode of
cnnlab.augment.tta, the ensemble of all runs, and the ensemble with the TTA mode. Single-model
accuracy is the mean +- sample standard deviation over the runs; each setting's inference time is
the median over ``--repeats`` passes over the test split, the single model's timed on the first run.
Writes ensemble.json and ensemble.md into ``--out`` and prints the Markdown table.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cnnlab.analysis.compare import load_local
from cnnlab.augment.tta import tta_mode, views
from cnnlab.config.schema import TTAMode
from cnnlab.errors import CnnlabError
from cnnlab.inference.evaluate import data_config
from cnnlab.inference.loading import Trained, load, load_test_split
from cnnlab.runs.record import Status, flatten

# Data settings that change how the test split is batched or found, never which images it holds.
LOADING_KEYS = ("batch_size", "eval_batch_size", "num_workers", "download")
SETTINGS = ("single", "single_tta", "ensemble", "ensemble_tta")


def completed_run_dirs(paths: list[Path]) -> list[Path]:
    """The completed runs at or below ``paths``, a skipped run replaced by the run it repeats."""
    runs = load_local(paths)
    done = [r for r in runs if r.results.get("status") == Status.COMPLETED]
    if not done:
        statuses = ", ".join(sorted({r.status for r in runs}))
        raise CnnlabError(
            f"None of the {len(runs)} runs under {', '.join(map(str, paths))} completed (their "
            f"status: {statuses}); an ensemble needs completed runs, whose checkpoints were tested."
        )
    return list(dict.fromkeys(Path(r.results.get("same_as", r.run_dir)) for r in done))


def data_settings(trained: Trained) -> dict[str, str]:
    """The run's data settings that decide which images its test split holds."""
    flat = flatten(OmegaConf.to_container(trained.config.data, resolve=True))
    return {k: v for k, v in flat.items() if k not in LOADING_KEYS}


def incompatible(a: Trained, b: Trained, what: str) -> CnnlabError:
    settings_a, settings_b = data_settings(a), data_settings(b)
    differ = ", ".join(
        f"data.{k} ({settings_a.get(k)} vs {settings_b.get(k)})"
        for k in sorted(settings_a.keys() | settings_b.keys())
        if settings_a.get(k) != settings_b.get(k)
    )
    return CnnlabError(
        f"{a.run_dir} and {b.run_dir} cannot be ensembled: {what}. Their data settings differ in "
        f"{differ or 'nothing'}. An ensemble averages the class probabilities of models tested "
        "on the same images with the same classes: give runs of one data set, data.classes and "
        "test split; their seeds, models and training settings may differ."
    )


def test_split(trained: Trained, batch_size: int | None):
    config = data_config(trained.config, None, [])
    if batch_size:
        config.data.eval_batch_size = batch_size
    return load_test_split(config)


def fingerprint(datamodule) -> tuple[int, str]:
    """(number of images, a digest of the images and labels in order) of a test split."""
    count, digest = 0, hashlib.sha1()
    for images, labels in datamodule.test_dataloader():
        count += len(labels)
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return count, digest.hexdigest()


def check_compatible(members: list[Trained], batch_size: int | None):
    """The first run's test split, once every run is known to predict the same classes and to
    have been tested on the same images. Some data sets carve their test split with the seed
    (image_folder) and others don't (Fashion-MNIST), so the splits themselves are compared."""
    first = members[0]
    for other in members[1:]:
        if other.class_names != first.class_names:
            raise incompatible(
                first,
                other,
                f"the first predicts {len(first.class_names)} classes "
                f"({', '.join(first.class_names)}), the second {len(other.class_names)} "
                f"({', '.join(other.class_names)})",
            )
    datamodule = test_split(first, batch_size)
    first_key = str(data_settings(first))
    splits = {first_key: fingerprint(datamodule)}
    for other in members[1:]:
        key = str(data_settings(other))
        if key not in splits:
            splits[key] = fingerprint(test_split(other, batch_size))
        if splits[key] != splits[first_key]:
            counts = f"{splits[first_key][0]} and {splits[key][0]}"
            raise incompatible(first, other, f"their test splits hold different images ({counts})")
    return datamodule


def timed(device: torch.device, compute: Callable, *args) -> tuple[torch.Tensor, float]:
    """``compute(*args)`` and the seconds it took, the device's queued work included."""
    start = time.perf_counter()
    out = compute(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def predict(
    members: list[Trained], images: torch.Tensor, tta: str
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(each member's probabilities (M, N, K), the ensemble's (their mean, (N, K)) and the seconds
    each member took followed by those of the averaging) for uint8 images under ``tta``."""
    device = members[0].device
    probs, seconds = [], []
    for member in members:
        p, s = timed(device, member.probs, images, tta)
        probs.append(p)
        seconds.append(s)
    stacked = torch.stack(probs)
    mean, s = timed(device, stacked.mean, 0)
    return stacked, mean, [*seconds, s]


def one_pass(members: list[Trained], datamodule, tta: str) -> tuple[dict, dict]:
    """One pass over the test split: (correct predictions, seconds) per setting. The single-model
    settings count correct predictions per member and take the first member's time; the
    ensemble's time is every member's and the averaging's."""
    device = members[0].device
    correct, seconds = dict.fromkeys(SETTINGS, 0), dict.fromkeys(SETTINGS, 0.0)
    for images, labels in datamodule.test_dataloader():
        labels = labels.to(device)
        for single, joint, mode in (
            ("single", "ensemble", "none"),
            ("single_tta", "ensemble_tta", tta),
        ):
            probs, mean, spent = predict(members, images, mode)
            correct[single] = correct[single] + (probs.argmax(-1) == labels).sum(1).cpu()
            correct[joint] += int((mean.argmax(-1) == labels).sum())
            seconds[single] += spent[0]
            seconds[joint] += sum(spent)
    return correct, seconds


def ensemble(
    run_dirs: list[Path],
    tta: str = "ten_crop",
    repeats: int = 3,
    batch_size: int | None = None,
    device: str = "auto",
) -> dict:
    """Test accuracy and inference time of one model, one model with ``tta``, the ensemble of
    the runs ``run_dirs`` and the ensemble with ``tta``, on their common test split."""
    mode = tta_mode(tta, "--tta")
    if mode is TTAMode.none:
        raise CnnlabError(
            "--tta none: expected a multi-view mode of cnnlab.augment.tta: "
            f"{', '.join(m.value for m in TTAMode if m is not TTAMode.none)}."
        )
    tta = mode.value
    if repeats < 1:
        raise CnnlabError(f"--repeats {repeats}: expected 1 or more passes to time.")
    members = [load(d, device) for d in run_dirs]
    datamodule = check_compatible(members, batch_size)
    images = len(datamodule.test_set)
    passes = [one_pass(members, datamodule, tta) for _ in range(repeats)]
    correct = passes[0][0]  # inference in eval mode: every pass predicts the same
    time_s = {k: statistics.median(p[1][k] for p in passes) for k in passes[0][1]}
    first_images = next(iter(datamodule.test_dataloader()))[0][:1]
    n_views = len(views(members[0].inputs(first_images), tta))

    def setting(key: str, name: str, models: int, n: int, accs: list[float]) -> dict:
        return {
            "key": key,
            "setting": name,
            "test_acc": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "models": models,
            "views": n,
            "time_s": time_s[key],
            "time_ratio": time_s[key] / time_s["single"],
            "time_s_passes": [p[1][key] for p in passes],
        }

    single = [int(c) / images for c in correct["single"]]
    single_tta = [int(c) / images for c in correct["single_tta"]]
    n = len(members)
    return {
        "tta": tta,
        "test_images": images,
        "repeats": repeats,
        "batch_size": datamodule.eval_batch_size,
        "device": str(members[0].device),
        "runs": [
            {
                "run_dir": str(m.run_dir),
                "checkpoint": str(m.checkpoint),
                "test_acc": a,
                "test_acc_tta": t,
            }
            for m, a, t in zip(members, single, single_tta, strict=True)
        ],
        "settings": [
            setting("single", "single model", 1, 1, single),
            setting("single_tta", f"single model + {tta}", 1, n_views, single_tta),
            setting("ensemble", f"ensemble of {n}", n, 1, [correct["ensemble"] / images]),
            setting(
                "ensemble_tta",
                f"ensemble of {n} + {tta}",
                n,
                n_views,
                [correct["ensemble_tta"] / images],
            ),
        ],
    }


def markdown(report: dict) -> str:
    """The report as a Markdown table, one row per setting."""
    runs = len(report["runs"])
    lines = [
        "| setting | test_acc | time (s) | time / single | models x views |",
        "|---|---|---|---|---|",
    ]
    for s in report["settings"]:
        acc = f"{s['test_acc']:.4f}"
        if s["models"] == 1 and runs > 1:
            acc += f" ± {s['test_acc_std']:.4f}"
        lines.append(
            f"| {s['setting']} | {acc} | {s['time_s']:.3f} | {s['time_ratio']:.1f}x "
            f"| {s['models']} x {s['views']} |"
        )
    lines += [
        "",
        f"{runs} runs, {report['test_images']} test images on {report['device']}, batch "
        f"{report['batch_size']}; single-model accuracy is the mean ± std over the runs, times "
        f"the median of {report['repeats']} passes (the single model's on the first run).",
    ]
    return "\n".join(lines) + "\n"
