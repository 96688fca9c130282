"""recon.progress: one rich display for every stage; bars opened under another (evaluation
under the fit bar) stack instead of raising rich's "only one live display" error; quiet
mode draws nothing."""

from __future__ import annotations

import io

import pytest

from recon import progress


@pytest.fixture
def terminal(monkeypatch):
    """A console that believes it is a terminal, writing into a buffer."""
    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setitem(progress._state, "console", Console(file=buf, force_terminal=True, width=100))
    monkeypatch.setitem(progress._state, "quiet", False)
    return buf


def test_nested_bars_share_one_display(terminal):
    with progress.stage("fit", total=3) as outer:
        outer.advance()
        items = list(progress.track(range(4), "rendering test views"))  # a second bar while the first shows
        outer.advance(2, status="done")
    assert items == [0, 1, 2, 3]
    assert progress._state["progress"] is None and progress._state["open"] == 0  # display stopped
    text = terminal.getvalue()
    assert "fit" in text and "rendering test views" in text


def test_quiet_draws_nothing(terminal):
    progress.set_quiet(True)
    with progress.stage("multi-view stereo", total=2) as bar:
        bar.advance()
    assert list(progress.track([1, 2], "x")) == [1, 2]
    assert terminal.getvalue() == "" and progress._state["progress"] is None


def test_a_bar_left_by_an_exception_is_closed(terminal):
    with pytest.raises(RuntimeError), progress.stage("bench", total=2):
        raise RuntimeError("boom")
    assert progress._state["open"] == 0
    with progress.stage("again", total=1) as bar:  # a new display starts cleanly
        bar.advance()
