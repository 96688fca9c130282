"""Config values are type-checked from the field annotations, optional fields included."""

from __future__ import annotations

import pytest

from recon.errors import ConfigError
from recon.optimise.config import from_dict, load_config


@pytest.mark.parametrize("override, message", [
    ("data.width=abc", "'data.width' must be an integer"),  # int | None, default None
    ("data.width=1.5", "'data.width' must be an integer"),
    ("data.format=3", "'data.format' must be a string"),  # str | None
    ("depth.model=[a]", "'depth.model' must be a string"),
    ("optim.iterations=", "'optim.iterations' needs a value"),  # not optional: null is refused
    ("optim.random_background=1", "must be true or false"),
    ("optim.resolution_schedule=2", "must be a list"),
])
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("fast", [override])


def test_good_values_are_converted():
    cfg = load_config("fast", ["data.width=160", "optim.lr_means=1e-3", "optim.iterations=300.0", "data.format=llff",
                               "depth.model=null"])
    assert cfg.data.width == 160 and isinstance(cfg.data.width, int)
    assert cfg.optim.lr_means == 1e-3  # YAML reads "1e-3" as a string: numbers are converted
    assert cfg.optim.iterations == 300 and isinstance(cfg.optim.iterations, int)
    assert cfg.data.format == "llff" and cfg.depth.model is None


def test_saved_configs_are_checked_too():
    with pytest.raises(ConfigError, match="'data.width' must be an integer"):
        from_dict({"data": {"width": "wide"}})
