"""Two gloo processes on loopback, started for real by torchrun.

Two launches (each costs two Python processes importing torch): the `convlab train
--nproc 2` command line, and this file run as a torchrun script (the `_worker` at the
bottom) for what the command line cannot show (per-rank results, a failing rank).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import make_imageset
from convlab.checkpoint import load_run, read_meta
from convlab.config import TrainConfig
from convlab.errors import CheckpointError, ConfigError, ConvlabError
from convlab.models import default_preprocess
from convlab.training import Callback, evaluate, prepare_data, train
from convlab.embed import Embedder, embed_images
from convlab.transfer import TransferConfig, transfer
from convlab.training.distributed import (GlobalBatchNorm, launch, relaunch_with_torchrun,
                                       sync_batchnorm)

HERE = Path(__file__).resolve().parent
TIMEOUT = 300


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=atol, rtol=0), \
            (k, float((wa[k].float() - wb[k].float()).abs().max()))


def _write_pngs(root: Path, n_per_class: int = 16) -> None:
    data = make_imageset(n_per_class, 3, seed=2)
    for i, (img, label) in enumerate(zip(data.images, data.labels.tolist())):
        d = root / data.classes[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy(), "L").save(d / f"{i}.png")


def test_nproc2_command_matches_one_process_and_resumes_in_one(tmp_path):
    folder = tmp_path / "data"
    _write_pngs(folder)  # 48 images: train 36 + val 12; batches of 15 split 8/7, last 6 -> 3/3
    common = [str(folder), "--model", "mnist_linear", "--channels", "1", "--image-size", "28",
              "--batch-size", "15", "--val-split", "0.25", "--optimizer", "momentum",
              "--lr", "0.02", "--schedule", "constant", "--device", "cpu"]
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "convlab", "train", *common, "--epochs", "1",
                           "--nproc", "2", "--out", str(two)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # only rank 0 prints (and writes): one epoch line, one closing line
    assert proc.stdout.count("Epoch 1/1 - loss") == 1, proc.stdout
    assert proc.stdout.count("run saved in") == 1, proc.stdout
    names = {p.name for p in two.iterdir()}
    assert {"meta.json", "model.safetensors", "train_state.safetensors"} <= names
    assert ".staging" not in names

    # the references: one process, through the API (same settings as the flags above)
    cfg = TrainConfig(epochs=1, batch_size=15, val_split=0.25, optimizer="momentum", lr=0.02,
                      schedule="constant")  # a 1-epoch run is then a 2-epoch run's first half
    same = dict(channels=1, image_size=28, device="cpu", verbose=False)
    one = tmp_path / "one"
    train(folder, "mnist_linear", cfg, out=one, **same)
    _assert_same_weights(one, two)
    m1, m2 = read_meta(one), read_meta(two)
    assert m2["dataset"] == m1["dataset"] and m2["dataset"]["val"] == 12
    assert m2["metrics"][0]["val_loss"] == pytest.approx(m1["metrics"][0]["val_loss"], abs=1e-6)
    assert m2["metrics"][0]["loss"] == pytest.approx(m1["metrics"][0]["loss"], abs=1e-6)

    # the 2-process run continues in one process to what one process makes in 2 epochs
    one2 = tmp_path / "one2"
    train(folder, "mnist_linear", cfg.replace(epochs=2), out=one2, **same)
    train(folder, "mnist_linear", cfg.replace(epochs=2), out=two, resume=True, **same)
    assert read_meta(two)["state"] == {"epoch": 2, "step": 6, "complete": True}
    _assert_same_weights(one2, two)


def test_ranks_write_once_count_exactly_and_stop_together(tmp_path, one_thread):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(Path(__file__)), str(tmp_path)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    # the last part of the worker makes rank 1 fail in epoch 2: the whole run fails ...
    assert proc.returncode != 0
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # ... rank 0 stops with one line saying so, and the run keeps its complete epoch 1
    assert "holds epoch 1 - continue with --resume" in proc.stderr, proc.stderr[-3000:]
    assert "rank 0: process 0 stopped during epoch 2" in proc.stderr \
        or "rank 0: interrupted during epoch 2" in proc.stderr, proc.stderr[-3000:]
    fail = tmp_path / "fail"
    assert read_meta(fail)["state"] == {"epoch": 1, "step": 4, "complete": False}
    assert not (fail / ".staging").exists()
    load_run(fail)

    # every rank was given its own --out: only rank 0 wrote
    assert (tmp_path / "run0" / "meta.json").exists()
    assert not (tmp_path / "run1").exists()
    # resuming where the ranks see different checkpoints is refused on every rank
    for r in (0, 1):
        assert "found different checkpoints" in (tmp_path / f"resume{r}.txt").read_text()
    assert read_meta(tmp_path / "run0")["state"]["epoch"] == 2
    # validation: every image counted once across ranks (15 images, batches of 4 -> 2/2 .. 2/1)
    data, cfg = _worker_data()
    _, val, _ = prepare_data(data, cfg)
    assert len(val) == 15
    for res in results:
        assert res["n"] == len(val) and sum(map(sum, res["confusion"])) == len(val)
    assert results[0] == results[1]  # reduced across ranks: both hold the whole result
    run = load_run(tmp_path / "run0")
    single = evaluate(run.model, val, run.preprocess, batch_size=4)
    assert results[0]["n"] == single.n
    assert results[0]["confusion"] == single.confusion.tolist()
    assert results[0]["loss"] == pytest.approx(single.loss, abs=1e-5)

    # embed: each rank embedded a share (one cache shard each); the whole is one process's
    photos, tcfg, ft_cfg = _transfer_data()
    emb = load_file(str(tmp_path / "emb.safetensors"))["emb"]
    assert emb.shape == (len(photos), 1280)
    embedder = Embedder(image_size=32)
    assert torch.allclose(embedder.embed(photos.images, show_progress=False), emb, atol=1e-5)
    assert embedder.stats.cached == len(photos) and len(embedder.cache.shards()) == 2
    assert torch.allclose(embedder.forward(photos.images), emb, atol=1e-4)  # not the cache
    # transfer --strategy finetune (trainable BatchNorm synchronised): one process's weights
    transfer(photos, tcfg, ft_cfg, out=tmp_path / "finetune1", verbose=False)
    _assert_same_weights(tmp_path / "finetune1", tmp_path / "finetune", atol=1e-4)

    # with --sync-bn, BatchNorm sees the whole batch: the same weights as one process
    # (within 1e-4; without it the BatchNorm'd weights differ by about 0.05 here)
    train(data, "mnist_cnn", cfg, out=tmp_path / "single", device="cpu", verbose=False)
    _assert_same_weights(tmp_path / "single", tmp_path / "syncbn", atol=1e-4)


def test_launcher_refuses_bad_counts():
    with pytest.raises(ConfigError, match="at least 1"):
        relaunch_with_torchrun([], 0)
    with pytest.raises(ConfigError, match="at least 1"):
        launch([], 0)
    assert relaunch_with_torchrun([], 1) is None  # one process: no torchrun at all


def test_sync_batchnorm_on_cpu_keeps_parameters_and_keys():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 3),
                              torch.nn.BatchNorm1d(3))
    params, keys = list(net.parameters()), list(net.state_dict())
    out = sync_batchnorm(net, torch.device("cpu"))
    assert [type(m) for m in out.modules()].count(GlobalBatchNorm) == 2
    assert list(out.parameters()) == params and list(out.state_dict()) == keys
    x = torch.randn(6, 1, 28, 28)
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 3),
                                torch.nn.BatchNorm1d(3))
    plain.load_state_dict(out.state_dict())
    assert torch.allclose(out(x), plain(x), atol=1e-6)  # one process: plain BatchNorm


# ------------------------------------------------------------------ torchrun worker

def _worker_data():
    # 48 images: val 15 (odd), train 33 in batches of 9 (5/4 per rank, last 6 -> 3/3)
    return make_imageset(16, 3, seed=1), TrainConfig(
        epochs=2, batch_size=9, lr=0.05, optimizer="momentum", val_split=0.3)


def _transfer_data():
    # 12 RGB images, 32 px: train 9 (batches of 5 -> 3/2, last 4 -> 2/2), val 3
    photos = make_imageset(4, 3, channels=3, size=32, seed=3)
    return photos, TransferConfig(strategy="finetune", image_size=32, unfreeze=1), TrainConfig(
        epochs=1, batch_size=5, lr=0.01, optimizer="momentum", val_split=0.25, sync_bn=True)


class _FailOnRank1(Callback):
    """Rank 1 dies in its second batch of epoch 2 (after epoch 1 was saved)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_batch_end(self, state) -> None:
        if self.rank == 1 and state.epoch == 2 and state.batch == 1:
            raise RuntimeError("rank 1 fails on purpose")


