"""Where ILSVRC-2012's images, labels and class names are, in each of the ways
people download it. `find_inputs(raw_dir)` detects the layout, says which,
and refuses a mixed or incomplete one by name.

- "tree", the extracted layout of the TF references:
      RAW/train/<wnid>/*.JPEG
      RAW/validation/*.JPEG (labels: --validation_labels, or the devkit in RAW)
        or RAW/validation/<wnid>/*.JPEG
- "official", the three files from image-net.org, read in place:
      RAW/ILSVRC2012_img_train.tar   (a tar of one tar per class)
      RAW/ILSVRC2012_img_val.tar
      RAW/ILSVRC2012_devkit_t12.tar.gz  (validation labels and class names)
- "kaggle", the extracted "ImageNet Object Localization Challenge" archive:
      RAW/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG
      RAW/ILSVRC/Data/CLS-LOC/val/*.JPEG
      RAW/LOC_val_solution.csv   (validation labels: the first wnid of each row)
      RAW/LOC_synset_mapping.txt (class names)

The devkit numbers its classes by ILSVRC2012_ID (1..1000, not in wnid order);
`data/meta.mat` maps them to wnids and `data/ILSVRC2012_validation_ground_truth.txt`
gives one ID per validation image, in file-number order. Labels in the output
are always 1..1000 by sorted wnid.

A class folder is named by its wnid (n + 8 digits) or by a name that
--validation_labels or --synset_names gives; any other folder among them (a
stray `tmp/`) would become a class and shift every label after it, so it is
refused, or skipped with --allow_skips. Hidden entries (`.ipynb_checkpoints/`)
are ignored, saying so. A file name that is not UTF-8 cannot be stored as
image/filename: refused, or skipped with --allow_skips.

What cannot be used is refused with a `ConversionError` naming the path or
flag and what is wrong: a split or a class without images, a class left as an
archive among the class folders, a folder that cannot be listed, a file of
labels or names that cannot be read or parsed, an archive that is truncated or
damaged.
"""

import contextlib
import csv
import dataclasses
import gzip
import io
import os
import re
import tarfile
import zlib

TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VALIDATION_ARCHIVE = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
KAGGLE_IMAGES = os.path.join("ILSVRC", "Data", "CLS-LOC")
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
VALIDATION_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")
WNID = re.compile(r"n\d{8}")
# A class folder's name with one of these after it is a class left unextracted.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
NOT_A_CLASS = (
    "not a class folder: its name is neither a wnid (n + 8 digits) nor in "
    "--validation_labels or --synset_names"
)
NOT_UTF8 = "the file name is not UTF-8"


