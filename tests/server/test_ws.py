"""The WebSocket protocol: hello, toggle → logits broadcast to every client, errors, coalescing."""

from __future__ import annotations

import time

from companion_client import open_ws, receive_until


def test_hello_then_toggle_broadcasts_logits_to_every_client(client, server_session):
    with open_ws(client) as a, open_ws(client) as b:
        hello_a, hello_b = a.receive_json(), b.receive_json()
        assert hello_a["type"] == "hello" and hello_a["client"] != hello_b["client"]
        assert hello_a["state"]["patches"][0] == {**hello_a["state"]["patches"][0], "name": "trigger", "on": False}
        a.send_json({"type": "toggle", "seq": 1, "patch": "trigger", "on": True})
        for ws in (a, b):
            msg = receive_until(ws, lambda m: m["type"] == "logits")
            assert msg["seq"] == 1 and msg["origin"] == hello_a["client"]
            assert msg["patches"][0]["on"] is True and msg["kl"] > 0 and msg["top"]
            t = msg["t"]
            assert t["recv_ms"] <= t["fwd_ms"] <= t["send_ms"]
            assert msg["covers"] == {hello_a["client"]: 1}
        assert server_session.patch("trigger").enabled


def test_prompt_message_sets_the_shared_prompt(client, server_session):
    with open_ws(client) as a:
        a.receive_json()
        a.send_json({"type": "prompt", "seq": 7, "text": "the cup"})
        msg = receive_until(a, lambda m: m["type"] == "logits")
        assert msg["seq"] == 7 and msg["prompt"] == "the cup" and msg["top"]
    assert server_session.prompt == "the cup"


def test_a_prompt_too_long_for_the_model_is_refused_and_the_shared_prompt_kept(client, server_session):
    before = server_session.prompt
    with open_ws(client) as a:
        a.receive_json()
        a.send_json({"type": "prompt", "seq": 3, "text": "the cup " * 5000})
        err = receive_until(a, lambda m: m["type"] == "error")
        assert err["seq"] == 3 and "context" in err["detail"]
        assert receive_until(a, lambda m: m["type"] == "logits")["prompt"] == before
    assert server_session.prompt == before


def test_bad_messages_get_an_error_and_the_socket_stays_open(client):
    with open_ws(client) as a:
        a.receive_json()
        a.send_text("not json")
        assert a.receive_json()["type"] == "error"
        a.send_json({"type": "toggle", "seq": 2, "patch": "nosuch", "on": True})
        err = receive_until(a, lambda m: m["type"] == "error")
        assert err["seq"] == 2 and "nosuch" in err["detail"] and "\n" not in err["detail"]
        a.send_json({"type": "toggle", "seq": "3", "patch": "trigger", "on": True})
        assert "seq" in receive_until(a, lambda m: m["type"] == "error")["detail"]
        a.send_json({"type": "toggle", "seq": 4, "patch": "trigger", "on": True})
        assert receive_until(a, lambda m: m["type"] == "logits")["seq"] == 4


def test_a_change_made_through_the_session_reaches_the_sockets_as_origin_tui(client, server_session):
    with open_ws(client) as a:
        a.receive_json()
        with server_session.changes_from("tui"):
            server_session.toggle("trigger", True)
        msg = receive_until(a, lambda m: m["type"] == "logits")
        assert msg["origin"] == "tui" and msg["seq"] is None and msg["patches"][0]["on"] is True


def test_rapid_toggles_coalesce_latest_wins_and_stale_answers_are_dropped(client, server_session):
    """A burst of toggles sent while a forward waits for the Session's lock: one answer, with the last
    seq and the last state; the forward that was already under way is dropped, not sent."""
    hub = client.app.state.hub
    with open_ws(client) as a:
        me = a.receive_json()["client"]
        n = 30
        with server_session.atomic():  # the hub's worker blocks on the lock with the first request
            for seq in range(1, n + 1):
                a.send_json({"type": "toggle", "seq": seq, "patch": "trigger", "on": seq % 2 == 1})
            deadline = time.monotonic() + 10
            while hub._covers.get(me) != n and time.monotonic() < deadline:
                time.sleep(0.005)  # every request has reached the hub (merged while the lock is held)
        msg = receive_until(a, lambda m: m["type"] == "logits")
        assert msg["seq"] == n and msg["patches"][0]["on"] is False  # seq 30 asked for off
        assert msg["covers"] == {me: n}
        assert hub.dropped >= 1 and hub.answered == 1
        a.send_json({"type": "toggle", "seq": n + 1, "patch": "trigger", "on": True})
        nxt = receive_until(a, lambda m: m["type"] == "logits")
        assert nxt["seq"] == n + 1 and nxt["patches"][0]["on"] is True  # nothing stale arrived in between
    assert server_session.patch("trigger").enabled
