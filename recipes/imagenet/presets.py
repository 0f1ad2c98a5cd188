"""Large-batch presets for the ImageNet recipes: plain data, each with its source.

A preset fixes what the paper or submission fixed: model, global batch, peak
rate, warm-up, decay, epochs. Every field can be overridden by the flag of the
same name (`recipes/imagenet_train.py`). All use LARS with trust coefficient
η = 0.001 and ε = 0, a linear warm-up from 0 and polynomial (power 2) decay
over `train_steps − warmup_steps + 1` steps, as MLPerf does
(`keras_lars.PolynomialWarmup`).

`reported` is what the source reached with these settings; nothing here has
been trained to completion on this project's machines.
"""

# Shared by every ResNet-50 preset of MLPerf and tensorflow/tpu.
_MLPERF = dict(
    model="resnet50",
    label_smoothing=0.1,
    end_learning_rate=1e-4,
    eval_every_epochs=4,  # MLPerf evaluates every 4 epochs
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
# The paper's AlexNet rows: 100 epochs; its authors adapt biases too (NVCaffe
# scales every blob by its layer rate), while still not decaying them.
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
        source="Google MLPerf Training v0.7",
        reported="75.9% top-1 (MLPerf target) in 88.9 epochs",
    ),
    # The paper's ResNet-50 rows (warm-up 5 epochs up to 8K, 12 above; 100
    # epochs, 90 in some runs; scale and aspect-ratio augmentation).
    "paper_resnet_256": dict(
        _PAPER,
        model="resnet50",
        global_batch_size=256,
        learning_rate=4.0,
        warmup_epochs=5,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="75.8% top-1",
    ),
    "paper_resnet_1k": dict(
        _PAPER,
        model="resnet50",
        global_batch_size=1024,
        learning_rate=9.0,
        warmup_epochs=5,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="75.4% top-1",
    ),
    "paper_resnet_8k": dict(
        _PAPER,
        model="resnet50",
        global_batch_size=8192,
        learning_rate=30.0,
        warmup_epochs=5,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="75.2% top-1",
    ),
    "paper_resnet_16k": dict(
        _PAPER,
        model="resnet50",
        global_batch_size=16384,
        learning_rate=33.0,
        warmup_epochs=12,
        train_epochs=100,
        source="You et al. 2017, ResNet-50 table",
        reported="74.4% top-1",
    ),
    "paper_resnet_32k": dict(
        _PAPER,
        model="resnet50",
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

for _model, _title, _table, _warmup in (
    ("alexnet", "AlexNet", _ALEXNET_TABLE, 2),
    ("alexnet_bn", "AlexNet-BN", _ALEXNET_BN_TABLE, 5),
):
    for _batch, (_rate, _top1) in _table.items():
        PRESETS[f"paper_{_model}_{_BATCH_NAMES[_batch]}"] = dict(
            _PAPER_ALEXNET,
            model=_model,
            global_batch_size=_batch,
            learning_rate=_rate,
            warmup_epochs=_warmup,
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
    label_smoothing=0.0,
    end_learning_rate=0.0,
    dropout=0.0,
    adapt_biases=False,
    eval_every_epochs=4,
)
DESCRIPTIVE = ("source", "reported")  # in a preset, but not training settings


def describe():
    """One line per preset, for --help and the README."""
    return "\n".join(
        f"  {name}: {p['model']}, batch {p['global_batch_size']}, rate {p['learning_rate']:g}, "
        f"{p['train_epochs']:g} epochs ({p['warmup_epochs']:g} of warm-up); "
        f"{p['source']}: {p['reported']}"
        for name, p in PRESETS.items()
    )
