import json

import numpy as np
import pytest

from elmo_fast.options import OptionsError, load_options, options_from_dict, preset
from elmo_fast.weights import expected_shapes
from helpers import tiny_options


def test_fixture_options_parse(fixtures_dir):
    o = load_options(fixtures_dir / "allennlp" / "options.json")
    assert o.lstm.dim == 64 and o.lstm.projection_dim == 16 and o.lstm.n_layers == 2
    assert o.lstm.cell_clip == 3.0 and o.lstm.proj_clip == 3.0 and o.lstm.use_skip_connections
    assert o.char_cnn.n_filters == 4 + 8 + 16 + 32 + 64 and o.char_cnn.n_highway == 2
    assert not load_options(fixtures_dir / "bilm-tf" / "options.json").lstm.use_skip_connections


@pytest.mark.parametrize("name,count", [("small", 13_593_296), ("medium", 28_027_728), ("original", 93_600_848)])
def test_presets_reproduce_published_parameter_counts(name, count):
    """docs/numerics.md#public-models-and-presets table: exact counts from the shapes of the public models."""
    shapes = expected_shapes(preset(name))
    total = 0
    for shape in shapes.values():
        n = 1
        for s in shape:
            n *= s
        total += n
    assert total == count


def test_round_trip_keeps_training_keys(tmp_path):
    d = tiny_options()
    d["n_tokens_vocab"] = 1234
    d["dropout"] = 0.1
    o = options_from_dict(d)
    o.save(tmp_path / "o.json")
    again = load_options(tmp_path / "o.json")
    assert again == o and again.extra["n_tokens_vocab"] == 1234


def test_optional_clips_absent_means_no_clip():
    o = options_from_dict(tiny_options(lstm__cell_clip=None, lstm__proj_clip=None))
    assert o.lstm.cell_clip is None and o.lstm.proj_clip is None


@pytest.mark.parametrize("overrides,needle", [
    ({"lstm__dim": None}, "missing required field 'dim'"),
    ({"lstm__dim": "64"}, "field 'dim' expected int, found '64'"),
    ({"char_cnn__activation": "gelu"}, "expected 'relu' or 'tanh', found 'gelu'"),
    ({"char_cnn__filters": [[1, 4], [2]]}, "filters[1] expected [width, count]"),
    ({"char_cnn__n_characters": 300}, "n_characters' expected 262"),
    ({"lstm__cell_clip": -1}, "cell_clip' expected a positive number"),
])
def test_bad_options_name_file_and_field(tmp_path, overrides, needle):
    path = tmp_path / "options.json"
    path.write_text(json.dumps(tiny_options(**overrides)))
    with pytest.raises(OptionsError) as e:
        load_options(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "options.json"
    path.write_text('{"lstm": {\n "dim": 3,,\n}}')
    with pytest.raises(OptionsError, match=r"options.json: not valid JSON \(line 2"):
        load_options(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="options file not found: /nonexistent/options.json"):
        load_options("/nonexistent/options.json")


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "original"])
def test_parameter_count_matches_the_weight_file_shapes(name):
    from elmo_fast.options import parameter_count
    opts = preset(name)
    assert parameter_count(opts) == sum(int(np.prod(s)) for s in expected_shapes(opts).values())


@pytest.mark.parametrize("text,needle", [
    ('"cell_clip": NaN', "field 'cell_clip' expected a finite number, found nan"),
    ('"proj_clip": Infinity', "field 'proj_clip' expected a finite number, found inf"),
])
def test_non_finite_option_values_are_refused(tmp_path, text, needle):
    body = json.dumps(tiny_options(lstm__cell_clip=None, lstm__proj_clip=None))
    body = body.replace('"n_layers": 2', '"n_layers": 2, ' + text)
    path = tmp_path / "options.json"
    path.write_text(body)
    with pytest.raises(OptionsError) as e:
        load_options(path)
    assert str(path) in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("overrides,needle", [
    ({"lstm__n_layers": 10 ** 7}, "field 'n_layers' expected at most 16, found 10000000"),
    ({"char_cnn__n_highway": 10 ** 7}, "field 'n_highway' expected at most 16, found 10000000"),
    ({"char_cnn__embedding": {"dim": 0}}, "field 'embedding.dim' expected a positive integer, found 0"),
    ({"char_cnn__embedding": {"dim": -3}}, "field 'embedding.dim' expected a positive integer, found -3"),
    ({"char_cnn__n_highway": -1}, "field 'n_highway' expected an integer >= 0, found -1"),
    ({"char_cnn__filters": [[1, 10 ** 6]]}, "filters[0] count' expected at most 32768"),
    ({"lstm__dim": 60000, "lstm__projection_dim": 30000}, "parameters; expected at most 2,147,483,648"),
])
def test_sizes_are_bounded_before_anything_is_allocated(tmp_path, overrides, needle):
    """A 10^7-layer options file must fail in the parser, not after allocating gigabytes."""
    import resource
    path = tmp_path / "options.json"
    path.write_text(json.dumps(tiny_options(**overrides)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(OptionsError) as e:
        load_options(path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert str(path) in str(e.value) and needle in str(e.value)
    assert grown_kib < 50_000, f"peak memory grew by {grown_kib} KiB while rejecting {overrides}"
