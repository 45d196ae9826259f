// Export the graph as circuit-tracer JSON (with the view's pins and selection in qParams) or as a
// standalone SVG (the page's graph styles inlined, so it renders the same anywhere).

export function exportJson(model, { pinned, selected }) {
  const ct = structuredClone(model.ct);
  ct.qParams = { ...(ct.qParams || {}), pinnedIds: [...pinned], clickedId: selected || "" };
  download(new Blob([JSON.stringify(ct, null, 1)], { type: "application/json" }), `${slug(ct)}.json`);
}

// Presentation properties copied from the live page onto every element: a standalone SVG renderer
// (browsers, rsvg, Inkscape) then draws it the same without the page's stylesheet or CSS variables.
const PROPS = ["fill", "fill-opacity", "stroke", "stroke-width", "stroke-opacity", "stroke-dasharray", "opacity",
  "font-size", "font-family", "text-anchor"];

export function exportSvg(svgEl, model) {
  const clone = svgEl.cloneNode(true);
  clone.setAttribute("xmlns", "http://www.w3.org/2000/svg");
  const live = [svgEl, ...svgEl.querySelectorAll("*")];
  const copies = [clone, ...clone.querySelectorAll("*")];
  live.forEach((el, i) => {
    const cs = getComputedStyle(el);
    copies[i].setAttribute("style", PROPS.map((p) => `${p}:${cs.getPropertyValue(p)}`).join(";"));
  });
  const box = svgEl.viewBox.baseVal;
  const bg = document.createElementNS("http://www.w3.org/2000/svg", "rect");
  Object.entries({ x: box.x, y: box.y, width: box.width, height: box.height,
    fill: getComputedStyle(document.documentElement).getPropertyValue("--panel").trim() }).forEach(([k, v]) => bg.setAttribute(k, v));
  clone.insertBefore(bg, clone.firstChild);
  const text = new XMLSerializer().serializeToString(clone);
  download(new Blob([text], { type: "image/svg+xml" }), `${slug(model.ct)}.svg`);
}

function slug(ct) {
  return String((ct.metadata && ct.metadata.slug) || "graph").replace(/[^\w.-]+/g, "_");
}

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
