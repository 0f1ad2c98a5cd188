"""Every private part of Keras that keras_lars uses, and nothing else.

Keras does not promise these names. `SIGNATURES` lists each one with its
parameters (attributes: `None`), and tests/test_lars_api.py checks every entry
by name against the installed Keras, signature and behaviour, so that a Keras
release that moves one fails that test naming it.

Read or called, through the functions below:

- `Optimizer._var_key(variable)`: the key Keras files a variable under (on
  TensorFlow the same for a variable and its `tf.Variable` or distributed
  copies): exclusions by object are matched with it.
- `Optimizer._get_variable_index(variable)`: a variable's position in the
  list the optimizer was built with, on every backend and inside
  `update_step` (where TensorFlow passes raw `tf.Variable`s).
- `Optimizer._iterations`: the micro-step counter; the public `iterations`
  counts whole updates under gradient accumulation.
- `Optimizer._learning_rate`: the learning rate as given (a schedule, a
  callable or a variable); the public `learning_rate` evaluates it.

Overridden, by `Optimizer` below, which routes each hook Keras calls to a
method of its own:

- `_backend_update_step(grads, trainable_variables, learning_rate)`, called
  with every variable's gradient once per update: `_update_all`.
- `_get_current_learning_rate()`, behind the `learning_rate` property:
  `_current_learning_rate`.
- `_apply_weight_decay(variables)`, Keras's decoupled decay before
  `update_step`: skipped where `decoupled_weight_decay` is False.
"""

import keras

# name -> its parameters after `self` (a method), or None (an attribute).
SIGNATURES = {
    "_var_key": ("variable",),
    "_get_variable_index": ("variable",),
    "_iterations": None,
    "_learning_rate": None,
    "_backend_update_step": ("grads", "trainable_variables", "learning_rate"),
    "_get_current_learning_rate": (),
    "_apply_weight_decay": ("variables",),
}


def var_key(optimizer, variable):
    """The key `optimizer` files `variable` under."""
    return optimizer._var_key(variable)


def variable_index(optimizer, variable):
    """`variable`'s position in the list `optimizer` was built with."""
    return optimizer._get_variable_index(variable)


def micro_steps(optimizer):
    """The counter of `apply_gradients` calls (micro-steps), a variable."""
    return optimizer._iterations


def given_learning_rate(optimizer):
    """The learning rate as given: a schedule, a callable or a variable."""
    return optimizer._learning_rate


class Optimizer(keras.optimizers.Optimizer):
    """`keras.optimizers.Optimizer` with its private hooks routed to methods
    a subclass overrides; by default each does what Keras does."""

    # Whether Keras's decoupled (AdamW-style) decay runs before `update_step`.
    decoupled_weight_decay = True

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        return self._update_all(grads, trainable_variables, learning_rate)

    def _update_all(self, grads, variables, learning_rate):
        """One update of every variable: Keras's backend loop of `update_step`."""
        return super()._backend_update_step(grads, variables, learning_rate)

    def _get_current_learning_rate(self):
        return self._current_learning_rate()

    def _current_learning_rate(self):
        """The global rate of this update (Keras: the schedule at `_iterations`)."""
        return super()._get_current_learning_rate()

    def _apply_weight_decay(self, variables):
        if self.decoupled_weight_decay:
            super()._apply_weight_decay(variables)
