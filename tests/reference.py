"""Independent NumPy references, written from the formulas (float64).

Nothing here imports keras_lars: these are what the package is checked against.
"""

import numpy as np


def polynomial_warmup(
    step, peak, decay_steps, warmup_steps=0, end=0.0, power=2.0, warmup_start=0.0
):
    """The paper's global rate at `step` (linear warm-up, then poly decay)."""
    if step < warmup_steps:
        return warmup_start + (peak - warmup_start) * step / warmup_steps
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return end + (peak - end) * (1.0 - progress) ** power


def lars_step(
    w,
    g,
    v,
    lr,
    *,
    momentum=0.9,
    weight_decay=0.0,
    trust_coefficient=0.001,
    epsilon=0.0,
    nesterov=False,
    denominator="sum_of_norms",
    larc_clip=False,
    learning_rate_outside_momentum=False,
    decayed=True,
    adapted=True,
):
    """One LARS step on one variable; returns the new (w, v).

    λ = η‖w‖ / (‖g‖ + β‖w‖ + ε) (or η‖w‖ / (‖g + βw‖ + ε)), λ = 1 on zero norms;
    v = m·v + γ·λ·(g + βw); w = w − v (Nesterov: w = w − (m·v + γ·λ·(g + βw))).
    With LARC clipping the local rate is min(λ, γ) instead of γ·λ.

    With the rate outside the momentum buffer (PyTorch's SGD, timm's Lars):
    u = m·u + λ·(g + βw); w = w − γ·u (Nesterov: w = w − γ·(m·u + λ·(g + βw)));
    LARC clipping as apex's LARC writes it: the buffer takes min(λ/γ, 1)·(g + βw),
    which is 1·(g + βw) at γ = 0 (λ/0 = ∞).
    """
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64)
    beta = weight_decay if decayed else 0.0
    decayed_gradient = g + beta * w
    ratio = trust_ratio(w, g, beta, trust_coefficient, epsilon, denominator) if adapted else None
    if learning_rate_outside_momentum:
        if ratio is None:
            buffer_rate = 1.0
        elif larc_clip:
            buffer_rate = 1.0 if lr == 0 else min(ratio / lr, 1.0)
        else:
            buffer_rate = ratio
        increment = buffer_rate * decayed_gradient
        u = momentum * v + increment
        w = w - lr * (momentum * u + increment if nesterov else u)
        return w, u
    local_lr = lr
    if ratio is not None:
        local_lr = min(ratio, lr) if larc_clip else lr * ratio
    step = local_lr * decayed_gradient
    v = momentum * v + step
    w = w - (momentum * v + step if nesterov else v)
    return w, v


def trust_ratio(w, g, beta, trust_coefficient, epsilon=0.0, denominator="sum_of_norms"):
    """λ = η‖w‖ / (‖g‖ + β‖w‖ + ε) (or η‖w‖ / (‖g + βw‖ + ε)); None when a norm
    is zero (the optimizer then uses the global rate)."""
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64)
    w_norm = np.linalg.norm(w)
    if denominator == "sum_of_norms":
        g_norm = np.linalg.norm(g)
        ratio_denominator = g_norm + beta * w_norm + epsilon
    else:
        g_norm = np.linalg.norm(g + beta * w)
        ratio_denominator = g_norm + epsilon
    if w_norm > 0 and g_norm > 0:
        return trust_coefficient * w_norm / ratio_denominator
    return None


def lars_run(weights, gradients_per_step, learning_rates, decayed, adapted, **hyper):
    """Runs `lars_step` over lists of variables for several steps."""
    weights = [np.asarray(w, np.float64) for w in weights]
    velocities = [np.zeros_like(w) for w in weights]
    for gradients, lr in zip(gradients_per_step, learning_rates):
        for i, g in enumerate(gradients):
            weights[i], velocities[i] = lars_step(
                weights[i], g, velocities[i], lr, decayed=decayed[i], adapted=adapted[i], **hyper
            )
    return weights, velocities


def momentum_corrected_lars_run(
    weights, gradients_per_step, learning_rates, decayed, adapted, **hyper
):
    """The paper's form with momentum correction (Goyal et al. 2017, §2.2;
    NVIDIA's MLPerf LARS): before each step the buffer is rescaled by
    γ_t/γ_{t−1}, then `lars_step`. Needs every γ > 0 (the rescale divides)."""
    assert all(lr > 0 for lr in learning_rates), "the correction divides by the previous rate"
    weights = [np.asarray(w, np.float64) for w in weights]
    velocities = [np.zeros_like(w) for w in weights]
    previous_lr = None
    for gradients, lr in zip(gradients_per_step, learning_rates):
        correction = 1.0 if previous_lr is None else lr / previous_lr
        for i, g in enumerate(gradients):
            weights[i], velocities[i] = lars_step(
                weights[i],
                g,
                correction * velocities[i],
                lr,
                decayed=decayed[i],
                adapted=adapted[i],
                **hyper,
            )
        previous_lr = lr
    return weights, velocities


def linear_mlp_gradients(params, x, y):
    """Gradients of the Keras MSE loss of Dense -> Dense (no activation).

    `params` is [W1, b1, W2, b2]; the loss is mean((x·W1 + b1)·W2 + b2 − y)².
    """
    w1, b1, w2, b2 = (np.asarray(p, np.float64) for p in params)
    hidden = x @ w1 + b1
    prediction = hidden @ w2 + b2
    d_prediction = 2.0 * (prediction - y) / prediction.size
    d_hidden = d_prediction @ w2.T
    return [x.T @ d_hidden, d_hidden.sum(0), hidden.T @ d_prediction, d_prediction.sum(0)]
