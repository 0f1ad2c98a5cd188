"""Large-batch presets for the ImageNet recipes: plain data, each with its source.

A preset fixes what the paper or submission fixed: model, global batch, peak
rate, warm-up, decay, epochs, LARS's trust coefficient η, how many images
each batch-norm statistic covers (`bn_span`), the preprocessing
(`recipes/imagenet/preprocessing.py`) and, for MLPerf, the evaluation
schedule and the target that ends a run. Every preset holds every one of
these fields (`config.PRESET_FIELDS`): what a preset says is what it is.
Each can be overridden by the flag of the same name
(`recipes/imagenet/cli.py`); the settings no preset fixes have their defaults
in `config.DEFAULTS`. All use LARS with ε = 0, a linear warm-up from 0 and
polynomial (power 2) decay over `train_steps − warmup_steps + 1` steps, as
MLPerf does (`keras_lars.PolynomialWarmup`).

Step counts (`train_steps`, `warmup_steps`, `eval_every_steps`) are given
where the source's command gives steps, and stand for the epoch field they
override at the preset's own batch only (`config.resolve`).

A batch sweep of one source (the paper's tables) is one function taking the
batch; every preset's name is still written out in `PRESETS`. `reported` is
what the source reached with these settings; no preset has been trained to
completion with this recipe yet.
"""


def paper_resnet(batch):
    """The LARS paper's (You, Gitman & Ginsburg 2017) ResNet-50 table at `batch`.

    100 epochs (90 in some runs); warm-up 5 epochs up to 8K, 12 above. The
    paper states "scale and aspect ratio augmentation" and neither the
    framework nor the batch per device: Model Garden's Inception-style crop
    and He-normal kernels, and batch norm over 32 images, the per-worker batch
    of Goyal et al. 2017, whose large-batch results the paper compares against.
    """
    rate, warmup, top1 = {
        256: (4.0, 5, 75.8),
        1024: (9.0, 5, 75.4),
        8192: (30.0, 5, 75.2),
        16384: (33.0, 12, 74.4),
        32768: (40.0, 12, 72.5),
    }[batch]
    return dict(
        model="resnet50",
        global_batch_size=batch,
        learning_rate=rate,
        warmup_epochs=warmup,
        train_epochs=100,
        weight_decay=5e-4,
        momentum=0.9,
        trust_coefficient=0.001,
        end_learning_rate=0.0,
        label_smoothing=0.0,
        adapt_biases=False,
        dropout=0.0,
        bn_span=32,
        preprocessing="model_garden",
        conv_initializer="he_normal",
        eval_every_epochs=4,
        eval_offset_epochs=0,
        target_accuracy=None,
        train_steps=None,
        warmup_steps=None,
        eval_every_steps=None,
        source="You et al. 2017, ResNet-50 table",
        reported=f"{top1}% top-1",
    )


def paper_alexnet(batch):
    """The LARS paper's AlexNet table (BVLC's, with LRN) at `batch`.

    100 epochs, warm-up 2, Caffe's data layer (256² images, random 227²
    crops) and no batch norm. Its authors adapt biases too (NVCaffe scales
    every blob by its layer rate), while still not decaying them.
    `conv_initializer` is ResNet-50's: AlexNet ignores it.
    """
    rate, top1 = {
        512: (2.0, 58.7),
        4096: (10.0, 58.5),
        8192: (10.0, 58.2),
        16384: (14.0, 55.0),
        32768: (14.0, 46.9),
    }[batch]
    return dict(
        model="alexnet",
        global_batch_size=batch,
        learning_rate=rate,
        warmup_epochs=2,
        train_epochs=100,
        weight_decay=5e-4,
        momentum=0.9,
        trust_coefficient=0.001,
        end_learning_rate=0.0,
        label_smoothing=0.0,
        adapt_biases=True,
        dropout=0.5,
        bn_span=0,
        preprocessing="caffe",
        conv_initializer="he_normal",
        eval_every_epochs=4,
        eval_offset_epochs=0,
        target_accuracy=None,
        train_steps=None,
        warmup_steps=None,
        eval_every_steps=None,
        source="You et al. 2017, AlexNet table",
        reported=f"{top1}% top-1",
    )


