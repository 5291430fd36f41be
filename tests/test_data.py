"""Data: digits split, positions and exact resumption, per-process shards, flips and
scaling, toys, user images (.npz, folders) with clear errors, TFDS through mock data."""

import numpy as np
import pytest

from scoresde import data


def _take(it, n):
    return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_and_disjoint():
    tr_x, tr_y, te_x, te_y = data.digits_split()
    assert tr_x.shape == (1438, 8, 8, 1) and te_x.shape == (359, 8, 8, 1)
    assert tr_x.dtype == np.float32 and tr_y.dtype == np.int32
    assert set(np.unique(np.concatenate([tr_x, te_x]) * 16)) <= set(range(17))
    assert tr_x.min() == 0.0 and tr_x.max() == 1.0
    again = data.digits_split(0)
    assert all(np.array_equal(a, b) for a, b in zip((tr_x, tr_y, te_x, te_y), again))
    other = data.digits_split(1)
    assert not np.array_equal(te_x, other[2])
    # The split is a partition of the 1797 images: together they are the data set, reordered.
    images, labels = data.sources._load_digits()
    def rows(x, y):  # rows (pixels..., label) in lexicographic order
        r = np.concatenate([np.round(x.reshape(len(x), -1) * 16), y[:, None]], 1)
        return r[np.lexsort(r.T[::-1])]

    np.testing.assert_array_equal(
        rows(np.concatenate([tr_x, te_x]), np.concatenate([tr_y, te_y])), rows(images / 16.0, labels)
    )
    # The same images as scikit-learn's load_digits (read without importing scikit-learn).
    from sklearn.datasets import load_digits

    ref = load_digits()
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(labels, ref.target)


# ----------------------------------------------------------------------------- photos


def test_photos_at_full_resolution_are_the_same_crops():
    """photos at image_size 32 are the 16 x 16 crops' windows in the full-resolution photos:
    the same counts and labels, their 2x2 block means the 16 x 16 crops (up to the halved
    photos' uint8 rounding), and no test crop among the training crops."""
    small, full = data.photos_split(16), data.photos_split(32)
    for a, b in zip(small[1::2], full[1::2]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(small[0::2], full[0::2]):
        assert b.shape == (len(a), 32, 32, 3)
        means = b.reshape(len(b), 16, 2, 16, 2, 3).mean(axis=(2, 4))
        assert np.abs(means - a).max() <= 1 / 255 + 1e-6
    train_keys = {c.tobytes() for c in full[0]}
    assert not any(c.tobytes() in train_keys for c in full[2])
    batch = next(data.get_dataset("photos", "test", 16, image_size=32))
    assert batch["image"].shape == (16, 32, 32, 3)
    with pytest.raises(ValueError, match="image_size"):
        data.photos_split(8)
    with pytest.raises(ValueError, match="image_size"):
        data.get_dataset("photos", "train", 16, image_size=12)


@pytest.mark.parametrize("centered", [False, True])
def test_digits_batches_scaling_and_epochs(centered):
    it = data.get_dataset("digits", "train", batch_size=100, centered=centered)
    assert it.element_shape == (8, 8, 1) and it.batches_per_epoch == 14
    epoch = _take(it, 14)
    x = np.concatenate([b["image"] for b in epoch])
    lo, hi = (-1.0, 1.0) if centered else (0.0, 1.0)
    assert x.shape == (1400, 8, 8, 1) and x.dtype == np.float32 and x.min() == lo and x.max() == hi
    # One epoch visits distinct examples (a permutation, remainder dropped).
    assert len({row.tobytes() + bytes([int(lbl)]) for b in epoch for row, lbl in zip(b["image"], b["label"])}) >= 1390
    assert it.get_state() == {"epoch": 0, "index": 14}
    nxt = next(it)
    assert it.get_state() == {"epoch": 1, "index": 1}
    assert not np.array_equal(nxt["image"], epoch[0]["image"])  # a new permutation
    test = data.get_dataset("digits", "test", batch_size=100, drop_remainder=False)
    sizes = [len(b["image"]) for b in test]  # evaluation: one pass, in order, last batch kept
    assert sizes == [100, 100, 100, 59]


def test_position_restore_is_exact():
    kw = dict(batch_size=64, centered=True, random_flip=True, seed=3)
    it = data.get_dataset("digits", "train", **kw)
    _take(it, 20)  # crosses an epoch boundary (22 batches per epoch)
    state = it.get_state()
    expected = _take(it, 5)
    resumed = data.get_dataset("digits", "train", **kw)
    resumed.set_state(state)
    for a, b in zip(expected, _take(resumed, 5)):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="Invalid data position"):
        resumed.set_state({"epoch": 0, "index": 999})


