"""The WebSocket hub: every open tab, one queue of model work, answers broadcast to all.

Requests (``toggle``, ``prompt``) are merged into one pending change set: the latest request for a
patch wins, and one forward answers every request that arrived before it started. The forward runs
in the hub's worker thread under the Session's lock, never on the event loop, so other sockets keep
being served. An answer computed while newer requests arrived is dropped (it shows a state nobody
asked for any more); the next answer then ``covers`` the dropped requests too, so a client that
waits for its own ``seq`` always gets it.

Changes made elsewhere (the TUI, ``POST /api/patches``, a notebook) reach the hub through
``Session.subscribe`` and are answered the same way, with ``"origin": "tui"``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect

from tuiwb.errors import TuiwbError
from tuiwb.server import payloads
from tuiwb.server.errors import one_line
from tuiwb.session.adapter import Lab

EXTERNAL_ORIGIN = "tui"
"""The ``origin`` of an answer to a change that did not come from a socket."""
_ids = itertools.count(1)


def now_ms() -> float:
    """Server wall clock in milliseconds (the ``t`` stamps)."""
    return time.time() * 1e3


@dataclass
class Client:
    """One open socket and what it still has to be sent."""

    id: str
    ws: WebSocket
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    logits: dict | None = None
    """The newest unsent ``logits`` message (a newer one replaces it: latest wins per client too)."""
    queue: deque = field(default_factory=deque)
    """Other messages (hello, errors), in order."""

    def post(self, msg: dict) -> None:
        if msg["type"] == "logits":
            self.logits = msg
        else:
            self.queue.append(msg)
        self.wake.set()


@dataclass
class _Pending:
    toggles: dict[str, tuple[bool, str, int]] = field(default_factory=dict)  # patch → (on, client, seq)
    prompt: tuple[str, str, int] | None = None  # (text, client, seq)


class Hub:
    def __init__(self, lab: Lab, state_extra: dict | None = None):
        self.lab = lab
        self.session = lab.session
        self.state_extra = state_extra or {}
        self.origin = f"companion-{id(self):x}"  # our own changes, as the Session's events name them
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuiwb-hub")
        self._pending = _Pending()
        self._covers: dict[str, int] = {}  # client → newest seq not answered yet
        self._latest: tuple[str, int | None, float] = (EXTERNAL_ORIGIN, None, 0.0)  # (origin, seq, recv_ms)
        self._gen = 0  # bumped by every request: an answer computed at an older gen is stale
        self._dirty = False
        self._running = False
        self._unsubscribe = None
        self.dropped = 0
        """Answers computed but dropped as superseded (tests and the benchmark read it)."""
        self.answered = 0
        """Answers broadcast."""

    # --- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind to the running event loop and listen to the Session (from the app's lifespan)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self._unsubscribe = self.session.subscribe(self._on_session_event)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.loop = None

    def _on_session_event(self, event: dict) -> None:
        """Any thread, Session lock held: hand the change to the event loop, nothing more."""
        if event.get("origin") == self.origin or self.loop is None or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self._external_change)
        except RuntimeError:  # the loop closed in between (shutdown)
            pass

    def _external_change(self) -> None:
        if self.clients:
            self._request(EXTERNAL_ORIGIN, None, now_ms())

    # --- one socket --------------------------------------------------------------------------
    async def serve(self, ws: WebSocket) -> None:
        """Run one client until it disconnects."""
        self.start()
        await ws.accept()
        client = Client(id=f"c{next(_ids)}", ws=ws)
        self.clients[client.id] = client  # before the state is read: no broadcast after it is missed
        sender = None
        try:
            state = await self._in_worker(payloads.state, self.lab, self.state_extra.get("target"))
            client.post({"type": "hello", "client": client.id, "state": state})
            sender = asyncio.create_task(self._sender(client))  # hello first, then any logits meanwhile
            while True:
                text = await ws.receive_text()
                recv_ms = now_ms()
                try:
                    msg = json.loads(text)
                except ValueError:
                    client.post({"type": "error", "seq": None, "detail": "messages must be JSON objects"})
                    continue
                self.handle(client, msg, recv_ms)
        except (WebSocketDisconnect, RuntimeError, KeyError):
            pass  # RuntimeError/KeyError: the socket closed under receive (a bytes frame, a dropped peer)
        finally:
            self.clients.pop(client.id, None)
            self._covers.pop(client.id, None)
            if sender is not None:
                sender.cancel()

    async def _sender(self, client: Client) -> None:
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                while client.queue:
                    await client.ws.send_json(client.queue.popleft())
                if client.logits is not None:
                    msg, client.logits = client.logits, None
                    msg = {**msg, "t": {**msg["t"], "send_ms": now_ms()}}
                    await client.ws.send_json(msg)
        except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError):
            pass

    def handle(self, client: Client, msg, recv_ms: float) -> None:
        """A client's request: checked here (shape only), merged into the pending change set."""
        seq = msg.get("seq") if isinstance(msg, dict) else None
        problem = _check(msg)
        if problem is not None:
            client.post({"type": "error", "seq": seq, "detail": problem})
            return
        if msg["type"] == "toggle":
            self._pending.toggles[msg["patch"]] = (bool(msg["on"]), client.id, seq)
        else:
            self._pending.prompt = (msg["text"], client.id, seq)
        self._covers[client.id] = seq
        self._request(client.id, seq, recv_ms)

    # --- the work queue ----------------------------------------------------------------------
    def _request(self, origin: str, seq: int | None, recv_ms: float) -> None:
        self._gen += 1
        self._latest = (origin, seq, recv_ms)
        self._dirty = True
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                gen, (origin, seq, recv_ms) = self._gen, self._latest
                pending, self._pending = self._pending, _Pending()
                try:
                    body, errors, fwd_ms = await self._in_worker(self._compute, pending)
                except Exception as e:  # noqa: BLE001 — a failed forward is told, never a dead hub
                    self._send_to(origin, {"type": "error", "seq": seq, "detail": one_line(e)})
                    continue
                for cid, eseq, detail in errors:
                    self._send_to(cid, {"type": "error", "seq": eseq, "detail": detail})
                if gen != self._gen:
                    self.dropped += 1  # superseded while it ran: its numbers are already stale
                    continue
                covers, self._covers = self._covers, {}
                msg = {"type": "logits", "seq": seq, "origin": origin, **body, "covers": covers,
                       "t": {"recv_ms": recv_ms, "fwd_ms": fwd_ms}}
                self.answered += 1
                for c in list(self.clients.values()):
                    c.post(msg)
        finally:
            self._running = False

    def _compute(self, pending: _Pending):
        """Worker thread: apply the merged requests and compute the logits, in one lock hold."""
        errors = []
        with self.session.changes_from(self.origin), self.lab.atomic():
            for name, (on, cid, seq) in pending.toggles.items():
                try:
                    self.session.toggle(name, on)
                except TuiwbError as e:
                    errors.append((cid, seq, one_line(e)))
            if pending.prompt is not None:
                text, cid, seq = pending.prompt
                try:
                    if text.strip():
                        self.session.loaded.encode(text)  # too long for the model: refused, prompt kept
                    self.session.prompt = text
                except TuiwbError as e:
                    errors.append((cid, seq, one_line(e)))
            body = payloads.logits(self.lab, self.session.prompt)
        return body, errors, now_ms()

    async def _in_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _send_to(self, client_id: str | None, msg: dict) -> None:
        c = self.clients.get(client_id or "")
        if c is not None:
            c.post(msg)


def _check(msg) -> str | None:
    """What is wrong with a client message's shape (one line), or None."""
    if not isinstance(msg, dict) or msg.get("type") not in ("toggle", "prompt"):
        return 'unknown message: send {"type": "toggle", "seq", "patch", "on"} or {"type": "prompt", "seq", "text"}'
    if not isinstance(msg.get("seq"), int) or isinstance(msg.get("seq"), bool):
        return "`seq` must be an integer"
    if msg["type"] == "toggle":
        if not isinstance(msg.get("patch"), str):
            return "`patch` must be a patch name (a string)"
        if not isinstance(msg.get("on"), bool):
            return "`on` must be true or false"
    elif not isinstance(msg.get("text"), str):
        return "`text` must be a string"
    return None

