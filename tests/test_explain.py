"""Per-patch maps drawn per pixel (issue 15): overlapping patches averaged, uncovered margins blank."""
import numpy as np

from pyiqa_maclip.explain import _output_names, pixel_map


def test_overlapping_patches_are_averaged_and_margins_left_blank():
    # Two 4x4 patches at stride 2 on a 4x7 image: columns 0-1 one patch, 2-3 both, 4-5 the other, 6 none.
    boxes = np.array([[[0, 0, 4, 4], [0, 2, 4, 6]]])
    values = np.array([[1.0, 3.0]])
    result = pixel_map(values, boxes, 4, 7)
    assert result.shape == (4, 7)
    np.testing.assert_array_equal(result[:, :2], 1.0)
    np.testing.assert_array_equal(result[:, 2:4], 2.0)
    np.testing.assert_array_equal(result[:, 4:6], 3.0)
    assert np.isnan(result[:, 6]).all()


def test_maps_are_sampled_at_a_scale():
    boxes = np.array([[[0, 0, 200, 200]]])
    result = pixel_map(np.array([[0.5]]), boxes, 400, 200, scale=0.5)
    assert result.shape == (200, 100)
    assert np.all(result[:100] == 0.5) and np.isnan(result[100:]).all()


def test_output_names_are_unique(tmp_path):
    names = _output_names(['/a/x.png', '/b/x.jpg', '/c/y.png'], tmp_path)
    assert [p.name for p in names] == ['x_0_explain.png', 'x_1_explain.png', 'y_explain.png']
