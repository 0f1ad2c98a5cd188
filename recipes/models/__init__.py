"""The recipes' ImageNet models, built from `keras.layers` (every backend)."""

from recipes.models.alexnet import BN_VARIANTS as ALEXNET_BN_VARIANTS
from recipes.models.alexnet import GROUPS as ALEXNET_GROUPS
from recipes.models.alexnet import MIN_IMAGE_SIZE as ALEXNET_MIN_IMAGE_SIZE
from recipes.models.alexnet import alexnet
from recipes.models.alexnet import alexnet_bn
from recipes.models.resnet import resnet50

__all__ = [
    "ALEXNET_BN_VARIANTS",
    "ALEXNET_GROUPS",
    "IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "MODELS",
    "alexnet",
    "alexnet_bn",
    "build",
    "build_for",
    "resnet50",
]

MODELS = ("resnet50", "alexnet", "alexnet_bn")
IMAGE_SIZE = {"resnet50": 224, "alexnet": 227, "alexnet_bn": 227}
# Below these, a model's last pooling has nothing left to pool.
MIN_IMAGE_SIZE = {
    "resnet50": 32,
    "alexnet": ALEXNET_MIN_IMAGE_SIZE,
    "alexnet_bn": ALEXNET_MIN_IMAGE_SIZE,
}


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
    """The model a `recipes.train_config.TrainConfig` asks for."""
    return build(
        config.model,
        num_classes,
        config.image_size,
        dropout=config.dropout,
        zero_init_residual=config.zero_init_residual,
        alexnet_groups=config.alexnet_groups,
        alexnet_bn_variant=config.alexnet_bn_variant,
    )
