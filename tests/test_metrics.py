import functools
import math

import pytest
import torch

from aigc.data import shapes
from aigc.metrics import classifier
from aigc.metrics.features import fid, kid, precision_recall
from aigc.metrics.images import class_entropy


def _gauss(n, d=16, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    x = _gauss(3000)
    assert abs(fid(x, x)) < 1e-6
    noisy = [fid(x, x + s * _gauss(3000, seed=1)) for s in (0.1, 0.5, 1.0)]
    assert noisy[0] < noisy[1] < noisy[2]
    # known closed form for two Gaussians with equal covariance: ||mu_1 - mu_2||^2
    assert fid(_gauss(20000), _gauss(20000, shift=1.0, seed=2)) == pytest.approx(16.0, rel=0.05)


def test_kid_unbiased_on_identical_distributions():
    m, s = kid(_gauss(2000), _gauss(2000, seed=5), subsets=20, subset_size=500)
    assert abs(m) < 3 * s / math.sqrt(20) + 1e-3                      # centred on 0, not positive-biased
    m2, _ = kid(_gauss(2000), _gauss(2000, shift=0.5, seed=5), subsets=20, subset_size=500)
    assert m2 > 10 * abs(m)


def test_precision_recall_identical_sets():
    x = _gauss(1000)
    p, r = precision_recall(x, x.clone())
    assert p == pytest.approx(1.0) and r == pytest.approx(1.0)
    p2, r2 = precision_recall(x, _gauss(1000, shift=5.0, seed=3))
    assert p2 < 0.05 and r2 < 0.05


def test_class_entropy():
    assert class_entropy(torch.arange(10).repeat(10), 10) == pytest.approx(math.log(10))
    assert class_entropy(torch.zeros(50, dtype=torch.long), 10) == 0.0


@pytest.mark.slow
def test_shapes_detector_reads_real_data():
    images, a = shapes.generate(5000, seed=11)
    d = shapes.detect(images)
    for k in ("color", "shape", "size", "position"):
        assert (d[k] == a[k]).double().mean() >= 0.99, k
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(0))    # shuffled prompts: near chance
    chance = {"color": 1 / 6, "shape": 1 / 3, "size": 1 / 2, "position": 1 / 9}
    for k, c in chance.items():
        assert abs((d[k] == a[k][perm]).double().mean().item() - c) < 0.05, k
    assert (shapes.detect(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))["shape"] == -1).all()


