"""keras_lars: Layer-wise Adaptive Rate Scaling (LARS) for Keras 3."""

import re
from pathlib import Path

from setuptools import find_packages
from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (HERE / "keras_lars" / "__init__.py").read_text(),
    re.M,
).group(1)

setup(
    name="keras_lars",
    version=VERSION,
    description="The LARS optimizer and its polynomial warm-up schedule for Keras 3",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["keras_lars", "keras_lars.*"]),
    install_requires=["keras>=3.13", "numpy"],
    extras_require={
        # `tensorflow` and `tensorflow-cpu` are separate distributions: pick one.
        "tensorflow": ["tensorflow>=2.21"],
        "tensorflow-cpu": ["tensorflow-cpu>=2.21"],
        "jax": ["jax>=0.4.30"],
        "torch": ["torch>=2.1"],
        # The large-batch study, the recipes and the ImageNet tools.
        "study": ["absl-py", "matplotlib", "tqdm", "pillow", "tensorboard"],
        # --tfds_data_dir: ImageNet prepared by tensorflow-datasets.
        "tfds": ["tensorflow-datasets>=4.9"],
        "test": ["pytest", "optax>=0.2", "ruff"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
