"""LARS's update on PyTorch: every variable at once, with multi-tensor kernels.

The rule is `LARS`'s (keras_lars/lars.py: `_local_rate` and `_trust_ratio`
are called from here); this module only arranges it for PyTorch's eager
execution, where each op is one kernel launch per tensor unless it is a
`torch._foreach_*` kernel over a list, as in Keras's own PyTorch optimizers
(keras/src/backend/torch/optimizers/). Imported only on the torch backend.
"""

import keras
import torch

from keras_lars.lars import SUM_OF_NORMS


def handles(variables):
    """Whether `update_all` takes these variables: float32 only. Other dtypes
    need the float32 (float64) step of `LARS.update_step` and its casts."""
    return all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in variables)


def update_all(optimizer, grads, variables, learning_rate):
    """`optimizer.update_step` for every variable at once: `λ` computed as one
    vector, and every full-size update done in place (a fresh full-size tensor
    costs more than the update on a CPU): with r the local rate,

        v ← m·v + r·g + r·β·w      (addcmul_ twice)
        w ← w − v                   (Nesterov: w ← w·(1 − r·β) − m·v − r·g)
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
        rates = [learning_rate] * len(variables)
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
            adapted_rates, ratios = optimizer._local_rate(
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
        negative_rates = (-torch.stack(rates)).unbind()
        decay_rates = keep_rates = ()
        if decayed:
            decay_vector = torch.stack([rates[k] for k in decayed]) * weight_decay
            decay_rates, keep_rates = decay_vector.unbind(), (1 - decay_vector).unbind()
        if not optimizer.momentums:
            torch._foreach_mul_([weights[k] for k in decayed], keep_rates)
            torch._foreach_addcmul_(weights, grads, negative_rates)
            return
        velocities = [optimizer.momentums[i].value for i in indices]
        torch._foreach_mul_(velocities, optimizer.momentum)
        torch._foreach_addcmul_(velocities, grads, rates)
        if decayed:
            torch._foreach_addcmul_(
                [velocities[k] for k in decayed], [weights[k] for k in decayed], decay_rates
            )
        if optimizer.nesterov:
            torch._foreach_mul_([weights[k] for k in decayed], keep_rates)
            torch._foreach_add_(weights, velocities, alpha=-optimizer.momentum)
            torch._foreach_addcmul_(weights, grads, negative_rates)
        else:
            torch._foreach_sub_(weights, velocities)
