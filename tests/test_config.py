"""BertConfig refuses values that are not what they claim to be, before any tensor is made."""

from __future__ import annotations

import math

import pytest

from bertrt.config import BertConfig, ConfigError
from bertrt.errors import BertrtError

SMALL = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.mark.parametrize("field, value", [
    ("num_attention_heads", True), ("num_hidden_layers", 2.0), ("hidden_size", "16"), ("vocab_size", 0),
    ("num_hidden_layers", 300_000_000), ("max_position_embeddings", -1), ("num_labels", False),
    ("layer_norm_eps", math.nan), ("layer_norm_eps", math.inf), ("layer_norm_eps", -1e-12), ("layer_norm_eps", 0),
    ("layer_norm_eps", True), ("pad_token_id", 30522), ("pad_token_id", -1), ("do_lower_case", 1),
])
def test_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        BertConfig.from_dict({**SMALL, field: value}, source="config.json")


def test_messages_name_the_source():
    with pytest.raises(ConfigError, match=r"^m/config.json: num_attention_heads must be an integer from 1 to 1,024, "
                                          r"got True$"):
        BertConfig.from_dict({**SMALL, "num_attention_heads": True}, source="m/config.json")


def test_id2label_must_be_an_object():
    with pytest.raises(ConfigError, match="id2label must be an object"):
        BertConfig.from_dict({**SMALL, "id2label": 3})


def test_config_error_is_an_expected_error():
    assert issubclass(ConfigError, BertrtError) and issubclass(ConfigError, ValueError)


def test_good_config_still_loads():
    config = BertConfig.from_dict({**SMALL, "layer_norm_eps": 1e-5, "pad_token_id": 0})
    assert config.intermediate_size == 64 and config.layer_norm_eps == 1e-5
