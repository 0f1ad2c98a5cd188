"""ResNet-50's model_dir/mlperf.log, read by MLPerf's own compliance checker
(`python -m mlperf_logging.compliance_checker --usage training --ruleset
3.1.0`, the last ruleset with ResNet-50), on a short run of the `mlperf_8k`
preset scaled down to the generated ImageNet: every rule passes but the
closed division's accuracy target (75.9% top-1, which a 2-step run cannot
reach); with that one threshold lowered to the run's 1% target, the whole
log passes."""

import json
import os
import shutil
import subprocess
import sys

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the log is the controller's, the same on both backends: checked once",
)
pytest.importorskip("tensorflow")
mlperf_logging = pytest.importorskip("mlperf_logging")

from imagenet_runs import run  # noqa: E402

RULESET = "3.1.0"
TARGET_RULE = "v['value'] >= 0.7590"  # closed_resnet.yaml: eval_accuracy, at least once


@pytest.fixture(scope="module")
def reached(data_dir, tmp_path_factory):
    """mlperf_8k on 32x32 images at batch 8 (8 steps an epoch): the first
    evaluation, a quarter of an epoch in, reaches a 1% target."""
    model_dir = tmp_path_factory.mktemp("mlperf") / "run"
    summary = run(
        preset="mlperf_8k",
        image_size=32,
        global_batch_size=8,
        bn_span=0,
        train_steps=8,
        steps_per_loop=2,
        eval_offset_epochs=0.25,
        eval_every_epochs=0.5,
        target_accuracy=0.01,
        deterministic=True,
        data_dir=str(data_dir),
        model_dir=str(model_dir),
    )
    assert summary["target_reached"]["step"] == 2
    return model_dir


def events(model_dir):
    """[(key, value, metadata)] of the log's lines, in order."""
    with open(os.path.join(model_dir, "mlperf.log")) as f:
        records = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in f if ":::MLLOG" in line]
    return [(r["key"], r["value"], r["metadata"]) for r in records]


def check(log, package_root=None):
    """(exit status, output) of MLPerf's compliance checker on `log`, from
    the installed package or a copy of it under `package_root`."""
    # Under Bazel the installed packages are on PYTHONPATH: a copy goes before them.
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training"]
        + ["--ruleset", RULESET, "--log_output", os.devnull, str(log)],
        cwd=os.path.dirname(log),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def test_every_rule_but_the_closed_accuracy_target_passes(reached):
    code, output = check(reached / "mlperf.log")
    failed = [line for line in output.splitlines() if "Failed check" in line]
    assert code == 1 and len(failed) == 1, output
    assert "eval_accuracy" in failed[0] and "0.7590" in failed[0], output


def test_a_run_reaching_its_target_passes_whole_with_that_threshold(reached, tmp_path):
    copy = tmp_path / "mlperf_logging"
    shutil.copytree(os.path.dirname(mlperf_logging.__file__), copy)
    rules = copy / "compliance_checker" / f"training_{RULESET}" / "closed_resnet.yaml"
    text = rules.read_text()
    assert TARGET_RULE in text
    rules.write_text(text.replace(TARGET_RULE, "v['value'] >= 0.01"))
    code, output = check(reached / "mlperf.log", package_root=str(tmp_path))
    assert code == 0 and "SUCCESS" in output, output


def test_the_log_holds_the_presets_settings_and_the_run_as_it_went(reached):
    logged = events(reached)
    values = {key: value for key, value, _ in logged}
    # mlperf_8k (Google's TPU v4 runs), as this run scaled it: batch 8, one
    # replica's 8 images a batch-norm statistic, the warm-up cut to the run.
    assert values["submission_benchmark"] == "resnet"
    assert values["submission_division"] == "closed"
    assert values["submission_platform"].startswith("DefaultDistributionStrategy")
    assert values["opt_name"] == "lars" and values["lars_epsilon"] == 0.0
    assert values["lars_opt_base_learning_rate"] == 17.0
    assert values["lars_opt_end_learning_rate"] == 1e-4
    assert values["lars_opt_weight_decay"] == 2e-4
    assert values["lars_opt_momentum"] == 0.9
    assert values["lars_opt_learning_rate_warmup_epochs"] == 1.0  # 5, cut to the 8 steps
    assert values["lars_opt_learning_rate_decay_poly_power"] == 2
    assert values["lars_opt_learning_rate_decay_steps"] == 8 - 8 + 1  # train - warm-up + 1
    assert values["global_batch_size"] == 8 and values["gradient_accumulation_steps"] == 1
    assert values["model_bn_span"] == 8
    assert (values["train_samples"], values["eval_samples"], values["seed"]) == (64, 20, 0)
    order = [key for key, _, _ in logged]
    assert order.index("init_start") < order.index("init_stop") < order.index("run_start")
    assert order[order.index("run_start") :] == [
        "run_start",
        "block_start",
        "block_stop",
        "eval_start",
        "eval_accuracy",
        "eval_stop",
        "run_stop",
    ], order
    metadata = {key: meta for key, _, meta in logged}
    block = metadata["block_start"]
    assert (block["first_epoch_num"], block["epoch_count"]) == (0.0, 0.25)
    assert metadata["eval_accuracy"]["epoch_num"] == 0.25
    assert metadata["run_stop"]["status"] == "success"


def test_a_resumed_run_appends_to_the_log(reached, data_dir, tmp_path):
    """Started again without the target, the run goes on from step 2: what it
    logs is appended after the first start's lines, with no second
    initialisation."""
    model_dir = tmp_path / "run"
    shutil.copytree(reached, model_dir)
    before = (model_dir / "mlperf.log").read_text()
    run(
        preset="mlperf_8k",
        image_size=32,
        global_batch_size=8,
        bn_span=0,
        train_steps=8,
        steps_per_loop=2,
        eval_offset_epochs=0.25,
        eval_every_epochs=0.5,
        deterministic=True,
        data_dir=str(data_dir),
        model_dir=str(model_dir),
    )
    after = (model_dir / "mlperf.log").read_text()
    assert after.startswith(before) and len(after) > len(before)
    appended = [key for key, _, _ in events(model_dir)][len(events(reached)) :]
    assert appended[0] == "block_start" and "init_start" not in appended
    assert "run_start" not in appended and appended[-1] == "run_stop"
