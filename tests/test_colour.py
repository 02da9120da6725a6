import numpy as np

from segbatch.colour import blend, colourise, heatmap


def test_colourise_uses_the_palette_and_blacks_out_nodata():
    labels = np.array([[0, 1], [255, 1]], np.uint8)
    rgb = colourise(labels, [(10, 20, 30), (40, 50, 60)])
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 1].tolist() == [40, 50, 60]
    assert rgb[1, 0].tolist() == [0, 0, 0]


def test_heatmap_is_monotone_in_brightness_and_nan_is_black():
    values = np.array([[0.0, 0.25, 0.5, 1.0, 2.0, np.nan]])
    rgb = heatmap(values, vmax=1.0).astype(int)
    brightness = rgb.sum(axis=-1)[0]
    assert list(brightness[:4]) == sorted(brightness[:4]) and brightness[0] < brightness[3]
    assert rgb[0, 4].tolist() == rgb[0, 3].tolist()  # clipped at vmax
    assert rgb[0, 5].tolist() == [0, 0, 0]


def test_blend_mixes_by_alpha():
    a = np.zeros((1, 1, 3), np.uint8)
    b = np.full((1, 1, 3), 200, np.uint8)
    assert blend(a, b, 0.25)[0, 0].tolist() == [50, 50, 50]
