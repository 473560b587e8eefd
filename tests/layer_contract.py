"""The contract every custom Keras layer and model of the package keeps, checked in one place.

As keras-hub's `TestCase.run_layer_test`: the object builds, a call gives the
documented output shapes, `from_config(get_config())` rebuilds it, and a
`.keras` file saved and loaded gives the same outputs.
"""

from __future__ import annotations

import pathlib

import keras
import numpy as np


def _shapes(outputs):
    if isinstance(outputs, dict):
        return {k: tuple(v.shape) for k, v in outputs.items()}
    if isinstance(outputs, (tuple, list)):
        return tuple(tuple(o.shape) for o in outputs)
    return tuple(outputs.shape)


def _arrays(outputs):
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    if isinstance(outputs, (tuple, list)):
        return [np.asarray(o) for o in outputs]
    return [np.asarray(outputs)]


def run_layer_test(make, inputs, expected_shapes, tmp_path: pathlib.Path,
                   call_kwargs: dict | None = None) -> keras.layers.Layer:
    """Checks the contract for the layer `make()` returns on `inputs`; returns the layer.

    expected_shapes: the output shape, or a tuple/dict of them as the layer returns.
    """
    call_kwargs = call_kwargs or {}
    layer = make()
    outputs = layer(inputs, **call_kwargs)
    assert _shapes(outputs) == expected_shapes
    # The configuration rebuilds an equal layer.
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    # A .keras file round trip keeps the outputs: a model saves itself; a layer is
    # saved inside a functional model of its inputs.
    if isinstance(layer, keras.Model):
        wrapped = layer
    elif isinstance(inputs, (list, tuple)):
        symbolic = [keras.Input(shape=np.shape(i)[1:]) for i in inputs]
        wrapped = keras.Model(symbolic, layer(symbolic, **call_kwargs))
    else:
        symbolic = keras.Input(shape=np.shape(inputs)[1:])
        wrapped = keras.Model(symbolic, layer(symbolic, **call_kwargs))
    path = tmp_path / f"{layer.name}.keras"
    wrapped.save(path)
    loaded = keras.models.load_model(path)
    assert any(type(l) is type(layer) for l in [loaded, *loaded.layers])
    after = loaded(inputs, **call_kwargs) if wrapped is layer else loaded(inputs)
    before, after = _arrays(outputs), _arrays(after)
    if isinstance(before, dict):
        for key in before:
            np.testing.assert_allclose(after[key], before[key], rtol=1e-5, atol=1e-6,
                                       err_msg=key)
    else:
        for b, a in zip(before, after):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    return layer
