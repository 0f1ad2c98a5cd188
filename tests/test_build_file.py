"""The Bazel BUILD file names every Python module and test of the project,
each test file on the backends it has tests for."""

import ast
import pathlib
import re

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="checked once, on the first backend"
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
LISTED_DIRS = ("keras_lars", "recipes", "tools", "tests", "benchmarks", "bazel")


def test_every_python_file_is_in_build():
    listed = set(re.findall(r'"([\w/.-]+\.py)"', (ROOT / "BUILD").read_text())) - {"setup.py"}
    on_disk = {
        str(path.relative_to(ROOT))
        for directory in LISTED_DIRS
        for path in (ROOT / directory).rglob("*.py")
    }
    assert on_disk, "found no Python files"
    assert on_disk - listed == set(), "missing from BUILD"
    assert listed - on_disk == set(), "BUILD names files that do not exist"


def test_every_command_line_module_is_a_binary():
    """Run as its main file, or by module name through bazel/run_module.py."""
    build = (ROOT / "BUILD").read_text()
    mains = set(re.findall(r'main = "([\w/.-]+\.py)"', build))
    mains |= {
        module.replace(".", "/") + ".py"
        for module in re.findall(r'\("\w+", "((?:recipes|tools)\.[\w.]+)"\)', build)
    }
    scripts = {
        str(path.relative_to(ROOT))
        for directory in LISTED_DIRS
        for path in (ROOT / directory).rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text() and directory != "tests"
    }
    assert scripts, "found no command-line modules"
    assert scripts - mains == set(), "no py_binary runs these"


def test_every_test_file_is_a_test_target():
    build = (ROOT / "BUILD").read_text()
    listed = set(re.findall(r'"(tests/test_\w+\.py)"', build))
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
    assert on_disk - listed == set(), "no py_test runs these"


BACKENDS = ("tensorflow", "jax", "torch")


def backends_of(test_file):
    """The backends a test file's module-level skip leaves it: those named in
    `keras.backend.backend() != "x"` or `... not in ("x", "y")`; all without one."""
    for node in ast.parse(test_file.read_text()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "pytestmark":
            condition = node.value.args[0]
            kept = ast.literal_eval(condition.comparators[0])
            return {kept} if isinstance(kept, str) else set(kept)
    return set(BACKENDS)


def test_each_test_file_runs_on_the_backends_it_has_tests_for():
    build = (ROOT / "BUILD").read_text()
    all_backends = ast.literal_eval(re.search(r"ALL_BACKENDS = (\[.*\])", build).group(1))
    assert tuple(all_backends) == BACKENDS
    targets = re.findall(r'\("(tests/test_\w+\.py)", "\w+", (ALL_BACKENDS|\[[^\]]*\])\)', build)
    assert len(targets) >= 10, "the py_test list's form changed"
    for test_file, backends in targets:
        listed = set(all_backends if backends == "ALL_BACKENDS" else ast.literal_eval(backends))
        assert listed == backends_of(ROOT / test_file), test_file


def test_each_file_runs_in_one_target_and_the_unit_target_on_every_backend():
    """The quick files share `//:BACKEND/unit`, which runs on every backend
    (a file for fewer skips on the others); no file is in two targets."""
    build = (ROOT / "BUILD").read_text()
    unit = ast.literal_eval(re.search(r"UNIT_TESTS = (\[[^\]]*\])", build).group(1))
    single = re.findall(r'\("(tests/test_\w+\.py)", "\w+", ', build)
    assert unit and not set(unit) & set(single), "a file in two targets"
    assert len(unit) == len(set(unit))
    assert 'name = backend + "/unit"' in build and "for backend in ALL_BACKENDS" in build
