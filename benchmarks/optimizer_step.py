r"""Optimizer step time: LARS against Keras SGD with momentum, in the same run.

Applies fixed random gradients to the trainable variables of ResNet-50
(25.6 M parameters in 214 variables) and reports the median time of one
`apply_gradients` step for SGD(momentum=0.9) and for `keras_lars.LARS`, and
their ratio, with Keras's Lamb (two norms per variable, like LARS) as a second
yardstick. LARS reads w and g once more than SGD (for the norms): 28 bytes a
parameter against SGD's 20, so where the step is bandwidth-bound LARS takes
at least 1.4x SGD's time.
Results and the choices they led to: benchmarks/RESULTS.md.

    KERAS_BACKEND=tensorflow python -m benchmarks.optimizer_step [--jit]
    KERAS_BACKEND=jax python -m benchmarks.optimizer_step   # jax.jit always
    KERAS_BACKEND=jax python -m benchmarks.optimizer_step --inner 20   # on a GPU
    KERAS_BACKEND=torch python -m benchmarks.optimizer_step # eager
    KERAS_BACKEND=torch python -m benchmarks.optimizer_step --torch_compile

Peers, in the same run, with every variable adapted and decayed (as they
do it) and keras_lars configured the same ("LARS, all adapted"): on JAX
`optax.lars`; on PyTorch timm's `Lars` when timm is installed (its
`timm/optim/lars.py` is loaded alone, so timm's other dependencies are not
needed: `pip install --no-deps timm`), else that row is left out.

`--torch_compile` adds a row for LARS whose multi-tensor PyTorch step
(keras_lars/_torch_lars.py) runs through `torch.compile` (Inductor fuses the
chains of `_foreach` kernels), and reports its compile time (the first call).

On a GPU one jitted call costs more host time (flattening ~640 arrays) than
the step costs the device: `--inner N` runs N steps inside one call.
`--memory` also reports each optimizer's peak memory during a step beyond
what it holds between steps (the variables, gradients and its slots), each
measured in a fresh process: Linux's peak resident size (VmHWM) is reset
after the warm-up steps and read after the timed ones.
"""

import argparse
import importlib
import importlib.util
import os
import pathlib
import statistics
import subprocess
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lars  # noqa: E402


def model_variables(name):
    if name == "resnet50":
        model = keras.applications.ResNet50(weights=None)
    else:  # a small stand-in for quick checks
        model = keras.Sequential(
            [
                keras.Input((32, 32, 3)),
                keras.layers.Conv2D(64, 3),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ]
        )
    return model.trainable_variables


def step_function(optimizer, variables, gradients, jit, inner=1):
    """A zero-argument callable doing `inner` steps, and one that waits for them."""
    backend = keras.backend.backend()
    optimizer.build(variables)
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=jit)
        def step():
            optimizer.apply_gradients(zip(gradients, variables))

        return step, tf.test.experimental.sync_devices  # GPUs run asynchronously
    if backend == "jax":
        import jax

        state = {
            "train": [v.value for v in variables],
            "opt": [v.value for v in optimizer.variables],
        }

        def apply_steps(opt, grads, train):  # grads an argument: a constant would be folded
            def body(_, carry):
                # The barrier makes the gradients look new each pass: without
                # it XLA takes their norms once, outside the loop.
                g, (train, opt) = jax.lax.optimization_barrier((grads, carry))
                return optimizer.stateless_apply(opt, g, train)

            return jax.lax.fori_loop(0, inner, body, (train, opt))

        apply = jax.jit(apply_steps)

        def step():
            state["train"], state["opt"] = apply(state["opt"], gradients, state["train"])

        return step, lambda: jax.block_until_ready(state["train"])
    import torch

    wait = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None  # CUDA is async
    return lambda: optimizer.apply_gradients(zip(gradients, variables)), wait


def median_ms(step, wait, steps, inner=1, warmup=3):
    for _ in range(warmup):
        step()
    wait()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        wait()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / inner


class TorchCompiledLARS(keras_lars.LARS):
    """LARS whose multi-tensor PyTorch step runs through `torch.compile`."""

    def _update_all(self, grads, trainable_variables, learning_rate):
        import torch

        from keras_lars import _torch_lars

        if not _torch_lars.handles(trainable_variables):
            return super()._update_all(grads, trainable_variables, learning_rate)
        if not hasattr(self, "_compiled_update_all"):
            self._compiled_update_all = torch.compile(_torch_lars.update_all)
        return self._compiled_update_all(self, grads, trainable_variables, learning_rate)


