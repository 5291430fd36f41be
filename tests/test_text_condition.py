"""Text conditioning from precomputed embeddings `(B, L, E)`: the condition and its padding
mask (`conditioning.embedding_condition`), the null condition, the networks' projection
and learned null embedding, storage with the images (.npz and image-folder sidecars),
classifier-free guidance, the command line and its errors, and that a model conditioned on
a toy encoder's embeddings of the digits' names draws digits recognised as those names.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from scoresde import data
from scoresde.conditioning import check_condition, drop_condition, embedding_condition, null_condition
from scoresde.models import get_model, param_shapes
from scoresde.samplers import guidance

import conftest
from conftest import error_of, images, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
from text_digits import label_embeddings, toy_encoder, write_digits_text  # noqa: E402

TINY_NET = dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)  # one resolution
SHAPE = (2, 8, 8, 3)
LABELS = jnp.array([100.0, 700.0])  # DDPM++'s t * 999


# ----------------------------------------------------------------------------------------
# The condition.


def test_toy_encoder_is_deterministic_and_masks_padding():
    emb, mask = toy_encoder(["one", "three"], dim=4)
    assert emb.shape == (2, 5, 4) and emb.dtype == np.float32
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(toy_encoder(["one", "three"], dim=4)[0], emb)
    np.testing.assert_array_equal(emb[0, 2], emb[1, 3])  # the e of "one", the first e of "three"
    assert np.all(emb[0, 0] != emb[1, 0])  # o, t
    assert np.all(emb[0, 3:] != 0)  # padding is embedded (nonzero), as a real encoder's, and masked


def test_embedding_condition_folds_the_mask():
    emb, mask = toy_encoder(["one", "three"], dim=4)
    y = embedding_condition(emb, mask)
    np.testing.assert_array_equal(y[0, 3:], 0.0)
    np.testing.assert_array_equal(y[1], emb[1])
    np.testing.assert_array_equal(embedding_condition(emb[1]), emb[1])  # one sequence (L, E), no mask
    np.testing.assert_array_equal(embedding_condition(emb, mask.astype(np.float32)), y)  # a 0-1 mask
    with pytest.raises(ValueError, match="shape"):
        embedding_condition(emb, mask[:, :3])
    with pytest.raises(ValueError, match="reads as padding"):
        embedding_condition(np.zeros((1, 2, 4)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        embedding_condition(np.full((1, 2, 4), np.nan))
    with pytest.raises(ValueError, match=r"\(B, L, E\)"):
        embedding_condition(np.ones(4))


def test_null_and_drop_condition_of_embeddings():
    y = jnp.asarray(np.random.default_rng(0).normal(size=(400, 3, 4)), jnp.float32)
    np.testing.assert_array_equal(null_condition(y), np.zeros((400, 3, 4)))
    dropped = np.asarray(drop_condition(jax.random.key(0), y, 0.5))
    whole = np.all(dropped == 0, axis=(1, 2))
    kept = np.all(dropped == np.asarray(y), axis=(1, 2))
    assert np.all(whole | kept)  # rows are dropped whole
    assert abs(whole.mean() - 0.5) < 5 * 0.5 / np.sqrt(len(y))


def test_check_condition_of_embeddings():
    y = jnp.ones((2, 3, 4))
    check_condition(y, 2, context_embedding_dim=4)
    with pytest.raises(ValueError, match=r"\(2, L, 4\)"):
        check_condition(jnp.ones((2, 3, 5)), 2, context_embedding_dim=4)
    with pytest.raises(ValueError, match="float"):
        check_condition(jnp.ones((2, 3, 4), jnp.int32), 2, context_embedding_dim=4)
    with pytest.raises(ValueError, match="exclusive"):
        check_condition(None, 2, context_vocab_size=5, context_embedding_dim=4)
    with pytest.raises(ValueError, match="integer"):
        check_condition(y, 2, num_classes=3)  # embeddings given to a class-conditional network


# ----------------------------------------------------------------------------------------
# The network: a learned projection E -> context_dim and a learned null embedding.


def test_cross_attention_on_embeddings():
    """One compiled call on a batch of variants (the network has no positions over L, so
    where the padding sits does not matter) and on y=None."""
    model = get_model("ddpmpp", **TINY_NET, context_embedding_dim=6, context_dim=8)
    shapes = param_shapes(model, SHAPE)
    unconditional = param_shapes(get_model("ddpmpp", **TINY_NET), SHAPE)
    assert set(shapes) - set(unconditional) == {"ContextProjection_0", "CrossAttnBlock_0", "CrossAttnBlock_1",
                                                "CrossAttnBlock_2"}
    assert shapes["ContextProjection_0"]["Dense_0"]["kernel"].shape == (6, 8)
    assert shapes["ContextProjection_0"]["null"].shape == (8,)
    params = conftest.random_params(shapes, vector_std=0.1, fourier_std=0.1)
    emb, mask = toy_encoder(["one", "three", "\0o\0ne", "oee"], dim=6)
    mask[2] = [0, 1, 0, 1, 1]
    y = embedding_condition(emb, mask)
    y = jnp.asarray(np.concatenate([y, np.zeros_like(y[:1])]))  # one, three, padded one, oee, null
    x = images((5, 8, 8, 3))
    x = x.at[2:].set(x[0])
    t = jnp.concatenate([LABELS, jnp.full((3,), LABELS[0])])
    apply = jax.jit(lambda p, y: (model.apply({"params": p}, x, t, y, train=False),
                                  model.apply({"params": p}, x, t, None, train=False)))
    out, none = apply(params, y)
    np.testing.assert_allclose(out[2], out[0], atol=1e-5)  # padding (zero vectors) is masked out
    assert np.abs(out[3] - out[0]).max() > 1e-3  # the embeddings matter
    # An all-zero row is the null condition, as y=None: the learned null embedding alone.
    np.testing.assert_allclose(out[4], none[4], atol=1e-5)
    assert np.abs(none[0] - out[0]).max() > 1e-3
    renulled = jax.tree.map(lambda a: a, params)
    renulled["ContextProjection_0"]["null"] = params["ContextProjection_0"]["null"] + 1.0
    assert np.abs(apply(renulled, y)[0][4] - out[4]).max() > 1e-3


def test_classifier_free_guidance_of_embeddings():
    """(1 + w) s(x, t, y) - w s(x, t, ∅) with ∅ the zero embeddings, for a score whose
    dependence on y is known."""
    def score(x, t, y=None):
        shift = 0.0 if y is None else jnp.sum(y, axis=(1, 2))[:, None]
        return -x + shift

    y = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 4)), jnp.float32)
    x, t = jnp.ones((3, 5)), jnp.full((3,), 0.5)
    guided = guidance.classifier_free(score, y, 2.0)(x, t)
    np.testing.assert_allclose(guided, -x + 3.0 * jnp.sum(y, axis=(1, 2))[:, None], rtol=1e-6)
    np.testing.assert_allclose(guidance.condition(score, y)(x, t), score(x, t, y))


# ----------------------------------------------------------------------------------------
# Storage with the images.


def test_npz_with_text_embeddings(tmp_path):
    path = str(tmp_path / "d.npz")
    rng = np.random.default_rng(0)
    imgs = rng.uniform(size=(6, 4, 4, 1)).astype(np.float32)
    emb, mask = toy_encoder(["a", "bb", "ccc", "a", "bb", "ccc"], dim=3)
    np.savez(path, images=imgs, text_embeddings=emb, text_mask=mask)
    batch = next(data.get_dataset(path, batch_size=6, shuffle=False, random_flip=False))
    np.testing.assert_array_equal(batch["image"], imgs)
    np.testing.assert_array_equal(batch[data.TEXT_EMBEDDING], embedding_condition(emb, mask))
    # Without a mask the embeddings are taken as they are; a malformed array is one clear error.
    np.savez(path, images=imgs, text_embeddings=emb)
    np.testing.assert_array_equal(next(data.get_dataset(path, batch_size=6, shuffle=False))[data.TEXT_EMBEDDING], emb)
    np.savez(path, images=imgs, text_embeddings=emb[:5])
    with pytest.raises(ValueError, match="5 rows of 'text_embeddings' for 6 images"):
        data.get_dataset(path, batch_size=2)
    np.savez(path, images=imgs, text_embeddings=emb, text_mask=mask[:, :2])
    with pytest.raises(ValueError, match="padding mask"):
        data.get_dataset(path, batch_size=2)
    np.savez(path, images=imgs, text_mask=mask)
    with pytest.raises(ValueError, match="without 'text_embeddings'"):
        data.get_dataset(path, batch_size=2)


def test_image_folder_sidecar(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["0.png", "sub/1.png", "2.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(folder / name)
    emb, mask = toy_encoder(["x", "yy", "zzz", "unused"], dim=3)
    order = [2, 0, 3, 1]  # the sidecar's rows in any order, with an extra entry
    np.savez(folder / data.TEXT_SIDECAR, files=np.array(["2.png", "0.png", "gone.png", "sub/1.png"]),
             text_embeddings=emb[order], text_mask=mask[order])
    batch = next(data.get_dataset(str(folder), batch_size=3, shuffle=False, random_flip=False))
    y = embedding_condition(emb, mask)
    # Files in sorted order: 0.png, 2.png, sub/1.png.
    np.testing.assert_array_equal(batch[data.TEXT_EMBEDDING], y[[0, 2, 1]])
    np.savez(folder / data.TEXT_SIDECAR, files=np.array(["0.png", "2.png"]), text_embeddings=emb[:2])
    with pytest.raises(ValueError, match="no text embedding for 1 of the 3 images, e.g. 'sub/1.png'"):
        data.get_dataset(str(folder), batch_size=3)
    np.savez(folder / data.TEXT_SIDECAR, text_embeddings=emb[:3])
    with pytest.raises(ValueError, match="needs the arrays 'files'"):
        data.get_dataset(str(folder), batch_size=3)


# ----------------------------------------------------------------------------------------
# The command line, and learning: samples are recognised as the name they were conditioned on.

TINY = [
    "--config.training.batch_size=16",
    "--config.training.log_freq=1",
    "--config.training.snapshot_sampling=False",
    "--config.model.nf=8",
    "--config.model.ch_mult=(1,)",
]
# A tiny cross-attention DDPM++ (nf 8, one resolution: self- and cross-attention only in the
# middle block, at 8 x 8), 350 steps of 64 (about 16 epochs of the digits).
LEARN = [
    "--config.training.n_iters=350",
    "--config.training.batch_size=64",
    "--config.training.log_freq=50",
    "--config.training.eval_freq=1000",
    "--config.training.snapshot_freq=350",
    "--config.training.snapshot_freq_for_preemption=350",
    "--config.training.snapshot_sampling=False",
    "--config.model.nf=8",
    "--config.model.ch_mult=(1,)",
    "--config.model.dropout=0.0",
    "--config.model.ema_rate=0.9",
    "--config.model.context_dim=32",
    "--config.optim.lr=5e-3",
    "--config.optim.warmup=20",
]


def test_cli_text_train_sample_and_errors(tmp_path):
    """`scoresde train --config digits_vp_text` (tiny, 2 steps) on the digits stored with the toy
    encoder's embeddings, then `scoresde sample --condition-file` with the ten names'
    embeddings: a grid with a column per name. Then the one-line errors of such a workdir."""
    dataset, names = write_digits_text(str(tmp_path / "digits_text.npz"), dim=32)
    workdir = str(tmp_path / "text")
    run("train", "--config", "digits_vp_text", "--workdir", workdir, f"--config.data.dataset={dataset}", *TINY,
        "--config.training.n_iters=2")
    out, n = str(tmp_path / "s"), 20
    run("sample", "--workdir", workdir, "--condition-file", names, "--guidance", "2", "--sampler", "ddim",
        "--steps", "2", "--num", str(n), "--out", out)
    saved = np.load(out + ".npz")
    assert saved["samples"].shape == (n, 8, 8, 1) and float(saved["guidance"]) == 2.0
    assert np.all(np.isfinite(saved["samples"]))
    width, height = Image.open(out + ".png").size
    assert 0.15 < height / width < 0.25  # a column per name: 10 columns, 2 rows
    assert "not on --label" in error_of("sample", "--workdir", workdir, "--label", "3", "--condition-file", names)
    assert "give them to sample it" in error_of("sample", "--workdir", workdir)
    assert "label-conditional" in error_of("ablate", "--workdir", workdir, "--guidance", "1", "--samplers", "ddim",
                                           "--nfes", "2", "--num", "8", "--out", str(tmp_path / "abl"))


def test_cli_text_conditioned_digits_are_recognised(tmp_path):
    """Learning (slow): `scoresde train --config digits_vp_text` on the digits stored with the toy
    encoder's embeddings of each label's name (padded, with a mask), then `scoresde sample
    --condition-file` with the ten names' embeddings and classifier-free guidance (w = 3):
    the bundled digits classifier assigns far more samples to the requested label than
    chance (0.1), above 0.1 + K_SE binomial standard errors at n."""
    from scoresde.evaluation.digits import digits_accuracy

    dataset, names = write_digits_text(str(tmp_path / "digits_text.npz"), dim=32)
    workdir = str(tmp_path / "text")
    run("train", "--config", "digits_vp_text", "--workdir", workdir, f"--config.data.dataset={dataset}", *LEARN)
    out, n = str(tmp_path / "s"), 300
    run("sample", "--workdir", workdir, "--condition-file", names, "--guidance", "3", "--sampler", "dpm_solver++",
        "--steps", "10", "--num", str(n), "--out", out)
    saved = np.load(out + ".npz")
    accuracy = digits_accuracy(saved["samples"], np.arange(n) % 10)  # the names in turn
    bound = 0.1 + conftest.K_SE * np.sqrt(0.1 * 0.9 / n)
    assert accuracy > bound, f"accuracy {accuracy:.3f} of {n} samples; chance is 0.1, the bound {bound:.3f}"


def test_load_condition(tmp_path):
    """What `sample --condition-file` (Python: `condition=`) reads, and its one-line errors."""
    from scoresde.experiment import UserError, load_condition

    emb, mask = label_embeddings(32)
    y = embedding_condition(emb, mask)
    _, names = write_digits_text(str(tmp_path / "digits_text.npz"), dim=32)
    np.testing.assert_array_equal(load_condition(names, 32), y)
    # Arrays: embeddings and their mask, cycled over the samples; one sequence (L, E).
    np.testing.assert_array_equal(load_condition((emb[[3, 7]], mask[[3, 7]]), 32, 5), y[[3, 7, 3, 7, 3]])
    np.testing.assert_array_equal(load_condition(y[4], 32, 2), y[[4, 4]])
    with pytest.raises(UserError, match="No condition file"):
        load_condition(str(tmp_path / "x.npz"), 32)
    with pytest.raises(UserError, match=r"width 32 \(model.context_embedding_dim\); the condition's are 16"):
        load_condition(np.ones((1, 2, 16)), 32)
    np.savez(tmp_path / "none.npz", labels=np.arange(3))
    with pytest.raises(UserError, match="no 'text_embeddings' array"):
        load_condition(str(tmp_path / "none.npz"), 32)
    np.save(tmp_path / "one.npy", y)
    with pytest.raises(UserError, match="holds one array"):
        load_condition(str(tmp_path / "one.npy"), 32)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not an .npz file that can be read"):
        load_condition(str(tmp_path / "bad.npz"), 32)
    with pytest.raises(UserError, match="padding mask"):
        load_condition((emb, mask[:, :2]), 32)


def test_cli_text_config_errors(tmp_path):
    dataset, names = write_digits_text(str(tmp_path / "digits_text.npz"), dim=32)
    workdir = str(tmp_path / "bad")
    assert "context_embedding_dim=E" in error_of("train", "--config", "digits_vp", "--workdir", workdir,
                                                  "--config.training.condition=text_embedding", *TINY)
    assert "has none" in error_of("train", "--config", "digits_vp_text", "--workdir", workdir,
                                  "--config.data.dataset=digits", *TINY)
    assert "context_embedding_dim=32" in error_of("train", "--config", "digits_vp_text", "--workdir", workdir,
                                                  f"--config.data.dataset={dataset}",
                                                  "--config.model.context_embedding_dim=8", *TINY)
    assert "experiments/text_digits.py" in error_of("train", "--config", "digits_vp_text", "--workdir", workdir,
                                                    f"--config.data.dataset={tmp_path / 'missing.npz'}", *TINY)
    assert not os.path.exists(os.path.join(workdir, "config.json"))  # nothing was written before the errors
    # Text embeddings given to models that take labels or nothing.
    from scoresde import experiment

    for name, says in (("digits_vp_class", "takes --label"), ("digits_vp", "is unconditional")):
        with pytest.raises(experiment.UserError, match=f"--condition-file gives text embeddings .* {says}"):
            experiment.conditioned_score(experiment.get_config(name), None, None, 4, condition=names)
