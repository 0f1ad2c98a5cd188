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
    # job can run them from an installed wheel, under names of this
    # distribution's own: recipes/ as keras_lars_recipes, tools/ as
    # keras_lars_tools (recipes/scripts.py relies on the parallel names).
    packages=[
        "keras_lars",
        *(
            p.replace("recipes", "keras_lars_recipes", 1)
            for p in find_packages(include=["recipes*"])
        ),
        "keras_lars_tools",
    ],
    package_dir={"keras_lars_recipes": "recipes", "keras_lars_tools": "tools"},
    entry_points={
        "console_scripts": [
            "keras-lars-train = keras_lars_recipes.scripts:train",
            "keras-lars-data-service = keras_lars_recipes.scripts:data_service",
            "keras-lars-study = keras_lars_recipes.scripts:study",
            "keras-lars-imagenet-to-tfrecords = keras_lars_recipes.scripts:imagenet_to_tfrecords",
            "keras-lars-make-fake-imagenet = keras_lars_recipes.scripts:make_fake_imagenet",
        ]
    },
    install_requires=["keras>=3.13", "numpy"],
    extras_require={
        # `tensorflow` and `tensorflow-cpu` are separate distributions: pick one.
        "tensorflow": ["tensorflow>=2.21"],
        "tensorflow-cpu": ["tensorflow-cpu>=2.21"],
        # With Orbax, which the recipes' JAX route checkpoints with.
        "jax": ["jax>=0.4.30", "orbax-checkpoint>=0.11"],
        "torch": ["torch>=2.1"],
        # What the recipes (the ImageNet recipe, the study) and the ImageNet
        # tools need besides a backend; recipes/scripts.py lists the same. scipy
        # reads the ImageNet devkit's meta.mat.
        # mlperf-logging writes ResNet-50's mlperf.log and checks it.
        "recipes": [
            "absl-py",
            "matplotlib",
            "mlperf-logging",
            "pillow",
            "scipy",
            "tensorboard",
            "tqdm",
        ],
        # --tfds_data_dir: ImageNet prepared by tensorflow-datasets.
        "tfds": ["tensorflow-datasets>=4.9"],
        "test": ["pytest", "optax>=0.2", "ruff", "build"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
