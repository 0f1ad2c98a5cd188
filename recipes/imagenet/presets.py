"""Large-batch presets for the ImageNet recipes: plain data, each with its source.

A preset fixes what the paper or submission fixed: model, global batch, peak
rate, warm-up, decay, epochs, how many images each batch-norm statistic
covers (`bn_span`), the preprocessing (`recipes/imagenet/preprocessing.py`)
and, for MLPerf, the evaluation schedule and the target that ends a run.
Every field can be overridden by the flag of the same name
(`recipes/imagenet/cli.py`). All use LARS with trust coefficient
η = 0.001 and ε = 0, a linear warm-up from 0 and polynomial (power 2) decay
over `train_steps − warmup_steps + 1` steps, as MLPerf does
(`keras_lars.PolynomialWarmup`).

`reported` is what the source reached with these settings; no preset has
been trained to completion with this recipe yet.
"""

# Shared by every ResNet-50 preset of MLPerf and tensorflow/tpu.
_MLPERF = dict(
    model="resnet50",
    label_smoothing=0.1,
    end_learning_rate=1e-4,
    # MLPerf's reference evaluates at epoch 2, then every 4, and stops at the
    # first evaluation reaching 75.9% top-1.
    eval_every_epochs=4,
    eval_offset_epochs=2,
    target_accuracy=0.759,
)
# The LARS paper (You, Gitman & Ginsburg 2017): momentum 0.9, weight decay
# 5e-4, poly(2) decay to 0, no label smoothing.
_PAPER = dict(
    momentum=0.9,
    weight_decay=5e-4,
    end_learning_rate=0.0,
    label_smoothing=0.0,
    eval_every_epochs=4,
)
# The paper's ResNet-50 rows state "scale and aspect ratio augmentation" and
# neither the framework nor the batch per device: Model Garden's
# Inception-style crop, and batch norm over 32 images, the per-worker batch of
# Goyal et al. 2017 whose large-batch results the paper compares against.
_PAPER_RESNET = dict(_PAPER, model="resnet50", preprocessing="model_garden", bn_span=32)
# The paper's AlexNet rows: 100 epochs, Caffe's data layer (256² images,
# random 227² crops); its authors adapt biases too (NVCaffe scales every blob
# by its layer rate), while still not decaying them.
_PAPER_ALEXNET = dict(_PAPER, train_epochs=100, dropout=0.5, adapt_biases=True)

PRESETS = {
    # --- ResNet-50 v1.5 ---------------------------------------------------
    # MLPerf Training ResNet-50 TF2 reference, its TPU command (LARS).
    "mlperf_4k": dict(
        _MLPERF,
        global_batch_size=4096,
        learning_rate=10.0,
        warmup_epochs=5,
        weight_decay=2e-4,
        momentum=0.9,
        train_epochs=42,
        preprocessing="mlperf_tf2",
        # The reference normalises over each replica's batch and logs
        # model_bn_span = batch / replicas; its TPU command runs
        # --num_replicas=64: 4096 / 64.
        bn_span=64,
        source="MLPerf Training ResNet-50 TF2 reference (TPU command)",
        reported="75.9% top-1 (MLPerf target) in 40 epochs, RCP mean",
    ),
    # Google's MLPerf TPU v4 submissions at batch 8192.
    "mlperf_8k": dict(
        _MLPERF,
        global_batch_size=8192,
        learning_rate=17.0,
        warmup_epochs=5,
        weight_decay=2e-4,
        momentum=0.9,
        train_epochs=44,
        preprocessing="tensorflow_tpu",
        conv_initializer="variance_scaling",  # tf.variance_scaling_initializer()
        bn_span=128,  # 128 images a replica, distributed_group_size=1
        # --steps_per_eval=625 from the start (no offset).
        eval_every_steps=625,
        eval_offset_epochs=0,
        source="Google MLPerf TPU v4 runs",
        reported="75.9% top-1 (MLPerf target) in 42 epochs, RCP",
    ),
    # tensorflow/tpu models/official/resnet, its v3-128 LARS configuration.
    "tpu_16k": dict(
        _MLPERF,
        global_batch_size=16384,
        learning_rate=25.0,
        warmup_epochs=5,
        weight_decay=1e-4,
        momentum=0.9,
        train_epochs=91,
        preprocessing="tensorflow_tpu",
        conv_initializer="variance_scaling",  # tf.variance_scaling_initializer()
        bn_span=128,  # 16384 over the 128 cores of a v3-128, each its own statistics
        # tensorflow/tpu evaluates at the end and sets no target.
        eval_offset_epochs=0,
        target_accuracy=None,
        source="tensorflow/tpu ResNet-50 v3-128 preset",
        reported="not stated with the preset",
    ),
    # Google's MLPerf Training v1.0 submission at batch 32768.
    "mlperf_32k": dict(
        _MLPERF,
        global_batch_size=32768,
        learning_rate=29.0,
        warmup_epochs=18,
        weight_decay=1e-4,
        momentum=0.929,
        train_epochs=60,
        preprocessing="tensorflow_tpu",
        conv_initializer="variance_scaling",  # tf.variance_scaling_initializer()
        bn_span=64,  # groups of replicas, 64 images a statistic
        # Its command's explicit steps (epochs there are N / B = 39.1 steps,
        # not the whole 40 the epochs above would give here).
        train_steps=2355,
        warmup_steps=703,
        eval_every_steps=157,
        eval_offset_epochs=0,
        source="Google MLPerf Training v1.0",
        reported="75.9% top-1 (MLPerf target) within 60 epochs",
    ),
    # Google's MLPerf Training v0.7 submission at batch 65536.
    "mlperf_64k": dict(
        _MLPERF,
        global_batch_size=65536,
        learning_rate=24.699,
        warmup_epochs=31,
        weight_decay=1e-4,
        momentum=0.951807,
        train_epochs=88.9,
        preprocessing="tensorflow_tpu",
        conv_initializer="variance_scaling",  # tf.variance_scaling_initializer()
        bn_span=64,  # groups of replicas, 64 images a statistic
        # Its explicit steps (19.5 steps an epoch there, 20 here).
        train_steps=1738,
        warmup_steps=606,
        eval_every_steps=79,
        eval_offset_epochs=0,
        source="Google MLPerf Training v0.7",
        reported="75.9% top-1 (MLPerf target) in 88.9 epochs",
    ),
    # The paper's ResNet-50 rows (warm-up 5 epochs up to 8K, 12 above; 100
    # epochs, 90 in some runs; scale and aspect-ratio augmentation).
    "paper_resnet_256": dict(
        _PAPER_RESNET,
        global_batch_size=256,
        learning_rate=4.0,
        warmup_epochs=5,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="75.8% top-1",
    ),
    "paper_resnet_1k": dict(
        _PAPER_RESNET,
        global_batch_size=1024,
        learning_rate=9.0,
        warmup_epochs=5,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="75.4% top-1",
    ),
    "paper_resnet_8k": dict(
        _PAPER_RESNET,
        global_batch_size=8192,
        learning_rate=30.0,
        warmup_epochs=5,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="75.2% top-1",
    ),
    "paper_resnet_16k": dict(
        _PAPER_RESNET,
        global_batch_size=16384,
        learning_rate=33.0,
        warmup_epochs=12,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="74.4% top-1",
    ),
    "paper_resnet_32k": dict(
        _PAPER_RESNET,
        global_batch_size=32768,
        learning_rate=40.0,
        warmup_epochs=12,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="72.5% top-1",
    ),
}

