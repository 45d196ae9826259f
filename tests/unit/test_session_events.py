"""``Session.subscribe``: one event per change of the shared state, labelled by ``changes_from``."""

from __future__ import annotations

import threading


def test_events_for_toggle_add_remove_and_prompt_with_their_origin(demo_session, ui_demo):
    s = demo_session
    seen: list[tuple[dict, str]] = []
    unsubscribe = s.subscribe(lambda e: seen.append((e, threading.current_thread().name)))
    s.toggle("trigger", True)
    s.toggle("trigger", True)  # no change: no event
    with s.changes_from("page"):
        s.add_patch(name="p2", layer=ui_demo.trigger_layer, features=[1], enabled=False)
        s.prompt = "the cup"
        s.prompt = "the cup"  # unchanged: no event
    s.remove_patch("p2")
    assert [e for e, _ in seen] == [{"type": "patches", "origin": None}, {"type": "patches", "origin": "page"},
                                    {"type": "prompt", "text": "the cup", "origin": "page"},
                                    {"type": "patches", "origin": None}]
    assert s.prompt == "the cup"
    # the event comes from the thread that made the change
    t = threading.Thread(target=s.toggle, args=("trigger", False), name="other")
    t.start()
    t.join()
    assert seen[-1] == ({"type": "patches", "origin": None}, "other")
    unsubscribe()
    s.toggle("trigger", True)
    assert len(seen) == 5


def test_a_failing_subscriber_warns_and_the_change_still_happens(demo_session, recwarn):
    def broken(event):
        raise RuntimeError("boom")

    demo_session.subscribe(broken)
    assert demo_session.toggle("trigger", True) is True and demo_session.patch("trigger").enabled
    assert any("subscriber failed" in str(w.message) for w in recwarn)
