"""The numpy epoch permutation equals Grain's own shuffle, position by position."""
import functools

import grain
import numpy as np
import pytest
from grain._src.python.experimental.index_shuffle.python import (
    index_shuffle_module as grain_index_shuffle)

from jaxtrain.data import index_shuffle, pipeline


@pytest.mark.parametrize("n,seed", [(256, 0), (1437, 3964924999), (4097, 2**32 - 1),
                                    (70000, 17)])
def test_permutation_is_grains_index_shuffle(n, seed):
  got = index_shuffle.permutation(n, seed)
  step = max(1, n // 500)  # Grain's function costs ~30 us a call from Python
  idx = list(range(0, n, step)) + [n - 1]
  expected = [grain_index_shuffle.index_shuffle(i, n - 1, seed, 4) for i in idx]
  np.testing.assert_array_equal(got[idx], expected)
  np.testing.assert_array_equal(np.sort(got), np.arange(n))


@pytest.mark.parametrize("n", [300, 20])  # vectorized, and the stream itself
def test_stream_order_over_epochs_equals_grains_stream(n):
  shuffled = grain.MapDataset.range(n).seed(11).shuffle()
  stream = shuffled.repeat(None).map_with_index(
      functools.partial(pipeline._tag_epoch, n))
  order = pipeline._StreamOrder(stream, n, shuffled._seed)
  positions = np.arange(n - 7, 3 * n + 5)  # crosses three epoch boundaries
  expected = np.asarray([stream[int(p)] for p in positions])
  np.testing.assert_array_equal(order(positions), expected)
