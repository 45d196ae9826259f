"""``start_server`` for real (uvicorn on a free loopback port) and the CLI's one-line errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tuiwb.errors import TuiwbError


def test_start_server_serves_http_and_the_socket_on_loopback(server_session, web_dir):
    from websockets.sync.client import connect

    from tuiwb.server.run import start_server

    handle = start_server(server_session, port=0, web_dir=web_dir)
    try:
        assert handle.url == f"http://127.0.0.1:{handle.port}/?token={handle.token}" and len(handle.token) >= 32
        assert handle.ssh_line("box") == f"ssh -L {handle.port}:127.0.0.1:{handle.port} box"
        base = f"http://127.0.0.1:{handle.port}"
        req = urllib.request.Request(f"{base}/api/state", headers={"X-Tuiwb-Token": handle.token})
        assert json.loads(urllib.request.urlopen(req, timeout=30).read())["patches"][0]["name"] == "trigger"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/api/state", timeout=30)
        assert e.value.code == 403
        with connect(f"ws://127.0.0.1:{handle.port}/ws?token={handle.token}", origin=base) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "hello"
            ws.send(json.dumps({"type": "toggle", "seq": 1, "patch": "trigger", "on": True}))
            while (msg := json.loads(ws.recv(timeout=30)))["type"] != "logits":
                pass
            assert msg["seq"] == 1 and msg["patches"][0]["on"] is True
        # a second server on the same port: one line, no traceback
        with pytest.raises(TuiwbError, match="already in use"):
            start_server(server_session, port=handle.port, web_dir=web_dir)
    finally:
        handle.stop()


def test_serve_rejects_a_bad_port_before_loading_anything(cli_error, tmp_path):
    line = cli_error("serve", "--model", tmp_path / "nope", "--saes", tmp_path, "--port", "70000")
    assert "--port" in line and "0-65535" in line


def test_a_non_loopback_host_must_be_asked_for_and_warns(server_session, web_dir):
    from tuiwb.errors import TuiwbWarning
    from tuiwb.server.run import start_server

    with pytest.warns(TuiwbWarning, match="not loopback"):
        handle = start_server(server_session, host="127.0.0.2", port=0, web_dir=web_dir)
    try:
        req = urllib.request.Request(f"http://127.0.0.2:{handle.port}/api/state",
                                     headers={"X-Tuiwb-Token": handle.token})
        assert json.loads(urllib.request.urlopen(req, timeout=30).read())["patches"]  # its own name is allowed
        assert handle.url.startswith(f"http://127.0.0.2:{handle.port}/?token=")
    finally:
        handle.stop()
