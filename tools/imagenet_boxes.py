"""ILSVRC-2012's training bounding boxes, read as tensorflow/tpu reads them.

ImageNet's download page offers `ILSVRC2012_bbox_train_v2.tar.gz`: one PASCAL
VOC XML file per annotated training image, named by the image's stem and
usually in a folder per class (`n01440764/n01440764_10026.xml`):

    <annotation>
      <size><width>500</width><height>375</height>...</size>
      <object>...<bndbox><xmin>..</xmin><ymin>..</ymin><xmax>..</xmax><ymax>..</ymax></bndbox></object>
      ...
    </annotation>

Each box becomes (xmin, ymin, xmax, ymax) as tensorflow/tpu's
process_bounding_boxes.py computes it: pixels divided by the width or height
that the file gives, a min above its max swapped, then clamped to [0, 1]
(some annotated boxes reach past the image).
"""

import dataclasses
import hashlib
import math
import os
from xml.etree import ElementTree

from .imagenet_layouts import ConversionError
from .imagenet_layouts import reason

# What a conversion without boxes records in place of their digest; also what
# a record written before boxes existed stands for.
NO_BOXES = "none"
COORDINATES = ("xmin", "ymin", "xmax", "ymax")


class BadBoxFile(Exception):
    """An annotation file that cannot be used; the message names it."""


@dataclasses.dataclass
class Boxes:
    by_filename: dict  # a training image's file name -> ((xmin, ymin, xmax, ymax), ...)
    skipped: list  # "path: why" for the files left out with allow_skips


def read_boxes(folder, refs, allow_skips=False):
    """The boxes of the images `refs` whose annotation file is under
    `folder` (at any depth). A folder that is missing or holds no XML file is
    refused; so is an annotation file that cannot be used, unless
    `allow_skips`: its image then has no boxes, and the file is listed."""
    if not os.path.isdir(folder):
        what = "is not a directory" if os.path.exists(folder) else "does not exist"
        raise ConversionError(f"--bounding_boxes={folder} {what}")
    files = _xml_files(folder)
    if not files:
        raise ConversionError(
            f"--bounding_boxes={folder} holds no .xml files (extract "
            "ILSVRC2012_bbox_train_v2.tar.gz into it)"
        )
    by_filename, skipped = {}, []
    for ref in refs:
        path = files.get(os.path.splitext(ref.filename)[0])
        if path is None:
            continue
        try:
            by_filename[ref.filename] = read_box_file(path)
        except BadBoxFile as error:
            if not allow_skips:
                raise ConversionError(
                    f"{error}; fix or remove it, or rerun with --allow_skips to convert "
                    "its image without boxes"
                ) from None
            skipped.append(f"{error} (its image has no boxes)")
    return Boxes(by_filename, skipped)


def _xml_files(folder):
    """Image stem -> the path of its annotation file, under `folder` at any
    depth; two files for one image are refused, naming both."""
    files = {}

    def unlisted(error):
        raise ConversionError(f"{error.filename}: cannot be listed ({reason(error)})")

    for directory, subfolders, names in os.walk(folder, onerror=unlisted):
        subfolders.sort()  # the same first file named on every run
        for name in sorted(names):
            stem, extension = os.path.splitext(name)
            if extension.lower() != ".xml":
                continue
            path = os.path.join(directory, name)
            other = files.setdefault(stem, path)
            if other != path:
                raise ConversionError(f"{other} and {path} both annotate image {stem}: remove one")
    return files


def read_box_file(path):
    """The normalised boxes of one annotation file; BadBoxFile naming it if
    it cannot be read or parsed, or lacks the size or a box."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise BadBoxFile(f"{path}: not XML ({error})") from None
    except OSError as error:
        raise BadBoxFile(f"{path}: cannot be read ({reason(error)})") from None
    width, height = (_number(root, f"size/{name}", path) for name in ("width", "height"))
    if width <= 0 or height <= 0:
        raise BadBoxFile(f"{path}: the image's size is {width:g}x{height:g} pixels")
    boxes = []
    for bndbox in root.iterfind("object/bndbox"):
        xmin, ymin, xmax, ymax = (_number(bndbox, name, path) for name in COORDINATES)
        (xmin, xmax), (ymin, ymax) = _normalised(xmin, xmax, width), _normalised(ymin, ymax, height)
        boxes.append((xmin, ymin, xmax, ymax))
    if not boxes:
        raise BadBoxFile(f"{path}: no <object><bndbox>")
    return tuple(boxes)


def _number(element, name, path):
    text = element.findtext(name)
    try:
        value = float(text)
    except (TypeError, ValueError):
        found = "missing" if text is None else f"{text.strip()!r}, not a number"
        raise BadBoxFile(f"{path}: <{name}> {found}") from None
    if not math.isfinite(value):
        raise BadBoxFile(f"{path}: <{name}> is {value}")
    return value


def _normalised(low, high, size):
    """One axis of a box as a fraction of the image, ordered and clamped."""
    low, high = sorted((low / size, high / size))
    return min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)


def digest(by_filename):
    """What the boxes written into the shards are, for the record of the
    conversion's inputs: the same boxes give the same digest."""
    if not by_filename:
        return NO_BOXES
    lines = (f"{name}\t{boxes!r}" for name, boxes in sorted(by_filename.items()))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
