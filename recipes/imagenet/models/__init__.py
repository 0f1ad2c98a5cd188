"""The recipes' ImageNet models, built from `keras.layers` (every backend).

Their names, input sizes and options are listed in `recipes/imagenet/config.py`.
"""

from ..config import MODELS
from .alexnet import alexnet
from .alexnet import alexnet_bn
from .resnet import resnet50

__all__ = ["alexnet", "alexnet_bn", "build", "build_for", "resnet50"]


def build(
    name,
    num_classes,
    image_size,
    *,
    dropout=0.5,
    zero_init_residual=True,
    alexnet_groups="split",
    alexnet_bn_variant="authors",
):
    """The named model; options that do not apply to it are ignored."""
    if name == "resnet50":
        return resnet50(num_classes, image_size, zero_init_residual=zero_init_residual)
    if name == "alexnet":
        return alexnet(num_classes, image_size, dropout=dropout, groups=alexnet_groups)
    if name == "alexnet_bn":
        return alexnet_bn(
            num_classes,
            image_size,
            dropout=dropout,
            groups=alexnet_groups,
            variant=alexnet_bn_variant,
        )
    raise ValueError(f"`model` must be one of {MODELS}. Received: model={name!r}")


def build_for(config, num_classes):
    """The model a `recipes.imagenet.config.TrainConfig` asks for."""
    return build(
        config.model,
        num_classes,
        config.image_size,
        dropout=config.dropout,
        zero_init_residual=config.zero_init_residual,
        alexnet_groups=config.alexnet_groups,
        alexnet_bn_variant=config.alexnet_bn_variant,
    )
