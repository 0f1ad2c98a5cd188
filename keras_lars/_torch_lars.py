"""LARS's update on PyTorch: every variable at once, with multi-tensor kernels.

The rule is `LARS`'s (keras_lars/lars.py: `_buffer_rate`, `_unadapted_rate`
and `_trust_ratio` are called from here); this module only arranges it for
PyTorch's eager execution, where each op is one kernel launch per tensor
unless it is a `torch._foreach_*` kernel over a list, as in Keras's own
PyTorch optimizers (keras/src/backend/torch/optimizers/). Imported only on the
torch backend.
"""

import keras
import torch

from keras_lars.lars import SUM_OF_NORMS


def handles(variables):
    """Whether `update_all` takes these variables: float32 only. Other dtypes
    need the float32 (float64) step of `LARS.update_step` and its casts."""
    return all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in variables)


def update_all(optimizer, grads, variables, learning_rate):
    """`optimizer.update_step` for every variable at once: the buffer rates
    computed as one vector, and every full-size update done in place (a fresh
    full-size tensor costs more than the update on a CPU). With ρ the rate
    `g̃ = g + β·w` enters the buffer with and r the rate `w` moves with
    directly (both `γ·λ` in the paper's form; `λ` and `γ·λ` with the rate
    outside the buffer, where `w` moves by `s = γ` times the buffer; s = 1 in
    the paper's form):

        v ← m·v + ρ·g + ρ·β·w      (addcmul_ twice)
        w ← w − s·v                 (Nesterov: w ← w·(1 − r·β) − s·m·v − r·g)

    Without momentum: w ← w·(1 − r·β) − r·g.
    """
    with torch.no_grad():
        indices = [optimizer._get_variable_index(v) for v in variables]
        weights = [v.value for v in variables]
        grads = list(grads)
        decayed = [k for k, i in enumerate(indices) if i in optimizer._decayed_indices]
        adapted = [k for k, i in enumerate(indices) if i in optimizer._adapted_indices]
        is_decayed = set(decayed)
        weight_decay = optimizer.weight_decay
        learning_rate = keras.ops.cast(learning_rate, "float32")
        rate_outside = optimizer._rate_outside_buffer
        rates = [optimizer._unadapted_rate(learning_rate)] * len(variables)
        device = weights[0].device if weights else None
        trust_ratios = [torch.ones((), device=device)] * len(variables)
        if adapted:
            if optimizer.trust_ratio_denominator == SUM_OF_NORMS:
                norm_of = [grads[k] for k in adapted]
            else:  # ‖g + βw‖: the one case that needs g + βw whole
                norm_of = [
                    grads[k] + weight_decay * weights[k] if k in is_decayed else grads[k]
                    for k in adapted
                ]
            decay = torch.tensor(
                [weight_decay if k in is_decayed else 0.0 for k in adapted], device=device
            )
            adapted_rates, ratios = optimizer._buffer_rate(
                torch.stack(torch._foreach_norm([weights[k] for k in adapted])),
                torch.stack(torch._foreach_norm(norm_of)),
                decay,
                learning_rate,
            )
            for k, rate, ratio in zip(adapted, adapted_rates.unbind(), ratios.unbind()):
                rates[k], trust_ratios[k] = rate, ratio
        if optimizer._trust_ratios:
            torch._foreach_copy_(
                [optimizer._trust_ratios[i].value for i in indices],
                [r.to(torch.float32) for r in trust_ratios],
            )
        # Scalar arithmetic on vectors, then one 0-d view per variable: a few
        # kernels, not one per variable.
        buffer_rates = torch.stack(rates)
        step_rates = learning_rate * buffer_rates if rate_outside else buffer_rates
        negative_step_rates = (-step_rates).unbind()
        decay_rates = keep_rates = ()
        if decayed:
            decay_rates = (buffer_rates[decayed] * weight_decay).unbind()
            keep_rates = (1 - step_rates[decayed] * weight_decay).unbind()
        if not optimizer.momentums:
            torch._foreach_mul_([weights[k] for k in decayed], keep_rates)
            torch._foreach_addcmul_(weights, grads, negative_step_rates)
            return
        velocities = [optimizer.momentums[i].value for i in indices]
        torch._foreach_mul_(velocities, optimizer.momentum)
        torch._foreach_addcmul_(velocities, grads, buffer_rates.unbind())
        if decayed:
            torch._foreach_addcmul_(
                [velocities[k] for k in decayed], [weights[k] for k in decayed], decay_rates
            )
        if optimizer.nesterov:
            torch._foreach_mul_([weights[k] for k in decayed], keep_rates)
            if rate_outside:
                scaled_momentum = -optimizer.momentum * learning_rate
                torch._foreach_addcmul_(weights, velocities, [scaled_momentum] * len(weights))
            else:
                torch._foreach_add_(weights, velocities, alpha=-optimizer.momentum)
            torch._foreach_addcmul_(weights, grads, negative_step_rates)
        elif rate_outside:
            torch._foreach_addcmul_(weights, velocities, [-learning_rate] * len(weights))
        else:
            torch._foreach_sub_(weights, velocities)
