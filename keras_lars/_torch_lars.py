"""LARS's update on PyTorch: every variable at once, with multi-tensor kernels.

The rule's scalars come from `LARS.variable_rates`, called once with vectors
(one entry per variable); this module only applies them to the tensors for
PyTorch's eager execution, where each op is one kernel launch per tensor
unless it is a `torch._foreach_*` kernel over a list, as in Keras's own
PyTorch optimizers. It reads the optimizer through `LARS`'s per-variable
accessors (`variable_index`, `is_decayed`, `is_adapted`, `momentum_slot`,
`trust_ratio_slot`). Imported only on the torch backend.
"""

import keras
import torch

# Variable dtypes `update_all` takes; others need the float32 (float64)
# arithmetic and the casts of `LARS.update_step`.
MULTI_TENSOR_DTYPES = ("float32",)


def handles(variables):
    """Whether `update_all` takes these variables."""
    return all(keras.backend.standardize_dtype(v.dtype) in MULTI_TENSOR_DTYPES for v in variables)


def update_all(optimizer, grads, variables, learning_rate):
    """`optimizer.update_step` for every variable at once, every full-size
    update done in place (a fresh full-size tensor costs more than the update
    on a CPU). With `ρ`, `s` and `β` of `LARS.variable_rates` and the step
    rate `r = s·ρ` (`r = ρ` where `s` is None):

        v ← m·v + ρ·g + ρ·β·w      (addcmul_ twice)
        w ← w − s·v                 (Nesterov: w ← w·(1 − r·β) − s·m·v − r·g)

    Without momentum: w ← w·(1 − r·β) − r·g.
    """
    with torch.no_grad():
        count = len(variables)
        indices = [optimizer.variable_index(v) for v in variables]
        weights = [v.value for v in variables]
        grads = list(grads)
        device = weights[0].device if weights else None
        decayed = [k for k, i in enumerate(indices) if optimizer.is_decayed(i)]
        adapted = [k for k, i in enumerate(indices) if optimizer.is_adapted(i)]

        def mask(positions):  # a Python bool where all agree: no vector needed
            if len(positions) in (0, count):
                return bool(positions)
            vector = torch.zeros(count, dtype=torch.bool)
            vector[positions] = True
            return vector.to(device)

        def norms(c):  # ‖w‖ and ‖g + c·w‖ of the adapted variables, 0 elsewhere
            adapted_weights = [weights[k] for k in adapted]
            adapted_grads = [grads[k] for k in adapted]
            # ‖g + c·w‖ with c ≠ 0 ("norm_of_sum"): the one case that needs g + βw whole
            if isinstance(c, torch.Tensor):  # c: one β per variable
                adapted_grads = torch._foreach_addcmul(
                    adapted_grads, adapted_weights, c[adapted].unbind()
                )
            elif c:
                adapted_grads = torch._foreach_add(adapted_grads, adapted_weights, alpha=c)
            if len(adapted) == count:
                return (
                    torch.stack(torch._foreach_norm(adapted_weights)),
                    torch.stack(torch._foreach_norm(adapted_grads)),
                )
            weight_norm = torch.zeros(count, device=device)
            gradient_norm = torch.zeros(count, device=device)
            weight_norm[adapted] = torch.stack(torch._foreach_norm(adapted_weights))
            gradient_norm[adapted] = torch.stack(torch._foreach_norm(adapted_grads))
            return weight_norm, gradient_norm

        def per_variable(x):  # a scalar or a vector, as one entry per variable
            return torch.as_tensor(x, dtype=torch.float32, device=device).expand(count)

        rates = optimizer.variable_rates(
            keras.ops.cast(learning_rate, "float32"), mask(decayed), mask(adapted), norms
        )
        tracked = [optimizer.trust_ratio_slot(i) for i in indices]
        if tracked and tracked[0] is not None:
            torch._foreach_copy_(
                [t.value for t in tracked], per_variable(rates.trust_ratio).unbind()
            )
        # Scalar arithmetic on vectors, then one 0-d view per variable: a few
        # kernels, not one per variable.
        buffer_rates = per_variable(rates.buffer_rate)
        scale = rates.buffer_scale
        step_rates = buffer_rates if scale is None else scale * buffer_rates
        negative_step_rates = (-step_rates).unbind()
        decay_rates = keep_rates = ()
        if decayed:
            decay = per_variable(rates.decay)
            decay_rates = (buffer_rates * decay)[decayed].unbind()
            keep_rates = (1 - step_rates * decay)[decayed].unbind()
        velocities = [optimizer.momentum_slot(i) for i in indices]
        if not velocities or velocities[0] is None:
            if decayed:  # the kernels refuse an empty list
                torch._foreach_mul_([weights[k] for k in decayed], keep_rates)
            torch._foreach_addcmul_(weights, grads, negative_step_rates)
            return
        velocities = [v.value for v in velocities]
        momentum = optimizer.momentum
        torch._foreach_mul_(velocities, momentum)
        torch._foreach_addcmul_(velocities, grads, buffer_rates.unbind())
        if decayed:
            torch._foreach_addcmul_(
                [velocities[k] for k in decayed], [weights[k] for k in decayed], decay_rates
            )
        if optimizer.nesterov:
            if decayed:
                torch._foreach_mul_([weights[k] for k in decayed], keep_rates)
            if scale is None:
                torch._foreach_add_(weights, velocities, alpha=-momentum)
            else:
                torch._foreach_addcmul_(weights, velocities, [-momentum * scale] * count)
            torch._foreach_addcmul_(weights, grads, negative_step_rates)
        elif scale is None:
            torch._foreach_sub_(weights, velocities)
        else:
            torch._foreach_addcmul_(weights, velocities, [-scale] * count)