class ConversionError(ValueError):
    """Inputs, flags or an output directory that the converter cannot use;
    the message is one line naming the path or flag and what is wrong."""


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image: a file on disk, or a byte range inside an uncompressed tar."""

    filename: str
    synset: str
    source: str
    offset: int = -1
    size: int = -1
    display: str = ""  # the path shown in reports

    def read(self):
        with open(self.source, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)

    @property
    def where(self):
        return self.display or self.source


@dataclasses.dataclass
class Inputs:
    layout: str
    description: str  # what was found, for the log
    train: list  # ImageRefs
    validation: list | None  # ImageRefs, None if not asked for
    names: dict  # wnid -> class name ({} if no source gave them)
    names_source: str | None = None  # where the names came from, for warnings
    skipped: dict = dataclasses.field(default_factory=dict)  # split -> lines
    notes: list = dataclasses.field(default_factory=list)  # lines for the log


@dataclasses.dataclass
class Listing:
    """What listing the split folders found besides images. `known`: the
    names that the labels and names files give, any of which may name a class
    folder."""

    known: set
    not_classes: dict = dataclasses.field(default_factory=dict)  # split -> folder paths
    notes: list = dataclasses.field(default_factory=list)


def find_inputs(
    raw_dir,
    splits=("train", "validation"),
    validation_labels=None,
    synset_names=None,
    allow_skips=False,
):
    """The images of `splits` with their wnids, and class names. Errors name
    the file or flag that is missing, or the layouts that are mixed. Folders
    that are not classes and file names that are not UTF-8 are refused, or
    with `allow_skips` left out and listed in `Inputs.skipped`."""
    layout = detect_layout(raw_dir)
    names = read_synset_names(synset_names) if synset_names else None
    known = set(names or ())
    if validation_labels and "validation" in splits:
        known.update(_label_words(validation_labels))
    listing = Listing(known)
    finder = {"tree": _tree, "official": _official, "kaggle": _kaggle}[layout]
    inputs = finder(raw_dir, "validation" in splits, validation_labels, listing)
    if names is not None:
        inputs.names, inputs.names_source = names, f"--synset_names={synset_names}"
    inputs.notes = listing.notes
    not_utf8 = {}
    for split in ("train", "validation"):
        if getattr(inputs, split) is not None:
            usable, not_utf8[split] = _utf8_named(split, getattr(inputs, split))
            setattr(inputs, split, usable)
    _refuse_unless_skipped(listing.not_classes, not_utf8, allow_skips)
    inputs.skipped = {
        split: [f"{path}: {NOT_A_CLASS}" for path in listing.not_classes.get(split, [])]
        + [f"{path}: {NOT_UTF8}" for path in paths]
        for split, paths in not_utf8.items()
    }
    return inputs


def _refuse_unless_skipped(not_classes, not_utf8, allow_skips):
    """Refuses, in one line, folders that are not classes and file names that
    are not UTF-8, unless `allow_skips`."""
    if allow_skips:
        return
    for folders in not_classes.values():
        if folders:
            raise ConversionError(
                f"{os.path.dirname(folders[0])}: {_not_classes(folders)}; move them out, or "
                "rerun with --allow_skips to skip them"
            )
    for paths in not_utf8.values():
        if paths:
            more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
            raise ConversionError(
                f"{paths[0]}: {NOT_UTF8}{more}; rename it, or rerun with --allow_skips to skip it"
            )


def _utf8_named(split, refs):
    """(the refs whose names are UTF-8, the others' paths). Refuses, even
    with --allow_skips, a class none of whose file names is UTF-8: skipping
    them all would leave the class out."""
    usable, others = [], []
    for ref in refs:
        if _is_utf8(ref.filename) and _is_utf8(ref.synset):
            usable.append(ref)
        else:
            others.append(shown(ref.where))
    emptied = sorted({r.synset for r in refs} - {r.synset for r in usable})
    if emptied:
        first = next(r for r in refs if r.synset == emptied[0])
        raise ConversionError(
            f"{split}: class {shown(emptied[0])} has no image whose file name is UTF-8 "
            f"({shown(first.where)}, ...); rename them"
        )
    return usable, others


def _is_utf8(name):
    """Whether a name listed from disk or a tar is UTF-8: Python keeps the
    bytes of one that is not as surrogates, which cannot be encoded."""
    try:
        name.encode()
        return True
    except UnicodeEncodeError:
        return False


def shown(path):
    """`path` printable: the bytes of a name that is not UTF-8 escaped."""
    return os.fsencode(path).decode(errors="backslashreplace")


def detect_layout(raw_dir):
    if not os.path.isdir(raw_dir):
        raise ConversionError(f"--raw_data_dir={raw_dir} does not exist")
    found = {
        "tree": [n for n in ("train", "validation") if os.path.isdir(os.path.join(raw_dir, n))],
        "official": [
            n
            for n in (TRAIN_ARCHIVE, VALIDATION_ARCHIVE)
            if os.path.isfile(os.path.join(raw_dir, n))
        ],
        "kaggle": [
            n
            for n in (os.path.join("ILSVRC", "Data"), KAGGLE_SOLUTION)
            if os.path.exists(os.path.join(raw_dir, n))
        ],
    }
    present = [layout for layout, names in found.items() if names]
    if len(present) > 1:
        listing = "; ".join(f"{layout}: {', '.join(found[layout])}" for layout in present)
        raise ConversionError(
            f"--raw_data_dir={raw_dir} mixes ImageNet layouts ({listing}): point it at a "
            "directory holding one"
        )
    if not present:
        raise ConversionError(
            f"--raw_data_dir={raw_dir} holds no ImageNet layout: expected train/ (extracted), "
            f"{TRAIN_ARCHIVE} (official) or {KAGGLE_IMAGES}/ (Kaggle)"
        )
    return present[0]


def _require(raw_dir, *names):
    missing = [n for n in names if not os.path.exists(os.path.join(raw_dir, n))]
    if missing:
        raise ConversionError(
            f"--raw_data_dir={raw_dir} is incomplete: {', '.join(missing)} missing"
        )


# --- The three layouts -----------------------------------------------------------


def _tree(raw_dir, with_validation, labels_file, listing):
    _require(raw_dir, "train")
    train = _class_folders(os.path.join(raw_dir, "train"), "train", listing)
    names = _devkit_names(raw_dir)
    validation = None
    if with_validation:
        _require(raw_dir, "validation")
        folder = os.path.join(raw_dir, "validation")
        entries = _visible(folder, listing)
        if not entries:
            raise ConversionError(f"validation: no images in {folder}")
        if all(os.path.isdir(os.path.join(folder, e)) for e in entries):
            listing.known.update(r.synset for r in train)
            validation = _class_folders(folder, "validation", listing)
            source = "sorted into wnid folders"
        else:
            refs = [ImageRef(name, "", os.path.join(folder, name)) for name in entries]
            validation, source = _labelled(raw_dir, refs, labels_file)
    description = f"extracted tree: train/ ({len(train)} images)" + (
        f", validation/ ({len(validation)} images, labels {source})" if validation else ""
    )
    return Inputs("tree", description, train, validation, names, DEVKIT if names else None)


def _official(raw_dir, with_validation, labels_file, listing):
    _require(raw_dir, TRAIN_ARCHIVE)
    train = _train_archive(os.path.join(raw_dir, TRAIN_ARCHIVE))
    names = _devkit_names(raw_dir)
    validation = None
    source = ""
    if with_validation:
        if not labels_file:
            _require(raw_dir, VALIDATION_ARCHIVE, DEVKIT)
        else:
            _require(raw_dir, VALIDATION_ARCHIVE)
        validation, source = _labelled(
            raw_dir, _validation_archive(os.path.join(raw_dir, VALIDATION_ARCHIVE)), labels_file
        )
    description = f"official archives: {TRAIN_ARCHIVE} ({len(train)} images)" + (
        f", {VALIDATION_ARCHIVE} ({len(validation)} images, labels {source})" if validation else ""
    )
    return Inputs("official", description, train, validation, names, DEVKIT if names else None)


def _kaggle(raw_dir, with_validation, labels_file, listing):
    images = os.path.join(raw_dir, KAGGLE_IMAGES)
    _require(raw_dir, os.path.join(KAGGLE_IMAGES, "train"))
    train = _class_folders(os.path.join(images, "train"), "train", listing)
    names = {}
    if os.path.isfile(os.path.join(raw_dir, KAGGLE_SYNSETS)):
        names = read_synset_names(os.path.join(raw_dir, KAGGLE_SYNSETS))
    validation = None
    if with_validation:
        _require(raw_dir, os.path.join(KAGGLE_IMAGES, "val"))
        if not labels_file:
            _require(raw_dir, KAGGLE_SOLUTION)
        folder = os.path.join(images, "val")
        refs = [ImageRef(n, "", os.path.join(folder, n)) for n in _visible(folder, listing)]
        if not refs:
            raise ConversionError(f"validation: no images in {folder}")
        if labels_file:
            validation, source = _labelled(raw_dir, refs, labels_file)
        else:
            solution = _kaggle_solution(os.path.join(raw_dir, KAGGLE_SOLUTION))
            validation = _with_wnids(refs, solution, _image_id, KAGGLE_SOLUTION)
            source = f"from {KAGGLE_SOLUTION}"
    description = f"Kaggle CLS-LOC: train/ ({len(train)} images)" + (
        f", val/ ({len(validation)} images, labels {source})" if validation else ""
    )
    return Inputs(
        "kaggle", description, train, validation, names, KAGGLE_SYNSETS if names else None
    )


# --- Sources of labels and names ----------------------------------------------------


def _labelled(raw_dir, refs, labels_file):
    """(refs with wnids, where the labels came from): --validation_labels if
    given, else the devkit in `raw_dir`."""
    if labels_file:
        wnids = read_validation_labels(labels_file, len(refs))
        return [dataclasses.replace(r, synset=w) for r, w in zip(refs, wnids)], labels_file
    if not os.path.isfile(os.path.join(raw_dir, DEVKIT)):
        raise ConversionError(
            "A flat validation set needs its labels: --validation_labels (one wnid per "
            f"line, in sorted-filename order) or {DEVKIT} in --raw_data_dir"
        )
    by_number, _ = _devkit(raw_dir)
    return _with_wnids(refs, by_number, _image_number, DEVKIT), f"from {DEVKIT}"


def _devkit_names(raw_dir):
    """{wnid: name} from the devkit in `raw_dir`, or {} without one."""
    return _devkit(raw_dir)[1] if os.path.isfile(os.path.join(raw_dir, DEVKIT)) else {}


def _with_wnids(refs, wnid_of, key, source):
    """Each ref with its wnid: `wnid_of[key(filename)]`."""
    labelled = []
    for ref in refs:
        wnid = wnid_of.get(key(ref.filename))
        if wnid is None:
            raise ConversionError(f"{source} has no label for validation image {ref.filename}")
        labelled.append(dataclasses.replace(ref, synset=wnid))
    return labelled


def _image_number(filename):
    """ILSVRC2012_val_00000042.JPEG -> 42 (the devkit's order)."""
    match = VALIDATION_NUMBER.search(filename)
    return int(match[1]) if match else None


def _image_id(filename):
    """ILSVRC2012_val_00000042.JPEG -> ILSVRC2012_val_00000042 (Kaggle's ImageId)."""
    return os.path.splitext(filename)[0]


def _devkit(raw_dir):
    """({validation image number: wnid}, {wnid: name}) from the devkit."""
    from scipy import io as scipy_io  # keras_lars[study]

    path = os.path.join(raw_dir, DEVKIT)
    with _reading_archive(path), tarfile.open(path, "r:gz") as tar:
        try:
            meta = tar.extractfile(DEVKIT_META).read()
            truth = tar.extractfile(DEVKIT_GROUND_TRUTH).read().decode()
        except KeyError as error:
            raise ConversionError(
                f"{path} lacks {error.args[0]}: not the ILSVRC-2012 devkit?"
            ) from None
    try:
        synsets = scipy_io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        wnid_of_id, names = {}, {}
        for synset in synsets:
            if int(synset["num_children"]) == 0:  # the 1000 leaf classes
                wnid = str(synset["WNID"])
                wnid_of_id[int(synset["ILSVRC2012_ID"])] = wnid
                names[wnid] = str(synset["words"])
        ids = [int(line) for line in truth.split()]
        return {number: wnid_of_id[i] for number, i in enumerate(ids, start=1)}, names
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise ConversionError(
            f"{path}: {DEVKIT_META} or the ground truth does not parse "
            f"({type(error).__name__}: {error}): not the ILSVRC-2012 devkit?"
        ) from None


def _kaggle_solution(path):
    """{image id: wnid} from LOC_val_solution.csv (the first box's class)."""
    rows = list(csv.DictReader(io.StringIO(read_text(path, path), newline="")))
    if not rows or not {"ImageId", "PredictionString"} <= set(rows[0]):
        raise ConversionError(f"{path}: expected the columns ImageId,PredictionString")
    solution = {}
    for line, row in enumerate(rows, start=2):
        boxes = (row["PredictionString"] or "").split()
        if not boxes:
            raise ConversionError(f"{path}, line {line}: no class for {row['ImageId']}")
        solution[row["ImageId"]] = boxes[0]
    return solution


def read_validation_labels(labels_file, expected):
    wnids = _label_words(labels_file)
    if len(wnids) != expected:
        raise ConversionError(
            f"--validation_labels={labels_file} has {len(wnids)} labels for {expected} "
            "validation images"
        )
    return wnids


def _label_words(labels_file):
    """The first word of each line of --validation_labels."""
    lines = read_text(labels_file, f"--validation_labels={labels_file}").splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def read_synset_names(path):
    """`wnid name...` per line (LOC_synset_mapping.txt style) -> {wnid: name}."""
    names = {}
    for number, line in enumerate(read_text(path, path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise ConversionError(
                f"{path}, line {number}: expected `wnid name`, found {line.strip()!r}"
            )
        names[fields[0]] = fields[1].strip()
    return names


def read_text(path, what):
    """The text of a file; a ConversionError naming `what` (the path, or the
    flag that gave it) if it cannot be read as text."""
    try:
        with open(path, newline="") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"{what}: cannot be read as text ({reason(error)})") from None


def reason(error):
    """What an OSError (or a decoding error) says went wrong, in words."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


# --- Listing images ---------------------------------------------------------------


def _listdir(folder):
    """Sorted entries of `folder`; a ConversionError naming it if it cannot
    be listed."""
    try:
        return sorted(os.listdir(folder))
    except OSError as error:
        raise ConversionError(f"{folder}: cannot be listed ({reason(error)})") from None


def _visible(folder, listing):
    """The sorted entries of a split's folder but the hidden ones
    (`.ipynb_checkpoints`, `.DS_Store`), which `listing` notes."""
    entries = _listdir(folder)
    hidden = [e for e in entries if e.startswith(".")]
    if hidden:
        listing.notes.append(f"{folder}: ignoring the hidden {', '.join(hidden)}")
    return [e for e in entries if not e.startswith(".")]


def _class_folders(root, split, listing):
    """The images of each class folder under `root`. Every entry of a class
    folder is listed: one that is not an image is skipped, by name, when it is
    read. A split or a class without any entry is refused, and so is a class
    left as an archive; a folder whose name is neither a wnid nor among
    `listing.known` is not a class: it goes to `listing.not_classes`."""
    refs = []
    entries = _visible(root, listing)
    for wnid in entries:
        folder = os.path.join(root, wnid)
        if not os.path.isdir(folder):
            _refuse_a_class_archive(root, wnid, entries, listing.known)
            continue
        if not (WNID.fullmatch(wnid) or wnid in listing.known):
            listing.not_classes.setdefault(split, []).append(shown(folder))
            continue
        names = _listdir(folder)
        if not names:
            raise ConversionError(f"{split}: class {wnid} has no images ({folder} is empty)")
        refs += [ImageRef(name, wnid, os.path.join(folder, name)) for name in names]
    if not refs and listing.not_classes.get(split):
        raise ConversionError(
            f"{split}: no images in {root}: {_not_classes(listing.not_classes[split])}"
        )
    if not refs:
        raise ConversionError(f"{split}: no images in {root}")
    return refs


def _not_classes(folders):
    """The folders that are not classes, and why, in words."""
    listed = ", ".join(os.path.basename(f) for f in folders[:5])
    more = f" and {len(folders) - 5} more" if len(folders) > 5 else ""
    return (
        f"{len(folders)} folder(s) are not classes: {listed}{more} (a class folder is named "
        "by its wnid, n + 8 digits, or in --validation_labels or --synset_names)"
    )


def _refuse_a_class_archive(root, name, entries, known):
    """Refuses a file among the class folders that is a class's archive
    (`n01440764.tar`) with no folder of that class beside it: left
    unextracted, the class would be missing and every label after it shift."""
    for suffix in ARCHIVE_SUFFIXES:
        wnid = name[: -len(suffix)]
        is_class = WNID.fullmatch(wnid) or wnid in known
        if name.endswith(suffix) and is_class and wnid not in entries:
            raise ConversionError(
                f"{os.path.join(root, name)}: class {wnid} left as an archive; extract it "
                f"into {os.path.join(root, wnid)}/ (or remove it)"
            )


@contextlib.contextmanager
def _reading_archive(path):
    """Turns a failure to read the archive at `path` into a ConversionError
    naming it."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        words = " ".join(str(error).split())  # some of tarfile's span lines
        raise ConversionError(
            f"{path}: truncated or damaged ({words}); download it again"
        ) from None
    except OSError as error:
        raise ConversionError(f"{path}: cannot be read ({reason(error)})") from None


def _all_members(tar, path):
    """The members of an uncompressed tar, refusing one that stops early:
    tarfile ends its listing quietly where the data runs out at a member's
    boundary, or a header is garbage, so the end-of-archive marker (two zero
    blocks) must follow the last member."""
    members = tar.getmembers()
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
        raise ConversionError(
            f"{path}: truncated or damaged (no end-of-archive marker after its "
            f"{len(members)} readable members); download it again"
        )
    return members


def _train_archive(archive):
    """Indexes a tar of per-class tars; each image is a byte range of it."""
    refs = []
    with _reading_archive(archive), tarfile.open(archive, "r:") as outer:
        for member in sorted(_all_members(outer, archive), key=lambda m: m.name):
            if not member.name.endswith(".tar"):
                continue
            wnid = os.path.basename(member.name)[: -len(".tar")]
            with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                images = sorted((m for m in inner.getmembers() if m.isfile()), key=lambda m: m.name)
            if not images:
                raise ConversionError(
                    f"train: class {wnid} has no images ({archive}:{member.name} holds no files)"
                )
            refs += [
                ImageRef(
                    os.path.basename(image.name),
                    wnid,
                    archive,
                    member.offset_data + image.offset_data,
                    image.size,
                    f"{archive}:{member.name}/{image.name}",
                )
                for image in images
            ]
    if not refs:
        raise ConversionError(f"train: no images in {archive} (no per-class .tar inside)")
    return refs


def _validation_archive(archive):
    with _reading_archive(archive), tarfile.open(archive, "r:") as tar:
        members = sorted(
            (m for m in _all_members(tar, archive) if m.isfile()),
            key=lambda m: os.path.basename(m.name),
        )
    if not members:
        raise ConversionError(f"validation: no images in {archive}")
    return [
        ImageRef(
            os.path.basename(m.name), "", archive, m.offset_data, m.size, f"{archive}:{m.name}"
        )
        for m in members
    ]
