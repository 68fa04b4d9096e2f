"""Resumable meta-training: a run killed with SIGKILL at a random point resumes from its last checkpoint and ends
bit-identical to an uninterrupted run of the same seed; half-written or corrupt checkpoints are never read.

The file doubles as the job the SIGKILL test runs in a subprocess: ``python tests/test_checkpoint.py WORKDIR``.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.checkpoint import CheckpointStore, run_key  # noqa: E402
from components.config import EpisodesConfig, MetaConfig  # noqa: E402
from components.episodes import sample_episodes  # noqa: E402
from components.meta import Learner, ProjectionHead, meta_train  # noqa: E402
from components.model_io import atomic_save_tensors, atomic_write_text  # noqa: E402

DIM, EVERY, NOISE, SEED = 24, 20, 0.05, 7
TRAIN_EPISODES, VAL_EPISODES = 100, 20
# Embedding calls: 2 per episode (support, query); validation runs before training and after each epoch.
VAL_CALLS = 2 * VAL_EPISODES
CALLS_BEFORE_EPOCH_3 = VAL_CALLS + 2 * (2 * TRAIN_EPISODES + VAL_CALLS)


def synthetic_problem(seed: int = 0, labels: int = 12, per_label: int = 30):
    """Clustered random embeddings in two source tasks, plus train/validation episodes over them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(labels, DIM))
    vectors = np.repeat(centers, per_label, axis=0) + 0.9 * rng.normal(size=(labels * per_label, DIM))
    label_names = [f"l{i // per_label}" for i in range(labels * per_label)]
    pool = pd.DataFrame({"text": [f"t{i}" for i in range(len(label_names))], "label": label_names,
                         "source": ["a" if int(name[1:]) < labels // 2 else "b" for name in label_names],
                         "augmented": False, "origin": np.arange(len(label_names))})
    config = EpisodesConfig(way_min=2, way_max=5, shot_min=1, shot_max=4, query=4)
    return (torch.tensor(vectors, dtype=torch.float32), sample_episodes(pool, config, TRAIN_EPISODES, seed),
            sample_episodes(pool, config, VAL_EPISODES, seed + 1))


def run_job(workdir: Path, algorithm: str = "protonet", delay: float = 0.0, fail_after: int | None = None):
    """One meta-training run with checkpoints in workdir/ckpt; writes head.safetensors and result.json at the end.

    `delay` (seconds per embedding call) stretches the run so a kill lands mid-way; it changes no number.
    `fail_after` raises after that many training embedding calls: an in-process stand-in for a crash.
    """
    vectors, train_eps, val_eps = synthetic_problem()
    calls = {"n": 0}

    def embed(rows):
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise KeyboardInterrupt("simulated crash")
        if delay:
            time.sleep(delay)
        return vectors[list(rows)]

    learner = Learner(ProjectionHead(DIM, 10.0))
    config = MetaConfig(algorithm=algorithm, epochs=3, lr=0.01, inner_steps=2, checkpoint_every=EVERY)
    store = CheckpointStore(workdir / "ckpt", every=config.checkpoint_every)
    result = meta_train(learner, train_eps, val_eps, embed, config, SEED, embedding_noise=NOISE, checkpoints=store)
    atomic_save_tensors(learner.head.state_dict(), workdir / "head.safetensors")
    atomic_write_text(workdir / "result.json", json.dumps(
        {"val_accuracy": result.val_accuracy, "train_loss": result.train_loss, "best_epoch": result.best_epoch,
         "resumed_from": result.resumed_from}))
    store.clear(whole_domain=False)
    return result


def _outputs(workdir: Path):
    return load_file(str(workdir / "head.safetensors")), json.loads((workdir / "result.json").read_text())


def _assert_same_run(a: Path, b: Path) -> None:
    (head_a, result_a), (head_b, result_b) = _outputs(a), _outputs(b)
    assert set(head_a) == set(head_b)
    for name in head_a:   # bit-identical, not merely close
        assert torch.equal(head_a[name], head_b[name]), name
    assert result_a["val_accuracy"] == result_b["val_accuracy"]
    assert result_a["train_loss"] == result_b["train_loss"] and result_a["best_epoch"] == result_b["best_epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (checkpointing on, as in production)."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_job(workdir)
    assert result.resumed_from == 0 and result.best_epoch > 0   # training did something worth resuming
    assert not (workdir / "ckpt").exists()                      # removed after success
    return workdir


def test_sigkill_at_a_random_point_resumes_to_the_identical_result(reference, tmp_path):
    workdir = tmp_path / "killed"
    workdir.mkdir()
    command = [sys.executable, __file__, str(workdir), "--delay", "0.003"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list((workdir / "ckpt").glob("step-*.json")):         # at least one committed checkpoint
        assert job.poll() is None, job.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    time.sleep(random.Random(int(os.environ.get("KILL_SEED", "13"))).uniform(0.0, 1.0))
    assert job.poll() is None, "the job finished before the kill: raise --delay"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL and not (workdir / "result.json").exists()
    killed_at = max(int(p.stem.split("-")[1]) for p in (workdir / "ckpt").glob("step-*.json"))

    rerun = subprocess.run(command[:3], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _outputs(workdir)[1]["resumed_from"] >= killed_at >= EVERY
    _assert_same_run(reference, workdir)
    assert not (workdir / "ckpt").exists()


@pytest.mark.parametrize("algorithm", ["protonet", "fomaml", "reptile"])
def test_a_crash_mid_epoch_resumes_exactly_for_every_algorithm(tmp_path, algorithm):
    expected, resumed = tmp_path / "expected", tmp_path / "resumed"
    expected.mkdir(), resumed.mkdir()
    run_job(expected, algorithm)
    with pytest.raises(KeyboardInterrupt):
        run_job(resumed, algorithm, fail_after=CALLS_BEFORE_EPOCH_3 + 2 * 10)   # 10 episodes into the third epoch
    last = 2 * TRAIN_EPISODES       # the end of the second epoch's episodes, before its validation
    assert sorted(p.name for p in (resumed / "ckpt").glob("*.json")) == [f"step-{last - EVERY:09d}.json",
                                                                          f"step-{last:09d}.json"]
    result = run_job(resumed, algorithm)
    assert result.resumed_from == last
    _assert_same_run(expected, resumed)


def test_half_written_and_corrupt_checkpoints_are_ignored(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_job(tmp_path, fail_after=VAL_CALLS + 2 * 65)          # checkpoints at 20, 40, 60 episodes (2 kept)
    ckpt = tmp_path / "ckpt"
    store = CheckpointStore(ckpt, EVERY)
    assert store.latest()[0]["episodes_done"] == 60
    # A kill between the tensor file and its commit marker, and one mid-way through writing a temp file:
    (ckpt / "step-000000080.safetensors").write_bytes(b"\x00" * 100)
    (ckpt / ".step-000000100.safetensors.x1.tmp").write_bytes(b"partial")
    (ckpt / ".step-000000100.json.x2.tmp").write_text('{"format": 1, "episodes_')
    assert store.latest()[0]["episodes_done"] == 60
    # A committed checkpoint whose tensor file was damaged afterwards: fall back to the previous one.
    damaged = ckpt / "step-000000060.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert store.latest()[0]["episodes_done"] == 40
    result = run_job(tmp_path)
    assert result.resumed_from == 40
    assert not ckpt.exists()


def test_checkpointing_off_and_run_keys(tmp_path):
    store = CheckpointStore(tmp_path / "c", every=0)
    assert not any(store.due(n) for n in range(1, 100)) and store.latest() is None
    data = tmp_path / "episodes.json"
    data.write_text("[1]")
    key = run_key({"seed": 1, "meta": {"lr": 0.1}}, [data])
    assert key == run_key({"meta": {"lr": 0.1}, "seed": 1}, [data])
    assert key != run_key({"seed": 2, "meta": {"lr": 0.1}}, [data])
    data.write_text("[2]")
    assert key != run_key({"seed": 1, "meta": {"lr": 0.1}}, [data])


if __name__ == "__main__":
    torch.set_num_threads(1)
    workdir_arg = Path(sys.argv[1])
    delay_arg = float(sys.argv[sys.argv.index("--delay") + 1]) if "--delay" in sys.argv else 0.0
    run_job(workdir_arg, delay=delay_arg)
