// The WebSocket client. Latest request wins here too: an answer to one of *our* requests older than
// the last one we sent is dropped (a newer answer is on its way); answers to other clients' (or the
// TUI's) changes are always applied. Click → repaint timings go to window.__tuiwbTimings.

import { TOKEN } from "./api.js";

export class Socket {
  /** `onLogits(msg)` paints a message; `onHello(msg)`, `onError(line)`, `onStatus(bool)`. */
  constructor({ onLogits, onHello, onError, onStatus }) {
    Object.assign(this, { onLogits, onHello, onError, onStatus });
    this.seq = 0;
    this.client = null;
    this.pending = new Map();  // seq -> {click_ms (performance.now), sent_wall (Date.now)}
    this.timings = [];
    window.__tuiwbTimings = this.timings;
    this.connect();
  }

  connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const q = TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : "";
    const ws = new WebSocket(`${proto}://${location.host}/ws${q}`);
    this.ws = ws;
    ws.onopen = () => this.onStatus(true);
    ws.onclose = (ev) => {
      this.onStatus(false);
      if (ev.code === 1008) { this.onError("the server refused the connection (1008): open the URL with its ?token="); return; }
      setTimeout(() => this.connect(), 1000);
    };
    ws.onmessage = (ev) => this.receive(JSON.parse(ev.data));
  }

  get open() { return this.ws && this.ws.readyState === WebSocket.OPEN; }

  /** Send a toggle/prompt request; `started` is the performance.now() of the user's click. */
  send(msg, started = performance.now()) {
    if (!this.open) { this.onError("not connected to the server"); return null; }
    const seq = ++this.seq;
    this.pending.set(seq, { click_ms: started, sent_wall: Date.now() });
    this.ws.send(JSON.stringify({ ...msg, seq }));
    return seq;
  }

  receive(msg) {
    if (msg.type === "hello") { this.client = msg.client; this.onHello(msg); return; }
    if (msg.type === "error") { this.pending.delete(msg.seq); this.onError(msg.detail); return; }
    if (msg.type !== "logits") return;
    // Our newest request this answer includes: `covers` (the server merges requests of several clients
    // into one forward) or, without it, the seq of an answer we originated.
    const covers = msg.covers || {};
    const mine = this.client in covers ? covers[this.client] : msg.origin === this.client ? msg.seq : null;
    if (mine !== null && mine < this.seq) {  // superseded by a newer request of ours: its answer is coming
      for (const s of this.pending.keys()) if (s <= mine) this.pending.delete(s);
      return;
    }
    const recvWall = Date.now();
    this.onLogits(msg);
    const p = mine !== null ? this.pending.get(mine) : null;
    if (!p) return;
    this.pending.clear();  // `mine` is our newest request: nothing older is still waiting
    const domMs = performance.now();
    // The next animation frame runs after the browser has laid out and painted the new bars.
    requestAnimationFrame(() => {
      const paintMs = performance.now();
      const t = msg.t || {};
      this.timings.push({ seq: mine, click_to_dom_ms: domMs - p.click_ms, click_to_paint_ms: paintMs - p.click_ms,
        sent_wall: p.sent_wall, recv_wall: recvWall, server: t,
        server_ms: (t.send_ms ?? NaN) - (t.recv_ms ?? NaN) });
    });
  }
}
