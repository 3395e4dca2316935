import h5py
import numpy as np
import pytest
import torch

from elmo_fast import BiLM
from elmo_fast.options import options_from_dict
from elmo_fast.weights import WeightFileError, read_weights, write_weights
from helpers import random_weights, tiny_options, write_model


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_round_trip_is_bit_exact(tmp_path):
    opt, w = write_model(tmp_path / "m")
    model = BiLM.from_files(opt, w)
    model.save(tmp_path / "o2.json", tmp_path / "w2.hdf5")
    a, b = _datasets(w), _datasets(tmp_path / "w2.hdf5")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == np.float32 and b[name].dtype == np.float32
        assert np.array_equal(a[name], b[name]), name


def test_fixture_weights_round_trip(fixtures_dir, tmp_path):
    src = fixtures_dir / "allennlp" / "lm_weights.hdf5"
    model = BiLM.from_files(fixtures_dir / "allennlp" / "options.json", src)
    model.save(tmp_path / "o.json", tmp_path / "w.hdf5")
    a, b = _datasets(src), _datasets(tmp_path / "w.hdf5")
    assert sorted(a) == sorted(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_parameters_are_loaded_where_the_spec_says(tmp_path):
    opts = tiny_options()
    weights = random_weights(opts, seed=3)
    write_weights(tmp_path / "w.hdf5", weights)
    (tmp_path / "o.json").write_text(__import__("json").dumps(opts))
    model = BiLM.from_files(tmp_path / "o.json", tmp_path / "w.hdf5")
    cell = model.lstm.cells[1][0]
    assert torch.equal(cell.W_0, torch.from_numpy(weights["RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_0"]))
    assert torch.equal(model.token_encoder.highways[1].W_carry, torch.from_numpy(weights["CNN_high_1/W_carry"]))
    assert torch.equal(model.token_encoder.conv_weights[4], torch.from_numpy(weights["CNN/W_cnn_4"]))


def test_missing_dataset_names_file_dataset_and_shape(tmp_path):
    opts = tiny_options()
    weights = random_weights(opts)
    del weights["RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/B"]
    write_weights(tmp_path / "w.hdf5", weights)
    with pytest.raises(WeightFileError) as e:
        read_weights(tmp_path / "w.hdf5", options_from_dict(opts))
    msg = str(e.value)
    assert str(tmp_path / "w.hdf5") in msg and "RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/B" in msg
    assert "missing" in msg and "(256,)" in msg


def test_misshapen_dataset_names_expected_and_found(tmp_path):
    opts = tiny_options()
    weights = random_weights(opts)
    weights["CNN/W_cnn_2"] = np.zeros((1, 3, 4, 15), np.float32)
    write_weights(tmp_path / "w.hdf5", weights)
    with pytest.raises(WeightFileError, match=r"'CNN/W_cnn_2' expected shape \(1, 3, 4, 16\), found \(1, 3, 4, 15\)"):
        read_weights(tmp_path / "w.hdf5", options_from_dict(opts))


def test_options_that_do_not_match_the_file(tmp_path):
    opt, w = write_model(tmp_path / "m")
    other = options_from_dict(tiny_options(lstm__dim=32))
    with pytest.raises(WeightFileError, match="LSTMCell/W_0' expected shape \\(32, 128\\), found \\(32, 256\\)"):
        read_weights(w, other)


def test_not_hdf5_and_missing_file(tmp_path):
    bad = tmp_path / "w.hdf5"
    bad.write_text("not hdf5")
    with pytest.raises(WeightFileError, match="not a readable hdf5 file"):
        read_weights(bad, options_from_dict(tiny_options()))
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        read_weights(tmp_path / "nope.hdf5", options_from_dict(tiny_options()))


def test_no_projection_when_F_equals_P(tmp_path):
    """bilm-tf omits CNN_proj when F == P: accepted, and the token encoder is then identity after highway."""
    opts = tiny_options(char_cnn__filters=[[1, 6], [3, 10]], lstm__projection_dim=16, char_cnn__n_highway=0)
    opt, w = write_model(tmp_path / "m", opts, with_projection=False)
    model = BiLM.from_files(opt, w, stateful=False)
    assert model.token_encoder.W_proj is None
    ids = torch.randint(1, 262, (5, 50))
    feats = model.token_encoder.cnn_features(ids)
    assert torch.equal(model.token_encoder(ids), feats)  # no highway, no projection
    model.save(tmp_path / "o2.json", tmp_path / "w2.hdf5")
    assert "CNN_proj/W_proj" not in _datasets(tmp_path / "w2.hdf5")
    # partially present projection is an error, not silently ignored
    weights = random_weights(opts)
    del weights["CNN_proj/b_proj"]
    write_weights(tmp_path / "w3.hdf5", weights)
    with pytest.raises(WeightFileError, match="CNN_proj/b_proj' is missing"):
        read_weights(tmp_path / "w3.hdf5", options_from_dict(opts))


def test_projection_required_when_F_differs_from_P(tmp_path):
    opts = tiny_options()
    write_weights(tmp_path / "w.hdf5", random_weights(opts, with_projection=False))
    with pytest.raises(WeightFileError, match="CNN_proj/W_proj' is missing"):
        read_weights(tmp_path / "w.hdf5", options_from_dict(opts))


def test_weights_load_without_pickle(tmp_path):
    """hdf5 datasets of plain float32: nothing executable is read."""
    opt, w = write_model(tmp_path / "m")
    with h5py.File(w, "r") as f:
        kinds = set()
        f.visititems(lambda n, o: kinds.add(o.dtype.kind) if isinstance(o, h5py.Dataset) else None)
    assert kinds == {"f"}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_name_the_dataset(tmp_path, value):
    opts = tiny_options()
    weights = random_weights(opts)
    name = "RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_P_0"
    weights[name][3, 5] = value
    path = tmp_path / "weights.hdf5"
    write_weights(path, weights)
    with pytest.raises(WeightFileError) as e:
        read_weights(path, options_from_dict(opts))
    msg = str(e.value)
    assert str(path) in msg and f"dataset '{name}'" in msg and "1 non-finite values" in msg and "(3, 5)" in msg


def test_flipped_bytes_in_a_dataset_are_caught(tmp_path):
    """Damage the stored bytes of one dataset (all exponent bits set -> NaN/Inf) behind h5py's back."""
    opts = tiny_options()
    path = tmp_path / "weights.hdf5"
    write_weights(path, random_weights(opts))
    name = "CNN_high_1/W_carry"
    with h5py.File(path, "r") as f:
        offset = f[name].id.get_offset()
    assert offset is not None  # contiguous layout: the data lies at this byte offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 4 * 7)
        fh.write(b"\xff\xff\xff\xff")
    with pytest.raises(WeightFileError, match=f"dataset '{name}' holds 1 non-finite values"):
        read_weights(path, options_from_dict(opts))


def test_non_finite_softmax_weights_are_refused(tmp_path):
    from elmo_fast.weights import read_softmax_weights, write_softmax_weights
    W = np.zeros((7, 4), np.float32)
    b = np.zeros(7, np.float32)
    b[6] = np.nan
    path = tmp_path / "softmax.hdf5"
    write_softmax_weights(path, W, b)
    with pytest.raises(WeightFileError, match=r"dataset 'softmax/b' holds 1 non-finite values .*index \(6,\)"):
        read_softmax_weights(path, 4)
    path.write_text("garbage")
    with pytest.raises(WeightFileError, match="not a readable hdf5 file"):
        read_softmax_weights(path, 4)
