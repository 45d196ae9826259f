// HTTP calls to the tuiwb server. The page's URL carries the access token (?token=T); it is sent as the
// X-Tuiwb-Token header, and the server's HttpOnly cookie covers pages opened without it.

export const TOKEN = new URLSearchParams(location.search).get("token");

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (TOKEN) headers["X-Tuiwb-Token"] = TOKEN;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.detail || `${method} ${path}: HTTP ${res.status}`);
  return data;
}

const qs = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString();

export const api = {
  state: () => call("GET", "/api/state"),
  features: (p) => call("GET", `/api/features?${qs(p)}`),
  feature: (layer, id) => call("GET", `/api/features/${encodeURIComponent(layer)}/${encodeURIComponent(id)}`),
  logits: (prompt) => call("POST", "/api/logits", { prompt }),
  provenance: (p) => call("GET", `/api/provenance?${qs({ ...p, format: "circuit-tracer" })}`),
  addPatch: (body) => call("POST", "/api/patches", body),
  removePatch: (name) => call("DELETE", `/api/patches/${encodeURIComponent(name)}`),
};
