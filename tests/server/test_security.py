"""The guard: token on every request (query, header, cookie), Host allow-list, WebSocket Origin, no
CORS, path confinement of the page and of the patch endpoints, patch names validated."""

from __future__ import annotations

import pytest
from companion_client import BASE, ORIGIN, TOKEN, open_ws
from starlette.websockets import WebSocketDisconnect


@pytest.fixture
def anon(client):
    """The same app without the token header the ``client`` fixture adds."""
    client.headers.pop("X-Tuiwb-Token")
    client.cookies.clear()
    return client


@pytest.mark.parametrize("path", ["/api/state", "/", "/static/js/main.js", "/openapi.json", "/static/vendor/d3.js"])
def test_no_token_or_a_wrong_one_is_403(anon, path):
    for r in (anon.get(path), anon.get(path, params={"token": "wrong"}),
              anon.get(path, headers={"X-Tuiwb-Token": "wrong"}), anon.get(path, cookies={"tuiwb_token": "x"})):
        assert r.status_code == 403 and "token" in r.json()["detail"]


def test_token_by_query_header_or_the_cookie_the_page_sets(anon):
    assert anon.get("/api/state", params={"token": TOKEN}).status_code == 200
    assert anon.get("/api/state", headers={"X-Tuiwb-Token": TOKEN}).status_code == 200
    page = anon.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    cookie = page.headers["set-cookie"].lower()
    assert "tuiwb_token=" in cookie and "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    # the browser now sends the cookie: assets load without the token in the URL
    assert anon.get("/static/js/main.js").status_code == 200
    assert "javascript" in anon.get("/static/js/main.js").headers["content-type"]


def test_bad_host_is_403_even_with_the_token(client):
    for host in ("evil.example", "127.0.0.1:9999", "localhost.evil.example:8765"):
        r = client.get("/api/state", headers={"host": host})
        assert r.status_code == 403 and "host" in r.json()["detail"]
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert client.get("/api/state", headers={"host": host}).status_code == 200


def test_foreign_origin_is_refused_and_no_cors_headers_are_sent(client):
    r = client.get("/api/state", headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    ok = client.get("/api/state", headers={"origin": ORIGIN})
    assert ok.status_code == 200 and not any(k.lower().startswith("access-control-") for k in ok.headers)
    pre = client.options("/api/patches", headers={"origin": "http://evil.example",
                                                  "access-control-request-method": "POST"})
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers


@pytest.mark.parametrize("kw", [dict(token=None), dict(token="wrong"), dict(origin="http://evil.example"),
                                dict(origin="null"), dict(headers={"host": "evil.example"})])
def test_websocket_without_token_or_from_another_origin_closes_1008(anon, kw):
    with pytest.raises(WebSocketDisconnect) as e:
        with open_ws(anon, **kw) as ws:
            ws.receive_json()
    assert e.value.code == 1008


def test_websocket_with_token_and_origin_says_hello(client):
    with open_ws(client) as ws:
        assert ws.receive_json()["type"] == "hello"


@pytest.mark.parametrize("path", ["../index.html", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
                                  "node_modules/secret.js", "node_modules/d3/dist/d3.min.js", ".hidden",
                                  "js/../../outside.txt", "/etc/passwd", "js%5C..%5C..%5Coutside.txt"])
def test_static_never_serves_outside_the_page_or_node_modules(client, web_dir, path):
    (web_dir.parent / "outside.txt").write_text("SECRET-CONTENT")
    (web_dir / ".hidden").write_text("SECRET-CONTENT")
    r = client.get(f"{BASE}/static/{path}")
    assert r.status_code == 404 and "SECRET-CONTENT" not in r.text


def test_static_symlink_out_of_the_page_is_refused(client, web_dir, tmp_path):
    (tmp_path / "elsewhere.txt").write_text("SECRET-CONTENT")
    (web_dir / "link.txt").symlink_to(tmp_path / "elsewhere.txt")
    assert client.get("/static/link.txt").status_code == 404


def test_d3_comes_from_node_modules_or_a_503_that_says_make_install(make_client, web_dir, tmp_path):
    c = make_client()
    r = c.get("/static/vendor/d3.js")
    assert r.status_code == 200 and "window.d3" in r.text
    bare = tmp_path / "bare"
    bare.mkdir()
    r = make_client(web_dir=bare).get("/static/vendor/d3.js")
    assert r.status_code == 503 and r.json()["detail"] == "d3 is not installed: run `make install`"


def test_patch_endpoints_refuse_paths_outside_the_roots_and_bad_names(client, tmp_path):
    outside = tmp_path.parent / "not-a-root"
    r = client.post("/api/patches", json={"lora": str(outside)})
    assert r.status_code == 400 and "outside the directories" in r.json()["detail"]
    r = client.post("/api/patches", json={"lora": str(tmp_path / "lora" / ".." / ".." / "x")})
    assert r.status_code == 400 and "outside the directories" in r.json()["detail"]
    for name in ("../etc", "a b", "x" * 65, "naïve"):
        r = client.post("/api/patches", json={"name": name, "layer": 1, "features": [1]})
        assert r.status_code == 400 and "bad patch name" in r.json()["detail"]
    assert client.delete("/api/patches/..%2Fetc").status_code in (400, 404)
    assert client.delete("/api/patches/a.b").status_code == 400