TIMM_OPTIM_ALONE = "timm_optim_alone"
PEER_HYPERPARAMETERS = dict(learning_rate=1.0, momentum=0.9, weight_decay=5e-4, trust=0.001)


def all_adapted_lars():
    """keras_lars.LARS as the peers run: no variable left out of decay or
    adaptation."""
    h = PEER_HYPERPARAMETERS
    return keras_lars.LARS(
        h["learning_rate"],
        momentum=h["momentum"],
        weight_decay=h["weight_decay"],
        trust_coefficient=h["trust"],
        weight_decay_exclude_patterns=(),
        adaptation_exclude_patterns=(),
    )


def optax_lars_step(variables, gradients, inner):
    """`optax.lars`'s step on copies of `variables`, jitted as LARS's is."""
    import jax
    import optax

    h = PEER_HYPERPARAMETERS
    transform = optax.lars(
        h["learning_rate"],
        weight_decay=h["weight_decay"],
        trust_coefficient=h["trust"],
        momentum=h["momentum"],
    )
    params = [jax.numpy.array(v.value) for v in variables]
    state = {"params": params, "opt": transform.init(params)}

    def apply_steps(params, opt, grads):
        def body(_, carry):
            g, (params, opt) = jax.lax.optimization_barrier((grads, carry))
            updates, opt = transform.update(g, opt, params)
            return optax.apply_updates(params, updates), opt

        return jax.lax.fori_loop(0, inner, body, (params, opt))

    apply = jax.jit(apply_steps)

    def step():
        state["params"], state["opt"] = apply(state["params"], state["opt"], gradients)

    return step, lambda: jax.block_until_ready(state["params"])


