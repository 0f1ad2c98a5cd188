"""The LARS paper's global schedule: linear warm-up, then polynomial decay."""

import keras
from keras import ops

from keras_lars._validation import check_integer
from keras_lars._validation import check_number


@keras.saving.register_keras_serializable(package="keras_lars")
class PolynomialWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `initial_learning_rate` (the peak), then polynomial decay.

    With `t` the step, `W = warmup_steps`, `T = decay_steps`:

    ```
    t <  W:      warmup_start + (initial − warmup_start) · t / W
    W <= t < W+T: end + (initial − end) · (1 − (t − W) / T) ^ power
    t >= W+T:    end
    ```

    The paper uses `power=2` (You et al. 2017). MLPerf's ResNet-50 LARS
    reference is this schedule with `warmup_start=0` and
    `decay_steps = train_steps − warmup_steps + 1`: at batch 4096 (313 steps an
    epoch, 5 warm-up epochs) it gives `initial_learning_rate` at step 1565.

    Args:
        initial_learning_rate: The peak rate, reached at the end of warm-up
            (Keras's `CosineDecay` calls it `warmup_target`). A float > 0.
        decay_steps: Number of steps of the decay phase, an int > 0.
        warmup_steps: Number of steps of linear warm-up, an int >= 0.
            Defaults to `0` (no warm-up).
        end_learning_rate: The rate after decay, a float >= 0. Defaults to
            `0.0`.
        power: The decay's exponent, a float > 0. Defaults to `2.0`.
        warmup_start_learning_rate: The rate at step 0, a float >= 0. Defaults
            to `0.0`.
        name: Optional name of the schedule.
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        warmup_steps=0,
        end_learning_rate=0.0,
        power=2.0,
        warmup_start_learning_rate=0.0,
        name="polynomial_warmup",
    ):
        check_number("initial_learning_rate", initial_learning_rate, low=0.0)
        if initial_learning_rate == 0:
            raise ValueError(
                "`initial_learning_rate` is the peak rate, reached at the end of the warm-up "
                "(what Keras's CosineDecay calls `warmup_target`), so it must be > 0; the "
                "rate at step 0 is `warmup_start_learning_rate`. Received: "
                "initial_learning_rate=0"
            )
        for arg, value in (
            ("end_learning_rate", end_learning_rate),
            ("warmup_start_learning_rate", warmup_start_learning_rate),
        ):
            check_number(arg, value, low=0.0)
        check_integer("decay_steps", decay_steps, low=1)
        check_integer("warmup_steps", warmup_steps, low=0)
        check_number("power", power, low=0.0, low_inclusive=False)
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.warmup_steps = int(warmup_steps)
        self.end_learning_rate = float(end_learning_rate)
        self.power = float(power)
        self.warmup_start_learning_rate = float(warmup_start_learning_rate)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.initial_learning_rate
        # max(W, 1) keeps 0/0 out of the branch `where` discards when W = 0.
        warmup_fraction = step / max(self.warmup_steps, 1)
        warmup = (
            self.warmup_start_learning_rate
            + (peak - self.warmup_start_learning_rate) * warmup_fraction
        )
        decay_fraction = ops.minimum(step - self.warmup_steps, self.decay_steps) / (
            self.decay_steps
        )
        decay = self.end_learning_rate + (peak - self.end_learning_rate) * ops.power(
            1.0 - decay_fraction, self.power
        )
        return ops.where(step < self.warmup_steps, warmup, decay)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "warmup_steps": self.warmup_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "warmup_start_learning_rate": self.warmup_start_learning_rate,
            "name": self.name,
        }
