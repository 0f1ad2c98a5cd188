"""How each source turned ImageNet's JPEGs into model inputs, as plain data.

`crops.py` does the cropping and resizing on the host; the model does the
normalisation on the device (`models.ImageNormalization`, with `mean` and
`stddev`). Each preset names the preprocessing of its source (`presets.py`).
No TensorFlow here.
"""

import dataclasses

# ImageNet's per-channel RGB statistics (on [0, 255]), and the mean of Caffe's
# ilsvrc_2012_mean.binaryproto (BGR 104.01, 116.67, 122.68), in RGB.
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CAFFE_MEAN_RGB = (122.68, 116.67, 104.01)
# The MLPerf TF2 reference's CHANNEL_MEANS, subtracted with no division.
MLPERF_TF2_MEAN_RGB = (123.68, 116.78, 103.94)
# Evaluation crops, for a 224² input (scaled to others): "fraction", the
# centre `eval_crop_fraction` of the short side, resized; "short_side", the
# image resized (aspect kept) to a short side of 256, then the centre 224².
EVAL_CROPS = ("fraction", "short_side")
EVAL_SHORT_SIDE = 256 / 224


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How one source turns a JPEG into a model input.

    crop: "inception", a random crop of `area_range` of the image and 3/4..4/3
        aspect ratio (Szegedy et al. 2015) covering `min_object_covered` of
        a bounding box, decoded straight from the JPEG and resized to the
        input size; the evaluation crop as `eval_crop` says. "caffe": the
        image squashed to `caffe_resize`/227 of the input size, then a random
        crop of the input size (the centre one in evaluation), as BVLC's and
        the LARS authors' AlexNet data layers do.
    bounding_boxes: the boxes are the record's annotated objects
        (`image/object/bbox/*`, the converter's `--bounding_boxes`); else, and
        for records without any, the whole image.
    centre_fallback: when `max_attempts` find no crop, the evaluation crop
        (tensorflow/tpu); else the whole image, resized (the MLPerf TF2
        reference).
    """

    source: str  # where it comes from, for --help and config.json
    crop: str = "inception"
    area_range: tuple = (0.08, 1.0)
    min_object_covered: float = 0.1
    max_attempts: int = 10
    bounding_boxes: bool = False
    centre_fallback: bool = True
    resize_method: str = "bilinear"
    eval_crop: str = "fraction"
    eval_crop_fraction: float = 0.875
    caffe_resize: int = 256
    mean: tuple = IMAGENET_MEAN_RGB
    stddev: tuple = IMAGENET_STDDEV_RGB

    def describe(self):
        if self.crop == "caffe":
            return (
                f"{self.source}: {self.caffe_resize}² resize, random crop, mirror, mean "
                "subtraction; centre crop for evaluation"
            )
        low = self.area_range[0]
        boxes = "of the annotated boxes" if self.bounding_boxes else "of the image"
        evaluation = (
            "short side resized to 256/224 of the input, centre crop"
            if self.eval_crop == "short_side"
            else f"centre {self.eval_crop_fraction:g} crop, resized"
        )
        normalisation = "mean" if set(self.stddev) == {1.0} else "mean/std"
        return (
            f"{self.source}: random crop of {low:g}-1 of the area covering "
            f"{self.min_object_covered:g} {boxes} ({self.max_attempts} attempts), "
            f"{self.resize_method}, mirror; {evaluation} for evaluation; {normalisation}"
        )


PREPROCESSING = {
    # tensorflow/tpu resnet_preprocessing.py, and Google's MLPerf ResNet-50
    # submissions: bicubic, min_object_covered 0.1.
    "tensorflow_tpu": Preprocessing(
        "tensorflow/tpu and Google's MLPerf submissions", resize_method="bicubic"
    ),
    # The MLPerf Training ResNet-50 TF2 reference (imagenet_preprocessing.py):
    # crops around ImageNet's boxes, area from 0.05, 100 attempts, the whole
    # image when none is found, bilinear; evaluation resizes the short side
    # to 256 and crops 224; the mean subtracted, no division.
    "mlperf_tf2": Preprocessing(
        "the MLPerf TF2 reference",
        area_range=(0.05, 1.0),
        max_attempts=100,
        bounding_boxes=True,
        centre_fallback=False,
        eval_crop="short_side",
        mean=MLPERF_TF2_MEAN_RGB,
        stddev=(1.0, 1.0, 1.0),
    ),
    # TF Model Garden official/vision: bilinear, min_object_covered 0.08.
    "model_garden": Preprocessing("TF Model Garden", min_object_covered=0.08),
    # BVLC Caffe's AlexNet data layer (models/bvlc_alexnet/train_val.prototxt):
    # 256² images, random 227² crops, mirror, the mean subtracted.
    "caffe": Preprocessing(
        "BVLC Caffe's AlexNet", crop="caffe", mean=CAFFE_MEAN_RGB, stddev=(1.0, 1.0, 1.0)
    ),
    # The LARS authors' AlexNet-BN (NVCaffe models/alexnet_bn/train_val2.prototxt):
    # the same, then scaled by 1/256 (`scale: 0.00390625`).
    "nvcaffe_alexnet_bn": Preprocessing(
        "the LARS authors' NVCaffe AlexNet-BN",
        crop="caffe",
        mean=CAFFE_MEAN_RGB,
        stddev=(256.0, 256.0, 256.0),
    ),
}
DEFAULT_PREPROCESSING = "model_garden"


def as_preprocessing(preprocessing):
    """The `Preprocessing` that `preprocessing` is or names (None: the
    default's)."""
    if preprocessing is None:
        return PREPROCESSING[DEFAULT_PREPROCESSING]
    if isinstance(preprocessing, str):
        if preprocessing not in PREPROCESSING:
            raise ValueError(
                f"`preprocessing` must be one of {tuple(PREPROCESSING)}. "
                f"Received: preprocessing={preprocessing!r}"
            )
        return PREPROCESSING[preprocessing]
    return preprocessing
