// View state in the URL (selected node, pinned nodes, pruning threshold, graph target), so a view can be
// shared and a GIF reproduced. The access token stays in the query as it came.

export function readState() {
  const q = new URLSearchParams(location.search);
  const target = (q.get("target") || "").match(/^(\d+):(\d+)$/);
  return {
    selected: q.get("sel") || null,
    pinned: (q.get("pin") || "").split(",").filter(Boolean),
    threshold: Number(q.get("thr") || 0),
    target: target ? { layer: Number(target[1]), feature: Number(target[2]) } : null,
  };
}

export function writeState({ selected, pinned, threshold, target }) {
  const q = new URLSearchParams(location.search);
  const set = (k, v) => (v ? q.set(k, v) : q.delete(k));
  set("sel", selected);
  set("pin", [...pinned].join(","));
  set("thr", threshold ? String(threshold) : "");
  set("target", target ? `${target.layer}:${target.feature}` : "");
  history.replaceState(null, "", `${location.pathname}?${q.toString().replace(/%2C/g, ",").replace(/%3A/g, ":").replace(/%2F/g, "/")}`);
}