# The paper's AlexNet (BVLC, with LRN; warm-up 2 epochs) and AlexNet-BN
# (warm-up 5 epochs) tables: batch -> (global rate, top-1 reached).
_ALEXNET_TABLE = {512: (2.0, 58.7), 4096: (10.0, 58.5), 8192: (10.0, 58.2)}
_ALEXNET_TABLE.update({16384: (14.0, 55.0), 32768: (14.0, 46.9)})
# AlexNet-BN at 8K: the paper's rate 14. The authors' released NVCaffe solver
# differs (rate 10, a quadratic ramp from 1 over 600 iterations, decay counted
# from step 0); these presets follow the paper.
_ALEXNET_BN_TABLE = {512: (2.0, 60.2), 4096: (10.0, 60.4), 8192: (14.0, 60.1)}
_ALEXNET_BN_TABLE.update({16384: (23.0, 59.3), 32768: (22.0, 57.8)})
_BATCH_NAMES = {512: "512", 4096: "4k", 8192: "8k", 16384: "16k", 32768: "32k"}

# (model, title, table, warm-up epochs, preprocessing, batch-norm span):
# BVLC AlexNet has no batch norm; the authors' AlexNet-BN data layer takes 512
# images a GPU (NVCaffe models/alexnet_bn/train_val2.prototxt), each GPU its
# own statistics.
for _model, _title, _table, _warmup, _preprocessing, _span in (
    ("alexnet", "AlexNet", _ALEXNET_TABLE, 2, "caffe", 0),
    ("alexnet_bn", "AlexNet-BN", _ALEXNET_BN_TABLE, 5, "nvcaffe_alexnet_bn", 512),
):
    for _batch, (_rate, _top1) in _table.items():
        PRESETS[f"paper_{_model}_{_BATCH_NAMES[_batch]}"] = dict(
            _PAPER_ALEXNET,
            model=_model,
            global_batch_size=_batch,
            learning_rate=_rate,
            warmup_epochs=_warmup,
            preprocessing=_preprocessing,
            bn_span=_span,
            source=f"You et al. 2017, {_title} table",
            reported=f"{_top1}% top-1",
        )

# Without --preset, each model starts from the paper's smallest batch.
DEFAULT_PRESET = {
    "resnet50": "paper_resnet_256",
    "alexnet": "paper_alexnet_512",
    "alexnet_bn": "paper_alexnet_bn_512",
}
# Fields a preset does not set, and their values.
BASE = dict(
    conv_initializer="he_normal",
    label_smoothing=0.0,
    end_learning_rate=0.0,
    dropout=0.0,
    adapt_biases=False,
    eval_every_epochs=4,
    eval_offset_epochs=0,
    target_accuracy=None,
)
DESCRIPTIVE = ("source", "reported")  # in a preset, but not training settings


def describe():
    """One line per preset, for --help and the README."""
    return "\n".join(
        f"  {name}: {_summary(p)}; {p['source']}: {p['reported']}" for name, p in PRESETS.items()
    )


def _summary(preset):
    normalisation = "no batch norm"
    if preset["model"] != "alexnet":
        span = preset["bn_span"]
        normalisation = f"batch norm over {span} images" if span else "batch norm per replica"
    return (
        f"{preset['model']}, batch {preset['global_batch_size']}, rate "
        f"{preset['learning_rate']:g}, {preset['train_epochs']:g} epochs "
        f"({preset['warmup_epochs']:g} of warm-up), {normalisation}, "
        f"{preset['preprocessing']} preprocessing"
    )
