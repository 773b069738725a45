import numpy as np
import pytest

from stages.core.quantize import dequantize, quantize


def test_round_trip_error_is_within_half_a_step_per_token():
    rng = np.random.default_rng(0)
    # tokens of very different norms: the per-token scale keeps each one's relative error small
    x = rng.standard_normal((3, 4, 5, 64)).astype(np.float32) * rng.uniform(1e-3, 1e3, (3, 4, 5, 1)).astype(np.float32)
    q, scale = quantize(x)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (3, 4, 5, 1)
    back = dequantize(q, scale)
    assert np.all(np.abs(back - x) <= scale / 2 + 1e-6 * np.abs(x))
    cos = (back * x).sum(-1) / (np.linalg.norm(back, axis=-1) * np.linalg.norm(x, axis=-1))
    assert cos.min() > 0.999


def test_zero_tokens_stay_zero_and_non_finite_is_refused():
    x = np.zeros((2, 8), np.float32)
    x[1] = np.arange(8)
    q, scale = quantize(x)
    assert scale[0, 0] == 0 and np.all(dequantize(q, scale)[0] == 0)
    np.testing.assert_allclose(dequantize(q, scale)[1], x[1], atol=7 / 254)
    with pytest.raises(ValueError, match="non-finite"):
        quantize(np.array([[np.nan, 1.0]]))
