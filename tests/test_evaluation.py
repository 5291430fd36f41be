"""Tests of scoresde.evaluation: metrics against references, feature networks, digits FD."""

import functools
import importlib.util
import os
import pathlib

import jax
import numpy as np
import pytest
import scipy.linalg
from flax import traverse_util

from scoresde import evaluation as ev
from scoresde.evaluation import inception

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "convert_inception_weights", ROOT / "scripts" / "convert_inception_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert = _load_script()


def _gaussian_stats(rng, n, d, shift=0.0):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + shift
    return x.mean(0), np.cov(x, rowvar=False)


# ------------------------------------------------------------------ Fréchet distance


def _fd_sqrtm_reference(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid / TTUR formula: scipy.linalg.sqrtm of S1 S2 with the eps * I fallback."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)


@pytest.mark.parametrize("n,d", [(500, 16), (40, 64)])  # full rank, and singular (n < d)
def test_frechet_distance_matches_sqrtm_reference(n, d):
    rng = np.random.default_rng(n)
    mu1, s1 = _gaussian_stats(rng, n, d)
    mu2, s2 = _gaussian_stats(rng, n, d, shift=0.3)
    fd = ev.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(fd, _fd_sqrtm_reference(mu1, s1, mu2, s2), rtol=1e-6)
    np.testing.assert_allclose(ev.frechet_distance(mu2, s2, mu1, s1), fd, rtol=1e-8)
    assert abs(ev.frechet_distance(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)


def test_frechet_distance_commuting_closed_form():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    a[:3] = 0.0  # singular S1
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fd = ev.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    np.testing.assert_allclose(fd, expected, rtol=1e-9)
    np.testing.assert_allclose(ev.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-12)


# ------------------------------------------------------------------ KID


def _mmd2_naive(x, y):
    k = lambda u, v: (u @ v / len(u) + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_matches_naive_mmd():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(15, 5)), rng.normal(0.5, 1.2, size=(15, 5))
    expected = _mmd2_naive(x, y)
    np.testing.assert_allclose(ev.polynomial_mmd2(x, y), expected, rtol=1e-10)
    y2 = rng.normal(size=(11, 5))  # unequal sizes
    np.testing.assert_allclose(ev.polynomial_mmd2(x, y2), _mmd2_naive(x, y2), rtol=1e-10)
    # one subset of the full size is a permutation of the full sets
    mean, std = ev.kid(x, y, num_subsets=3, subset_size=1000)
    np.testing.assert_allclose(mean, expected, rtol=1e-10)
    assert std < 1e-10 * abs(expected)


def test_kid_unbiased_and_sensitive():
    rng = np.random.default_rng(3)
    d = 8
    # independent replications: the mean estimate is 0 within 4 standard errors
    reps = np.array([ev.polynomial_mmd2(rng.normal(size=(30, d)), rng.normal(size=(30, d)))
                     for _ in range(400)])
    assert abs(reps.mean()) < 4 * reps.std() / np.sqrt(len(reps))
    # subset averaging (the std over subsets bounds the mean's standard error)
    x, y = rng.normal(size=(600, d)), rng.normal(size=(600, d))
    mean, std = ev.kid(x, y, num_subsets=50, subset_size=100)
    assert std > 0 and abs(mean) < 3 * std
    mean_shift, std_shift = ev.kid(x, y + 0.5, num_subsets=50, subset_size=100)
    assert mean_shift > 10 * std


# ------------------------------------------------------------------ Inception Score


def test_inception_score_limits():
    n_classes, splits = 7, 10
    uniform = np.zeros((splits * n_classes * 3, n_classes))
    np.testing.assert_allclose(ev.inception_score(uniform, splits=splits), (1.0, 0.0), atol=1e-12)
    labels = np.arange(len(uniform)) % n_classes  # balanced within every split
    onehot = np.eye(n_classes)[labels]
    mean, std = ev.inception_score(onehot, splits=splits, from_logits=False)
    np.testing.assert_allclose((mean, std), (n_classes, 0.0), atol=1e-9)
    mean, _ = ev.inception_score(100.0 * onehot, splits=splits)  # confident logits
    np.testing.assert_allclose(mean, n_classes, rtol=1e-6)
    mean, _ = ev.inception_score(np.random.default_rng(0).normal(size=(1000, 10)))
    assert 1.0 < mean < 10.0


# ------------------------------------------------------------------ statistics


def test_feature_stats_streaming_matches_np_cov():
    rng = np.random.default_rng(4)
    chunks = [rng.normal(1e3, 2.0, size=(n, 6)).astype(np.float32) for n in (1, 7, 50, 3, 0, 19)]
    acc = ev.FeatureStats("test_space")
    for c in chunks:
        acc.update(c)
    full = np.concatenate(chunks).astype(np.float64)
    assert acc.count == len(full)
    np.testing.assert_allclose(acc.mean, full.mean(0), rtol=1e-12)
    np.testing.assert_allclose(acc.cov, np.cov(full, rowvar=False), rtol=1e-9, atol=1e-12)
    stats = acc.stats()
    assert stats.feature_space == "test_space" and stats.count == 80


def test_save_load_stats(tmp_path):
    rng = np.random.default_rng(5)
    stats = ev.stats_from_features(rng.normal(size=(20, 4)), "digits_classifier")
    path = tmp_path / "sub" / "stats.npz"
    ev.save_stats(path, stats)
    loaded = ev.load_stats(path)
    assert (loaded.count, loaded.feature_space) == (20, "digits_classifier")
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    with pytest.raises(FileNotFoundError, match="fid-stats"):
        ev.load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mu=stats.mu)
    with pytest.raises(ValueError, match="missing"):
        ev.load_stats(tmp_path / "bad.npz")
    other = ev.Stats(stats.mu, stats.sigma, 20, "inception_v3_fid")
    with pytest.raises(ValueError, match="different feature spaces"):
        ev.fd_from_stats(loaded, other)
    result = ev.fd_from_stats(loaded, stats)
    assert result["feature_space"] == "digits_classifier" and result["metric"] == "FD-digits"
    assert abs(result["fd"]) < 1e-10


# ------------------------------------------------------------------ FID Inception


def torch_fid_inception_shapes():
    """{name: shape} of pytorch-fid's FID Inception state dict, restated from
    torchvision's Inception3 (1008 classes, no aux head); each BasicConv2d is
    `.conv.weight` (O, I, kh, kw) and `.bn.{weight, bias, running_mean, running_var,
    num_batches_tracked}`."""
    convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
             ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
             ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        convs += [(f"{name}.{b}", i, o, kh, kw) for b, i, o, kh, kw in [
            ("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1), ("branch5x5_2", 48, 64, 5, 5),
            ("branch3x3dbl_1", cin, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3),
            ("branch3x3dbl_3", 96, 96, 3, 3), ("branch_pool", cin, pool, 1, 1)]]
    convs += [("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
              ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs += [(f"{name}.{b}", i, o, kh, kw) for b, i, o, kh, kw in [
            ("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
            ("branch7x7_3", c7, 192, 7, 1), ("branch7x7dbl_1", 768, c7, 1, 1),
            ("branch7x7dbl_2", c7, c7, 7, 1), ("branch7x7dbl_3", c7, c7, 1, 7),
            ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", c7, 192, 1, 7),
            ("branch_pool", 768, 192, 1, 1)]]
    convs += [(f"Mixed_7a.{b}", i, o, kh, kw) for b, i, o, kh, kw in [
        ("branch3x3_1", 768, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
        ("branch7x7x3_1", 768, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
        ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)]]
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        convs += [(f"{name}.{b}", i, o, kh, kw) for b, i, o, kh, kw in [
            ("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1),
            ("branch3x3_2a", 384, 384, 1, 3), ("branch3x3_2b", 384, 384, 3, 1),
            ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
            ("branch_pool", cin, 192, 1, 1)]]
    shapes = {}
    for name, cin, cout, kh, kw in convs:
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{leaf}"] = (cout,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes.update({"fc.weight": (1008, 2048), "fc.bias": (1008,)})
    return shapes


def random_torch_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in torch_fid_inception_shapes().items():
        if name.endswith("num_batches_tracked"):
            sd[name] = np.array(0, np.int64)
        elif name.endswith("running_var"):
            sd[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            fan_in = np.prod(shape[1:]) if len(shape) > 1 else 25.0
            sd[name] = (rng.standard_normal(shape, np.float32) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    return sd


@functools.lru_cache(maxsize=1)
def _expected_flat():
    return traverse_util.flatten_dict(inception.variable_shapes(), sep="/")


def test_inception_parameter_count_and_weight_mapping():
    expected = _expected_flat()
    n_params = sum(v.size for k, v in expected.items() if k.startswith("params/"))
    assert n_params == 23_850_960  # torch: sum(p.numel()) of pytorch-fid's fid_inception_v3()
    assert expected["params/fc/kernel"].shape == (2048, 1008)
    n_bn = sum(1 for k in expected if k.endswith("bn/mean"))
    assert n_bn == 94  # BasicConv2d layers

    sd = random_torch_state_dict()
    flat = convert.convert_state_dict(sd)
    assert set(flat) == set(expected)
    for k, v in flat.items():
        assert v.shape == expected[k].shape, k
    w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # (O, I, 1, 7)
    np.testing.assert_array_equal(flat["params/Mixed_6b/branch7x7_2/conv/kernel"][0, 5, 3, 2], w[2, 3, 0, 5])
    np.testing.assert_array_equal(flat["params/fc/kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(flat["batch_stats/Mixed_7c/branch_pool/bn/var"],
                                  sd["Mixed_7c.branch_pool.bn.running_var"])
    with pytest.raises(KeyError, match="AuxLogits"):
        convert.convert_state_dict({"AuxLogits.fc.weight": np.zeros((2, 2))})


def test_inception_load_and_forward(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.npz"
    monkeypatch.setenv(inception.ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError) as err:
        inception.load_variables()
    msg = str(err.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and str(missing) in msg
    assert "convert_inception_weights.py" in msg and "fid_inception_v3.npz" in msg

    flat = convert.convert_state_dict(random_torch_state_dict())
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in flat.items() if "Mixed_7c" not in k})
    with pytest.raises(ValueError, match="missing"):
        inception.load_variables(tmp_path / "bad.npz")
    path = tmp_path / "w.npz"
    np.savez(path, **flat)
    variables = inception.load_variables(path)

    # a cheap forward at 75 x 75 (the architecture is fully convolutional up to the pool;
    # agreement with PyTorch at 299 was checked outside the suite)
    images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    pool, logits = jax.jit(inception.InceptionV3FID(resize=75).apply)(variables, images)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    pool, logits = np.asarray(pool), np.asarray(logits)
    assert np.all(np.isfinite(pool)) and np.all(pool >= 0) and pool.std() > 0
    np.testing.assert_allclose(logits, pool @ flat["params/fc/kernel"] + flat["params/fc/bias"],
                               rtol=1e-4, atol=1e-4)


def test_convert_script_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    sd = random_torch_state_dict(seed=1)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "w.pth")
    convert.main([str(tmp_path / "w.pth"), str(tmp_path / "out" / "w.npz")])
    with np.load(tmp_path / "out" / "w.npz") as f:
        np.testing.assert_array_equal(f["params/fc/kernel"], sd["fc.weight"].T)
        assert set(f.files) == set(_expected_flat())


# ------------------------------------------------------------------ digits feature space


def test_digits_split_is_the_data_split():
    from scoresde import data

    assert ev.digits_split is data.digits_split  # one split for training and evaluation
    x_tr, _, x_te, y_te = ev.digits_split(0)
    assert x_tr.shape == (1438, 8, 8, 1) and x_te.shape == (359, 8, 8, 1)
    assert set(np.unique(y_te)) == set(range(10))


def test_digits_feature_space():
    assert os.path.getsize(ev.digits.ASSET) < 200_000
    x_tr, _, x_te, y_te = ev.digits_split(0)
    acc = np.mean(np.argmax(np.asarray(ev.digits_logits(x_te)), -1) == y_te)
    assert acc >= 0.95
    assert np.asarray(ev.digits_features(x_te[:5])).shape == (5, 64)

    noise = np.random.default_rng(0).uniform(size=x_te.shape).astype(np.float32)
    kw = dict(kid_subsets=20, kid_subset_size=200)
    real = ev.evaluate(x_te, x_tr, "digits_classifier", **kw)
    fake = ev.evaluate(noise, x_tr, "digits_classifier", **kw)
    assert real["feature_space"] == "digits_classifier" and real["metric"] == "FD-digits"
    assert real["fd"] < 5 and fake["fd"] > 20 * real["fd"]
    assert abs(real["kid"]) < 3 * real["kid_std"] and fake["kid"] > 10 * fake["kid_std"]
    assert real["is"] > 7 and fake["is"] < real["is"]
    # the same through saved statistics of the reference, and in [-1, 1]
    ref = ev.compute_stats(2 * x_tr - 1, "digits_classifier", centered=True, batch_size=256)
    centered = ev.evaluate(2 * x_te - 1, ref, "digits_classifier", centered=True)
    np.testing.assert_allclose(centered["fd"], real["fd"], rtol=1e-4)
    assert centered["kid"] is None


# ------------------------------------------------------------------ pooled-pixel feature space


def test_pixels_feature_space():
    from scoresde.evaluation import feature_spaces

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    feats = feature_spaces.pooled_pixels(images)
    # Each feature is the mean of a 2x2 block (row-major 8x8 positions, channels last).
    assert feats.shape == (3, 8 * 8 * 3)
    np.testing.assert_allclose(feats[1, (2 * 8 + 5) * 3 + 2], images[1, 4:6, 10:12, 2].mean(), rtol=1e-6)
    np.testing.assert_allclose(feature_spaces.pooled_pixels(images[:, :8, :8]), images[:, :8, :8].reshape(3, -1))
    # Frechet distances: identical sets 0, a brightness shift d^2 per feature; no logits, no IS.
    x = rng.uniform(0.2, 0.8, size=(500, 8, 8, 1)).astype(np.float32)
    same = ev.evaluate(x, x, feature_spaces.PIXELS, kid_subsets=5, kid_subset_size=100)
    assert same["metric"] == "FD-pixels8" and abs(same["fd"]) < 1e-6 and same["is"] is None
    shifted = ev.evaluate(x + 0.1, x, feature_spaces.PIXELS, kid_subsets=5, kid_subset_size=100)
    assert shifted["fd"] == pytest.approx(64 * 0.01, rel=1e-4)