@pytest.mark.slow
def test_shape_detector_reads_rendered_shapes_exactly_and_survives_holes_blur_and_soft_edges():
    images, a = shapes.generate(1000, seed=5)
    assert torch.equal(shapes.detect(images)["shape"], a["shape"])
    g = torch.Generator().manual_seed(0)
    holes = images * (torch.rand(len(images), 1, 32, 32, generator=g) > 0.1)       # 10% of the pixels dropped
    blurred = torch.nn.functional.avg_pool2d(images.float(), 3, 1, 1).round().to(torch.uint8)
    # soft edges, as generated shapes have them: rendered 4x larger at a sub-pixel centre and averaged down
    # (edge pixels at part brightness), plus pixel noise
    n = len(images)
    grid = torch.tensor(shapes.GRID, dtype=torch.float32)
    cx = grid[a["position"] % 3] + torch.rand(n, generator=g) * 2 - 1
    cy = grid[a["position"] // 3] + torch.rand(n, generator=g) * 2 - 1
    side = torch.tensor(list(shapes.SIZES.values()), dtype=torch.float32)[a["size"]]
    big = shapes.render_at(a["shape"], a["color"], side * 4, cx * 4, cy * 4, canvas=128)
    soft = torch.nn.functional.avg_pool2d(big.float(), 4)
    soft = (soft + torch.randn(soft.shape, generator=g) * 25).clamp(0, 255).round().to(torch.uint8)
    right = {name: (shapes.detect(x)["shape"] == a["shape"]).double().mean().item()
             for name, x in (("holes", holes), ("blur", blurred), ("soft", soft))}
    assert min(right.values()) >= 0.98, right


def test_fit_errors_prefer_the_rendered_shape_and_cost_its_missing_pixels():
    cx, cy, side = torch.tensor([16.0]), torch.tensor([16.0]), torch.tensor([8])
    for k in range(3):
        bright = shapes.shape_masks(torch.tensor([k]), side, cx, cy).float()
        err = shapes.fit_errors(bright, side, cx, cy)[0]
        assert err.argmin() == k and err[k] == -bright.sum()        # a perfect fit leaves only -sum(bright^2)
    square = shapes.shape_masks(torch.tensor([1]), side, cx, cy).float()
    square[0, 12, 12] = 0                                           # one corner pixel missing: still a square
    assert shapes.fit_errors(square, side, cx, cy)[0].argmin() == 1


def test_fit_errors_windows_equal_the_whole_canvas_sums():
    g = torch.Generator().manual_seed(0)
    n = 40
    bright = torch.rand(n, 32, 32, generator=g)
    side = torch.randint(1, 33, (n,), generator=g)
    cx = torch.randint(0, 65, (n,), generator=g) / 2                   # half-pixel centres, at the edges too
    cy = torch.randint(0, 65, (n,), generator=g) / 2
    got = shapes.fit_errors(bright, side, cx, cy, chunk=7)
    offsets = [(ds, dx, dy) for ds in shapes.FIT_SIZES for dx in shapes.FIT_SHIFTS for dy in shapes.FIT_SHIFTS]
    weight = 1 - 2 * bright
    for i in range(n):
        s = torch.tensor([max(2, int(side[i]) + ds) for ds, _, _ in offsets])
        x = torch.tensor([float(cx[i]) + dx for _, dx, _ in offsets])
        y = torch.tensor([float(cy[i]) + dy for _, _, dy in offsets])
        full = torch.stack([(t.float() * weight[i]).sum((1, 2)).min() for t in shapes.all_shape_masks(s, x, y)])
        torch.testing.assert_close(got[i], full, atol=1e-3, rtol=0)


def test_largest_component_keeps_the_biggest_8_connected_blob():
    m = torch.zeros(3, 32, 32, dtype=torch.bool)
    m[0, 2:5, 2:5] = True                                           # 9 px
    m[0, 20:24, 20:24] = True                                       # 16 px: kept
    i = torch.arange(12)
    m[1, i + 3, i + 3] = True                                       # a diagonal line: one 8-connected blob
    m[1, 0, 31] = m[1, 1, 30] = True                                # 2 px elsewhere
    out = shapes.largest_component(m)
    assert out[0].sum() == 16 and out[0, 20:24, 20:24].all()
    assert out[1].sum() == 12 and out[1, i + 3, i + 3].all()
    assert not out[2].any()                                         # empty stays empty


def test_shapes_detector_ignores_a_speck_of_noise():
    images, a = shapes.generate(600, seed=3)
    clean = shapes.detect(images)
    assert not clean["stray"].any()
    cx, cy = clean["cx"], clean["cy"]
    x = torch.where(cx < 16, 31, 0)                                 # the corner farthest from the shape
    y = torch.where(cy < 16, 31, 0)
    noisy = images.clone()
    noisy[torch.arange(600), :, y, x] = 110                         # one dim pixel just over the threshold
    speck = shapes.detect(noisy)
    assert speck["stray"].all()
    for k in ("color", "shape", "size", "position", "cx", "cy"):
        assert torch.equal(speck[k], clean[k]), k
    strict = shapes.detect(noisy, component=False)                  # every foreground pixel: the box stretches
    assert (strict["shape"] != clean["shape"]).double().mean() > 0.5
    assert (strict["size"] == 1).all() and (clean["size"] == 0).any()   # every box reaches the speck: "large"


def test_parse_caption():
    assert shapes.parse_caption("a large red circle in the top left") == {"color": 0, "shape": 0, "size": 1,
                                                                          "position": 0}
    assert shapes.parse_caption("a blue shape in the top") == {"color": 2, "position": 1}
    assert shapes.parse_caption("hello") == {}


@pytest.mark.slow
def test_classifier_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE", str(tmp_path))
    # 80 steps instead of the default 200 (a third of the time): 0.98 test accuracy here, plenty to check caching
    monkeypatch.setattr(classifier, "train_classifier", functools.partial(classifier.train_classifier, min_steps=80))
    images, a = shapes.generate(600, seed=1)
    net, info = classifier.get_classifier("shapes-test", images, a["shape"], 3, test=(images[:200], a["shape"][:200]))
    assert info["reused"] is False and info["test_accuracy"] > 0.5
    calls = []
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: calls.append(1))
    net2, info2 = classifier.get_classifier("shapes-test", images, a["shape"], 3)
    assert info2["reused"] is True and not calls
    x = images[:8].float() / 255
    assert torch.equal(net.features(x), net2.features(x))
