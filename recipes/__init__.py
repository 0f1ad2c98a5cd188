"""Training recipes with keras_lars: the ImageNet recipe (`imagenet/`) and the
large-batch study on Fashion-MNIST (`study/`); `scripts.py` starts either,
and `optimization.py` builds LARS for both.

Installed from the wheel, this package is `keras_lars_recipes`.
"""
