"""The wheel: built from the repository, installed into a fresh virtual
environment, it carries the package, the recipes and the tools, and their
console scripts answer."""

import glob
import os
import shutil
import subprocess
import sys

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="built and checked once, on the first leg"
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.py", "README.md", "LICENSE", "keras_lars", "recipes", "tools")
# What each script's --help must show: its module's docstring, then its flags.
SCRIPTS = {
    "keras-lars-train": ("Trains ResNet-50 or AlexNet", "mlperf_8k: resnet50, batch 8192"),
    "keras-lars-study": ("The large-batch study", "  --lars_gaps:"),
    "keras-lars-imagenet-to-tfrecords": ("Converts ILSVRC-2012", "  --raw_data_dir:"),
    "keras-lars-make-fake-imagenet": ("Makes a small ImageNet-format", "  --output_dir:"),
}
CHECK = """
import pathlib, sys, keras, keras_lars, recipes.imagenet_train, tools.imagenet_to_tfrecords
prefix = pathlib.Path(sys.prefix)
for module in (keras_lars, recipes.imagenet_train, tools.imagenet_to_tfrecords):
    assert prefix in pathlib.Path(module.__file__).parents, module.__file__
assert isinstance(keras.optimizers.get("keras_lars>LARS"), keras_lars.LARS)
print("OK", keras_lars.__version__)
"""


# Where this interpreter finds the dependencies: its site-packages, or under
# Bazel (a base interpreter) the virtual environment's, from PYTHONPATH.
DEPENDENCY_DIRS = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment with the wheel installed; its dependencies
    come from this environment (a .pth line), not from the network."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: the build writes build/ and *.egg-info beside setup.py
    source.mkdir()
    for name in SOURCES:
        if os.path.isdir(os.path.join(ROOT, name)):
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(os.path.join(ROOT, name), source / name, ignore=ignore)
        else:
            shutil.copy(os.path.join(ROOT, name), source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist")],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = glob.glob(str(tmp / "dist" / "*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    venv_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(os.path.join(venv_site, "dependencies.pth"), "w") as f:
        f.write("\n".join(DEPENDENCY_DIRS) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
    )
    return tmp / "venv", tmp


def test_the_wheel_holds_the_package_recipes_and_tools(venv):
    path, tmp = venv
    result = subprocess.run(
        [path / "bin" / "python", "-c", CHECK],
        cwd=tmp,  # not the checkout: what is imported comes from the wheel
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_answer_help(venv, script):
    path, tmp = venv
    result = subprocess.run(
        [path / "bin" / script, "--helpshort"],
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    # absl exits 1 after printing help; an import error would exit 1 too, with a traceback.
    assert result.returncode == 1 and not result.stderr, result.stderr[-3000:]
    for expected in SCRIPTS[script]:
        assert expected in result.stdout, result.stdout[-3000:]
