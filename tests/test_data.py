"""Data: binary reader, the offline TFDS build, augmentation, and the resumable iterator."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_jax.data import (DataNotFoundError, EpochIterator, IteratorState, augment,
                               cifar_binary, eval_batches, load_split, normalize, random_crop,
                               random_flip)
from adaptive_jax.data import idx_format, offline
from tests.conftest import random_split


def test_binary_round_trip_and_layout():
    split = random_split(7)
    raw = cifar_binary.encode_records(split.images, split.labels)
    assert len(raw) == 7 * 3073
    # Record layout: label byte, then the full red plane, row-major.
    assert raw[0] == split.labels[0]
    assert raw[1:1025] == split.images[0, :, :, 0].tobytes()
    images, labels = cifar_binary.decode_records(raw)
    np.testing.assert_array_equal(images, split.images)
    np.testing.assert_array_equal(labels, split.labels)


def test_truncated_binary_is_a_clear_error():
    split = random_split(2)
    raw = cifar_binary.encode_records(split.images, split.labels)[:-73]
    with pytest.raises(cifar_binary.CifarFormatError, match="not a whole number"):
        cifar_binary.decode_records(raw, "bad.bin")


def test_offline_tfds_build_yields_exactly_the_binary_records(tiny_cifar_manual_dir, tmp_path):
    manual_dir, train, test = tiny_cifar_manual_dir
    data_dir = str(tmp_path / "tfds")
    path = offline.build_from_local_files("cifar10", data_dir, manual_dir)
    assert any(".array_record" in f for f in os.listdir(path))
    for name, expected in (("train", train), ("test", test)):
        got = load_split("cifar10", name, data_dir=data_dir)
        np.testing.assert_array_equal(got.images, expected.images)
        np.testing.assert_array_equal(got.labels, expected.labels)
        assert got.num_classes == 10


def test_without_tfds_cifar10_is_read_from_the_binary_layout_in_the_same_order(
        tiny_cifar_manual_dir, tmp_path, monkeypatch):
    """An accelerator image without TFDS gets the arrays the TFDS build gives (same order)."""
    from adaptive_jax.data import datasets
    manual_dir, _, _ = tiny_cifar_manual_dir
    data_dir = str(tmp_path / "tfds")
    with_tfds = {name: load_split("cifar10", name, data_dir=data_dir, manual_dir=manual_dir)
                 for name in ("train", "test")}
    monkeypatch.setattr(datasets, "_tfds_installed", lambda: False)
    for name, expected in with_tfds.items():
        got = load_split("cifar10", name, manual_dir=manual_dir)
        np.testing.assert_array_equal(got.images, expected.images)
        np.testing.assert_array_equal(got.labels, expected.labels)
        assert got.labels.dtype == expected.labels.dtype and got.num_classes == 10
    with pytest.raises(DataNotFoundError, match="tensorflow_datasets or grain is not installed"):
        load_split("cifar10", "train", manual_dir=str(tmp_path / "nothing_here"))
    with pytest.raises(DataNotFoundError, match="only cifar10"):
        load_split("fashion_mnist", "train", manual_dir=manual_dir)


def test_offline_build_from_the_archive(tiny_cifar_manual_dir, tmp_path):
    import tarfile
    manual_dir, train, _ = tiny_cifar_manual_dir
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / cifar_binary.ARCHIVE_NAME, "w:gz") as tar:
        tar.add(os.path.join(manual_dir, cifar_binary.BINARY_DIRNAME), cifar_binary.BINARY_DIRNAME)
    got = load_split("cifar10", "train", data_dir=str(tmp_path / "tfds"),
                     manual_dir=str(archive_dir))
    np.testing.assert_array_equal(got.images, train.images)


def test_missing_data_names_both_ways_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_split("cifar10", "train", data_dir=str(tmp_path / "empty"),
                   manual_dir=str(tmp_path / "nothing_here"), download=False)
    message = str(info.value)
    assert "manual_dir" in message and "download" in message and "prepare" in message


def test_unknown_dataset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenette'"):
        load_split("imagenette", "train", data_dir=str(tmp_path))


def test_augmentation_is_deterministic_and_shape_preserving():
    images = jnp.asarray(random_split(16).images)
    key = jax.random.PRNGKey(3)
    a = augment(key, images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    b = augment(key, images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert a.shape == (16, 32, 32, 3) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    c = augment(jax.random.PRNGKey(4), images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert not np.array_equal(a, c)


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    images = jnp.asarray(random_split(64).images)
    crops = np.asarray(random_crop(jax.random.PRNGKey(0), images))
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(64):
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if np.array_equal(padded[i, dy:dy + 32, dx:dx + 32], crops[i])]
        assert matches, f"crop {i} is no window of its padded image"


def test_flip_mirrors_about_half_the_images():
    images = jnp.asarray(random_split(256).images)
    flipped = np.asarray(random_flip(jax.random.PRNGKey(0), images))
    mirrored = [np.array_equal(flipped[i], np.asarray(images)[i, :, ::-1]) for i in range(256)]
    kept = [np.array_equal(flipped[i], np.asarray(images)[i]) for i in range(256)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 90 < sum(mirrored) < 166


def test_normalize_matches_the_formula():
    x = np.array([[[[0, 128, 255]]]], np.uint8)
    got = np.asarray(normalize(jnp.asarray(x), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    np.testing.assert_allclose(got, (x / 255.0 - 0.5) / 0.2, rtol=1e-6, atol=1e-6)


def test_iterator_resumes_exactly():
    split = random_split(50)
    full = EpochIterator(split, 8, seed=5)
    reference = [labels for _ in range(3) for _, labels in full.epoch_batches()]
    assert len(reference) == 3 * 6

    first = EpochIterator(split, 8, seed=5)
    seen = []
    for _, labels in first.epoch_batches():
        seen.append(labels)
        if len(seen) == 4:
            break
    resumed = EpochIterator(split, 8, seed=5, state=IteratorState.from_dict(first.state.to_dict()))
    while resumed.state.epoch < 3:
        seen.extend(labels for _, labels in resumed.epoch_batches())
    assert len(seen) == len(reference)
    for a, b in zip(seen, reference):
        np.testing.assert_array_equal(a, b)


def test_epochs_are_permutations_and_differ():
    split = random_split(40)
    split.labels[:] = np.arange(40)
    it = EpochIterator(split, 10, seed=0)
    epoch0 = np.concatenate([l for _, l in it.epoch_batches()])
    epoch1 = np.concatenate([l for _, l in it.epoch_batches()])
    assert sorted(epoch0) == list(range(40)) and sorted(epoch1) == list(range(40))
    assert not np.array_equal(epoch0, epoch1)


def test_eval_batches_cover_every_example_once_with_a_mask():
    split = random_split(23)
    batches = list(eval_batches(split, 10))
    assert [len(l) for _, l, _ in batches] == [10, 10, 10]
    mask = np.concatenate([m for _, _, m in batches])
    assert mask.sum() == 23
    labels = np.concatenate([l for _, l, _ in batches])[mask > 0]
    np.testing.assert_array_equal(labels, split.labels)


def test_bad_iterator_state_and_batch_size():
    with pytest.raises(ValueError, match="unknown data-iterator state keys"):
        IteratorState.from_dict({"epoch": 0, "batch": 0, "cursor": 3})
    with pytest.raises(ValueError, match="batch_size"):
        EpochIterator(random_split(5), 8, seed=0)


def test_idx_round_trip_and_errors(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(idx_format.decode_idx(idx_format.encode_idx(array)), array)
    with pytest.raises(idx_format.IdxFormatError, match="truncated"):
        idx_format.decode_idx(idx_format.encode_idx(array)[:-1], "x.idx")
    with pytest.raises(idx_format.IdxFormatError, match="magic"):
        idx_format.decode_idx(b"\x01\x02\x08\x01", "y.idx")


def test_offline_fashion_mnist_build_yields_exactly_the_idx_records(tmp_path):
    import gzip
    rng = np.random.default_rng(3)
    manual = tmp_path / "fashion"
    manual.mkdir()
    expected = {}
    for split, n in (("train", 30), ("test", 12)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        expected[split] = (images, labels)
        image_file, label_file = idx_format.SPLIT_FILES[split]
        with gzip.open(manual / (image_file + ".gz"), "wb") as f:
            f.write(idx_format.encode_idx(images))
        (manual / label_file).write_bytes(idx_format.encode_idx(labels))  # plain, not gzipped
    for split, (images, labels) in expected.items():
        got = load_split("fashion_mnist", split, data_dir=str(tmp_path / "tfds"),
                         manual_dir=str(manual))
        # TFDS shuffles records by key and fashion_mnist has no id: compare as multisets.
        assert got.images.shape == (len(labels), 28, 28, 1)
        def key(im, lab):
            return im.tobytes() + bytes([int(lab)])
        assert sorted(key(i, l) for i, l in zip(got.images[..., 0], got.labels)) == \
            sorted(key(i, l) for i, l in zip(images, labels))


def test_split_first_takes_a_prefix_and_zero_means_all():
    split = random_split(10, seed=3)
    head = split.first(4)
    np.testing.assert_array_equal(head.images, split.images[:4])
    np.testing.assert_array_equal(head.labels, split.labels[:4])
    assert head.num_classes == split.num_classes
    assert split.first(0) is split and split.first(10) is split and split.first(99) is split