def paper_alexnet_bn(batch):
    """The LARS paper's AlexNet-BN table at `batch`.

    As `paper_alexnet`, with warm-up 5 and the authors' AlexNet-BN data layer:
    512 images a GPU (NVCaffe models/alexnet_bn/train_val2.prototxt), each
    GPU its own batch-norm statistics. At 8K the paper's rate 14: the
    authors' released NVCaffe solver differs (rate 10, a quadratic ramp from 1
    over 600 iterations, decay counted from step 0).
    """
    rate, top1 = {
        512: (2.0, 60.2),
        4096: (10.0, 60.4),
        8192: (14.0, 60.1),
        16384: (23.0, 59.3),
        32768: (22.0, 57.8),
    }[batch]
    return dict(
        model="alexnet_bn",
        global_batch_size=batch,
        learning_rate=rate,
        warmup_epochs=5,
        train_epochs=100,
        weight_decay=5e-4,
        momentum=0.9,
        trust_coefficient=0.001,
        end_learning_rate=0.0,
        label_smoothing=0.0,
        adapt_biases=True,
        dropout=0.5,
        bn_span=512,
        preprocessing="nvcaffe_alexnet_bn",
        conv_initializer="he_normal",
        eval_every_epochs=4,
        eval_offset_epochs=0,
        target_accuracy=None,
        train_steps=None,
        warmup_steps=None,
        eval_every_steps=None,
        source="You et al. 2017, AlexNet-BN table",
        reported=f"{top1}% top-1",
    )


