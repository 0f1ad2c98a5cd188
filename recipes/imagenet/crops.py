"""One JPEG to one model input on the host: decoded, cropped, resized and
flipped as a `Preprocessing` (`preprocessing.py`) says, as uint8 RGB.

Images leave the host as uint8 RGB in [0, 255]: a quarter of float32's
transfer, and no per-pixel arithmetic on the host. The model normalises them
on the device (`models.ImageNormalization`, with the `Preprocessing`'s mean
and standard deviation), as tensorflow/tpu and Google's MLPerf code do.
"""

import tensorflow as tf

from .preprocessing import EVAL_SHORT_SIDE
from .preprocessing import as_preprocessing

IMAGE_SIZE = 224


def decode_and_random_crop(image_bytes, image_size, seed, preprocessing, boxes=None):
    """An Inception-style random crop covering part of one of `boxes` ([N,
    4], normalised; none: the whole image), decoded directly from the JPEG
    and resized; if `max_attempts` find none, the evaluation crop or the
    whole image, as `preprocessing.centre_fallback` says."""
    shape = tf.io.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        tf.zeros([1, 0, 4]) if boxes is None else tf.reshape(boxes, [1, -1, 4]),
        seed=seed,
        min_object_covered=preprocessing.min_object_covered,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=preprocessing.area_range,
        max_attempts=preprocessing.max_attempts,
        use_image_if_no_bounding_boxes=True,
    )

    def crop():
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return tf.image.resize(
            tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3),
            [image_size, image_size],
            method=preprocessing.resize_method,
        )

    if not preprocessing.centre_fallback:
        return crop()
    # The sampler returns the whole image when it fails: use the centre crop.
    whole = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    return tf.cond(
        whole, lambda: decode_and_centre_crop(image_bytes, image_size, preprocessing), crop
    )


def decode_and_centre_crop(image_bytes, image_size, preprocessing):
    """The evaluation crop: the centre `eval_crop_fraction` of the short
    side, resized; or, with `eval_crop="short_side"`, the image resized to a
    short side of 256/224 of the input size, aspect kept, then its centre."""
    if preprocessing.eval_crop == "short_side":
        return resize_short_side_and_centre_crop(image_bytes, image_size, preprocessing)
    shape = tf.io.extract_jpeg_shape(image_bytes)
    height, width = shape[0], shape[1]
    side = tf.cast(
        preprocessing.eval_crop_fraction * tf.cast(tf.minimum(height, width), tf.float32),
        tf.int32,
    )
    window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
    image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
    return tf.image.resize(image, [image_size, image_size], method=preprocessing.resize_method)


def resize_short_side_and_centre_crop(image_bytes, image_size, preprocessing):
    image = tf.io.decode_jpeg(image_bytes, channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short_side = round(image_size * EVAL_SHORT_SIDE)
    scale = short_side / tf.reduce_min(shape)
    # At least the short side: rounding must leave room for the crop.
    resized = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), short_side)
    image = tf.image.resize(image, resized, method=preprocessing.resize_method)
    top = (resized[0] - image_size) // 2
    left = (resized[1] - image_size) // 2
    return image[top : top + image_size, left : left + image_size]


def caffe_crop(image_bytes, training, image_size, seed, preprocessing):
    """Caffe's AlexNet input: the image squashed to a square (256² for a
    227² input), then a random crop of the input size, or the centre one."""
    resized = round(image_size * preprocessing.caffe_resize / 227)
    image = tf.image.resize(
        tf.io.decode_jpeg(image_bytes, channels=3), [resized, resized], method="bilinear"
    )
    if training:
        return tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed=seed)
    offset = (resized - image_size) // 2
    return image[offset : offset + image_size, offset : offset + image_size]


def preprocess(
    image_bytes, training, image_size=IMAGE_SIZE, preprocessing=None, seed=None, boxes=None
):
    """An `image_size`² uint8 RGB image (normalised later, on the device),
    cropped and flipped as `preprocessing` (a `Preprocessing` or its name)
    says; a training crop around one of `boxes` ([N, 4]) if given."""
    preprocessing = as_preprocessing(preprocessing)
    crop_seed, flip_seed = (
        tf.unstack(tf.random.experimental.stateless_split(seed, 2)) if training else (None, None)
    )
    if preprocessing.crop == "caffe":
        image = caffe_crop(image_bytes, training, image_size, crop_seed, preprocessing)
    elif training:
        image = decode_and_random_crop(image_bytes, image_size, crop_seed, preprocessing, boxes)
    else:
        image = decode_and_centre_crop(image_bytes, image_size, preprocessing)
    if training:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    # Rounded, not truncated: resizing leaves values between the integers.
    return tf.cast(tf.clip_by_value(image + 0.5, 0.0, 255.0), tf.uint8)
