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
import socket
import subprocess
import sys
import time

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
from imagenet_runs import DIVERGES  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import SMALL_FLAGS  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import checkpoint_arrays  # noqa: E402
from imagenet_runs import checkpoint_steps  # noqa: E402
from imagenet_runs import jax_environment  # noqa: E402
from imagenet_runs import make_tfrecords  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import scalars  # noqa: E402
from imagenet_runs import train_command  # noqa: E402
from imagenet_runs import write_records  # noqa: E402
from recipes import faults  # noqa: E402
from recipes.imagenet import bad_data  # noqa: E402
from recipes.imagenet import checkpoints  # noqa: E402
from recipes.imagenet import preemption  # noqa: E402
from recipes.imagenet import run_lock  # noqa: E402
from recipes.imagenet.controller import TrainingDiverged  # noqa: E402

JAX = keras.backend.backend() == "jax"
# Some tests run the recipe on data of their own, without `data_dir`
# (conftest.py: their input pipelines are destroyed while young).
COLLECT_AFTER_EACH_TEST = True
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
    _, out = resume(copy, data_dir, capsys)
    assert "This run is over (step 6)" in out  # restored from checkpoint 6


def test_a_junk_step_neither_hides_nor_evicts_intact_checkpoints(data_dir, tmp_path, capsys):
    """A 12-step run stopped by its target at step 6 (checkpoints 2, 4, 6),
    then a junk step 14 beside them (JAX: an empty folder; TensorFlow: an
    .index file of junk). Run on without the target: 14 is skipped in one
    line, 6 resumed, and 8, 10 and 12 saved and kept, 14 left as it was
    (counted, it would have evicted 8; on JAX, Orbax would have refused
    every save before step 14)."""
    settings = {**SETTINGS, "train_steps": 12, "eval_offset_epochs": 0.75}  # evaluates at 6
    run(**settings, target_accuracy=0.01, data_dir=str(data_dir), model_dir=str(tmp_path))
    assert checkpoint_steps(tmp_path) == [2, 4, 6]
    if JAX:
        junk = tmp_path / "checkpoints" / "14"
        junk.mkdir()
    else:
        junk = tmp_path / "checkpoints" / "ckpt-14.index"
        junk.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    summary = run(**settings, data_dir=str(data_dir), model_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert summary["resumed_from_step"] == 6 and summary["steps"] == 12
    skipped = [line for line in out.splitlines() if "Skipping checkpoint" in line]
    assert len(skipped) == 1 and skipped[0].startswith("Skipping checkpoint 14 in"), out
    assert checkpoint_steps(tmp_path) == [8, 10, 12, 14]
    assert junk.exists() and (JAX or junk.read_bytes() == b"not a checkpoint")


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
    _, out = resume(copy, data_dir, capsys)
    assert "This run is over (step 6)" in out
    assert not leftover.exists()


def test_a_model_dir_spelled_another_way_or_moved_resumes(copy, data_dir, tmp_path, capsys):
    moved = tmp_path / "elsewhere"
    copy.rename(moved)
    for spelling in (str(moved) + "/", os.path.relpath(moved)):
        _, out = resume(spelling, data_dir, capsys)
        assert "This run is over (step 6)" in out


# --- config.json ------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "{}",
        '{"config": {"model": "alex',
        "not json",
        '{"config": [], "plan": {}}',
        '{"config": {}, "plan": {}}',  # no backend
    ],
)
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


def test_a_rerun_on_other_images_of_the_same_counts_is_refused(copy, tmp_path):
    """A data set made again (other images, the same counts) is other data."""
    other = make_tfrecords(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match=r"other data \(data_fingerprint: "):
        run(**SETTINGS, data_dir=str(other), model_dir=str(copy))