def test_process_shards_make_up_the_global_batch():
    kw = dict(batch_size=64, random_flip=True, seed=1)
    whole = _take(data.get_dataset("digits", "train", process_index=0, process_count=1, **kw), 3)
    parts = [_take(data.get_dataset("digits", "train", process_index=p, process_count=4, **kw), 3) for p in range(4)]
    for i in range(3):
        assert parts[0][i]["image"].shape == (16, 8, 8, 1)
        np.testing.assert_array_equal(np.concatenate([p[i]["image"] for p in parts]), whole[i]["image"])
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        data.get_dataset("digits", "train", batch_size=10, process_index=0, process_count=4)


def test_random_flip_flips_about_half_horizontally():
    kw = dict(batch_size=256, seed=0)
    plain = next(data.get_dataset("digits", "train", random_flip=False, **kw))["image"]
    flipped = next(data.get_dataset("digits", "train", random_flip=True, **kw))["image"]
    same = np.all(plain == flipped, axis=(1, 2, 3))
    mirrored = np.all(plain[:, :, ::-1] == flipped, axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 80 < np.sum(mirrored & ~same) < 176


def test_uniform_dequantization():
    it = data.get_dataset("digits", "train", batch_size=32, uniform_dequantization=True, shuffle=False)
    x = next(it)["image"]
    base = data.digits_split()[0][:32]
    assert np.all(x >= base * 255 / 256 - 1e-6) and np.all(x <= (base * 255 + 1) / 256 + 1e-6)
    assert len(np.unique(x)) > 1000


# ----------------------------------------------------------------------------- toys


def test_toy_data_stream():
    it = data.get_dataset("toy:moons", "train", batch_size=128, seed=2)
    a, b = next(it), next(it)
    assert a["image"].shape == (128, 2) and it.element_shape == (2,)
    assert not np.array_equal(a["image"], b["image"])
    again = data.get_dataset("moons", "train", batch_size=128, seed=2)
    again.set_state({"epoch": 0, "index": 1})
    np.testing.assert_array_equal(next(again)["image"], b["image"])
    halves = [data.get_dataset("checkerboard", batch_size=8, process_index=p, process_count=2) for p in (0, 1)]
    whole = data.get_dataset("checkerboard", batch_size=8, process_index=0, process_count=1)
    np.testing.assert_array_equal(np.concatenate([next(h)["image"] for h in halves]), next(whole)["image"])


# ----------------------------------------------------------------------------- user data


def test_npz_images(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", images=u8, labels=np.arange(20))
    it = data.get_dataset(str(tmp_path / "ok.npz"), "train", batch_size=20, shuffle=False, random_flip=False)
    b = next(it)
    np.testing.assert_allclose(b["image"], u8 / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(b["label"], np.arange(20))
    np.savez(tmp_path / "grey.npz", rng.random((10, 5, 5)))  # floats in [0, 1], no channel axis
    it = data.get_dataset(str(tmp_path / "grey.npz"), batch_size=5, image_size=8, centered=True)
    x = next(it)["image"]
    assert x.shape == (5, 8, 8, 1) and x.min() >= -1 and x.max() <= 1

    bad = {
        "chw.npz": (rng.random((10, 3, 8, 8)), "channels-first"),
        "four.npz": (rng.random((10, 8, 8, 4)), "1 \\(grey\\) or 3 \\(RGB\\) channels"),
        "range.npz": (rng.random((10, 8, 8, 3)) * 2 - 1, "must lie in \\[0, 1\\].*centered"),
        "255.npz": (rng.random((10, 8, 8, 3)) * 255, "must lie in \\[0, 1\\].*uint8"),
        "flat.npz": (rng.random((10, 64)), "expected images of shape"),
        "nan.npz": (np.full((4, 8, 8, 1), np.nan), "NaN"),
    }
    for name, (arr, msg) in bad.items():
        np.savez(tmp_path / name, images=arr)
        with pytest.raises(ValueError, match=msg):
            data.get_dataset(str(tmp_path / name), batch_size=2)
    np.savez(tmp_path / "two.npz", a=u8, b=u8)
    with pytest.raises(ValueError, match="name it 'images'"):
        data.get_dataset(str(tmp_path / "two.npz"), batch_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        data.get_dataset(str(tmp_path / "ok.npz"), batch_size=64)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    arrays = [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(4)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    it = data.get_dataset(str(folder), batch_size=4, shuffle=False, random_flip=False)
    x = next(it)["image"]
    assert x.shape == (4, 10, 12, 3)
    got = {a.tobytes() for a in np.round(x * 255).astype(np.uint8)}
    assert got == {a.tobytes() for a in arrays}
    x = next(data.get_dataset(str(folder), batch_size=2, image_size=8))["image"]
    assert x.shape == (2, 8, 8, 3)

    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "big.jpg")
    with pytest.raises(ValueError, match="different sizes.*image_size"):
        data.get_dataset(str(folder), batch_size=2)
    Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).save(folder / "grey.png")
    with pytest.raises(ValueError, match="mixes grey and colour.*num_channels"):
        data.get_dataset(str(folder), batch_size=2, image_size=8)
    x = next(data.get_dataset(str(folder), batch_size=2, image_size=8, num_channels=1))["image"]
    assert x.shape == (2, 8, 8, 1)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Could not read image .*broken.png"):
        data.get_dataset(str(folder), batch_size=2, image_size=8, num_channels=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG or JPEG"):
        data.get_dataset(str(tmp_path / "empty"), batch_size=2)


def test_unknown_name():
    with pytest.raises(ValueError, match="Unknown data set 'nope'.*cifar10.*digits"):
        data.get_dataset("nope", batch_size=2)


# ----------------------------------------------------------------------------- TFDS


def test_tfds_through_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        it = data.get_dataset("cifar10", "train", batch_size=8, centered=True)
        b = next(it)
        assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["image"].min() >= -1 and b["image"].max() <= 1 and b["image"].min() < -0.9
        assert it.random_flip and it.shuffle and it.batches_per_epoch == 3
        state = it.get_state()
        expected = next(it)["image"]
        again = data.get_dataset("cifar10", "train", batch_size=8, centered=True)
        again.set_state(state)
        np.testing.assert_array_equal(next(again)["image"], expected)
        test = data.get_dataset("cifar10", "test", batch_size=8)
        assert not test.shuffle and not test.random_flip and len(list(test)) == 3

        x = next(data.get_dataset("celeb_a", "train", batch_size=4, image_size=16))["image"]
        assert x.shape == (4, 16, 16, 3)  # 218x178 -> center 140x140 -> 16x16
        x = next(data.get_dataset("lsun/church_outdoor", "test", batch_size=4, image_size=32))["image"]
        assert x.shape == (4, 32, 32, 3)
        assert next(data.get_dataset("svhn", batch_size=4))["image"].shape == (4, 32, 32, 3)
        assert next(data.get_dataset("CIFAR10", batch_size=4))["image"].shape == (4, 32, 32, 3)
        assert next(data.get_dataset("mnist", batch_size=4))["image"].shape == (4, 28, 28, 1)
        assert next(data.get_dataset("fashion_mnist", batch_size=4, image_size=32))["image"].shape == (4, 32, 32, 1)


def test_unprepared_tfds_gives_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError, match="tfds build cifar10 --file_format=array_record"):
        data.get_dataset("cifar10", "train", batch_size=8, data_dir=str(tmp_path))
