"""Faults a long ImageNet run meets, on the backend under test (TensorFlow:
tf.train.Checkpoint files; JAX: Orbax): damaged and incomplete checkpoints,
a damaged or missing config.json, a rerun on other data or settings, a full
disk during a save, a model_dir spelled another way. A run never silently
starts again from zero, drifts to other settings, or loses an intact
checkpoint; every user error is one line."""

import json
import os
import resource
import shutil
import signal
import subprocess

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason="the recipe runs on TensorFlow or JAX",
)
tf = pytest.importorskip("tensorflow")

import commands  # noqa: E402
from imagenet_runs import ALEXNET  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import SMALL_FLAGS  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import checkpoint_arrays  # noqa: E402
from imagenet_runs import checkpoint_steps  # noqa: E402
from imagenet_runs import jax_environment  # noqa: E402
from imagenet_runs import make_tfrecords  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import train_command  # noqa: E402
from imagenet_runs import write_records  # noqa: E402
from recipes.imagenet import checkpoints  # noqa: E402

JAX = keras.backend.backend() == "jax"
SETTINGS = dict(ALEXNET, **SMALL, train_steps=6, deterministic=True)


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished 6-step run, a checkpoint every 2 steps: 2, 4 and 6 kept."""
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    run(**SETTINGS, data_dir=str(data_dir), model_dir=str(model_dir))
    assert checkpoint_steps(model_dir) == [2, 4, 6]
    return model_dir


@pytest.fixture
def copy(finished, tmp_path):
    """The finished run's model_dir, hard-linked: what a test damages it
    replaces, so the original stays whole."""
    target = tmp_path / "run"
    shutil.copytree(finished, target, copy_function=os.link)
    return target


def files_of(model_dir, step):
    """The files of checkpoint `step`, largest first."""
    directory = model_dir / "checkpoints"
    if JAX:
        paths = [p for p in (directory / str(step)).rglob("*") if p.is_file()]
    else:
        paths = list(directory.glob(f"ckpt-{step}.*"))
    return sorted(paths, key=lambda p: p.stat().st_size, reverse=True)


def replace(path, content):
    """Writes `content` to a new file at `path` (not through a hard link)."""
    path.unlink()
    path.write_bytes(content)


def truncate(path):
    replace(path, path.read_bytes()[: path.stat().st_size // 2])


def resume(model_dir, data_dir, capsys, **overrides):
    summary = run(**{**SETTINGS, **overrides}, data_dir=str(data_dir), model_dir=str(model_dir))
    return summary, capsys.readouterr().out


# --- Damaged checkpoints ------------------------------------------------------


def test_a_truncated_latest_checkpoint_is_skipped_for_the_newest_intact_one(
    copy, data_dir, finished, capsys
):
    truncate(files_of(copy, 6)[0])
    summary, out = resume(copy, data_dir, capsys)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6
    skipped = [line for line in out.splitlines() if line.startswith("Skipping checkpoint 6")]
    assert len(skipped) == 1 and str(copy / "checkpoints") in skipped[0], out
    # Trained again from 4, deterministically: checkpoint 6 as the first run had it.
    assert_arrays_close(checkpoint_arrays(copy)[0], checkpoint_arrays(finished)[0], 1e-6, 1e-7)


def test_a_checkpoint_missing_a_file_is_skipped(copy, data_dir, capsys):
    if JAX:
        files_of(copy, 6)[0].unlink()  # its largest data file
    else:
        (copy / "checkpoints" / "ckpt-6.index").unlink()
    summary, out = resume(copy, data_dir, capsys)
    assert summary["resumed_from_step"] == 4, out
    assert "Skipping checkpoint 6" in out


@pytest.mark.skipif(JAX, reason="TensorFlow's checkpoint index file")
def test_junk_in_tensorflows_checkpoint_index_file_changes_nothing(copy, data_dir, capsys):
    """The checkpoints are found from their own files, not from that index."""
    (copy / "checkpoints" / "checkpoint").write_text("junk")
    summary, _ = resume(copy, data_dir, capsys)
    assert summary["resumed_from_step"] == 6 and summary["steps"] == 6


def test_checkpoints_none_of_which_is_intact_stop_the_run_and_stay(copy, data_dir):
    for step in (2, 4, 6):
        truncate(files_of(copy, step)[0])
    before = {p: p.read_bytes() for p in (copy / "checkpoints").rglob("*") if p.is_file()}
    with pytest.raises(checkpoints.NoIntactCheckpoint, match=str(copy / "checkpoints")):
        run(**SETTINGS, data_dir=str(data_dir), model_dir=str(copy))
    after = {p: p.read_bytes() for p in (copy / "checkpoints").rglob("*") if p.is_file()}
    assert after == before  # nothing deleted, nothing overwritten


def test_what_an_interrupted_save_left_is_removed(copy, data_dir, capsys):
    if JAX:
        leftover = copy / "checkpoints" / "8.orbax-checkpoint-tmp-1234567"
    else:
        leftover = copy / "checkpoints" / "ckpt-8_temp"
    leftover.mkdir()
    (leftover / "part").write_bytes(b"half a checkpoint")
    summary, _ = resume(copy, data_dir, capsys)
    assert summary["resumed_from_step"] == 6
    assert not leftover.exists()


def test_a_model_dir_spelled_another_way_or_moved_resumes(copy, data_dir, tmp_path, capsys):
    moved = tmp_path / "elsewhere"
    copy.rename(moved)
    for spelling in (str(moved) + "/", os.path.relpath(moved)):
        summary, _ = resume(spelling, data_dir, capsys)
        assert summary["resumed_from_step"] == 6


# --- config.json ------------------------------------------------------------


@pytest.mark.parametrize("content", ["{}", '{"config": {"model": "alex', "not json"])
def test_an_unreadable_config_json_stops_the_run_naming_it(copy, data_dir, content):
    record = copy / "config.json"
    replace(record, content.encode())
    with pytest.raises(ValueError, match=str(record)):
        run(**SETTINGS, data_dir=str(data_dir), model_dir=str(copy))
    assert record.read_text() == content  # not rewritten


def test_checkpoints_without_their_config_json_are_not_resumed(copy, data_dir):
    (copy / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json is missing.*holds checkpoints"):
        run(**SETTINGS, data_dir=str(data_dir), model_dir=str(copy))
    assert not (copy / "config.json").exists()


def test_a_rerun_with_other_settings_is_refused_and_rewrites_nothing(copy, data_dir):
    record = (copy / "config.json").read_bytes()
    with pytest.raises(ValueError, match="--learning_rate: 2.0 -> 3.0"):
        run(**{**SETTINGS, "learning_rate": 3.0}, data_dir=str(data_dir), model_dir=str(copy))
    assert (copy / "config.json").read_bytes() == record


def test_a_rerun_on_other_data_is_refused_naming_what_differs(copy, tmp_path):
    """The plan (image counts, steps) is fixed at the first start: a data set
    of other size would silently re-plan the run."""
    other = make_tfrecords(tmp_path / "other", classes=4, train_per_class=12)
    with pytest.raises(ValueError, match=r"other data \(.*train_images: 64 -> 48"):
        run(**SETTINGS, data_dir=str(other), model_dir=str(copy))


def test_a_rerun_under_the_other_backend_is_refused(copy, data_dir):
    record = copy / "config.json"
    saved = json.loads(record.read_text())
    saved["backend"] = "tensorflow" if JAX else "jax"
    replace(record, json.dumps(saved).encode())
    with pytest.raises(ValueError, match=f"holds a run of the {saved['backend']} backend"):
        run(**SETTINGS, data_dir=str(data_dir), model_dir=str(copy))


# --- A full disk, a wrong label: one line, nothing lost ---------------------------


def environment():
    return jax_environment() if JAX else commands.environment(KERAS_BACKEND="tensorflow")


def limit_file_size():
    """In the child: files may not grow past 1 MB (writes beyond fail with
    EFBIG), as on a disk with 1 MB left."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(data_dir, tmp_path):
    flags = [
        *(f"--{name}={value}" for name, value in ALEXNET.items()),
        *SMALL_FLAGS,
        "--train_steps=6",
        "--deterministic",
    ]
    command = train_command(tmp_path / "run", data_dir, *flags)
    killed = environment() | {commands.KILL_AFTER: "2"}
    code, output = commands.run(command, tmp_path / "first.log", killed)
    assert code == -signal.SIGKILL and checkpoint_steps(tmp_path / "run") == [2], output[-3000:]
    saved = checkpoint_arrays(tmp_path / "run")[0]

    with open(tmp_path / "full.log", "w") as log:
        full = subprocess.run(
            command,
            cwd=commands.ROOT,
            env=environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_file_size,
            timeout=600,
        )
    output = (tmp_path / "full.log").read_text()
    errors = [line for line in output.splitlines() if line.startswith("imagenet_train: error:")]
    assert full.returncode == 1 and len(errors) == 1, output[-3000:]
    # TensorFlow writes as it saves; Orbax in the background, so its error
    # comes with the next save or the wait at the end.
    assert "Could not save checkpoint" in errors[0] or "Could not write checkpoint" in errors[0]
    if not JAX:  # Orbax's TensorStore also reports its cancelled writes, in tracebacks
        assert "Traceback" not in output, output[-3000:]
    assert checkpoint_steps(tmp_path / "run") == [2]
    assert_arrays_close(checkpoint_arrays(tmp_path / "run")[0], saved, 0, 0)

    code, output = commands.run(command, tmp_path / "again.log", environment())
    assert code == 0 and "Resumed from step 2" in output, output[-3000:]
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if "tmp" in p.name]
    assert not leftovers and checkpoint_steps(tmp_path / "run") == [2, 4, 6]


def test_a_label_outside_the_classes_leads_with_the_explanation(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        write_records(tmp_path / f"{split}-00000-of-00001", [1, 2, 9, 3] * 2, rng)
    (tmp_path / "labels.txt").write_text("".join(f"{i}\tn{i}\n" for i in range(1, 5)))
    flags = [*(f"--{n}={v}" for n, v in ALEXNET.items()), *SMALL_FLAGS, "--train_steps=2"]
    command = train_command(tmp_path / "run", tmp_path, *flags)
    code, output = commands.run(command, tmp_path / "label.log", environment())
    errors = [line for line in output.splitlines() if line.startswith("imagenet_train: error:")]
    assert code == 1 and len(errors) == 1, output[-3000:]
    assert "Label outside [0, 4): is the label offset right?" in errors[0], errors
