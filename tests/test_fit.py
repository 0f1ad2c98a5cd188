"""model.fit with LARS reproduces the NumPy reference, on every backend."""

import keras
import numpy as np
import pytest

import training

JIT_MODES = {"tensorflow": [False, True], "jax": [True], "torch": [False]}


@pytest.mark.parametrize("learning_rate_outside_momentum", [False, True])
@pytest.mark.parametrize("jit_compile", JIT_MODES[keras.backend.backend()])
def test_fit_matches_reference(jit_compile, learning_rate_outside_momentum):
    form = dict(learning_rate_outside_momentum=learning_rate_outside_momentum)
    x, y = training.data()
    net = training.model()
    net.compile(optimizer=training.optimizer(**form), loss="mse", jit_compile=jit_compile)
    net.fit(x, y, batch_size=training.BATCH, epochs=3, shuffle=False, verbose=0)
    for got, want in zip(net.get_weights(), training.reference_training(epochs=3, **form)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
