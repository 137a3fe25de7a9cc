"""Data sets: built-in digits, .npz, image folders, tf.data; deterministic splits."""
import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from core.keras_env import tf
from pipelines.config import DataConfig
from pipelines.data import from_tf_dataset, load_dataset


def test_digits_images_are_resized_and_split_deterministically():
    config = DataConfig(resolution=32)
    a, b = load_dataset(config), load_dataset(config)
    assert a.input_shape == (32, 32, 1)
    assert a.num_classes == 10
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert len(a.x_test) == round(1797 * 0.2)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    other = load_dataset(DataConfig(resolution=32, seed=1))
    assert not np.array_equal(a.y_test, other.y_test)
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0


def test_digits_as_sequences():
    data = load_dataset(DataConfig(kind="sequence"))
    assert data.input_shape == (8, 8)
    assert data.x_train.dtype == np.float32


def test_npz_with_x_and_y(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((50, 4, 3)), y=rng.integers(0, 3, 50))
    data = load_dataset(DataConfig(source=str(path), test_fraction=0.2, val_fraction=0.0))
    assert data.input_shape == (4, 3) and len(data.x_test) == 10 and data.num_classes == 3


def test_npz_with_given_splits_keeps_the_test_set(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((40, 5)), y_train=rng.integers(0, 2, 40),
             x_test=rng.random((7, 5)), y_test=rng.integers(0, 2, 7))
    data = load_dataset(DataConfig(source=str(path), val_fraction=0.25))
    assert len(data.x_test) == 7 and len(data.x_val) == 10 and len(data.x_train) == 30


def test_token_npz_stays_integer(tmp_path):
    path = tmp_path / "tokens.npz"
    np.savez(path, x=np.arange(60).reshape(20, 3), y=np.arange(20) % 2)
    assert load_dataset(DataConfig(source=str(path))).x_train.dtype == np.int32


def test_npz_with_wrong_keys(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((3, 2)))
    with pytest.raises(UserError, match=r"holds arrays \['images'\]; it needs either 'x' and 'y'"):
        load_dataset(DataConfig(source=str(path)))


def _write_images(root, classes=("cat", "dog"), per_class=5):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((12, 10, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder(tmp_path):
    _write_images(tmp_path)
    data = load_dataset(DataConfig(source=str(tmp_path), resolution=16, channels=3,
                                   test_fraction=0.2, val_fraction=0.0))
    assert data.input_shape == (16, 16, 3) and data.num_classes == 2
    assert len(data.x_train) == 8


def test_image_folder_errors(tmp_path):
    _write_images(tmp_path, classes=("only",))
    with pytest.raises(UserError, match="one sub-folder per class"):
        load_dataset(DataConfig(source=str(tmp_path)))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png' cannot be read"):
        load_dataset(DataConfig(source=str(tmp_path)))


def test_unknown_source():
    with pytest.raises(UserError, match="neither 'digits', an existing .npz"):
        load_dataset(DataConfig(source="/no/such/data.npz"))


@pytest.mark.parametrize("batched", [True, False])
def test_tf_data(batched):
    x = np.random.default_rng(0).random((30, 6)).astype(np.float32)
    y = np.arange(30) % 3
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if batched:
        dataset = dataset.batch(8)
    data = from_tf_dataset(dataset, DataConfig(val_fraction=0.0))
    assert data.num_classes == 3 and len(data.x_train) + len(data.x_test) == 30
    assert data.input_shape == (6,)


# -- refused data (issue 11) ------------------------------------------------------------


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return DataConfig(source=str(path), val_fraction=0.0)


def test_npz_with_nan_input_names_array_and_index(tmp_path):
    x = np.random.default_rng(0).random((20, 4, 5))
    x[12, 3, 4] = np.nan
    with pytest.raises(UserError, match=r"^data: x\[12, 3, 4\] is nan; clean the data or drop"):
        load_dataset(_npz(tmp_path, x=x, y=np.arange(20) % 2))


def test_npz_with_given_splits_refuses_inf(tmp_path):
    rng = np.random.default_rng(0)
    x_test = rng.random((6, 3))
    x_test[2, 1] = -np.inf
    with pytest.raises(UserError, match=r"x_test\[2, 1\] is -inf"):
        load_dataset(_npz(tmp_path, x_train=rng.random((10, 3)), y_train=np.arange(10) % 2,
                          x_test=x_test, y_test=np.arange(6) % 2))


def test_npz_value_that_overflows_float32_is_refused(tmp_path):
    x = np.ones((10, 3))
    x[4, 0] = 1e300  # finite as float64, inf once converted to float32
    with pytest.raises(UserError, match=r"x\[4, 0\] is inf"):
        load_dataset(_npz(tmp_path, x=x, y=np.arange(10) % 2))


def test_tf_data_with_nan_is_refused():
    x = np.ones((12, 3), np.float32)
    x[7, 2] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(12) % 2)).batch(5)
    with pytest.raises(UserError, match=r"x\[7, 2\] is nan"):
        from_tf_dataset(dataset, DataConfig(val_fraction=0.0))


def test_negative_labels_are_refused(tmp_path):
    y = np.arange(20) % 3
    y[5] = -1
    with pytest.raises(UserError, match=r"y\[5\] is -1; labels must be class indices"):
        load_dataset(_npz(tmp_path, x=np.ones((20, 2)), y=y))


def test_fractional_float_labels_are_refused_not_truncated(tmp_path):
    y = (np.arange(20) % 3).astype(np.float64)
    y[3] = 1.5
    with pytest.raises(UserError, match=r"y\[3\] is 1.5, not an integer class index"):
        load_dataset(_npz(tmp_path, x=np.ones((20, 2)), y=y))


def test_nan_label_is_refused(tmp_path):
    y = (np.arange(20) % 3).astype(np.float32)
    y[9] = np.nan
    with pytest.raises(UserError, match=r"y\[9\] is nan"):
        load_dataset(_npz(tmp_path, x=np.ones((20, 2)), y=y))


def test_whole_float_labels_are_accepted(tmp_path):
    data = load_dataset(_npz(tmp_path, x=np.ones((20, 2)), y=(np.arange(20) % 3) * 1.0))
    assert data.num_classes == 3 and data.y_train.dtype == np.int32


def test_one_huge_label_does_not_make_a_thousand_class_model(tmp_path):
    y = np.arange(30) % 10
    y[0] = 1000
    with pytest.raises(UserError, match=r"y has label 1000 but only 11 distinct labels, so a "
                                        r"1001-class model would have no examples of classes "
                                        r"10\.\.999; re-encode"):
        load_dataset(_npz(tmp_path, x=np.ones((30, 2)), y=y))


def test_huge_label_in_given_test_split_is_refused(tmp_path):
    y_test = np.arange(6) % 2
    y_test[1] = 500
    with pytest.raises(UserError, match=r"y_test has label 500"):
        load_dataset(_npz(tmp_path, x_train=np.ones((10, 3)), y_train=np.arange(10) % 2,
                          x_test=np.ones((6, 3)), y_test=y_test))


def test_tf_data_labels_beyond_num_classes_are_refused():
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((12, 3), np.float32),
                                                  np.arange(12) % 4))
    with pytest.raises(UserError, match=r"label 3 does not fit num_classes=3"):
        from_tf_dataset(dataset, DataConfig(val_fraction=0.0), num_classes=3)


def test_empty_class_folder_is_refused(tmp_path):
    _write_images(tmp_path, classes=("cat", "dog"))
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"emu' has no images .* so class 'emu' would never be "
                                        r"seen; add images to it or remove the folder"):
        load_dataset(DataConfig(source=str(tmp_path), resolution=8))
