"""Image helpers: bounding boxes give find_objects' answer whatever the memory order."""

import numpy as np
import pytest
from scipy import ndimage

from AbdoSegLib.image import bounding_boxes


@pytest.mark.parametrize("order", ["C", "F"])
def test_bounding_boxes_equal_find_objects(order):
    rng = np.random.default_rng(0)
    labels = np.zeros((30, 25, 20), np.uint8)
    labels[3:10, 5:20, 2:4] = 1
    labels[20:29, 0:3, 10:19] = 3
    labels[rng.integers(0, 30), rng.integers(0, 25), rng.integers(0, 20)] = 4
    array = np.asarray(labels, order=order)
    assert array.flags.f_contiguous == (order == "F")
    assert bounding_boxes(array) == ndimage.find_objects(labels)
    assert bounding_boxes(array, max_label=4) == ndimage.find_objects(labels, max_label=4)