def _worker(out: Path) -> int:
    from convlab.training.distributed import process_group

    with process_group("cpu") as (rank, size):
        assert size == 2, size
        data, cfg = _worker_data()
        result = train(data, "mnist_cnn", cfg, out=out / f"run{rank}", device="cpu",
                       verbose=False)
        _, val, _ = prepare_data(data, cfg)
        pre, _ = default_preprocess("mnist_cnn", 1, 28)
        r = evaluate(result.model, val, pre, batch_size=4)
        (out / f"rank{rank}.json").write_text(json.dumps(
            {"n": r.n, "loss": r.loss, "top1": r.top1, "confusion": r.confusion.tolist()}))
        try:  # as on two machines without a shared run directory: rank 1 finds none
            train(data, "mnist_cnn", cfg.replace(epochs=3), out=out / f"run{rank}", resume=True,
                  device="cpu", verbose=False)
        except CheckpointError as exc:
            (out / f"resume{rank}.txt").write_text(str(exc))
        train(data, "mnist_cnn", cfg.replace(sync_bn=True), out=out / "syncbn", device="cpu",
              verbose=False)
        photos, tcfg, ft_cfg = _transfer_data()
        emb = embed_images(photos.images, image_size=32, progress=False)  # a share per rank
        if rank == 0:
            save_file({"emb": emb}, str(out / "emb.safetensors"))
        transfer(photos, tcfg, ft_cfg, out=out / "finetune", verbose=False)
        try:
            train(data, "mnist_linear", cfg.replace(epochs=3), out=out / "fail", device="cpu",
                  verbose=False, callbacks=[_FailOnRank1(rank)])
        except ConvlabError as exc:
            print(f"rank {rank}: {exc}", file=sys.stderr)
            return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
