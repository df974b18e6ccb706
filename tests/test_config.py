"""Strict reading of options (covidxr.config.TrainConfig.from_dict / from_json): one schema for a
``--config`` file and a resumed run's own ``config.json``."""

from __future__ import annotations

import json
import warnings

import pytest

from covidxr import config as config_module
from covidxr.config import TrainConfig


def test_types_are_checked():
    with pytest.raises(ValueError, match=r"Expected option views in the JSON text to be a string\. Received: views=5$"):
        TrainConfig.from_json('{"views": 5}')
    with pytest.raises(ValueError, match=r"option epochs .* to be an integer\. Received: epochs='3'"):
        TrainConfig.from_json('{"epochs": "3"}')
    with pytest.raises(ValueError, match=r"option augment .* to be true or false\. Received: augment=1"):
        TrainConfig.from_json('{"augment": 1}')
    with pytest.raises(ValueError, match=r"option learning_rate .* to be a number\. Received: learning_rate=True"):
        TrainConfig.from_json('{"learning_rate": true}')
    config = TrainConfig.from_json('{"learning_rate": 1, "folds": null, "fine_tune_from": -4, "verbose": 0}')
    assert (config.learning_rate, config.folds, config.fine_tune_from) == (1, None, -4)


def test_an_unknown_key_is_a_warning_naming_the_closest_option():
    with pytest.warns(UserWarning, match=r"Unknown option 'fine_tune_epoch' in the JSON text is ignored; "
                                         r"did you mean 'fine_tune_epochs'\?") as caught:
        config = TrainConfig.from_json('{"fine_tune_epoch": 1, "zzz": 2}')
    assert config.fine_tune_epochs == TrainConfig().fine_tune_epochs
    assert any("'zzz'" in str(w.message) and "covidxr train --help" in str(w.message) for w in caught)


def test_non_object_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"Expected config\.json to hold a JSON object of options; it holds a JSON "
                                         r"list\. Received: path='.*config\.json'$"):
        TrainConfig.from_json(path)
    path.write_text('{"views": "PA')
    with pytest.raises(ValueError, match=r"it is not valid JSON \(Unterminated string .*\)\. Received: path="):
        TrainConfig.from_json(tmp_path)
    with pytest.raises(ValueError, match=r"Expected a JSON object \(a dict\) of options in x\. Received: type='list'"):
        TrainConfig.from_dict([1], source="x")


def test_complete_refuses_a_missing_option():
    values = TrainConfig(fine_tune_epochs=3).to_dict()
    del values["fine_tune_epochs"]
    assert TrainConfig.from_dict(values).fine_tune_epochs == TrainConfig().fine_tune_epochs  # lenient: the default
    with pytest.raises(ValueError, match=r"Expected every option in RUN/config\.json; 1 are missing .* "
                                         r"Received: missing=\['fine_tune_epochs'\]"):
        TrainConfig.from_dict(values, complete=True, source="RUN/config.json")


def test_a_runs_own_config_json_reads_without_warnings(tiny_run):
    record = json.loads((tiny_run / "config.json").read_text())
    assert set(record) - set(TrainConfig().to_dict()) <= config_module.RECORD_KEYS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = TrainConfig.from_json(tiny_run / "config.json", complete=True)
    assert config.to_dict() == {k: record[k] for k in config.to_dict()}
