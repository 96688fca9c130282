"""Inputs too big for the machine are caught before the fit, with the setting to change."""

from __future__ import annotations

import re

import pytest

from recon.optimise import memory
from recon.optimise.memory import (
    GiB,
    InsufficientMemoryError,
    available_memory,
    bytes_per_gaussian,
    check_fit_memory,
    estimate_fit_memory,
)


def test_estimate_scales_with_pixels_and_gaussians():
    small = estimate_fit_memory(1000, 750, 20, 3, 100_000, 3)
    big = estimate_fit_memory(2000, 1500, 20, 3, 100_000, 3)
    assert big.images_bytes == 4 * small.images_bytes and big.render_bytes == 4 * small.render_bytes
    assert big.gaussians_bytes == small.gaussians_bytes
    # SH degree 3: 59 floats; value, gradient, 2 Adam moments and the checkpoint's 3 copies.
    assert bytes_per_gaussian(3) >= 59 * 4 * 7
    twice = estimate_fit_memory(1000, 750, 20, 3, 200_000, 3)
    assert twice.gaussians_bytes == 2 * small.gaussians_bytes
    # 20 photos of 4032x3024: several GiB of images and buffers before a single Gaussian.
    assert estimate_fit_memory(4032, 3024, 20, 3, 0, 3).total_bytes > 8 * GiB


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   16000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_memory(meminfo, cgroup) == (16000000 * 1024, "MemAvailable in /proc/meminfo")
    (cgroup / "memory.max").write_text("max\n")  # no limit
    (cgroup / "memory.current").write_text(str(GiB))
    assert available_memory(meminfo, cgroup)[0] == 16000000 * 1024
    (cgroup / "memory.max").write_text(str(4 * GiB))
    got, source = available_memory(meminfo, cgroup)
    assert got == 3 * GiB and "cgroup" in source


def test_too_big_images_name_data_max_side_with_a_value_that_fits():
    e = estimate_fit_memory(4032, 3024, 20, 3, 50_000, 3)
    with pytest.raises(InsufficientMemoryError) as err:
        check_fit_memory(e, (4 * GiB, "test"))
    message = str(err.value)
    assert "4032x3024" in message and "the images take the most" in message
    side = int(message.split("--set data.max_side=")[1].split()[0])
    assert 64 <= side < 4032
    s = side / 4032
    fitted = estimate_fit_memory(round(4032 * s), round(3024 * s), 20, 3, 50_000, 3)
    assert fitted.total_bytes <= 0.9 * 4 * GiB
    check_fit_memory(e, (64 * GiB, "test"))  # a big machine: no error


def test_too_many_gaussians_name_densify_max_gaussians():
    e = estimate_fit_memory(800, 600, 20, 3, 20_000_000, 3)
    with pytest.raises(InsufficientMemoryError, match=r"the Gaussians take the most.*--set densify.max_gaussians=\d+"):
        check_fit_memory(e, (8 * GiB, "test"))


def test_fit_stops_before_fitting_when_memory_is_short(tmp_path, monkeypatch, capsys):
    from recon.cli import main

    monkeypatch.setattr(memory, "available_memory", lambda: (int(1.0 * GiB), "MemAvailable (test)"))
    run = tmp_path / "run"
    rc = main(["fit", "builtin:synthetic", "--views", "3", "--config", "fast", "--no-progress", "--out", str(run),
               "--set", "threads=1", "--set", "data.width=40", "--set", "data.options.n_views=4",
               "--set", "densify.max_gaussians=3000000", "--set", "init.method=random"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "this fit needs about" in err and "--set densify.max_gaussians=" in err, err
    assert not (run / "checkpoints").exists() and not (run / "log.jsonl").exists()  # stopped before the fit


def test_coregularisation_counts_its_partner_field():
    from recon.optimise.config import load_config
    from recon.optimise.memory import estimate_for_config

    single = estimate_for_config(load_config("llff3"), 504, 378, 20, 3)
    paired = estimate_for_config(load_config("llff3", ["coreg.enabled=true"]), 504, 378, 20, 3)
    assert paired.fields == 2 and single.fields == 1
    assert paired.gaussians_bytes == 2 * single.gaussians_bytes and paired.render_bytes == 2 * single.render_bytes
    assert paired.images_bytes == single.images_bytes  # the two fields share the training images
    # Enough memory for one field but not for two: refused, naming the fields and a cap that fits both.
    budget = (single.total_bytes + paired.total_bytes) / 2 / 0.9
    check_fit_memory(single, (int(budget), "test"))
    with pytest.raises(InsufficientMemoryError, match="in each of 2 fields") as err:
        check_fit_memory(paired, (int(budget), "test"))
    count = int(re.search(r"--set densify.max_gaussians=(\d+)", str(err.value)).group(1))
    capped = estimate_fit_memory(504, 378, 20, 3, count, paired.sh_degree, fields=2)
    assert count < paired.max_gaussians and capped.total_bytes <= 0.9 * int(budget)