def timm_lars_class():
    """timm's `Lars`, loaded from `timm/optim/` without running timm's
    package imports (its `lars.py` and `_helpers.py` need only PyTorch), or
    None when timm is not installed."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    # An empty stand-in for the `timm.optim` package, so that `lars.py`'s
    # relative import finds `_helpers.py` beside it.
    package = types.ModuleType(TIMM_OPTIM_ALONE)
    package.__path__ = [str(pathlib.Path(spec.submodule_search_locations[0]) / "optim")]
    sys.modules[TIMM_OPTIM_ALONE] = package
    return importlib.import_module(f"{TIMM_OPTIM_ALONE}.lars").Lars


def timm_lars_step(lars_class, variables, gradients):
    """timm's `Lars` step on copies of `variables`, eager as LARS's is."""
    import torch

    h = PEER_HYPERPARAMETERS
    params = [torch.nn.Parameter(v.value.detach().clone()) for v in variables]
    for param, gradient in zip(params, gradients):
        param.grad = gradient
    optimizer = lars_class(
        params,
        lr=h["learning_rate"],
        momentum=h["momentum"],
        weight_decay=h["weight_decay"],
        trust_coeff=h["trust"],
    )
    wait = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    return optimizer.step, wait


def peer_steps(variables, gradients, inner):
    """{row name: (step, wait)} of the peers this backend has."""
    backend = keras.backend.backend()
    if backend == "jax":
        return {"optax.lars": optax_lars_step(variables, gradients, inner)}
    if backend == "torch":
        lars_class = timm_lars_class()
        if lars_class is None:
            print("timm is not installed: its Lars row is left out (pip install --no-deps timm)")
            return {}
        return {"timm Lars": timm_lars_step(lars_class, variables, gradients)}
    return {}


def first_call_seconds(step, wait):
    start = time.perf_counter()
    step()
    wait()
    return time.perf_counter() - start


OPTIMIZERS = {
    "SGD(momentum=0.9)": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "LARS": lambda: keras_lars.LARS(1.0),
    # Keras's own layer-wise optimizer: what a per-variable norm costs there.
    "Lamb": lambda: keras.optimizers.Lamb(1e-3),
}


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def step_peak_mib(args, variables, gradients):
    """Peak resident memory during the timed steps beyond the resident memory
    before them, in MiB (run in its own process)."""
    step, wait = step_function(OPTIMIZERS[args.one](), variables, gradients, args.jit, args.inner)
    for _ in range(3):
        step()
    wait()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = status_kib("VmRSS")
    for _ in range(args.steps):
        step()
    wait()
    return (status_kib("VmHWM") - before) / 1024


def measure_memory(args):
    peaks = {}
    for name in OPTIMIZERS:
        command = [sys.executable, "-m", "benchmarks.optimizer_step", f"--one={name}"]
        command += ["--model", args.model, "--steps", str(args.steps)]
        command += ["--inner", str(args.inner)] + (["--jit"] if args.jit else [])
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        peaks[name] = float(output.strip().splitlines()[-1])
    return peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet50", "small"], default="resnet50")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--jit", action="store_true", help="XLA on TensorFlow")
    parser.add_argument("--memory", action="store_true", help="also peak memory of a step")
    parser.add_argument(
        "--inner",
        type=int,
        default=1,
        help="JAX: steps per jitted call (a fori_loop), so that the host's dispatch of "
        "~640 arrays a call is not timed",
    )
    parser.add_argument(
        "--torch_compile",
        action="store_true",
        help="PyTorch: also time LARS with its multi-tensor step under torch.compile",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # --memory's child processes
    args = parser.parse_args()
    if args.inner < 1:
        parser.error(f"--inner must be >= 1, got {args.inner}")
    if args.inner != 1 and keras.backend.backend() != "jax":
        parser.error("--inner is for the JAX backend")
    if args.torch_compile and keras.backend.backend() != "torch":
        parser.error("--torch_compile is for the PyTorch backend")
    if args.torch_compile and args.memory:
        parser.error("--memory measures the eager optimizers only")
    optimizers = dict(OPTIMIZERS)
    if args.torch_compile:
        optimizers["LARS (torch.compile)"] = lambda: TorchCompiledLARS(1.0)
    variables = model_variables(args.model)
    rng = np.random.default_rng(0)
    gradients = [
        keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32")) for v in variables
    ]
    if args.one:
        print(step_peak_mib(args, variables, gradients))
        return
    parameters = sum(int(np.prod(v.shape)) for v in variables)
    results, compile_seconds = {}, {}
    for name, make in optimizers.items():
        optimizer = make()
        step, wait = step_function(optimizer, variables, gradients, args.jit, args.inner)
        if isinstance(optimizer, TorchCompiledLARS):
            compile_seconds[name] = first_call_seconds(step, wait)
        results[name] = median_ms(step, wait, args.steps, args.inner)
    peers = peer_steps(variables, gradients, args.inner)
    if peers:
        step, wait = step_function(all_adapted_lars(), variables, gradients, args.jit, args.inner)
        results["LARS, all adapted"] = median_ms(step, wait, args.steps, args.inner)
    for name, (step, wait) in peers.items():
        results[name] = median_ms(step, wait, args.steps, args.inner)
    sgd = results["SGD(momentum=0.9)"]
    backend = keras.backend.backend()
    compiler = {"jax": "jax.jit", "torch": "nothing (eager)"}.get(
        backend, "XLA" if args.jit else "tf.function graph"
    )
    print(
        f"{args.model}: {parameters / 1e6:.1f} M parameters in {len(variables)} variables; "
        f"backend {backend}, compiled with {compiler}, median of {args.steps} calls of "
        f"{args.inner} step(s)"
    )
    peaks = measure_memory(args) if args.memory else {}
    print("| optimizer | ms/step | ratio to SGD |" + (" peak MiB in a step |" if peaks else ""))
    print("|---|---:|---:|" + ("---:|" if peaks else ""))
    for name, ms in results.items():
        memory = f" {peaks[name]:.0f} |" if name in peaks else (" |" if peaks else "")
        print(f"| {name} | {ms:.2f} | {ms / sgd:.2f} |{memory}")
    print(f"LARS / SGD: {results['LARS'] / sgd:.2f}")
    for name in peers:
        print(f"LARS, all adapted / {name}: {results['LARS, all adapted'] / results[name]:.2f}")
    for name, seconds in compile_seconds.items():
        print(f"{name}: first call (compilation) {seconds:.1f} s")
        print(f"{name} / LARS (eager): {results[name] / results['LARS']:.2f}")


if __name__ == "__main__":
    main()
