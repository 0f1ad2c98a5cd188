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
    # The recipes and the ImageNet tools ship too, so that a TPU VM or a cluster
    # job can run them from an installed wheel.
    packages=find_packages(include=["keras_lars", "keras_lars.*", "recipes*", "tools*"]),
    entry_points={
        "console_scripts": [
            "keras-lars-train = recipes.imagenet_train:run",
            "keras-lars-study = recipes.large_batch_study:run",
            "keras-lars-imagenet-to-tfrecords = tools.imagenet_to_tfrecords:run",
            "keras-lars-make-fake-imagenet = tools.make_fake_imagenet:run",
        ]
    },
    install_requires=["keras>=3.13", "numpy"],
    extras_require={
        # `tensorflow` and `tensorflow-cpu` are separate distributions: pick one.
        "tensorflow": ["tensorflow>=2.21"],
        "tensorflow-cpu": ["tensorflow-cpu>=2.21"],
        "jax": ["jax>=0.4.30"],
        "torch": ["torch>=2.1"],
        # The large-batch study, the recipes and the ImageNet tools (scipy reads
        # the ImageNet devkit's meta.mat).
        "study": ["absl-py", "matplotlib", "tqdm", "pillow", "tensorboard", "scipy"],
        # --tfds_data_dir: ImageNet prepared by tensorflow-datasets.
        "tfds": ["tensorflow-datasets>=4.9"],
        "test": ["pytest", "optax>=0.2", "ruff", "build"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
