"""`python -m recipes.imagenet_train`: the ImageNet recipe's command line
(`recipes/imagenet/cli.py`; installed, the `keras-lars-train` script)."""

from . import scripts

if __name__ == "__main__":
    scripts.train()
