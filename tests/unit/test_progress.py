"""One progress protocol: a bar in a terminal, plain lines in a pipe, events for the TUI, or nothing."""

from __future__ import annotations

import io

from tuiwb import progress as P


def test_a_pipe_gets_plain_periodic_lines_with_the_rate(monkeypatch):
    monkeypatch.setattr(P, "PIPE_EVERY_S", 0.0)  # every update prints (10 s in real use)
    out = io.StringIO()  # not a terminal: no escape codes
    rp = P.RichProgress(stream=out)
    with rp.task("trace", total=200, unit="tok") as t:
        t.advance(50, info="3.0 MB written")
        t.advance(150)
    rp.say("[2/5] activations  done")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trace: 50/200 tok (25%) · ") and "tok/s" in lines[0] and "3.0 MB written" in lines[0]
    assert lines[-2].endswith("· done") and "200/200 tok (100%)" in lines[-2]
    assert lines[-1] == "[2/5] activations  done" and "\x1b" not in out.getvalue()


def test_callbacks_get_throttled_events_and_always_the_last():
    events = []
    cp = P.CallbackProgress(events.append, per_s=1e-9)  # at most one event per ~forever, plus the last
    with cp.task("fit", total=10, unit="step") as t:
        for _ in range(10):
            t.advance()
    assert [e.done for e in events] == [False, True] and events[-1].completed == 10
    cp.say("hello")
    assert events[-1].message == "hello"


def test_as_progress_shorthand():
    assert isinstance(P.as_progress(False), P.NullProgress) and isinstance(P.as_progress(None), P.NullProgress)
    assert isinstance(P.as_progress(True), P.RichProgress)
    cp = P.CallbackProgress(lambda e: None)
    assert P.as_progress(cp) is cp