PRESETS = {
    # --- ResNet-50 v1.5: MLPerf and tensorflow/tpu -------------------------
    # Label smoothing 0.1, decay to 1e-4; the MLPerf reference evaluates at
    # epoch 2, then every 4, and stops at the first evaluation reaching 75.9%
    # top-1. Convolution kernels: Model Garden's He-normal for the MLPerf TF2
    # reference, tensorflow/tpu's tf.variance_scaling_initializer() (variance
    # 1/fan-in) for Google's code. η = 0.001 in every source.
    #
    # MLPerf Training ResNet-50 TF2 reference, its TPU command (LARS).
    "mlperf_4k": dict(
        model="resnet50",
        global_batch_size=4096,
        learning_rate=10.0,
        warmup_epochs=5,
        train_epochs=42,
        weight_decay=2e-4,
        momentum=0.9,
        trust_coefficient=0.001,
        end_learning_rate=1e-4,
        label_smoothing=0.1,
        adapt_biases=False,
        dropout=0.0,
        # The reference normalises over each replica's batch and logs
        # model_bn_span = batch / replicas; its TPU command runs
        # --num_replicas=64: 4096 / 64.
        bn_span=64,
        preprocessing="mlperf_tf2",
        conv_initializer="he_normal",
        eval_every_epochs=4,
        eval_offset_epochs=2,
        target_accuracy=0.759,
        train_steps=None,
        warmup_steps=None,
        eval_every_steps=None,
        source="MLPerf Training ResNet-50 TF2 reference (TPU command)",
        reported="75.9% top-1 (MLPerf target) in 40 epochs, RCP mean",
    ),
    # Google's MLPerf TPU v4 submissions at batch 8192.
    "mlperf_8k": dict(
        model="resnet50",
        global_batch_size=8192,
        learning_rate=17.0,
        warmup_epochs=5,
        train_epochs=44,
        weight_decay=2e-4,
        momentum=0.9,
        trust_coefficient=0.001,
        end_learning_rate=1e-4,
        label_smoothing=0.1,
        adapt_biases=False,
        dropout=0.0,
        bn_span=128,  # 128 images a replica, distributed_group_size=1
        preprocessing="tensorflow_tpu",
        conv_initializer="variance_scaling",
        eval_every_epochs=4,
        eval_offset_epochs=0,
        target_accuracy=0.759,
        train_steps=None,
        warmup_steps=None,
        eval_every_steps=625,  # --steps_per_eval=625 from the start (no offset)
        source="Google MLPerf TPU v4 runs",
        reported="75.9% top-1 (MLPerf target) in 42 epochs, RCP",
    ),
    # tensorflow/tpu models/official/resnet, its v3-128 LARS configuration:
    # it evaluates at the end and sets no target.
    "tpu_16k": dict(
        model="resnet50",
        global_batch_size=16384,
        learning_rate=25.0,
        warmup_epochs=5,
        train_epochs=91,
        weight_decay=1e-4,
        momentum=0.9,
        trust_coefficient=0.001,
        end_learning_rate=1e-4,
        label_smoothing=0.1,
        adapt_biases=False,
        dropout=0.0,
        bn_span=128,  # 16384 over the 128 cores of a v3-128, each its own statistics
        preprocessing="tensorflow_tpu",
        conv_initializer="variance_scaling",
        eval_every_epochs=4,
        eval_offset_epochs=0,
        target_accuracy=None,
        train_steps=None,
        warmup_steps=None,
        eval_every_steps=None,
        source="tensorflow/tpu ResNet-50 v3-128 preset",
        reported="not stated with the preset",
    ),
    # Google's MLPerf Training v1.0 submission at batch 32768. Its command's
    # explicit steps: epochs there are N / B = 39.1 steps, not the whole 40
    # the epochs would give here.
    "mlperf_32k": dict(
        model="resnet50",
        global_batch_size=32768,
        learning_rate=29.0,
        warmup_epochs=18,
        train_epochs=60,
        weight_decay=1e-4,
        momentum=0.929,
        trust_coefficient=0.001,
        end_learning_rate=1e-4,
        label_smoothing=0.1,
        adapt_biases=False,
        dropout=0.0,
        bn_span=64,  # groups of replicas, 64 images a statistic
        preprocessing="tensorflow_tpu",
        conv_initializer="variance_scaling",
        eval_every_epochs=4,
        eval_offset_epochs=0,
        target_accuracy=0.759,
        train_steps=2355,
        warmup_steps=703,
        eval_every_steps=157,
        source="Google MLPerf Training v1.0",
        reported="75.9% top-1 (MLPerf target) within 60 epochs",
    ),
    # Google's MLPerf Training v0.7 submission at batch 65536. Its explicit
    # steps: 19.5 steps an epoch there, 20 here.
    "mlperf_64k": dict(
        model="resnet50",
        global_batch_size=65536,
        learning_rate=24.699,
        warmup_epochs=31,
        train_epochs=88.9,
        weight_decay=1e-4,
        momentum=0.951807,
        trust_coefficient=0.001,
        end_learning_rate=1e-4,
        label_smoothing=0.1,
        adapt_biases=False,
        dropout=0.0,
        bn_span=64,  # groups of replicas, 64 images a statistic
        preprocessing="tensorflow_tpu",
        conv_initializer="variance_scaling",
        eval_every_epochs=4,
        eval_offset_epochs=0,
        target_accuracy=0.759,
        train_steps=1738,
        warmup_steps=606,
        eval_every_steps=79,
        source="Google MLPerf Training v0.7",
        reported="75.9% top-1 (MLPerf target) in 88.9 epochs",
    ),
    # --- The LARS paper's tables: ResNet-50 ----------------------------------
    "paper_resnet_256": paper_resnet(256),
    "paper_resnet_1k": paper_resnet(1024),
    "paper_resnet_8k": paper_resnet(8192),
    "paper_resnet_16k": paper_resnet(16384),
    "paper_resnet_32k": paper_resnet(32768),
    # --- The LARS paper's tables: AlexNet and AlexNet-BN ---------------------
    "paper_alexnet_512": paper_alexnet(512),
    "paper_alexnet_4k": paper_alexnet(4096),
    "paper_alexnet_8k": paper_alexnet(8192),
    "paper_alexnet_16k": paper_alexnet(16384),
    "paper_alexnet_32k": paper_alexnet(32768),
    "paper_alexnet_bn_512": paper_alexnet_bn(512),
    "paper_alexnet_bn_4k": paper_alexnet_bn(4096),
    "paper_alexnet_bn_8k": paper_alexnet_bn(8192),
    "paper_alexnet_bn_16k": paper_alexnet_bn(16384),
    "paper_alexnet_bn_32k": paper_alexnet_bn(32768),
}
# Without --preset, each model starts from the paper's smallest batch.
DEFAULT_PRESET = {
    "resnet50": "paper_resnet_256",
    "alexnet": "paper_alexnet_512",
    "alexnet_bn": "paper_alexnet_bn_512",
}
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