def test_the_same_data_moved_elsewhere_resumes(copy, data_dir, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(data_dir, moved)
    _, out = resume(copy, moved, capsys)
    assert "This run is over (step 6)" in out


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
    assert "Traceback" not in output and "function_node" not in output, output[-3000:]


def example(image, label=1, image_key="image/encoded", float_label=False):
    """A serialised record of the converter's schema, or of a wrong one."""
    feature = {image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    feature["image/class/label"] = (
        tf.train.Feature(float_list=tf.train.FloatList(value=[float(label)]))
        if float_label
        else tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    )
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def jpeg(side):
    return tf.io.encode_jpeg(np.full((side, side, 3), 128, np.uint8)).numpy()


@pytest.mark.parametrize(
    "record,cause",
    [
        (example(jpeg(1)), "a 1x1 image, below the 2x2 the crops need"),
        (example(jpeg(8), image_key="image/jpeg"), "image/encoded (data type: string) is required"),
        (example(jpeg(8), float_label=True), "Data types don't match"),
    ],
    ids=["1x1 image", "feature missing", "float label"],
)
def test_training_data_the_converter_did_not_write_is_named_with_its_cause(tmp_path, record, cause):
    """One shard of four holds records training cannot use: the run stops
    with a `BadDataError` naming that file, the record and the cause (the
    command line prints such an error as its one line: the label test above)."""
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for shard in range(3):
            write_records(tmp_path / f"{split}-0000{shard}-of-00004", [1, 2, 3, 4] * 2, rng)
    bad = tmp_path / "train-00003-of-00004"
    with tf.io.TFRecordWriter(str(bad)) as writer:
        for _ in range(8):
            writer.write(record)
    write_records(tmp_path / "validation-00003-of-00004", [1, 2, 3, 4] * 2, rng)
    (tmp_path / "labels.txt").write_text("".join(f"{i}\tn{i}\n" for i in range(1, 5)))
    with pytest.raises(bad_data.BadDataError) as raised:
        run(
            **ALEXNET,
            **SMALL,
            train_steps=8,
            # Crops that need a pixel to take (Caffe's squash to 256x256 would not).
            preprocessing="model_garden",
            data_dir=str(tmp_path),
            model_dir=str(tmp_path / "run"),
        )
    message = str(raised.value)
    assert str(bad) in message and cause in message, message
    assert "\n" not in message and "function_node" not in message, message


# --- One writer per run -------------------------------------------------------


def lock_naming(model_dir, host, pid, age_seconds=0):
    holder = dict(host=host, pid=pid, started="2026-12-05T10:00:00+00:00")
    holder["refreshed"] = time.time() - age_seconds
    (model_dir / run_lock.FILE).write_text(json.dumps(holder))


@pytest.mark.parametrize(
    "host,pid,age",
    [(socket.gethostname(), 1, 0), ("another-host", 4242, 60)],  # pid 1 lives on every host
)
def test_a_model_dir_in_use_by_a_live_trainer_is_refused_naming_it(copy, data_dir, host, pid, age):
    lock_naming(copy, host, pid, age)
    held = (copy / run_lock.FILE).read_bytes()
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(run_lock.RunLocked, match=f"is in use by process {pid} on {host}"):
        run(**SETTINGS, data_dir=str(data_dir), model_dir=str(copy))
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    assert (copy / run_lock.FILE).read_bytes() == held


def test_a_lock_whose_holder_is_gone_is_taken_over_with_one_line(copy, data_dir, capsys):
    ended = subprocess.Popen(["true"])
    ended.wait()  # a process of this host that no longer exists
    for host, pid, age, reason in [
        (socket.gethostname(), ended.pid, 0, f"process {ended.pid} of this host, has ended"),
        ("another-host", 4242, 2 * run_lock.STALE_SECONDS, "has not refreshed it for 30 minutes"),
    ]:
        lock_naming(copy, host, pid, age)
        summary, out = resume(copy, data_dir, capsys)
        taken = [line for line in out.splitlines() if line.startswith("Taking over")]
        assert len(taken) == 1 and reason in taken[0], out
        assert summary["steps"] == 6 and not (copy / run_lock.FILE).exists()  # released


# --- Preemption -----------------------------------------------------------------


FLAGS = [
    *(f"--{name}={value}" for name, value in ALEXNET.items()),
    *SMALL_FLAGS,
    "--train_steps=6",
    "--steps_per_loop=6",  # one loop: the signal arrives while it runs
    "--deterministic",
]


def test_sigterm_saves_after_the_step_under_way_and_the_rerun_ends_as_if_uninterrupted(
    finished, data_dir, tmp_path
):
    """The process sends itself SIGTERM as its only loop starts
    (recipes/faults.py): it stops after a step of it, checks and saves that
    state, and exits with the preemption status; run again, it resumes there
    and ends with the weights of the uninterrupted run."""
    command = train_command(tmp_path / "run", data_dir, *FLAGS)
    signalled = {**environment(), faults.SIGNAL_AT: "0:SIGTERM"}
    code, output = commands.run(command, tmp_path / "preempted.log", env=signalled)
    assert code == preemption.PREEMPTED_STATUS, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (step,) = checkpoint_steps(tmp_path / "run")
    assert 1 <= step <= 6
    assert f"imagenet_train: Stopped at step {step} on request (SIGTERM)" in output, output
    # The stopped loop's scalars, written before the command's prompt exit.
    assert [logged for logged, _ in scalars(tmp_path / "run")["loss"]] == [step]
    code, output = commands.run(command, tmp_path / "resumed.log", env=environment())
    assert code == 0 and f"Resumed from step {step}" in output, output[-3000:]
    assert_arrays_close(
        checkpoint_arrays(tmp_path / "run")[0], checkpoint_arrays(finished)[0], 1e-6, 1e-7
    )


def test_a_second_signal_stops_at_once(data_dir, tmp_path):
    command = train_command(tmp_path / "run", data_dir, *FLAGS)
    twice = {**environment(), faults.SIGNAL_AT: "0:SIGINT,SIGINT"}
    code, output = commands.run(command, tmp_path / "twice.log", env=twice)
    assert code == 128 + signal.SIGINT, output[-3000:]
    assert "SIGINT again: stopped at once, unsaved" in output
    assert "Traceback" not in output and checkpoint_steps(tmp_path / "run") == []


# --- Runs over, runs never started, files of the wrong shape --------------------


def test_a_finished_run_started_again_says_so_and_changes_nothing(copy, data_dir, capsys):
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    summary, out = resume(copy, data_dir, capsys)
    assert "This run is over (step 6)" in out
    assert summary == json.loads((copy / "summary.json").read_text())
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_run_that_saved_no_checkpoint_may_start_again_with_other_settings(
    data_dir, tmp_path, capsys
):
    """A run stopped before its first checkpoint (here: a 60-minute interval
    and a rate so high the second step diverges) locks no settings."""
    settings = {**SETTINGS, **DIVERGES, "checkpoint_every_minutes": 60}
    with pytest.raises(TrainingDiverged):
        run(**settings, data_dir=str(data_dir), model_dir=str(tmp_path))
    assert (tmp_path / "config.json").exists() and checkpoint_steps(tmp_path) == []
    summary, out = resume(tmp_path, data_dir, capsys)
    assert "saved no checkpoint: replacing it" in out and summary["steps"] == 6
    assert json.loads((tmp_path / "config.json").read_text())["config"]["learning_rate"] == 2.0


def test_the_recipe_with_no_flags_is_one_line(tmp_path):
    code, output = commands.run(
        commands.module("recipes.imagenet_train"), tmp_path / "bare.log", env=environment()
    )
    assert code == 1 and "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("imagenet_train: error:")]
    assert len(errors) == 1 and "--data_dir" in errors[0], output


def test_tfds_without_tensorflow_datasets_is_one_line(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    settings = {**SETTINGS, "tfds_data_dir": str(tmp_path / "tfds")}
    with pytest.raises(ValueError, match=r"tensorflow-datasets, which is not installed: pip"):
        run(**settings, model_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_an_empty_validation_split_is_refused(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data, ignore=shutil.ignore_patterns(".conversion"))
    for shard in data.glob("validation-*"):
        shard.write_bytes(b"")  # records written by other means: no statistics
    with pytest.raises(ValueError, match="the validation split holds no images"):
        run(**SETTINGS, data_dir=str(data), model_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
