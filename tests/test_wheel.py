"""The wheel: built from the repository, installed into a fresh virtual
environment, it carries the package, the recipes and the tools under names of
its own, and their console scripts answer (or say what is missing)."""

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
SOURCES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "keras_lars", "recipes", "tools")
# recipes/ and tools/ ship under the distribution's own names, never as the
# generic `recipes` and `tools` that other distributions could also claim.
TOP_LEVEL = {"keras_lars", "keras_lars_recipes", "keras_lars_tools"}
# What each script's --help must show: its module's docstring, then its flags.
SCRIPTS = {
    "keras-lars-train": ("Trains ResNet-50 or AlexNet", "mlperf_8k: resnet50, batch 8192"),
    "keras-lars-study": ("The large-batch study", "  --lars_gaps:"),
    "keras-lars-imagenet-to-tfrecords": ("Converts ILSVRC-2012", "  --raw_data_dir:"),
    "keras-lars-make-fake-imagenet": ("Makes a small ImageNet-format", "  --output_dir:"),
}
CHECK = """
import importlib.metadata, importlib.util, pathlib, sys
import keras, keras_lars, keras_lars_recipes.imagenet.job, keras_lars_tools.imagenet_to_tfrecords
prefix = pathlib.Path(sys.prefix)
for module in (keras_lars, keras_lars_recipes.imagenet.job, keras_lars_tools.imagenet_to_tfrecords):
    assert prefix in pathlib.Path(module.__file__).parents, module.__file__
assert importlib.util.find_spec("recipes") is None and importlib.util.find_spec("tools") is None
assert isinstance(keras.optimizers.get("keras_lars>LARS"), keras_lars.LARS)
files = importlib.metadata.files("keras_lars")
print("TOP", sorted({f.parts[0] for f in files if f.suffix == ".py" and len(f.parts) > 1}))
print("OK", keras_lars.__version__)
"""


# Where this interpreter finds the dependencies: its site-packages, or under
# Bazel (a base interpreter) the virtual environment's, from PYTHONPATH.
DEPENDENCY_DIRS = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]


def copy_sources(source):
    """The sources the distribution is built from, copied to `source` (the
    build writes build/ and *.egg-info beside setup.py)."""
    source.mkdir()
    for name in SOURCES:
        if os.path.isdir(os.path.join(ROOT, name)):
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(os.path.join(ROOT, name), source / name, ignore=ignore)
        else:
            shutil.copy(os.path.join(ROOT, name), source / name)
    return source


def fresh_venv(path, *install):
    """A fresh virtual environment at `path` whose dependencies come from
    this environment (a .pth line), not from the network; then `pip install
    --no-deps --no-index *install` in it. Its Python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    venv_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(os.path.join(venv_site, "dependencies.pth"), "w") as f:
        f.write("\n".join(DEPENDENCY_DIRS) + "\n")
    result = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *install],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = copy_sources(tmp / "source")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist")],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = glob.glob(str(tmp / "dist" / "*.whl"))
    fresh_venv(tmp / "venv", wheel)
    return tmp / "venv", tmp


def test_the_wheel_holds_the_package_recipes_and_tools_under_its_own_names(venv):
    path, tmp = venv
    result = subprocess.run(
        [path / "bin" / "python", "-c", CHECK],
        cwd=tmp,  # not the checkout: what is imported comes from the wheel
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    assert f"TOP {sorted(TOP_LEVEL)}" in result.stdout, result.stdout


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


def test_an_editable_install_keeps_the_console_scripts_working(tmp_path):
    """`pip install -e .` with the pip a fresh Python 3.11 environment comes
    with: pyproject.toml makes it a PEP 660 editable install, which honours
    setup.py's package_dir (a legacy egg-link would not, and the scripts
    could not import keras_lars_recipes)."""
    source = copy_sources(tmp_path / "source")
    fresh_venv(tmp_path / "venv", "--no-build-isolation", "-e", str(source))
    for script, expected in sorted(SCRIPTS.items()):
        result = subprocess.run(
            [tmp_path / "venv" / "bin" / script, "--helpshort"],
            cwd=tmp_path,  # not the checkout
            env={**os.environ, "PYTHONPATH": ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1 and not result.stderr, (script, result.stderr[-3000:])
        assert all(text in result.stdout for text in expected), result.stdout[-3000:]


# Hides one distribution from the interpreter, as if it were not installed.
HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == {name!r}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
"""


@pytest.mark.parametrize(
    "script,backend,hidden,message",
    [
        ("keras-lars-train", "tensorflow", "tensorboard", "tensorboard is not installed: pip"),
        ("keras-lars-study", "tensorflow", "matplotlib", "matplotlib is not installed: pip"),
        ("keras-lars-imagenet-to-tfrecords", "tensorflow", "PIL", "pillow is not installed"),
        ("keras-lars-train", "tensorflow", "tensorflow", "TensorFlow is not installed"),
        ("keras-lars-train", "jax", "orbax", "orbax-checkpoint not installed"),
    ],
)
def test_a_missing_dependency_is_one_line_before_anything_runs(
    venv, tmp_path, script, backend, hidden, message
):
    path, _ = venv
    (tmp_path / "sitecustomize.py").write_text(HIDE.format(name=hidden))
    result = subprocess.run(
        [path / "bin" / script, "--helpshort"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert result.stderr.startswith(f"{script}: error: ") and message in result.stderr
    assert "pip install 'keras_lars[" in result.stderr
