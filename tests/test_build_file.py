"""The Bazel BUILD file names every Python module and test of the project."""

import pathlib
import re

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
