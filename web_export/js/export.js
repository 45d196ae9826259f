// Export the graph as circuit-tracer JSON (with the view's pins and selection in qParams) or as a
// standalone SVG (the page's graph styles inlined, so it renders the same anywhere).

export function exportJson(model, { pinned, selected }) {
  const ct = structuredClone(model.ct);
  ct.qParams = { ...(ct.qParams || {}), pinnedIds: [...pinned], clickedId: selected || "" };
  download(new Blob([JSON.stringify(ct, null, 1)], { type: "application/json" }), `${slug(ct)}.json`);
}

export function exportSvg(svgEl, model) {
  const clone = svgEl.cloneNode(true);
  clone.setAttribute("xmlns", "http://www.w3.org/2000/svg");
  const root = getComputedStyle(document.documentElement);
  const vars = ["--bg", "--fg", "--muted", "--line", "--pos", "--neg", "--err", "--sel", "--patched"]
    .map((v) => `${v}: ${root.getPropertyValue(v)};`).join(" ");
  const rules = [];
  for (const sheet of document.styleSheets) {
    for (const rule of sheet.cssRules) if (rule.selectorText && rule.selectorText.includes("svg")) rules.push(rule.cssText);
  }
  const style = document.createElementNS("http://www.w3.org/2000/svg", "style");
  style.textContent = `svg { ${vars} background: ${root.getPropertyValue("--panel")}; font-family: sans-serif; } ${rules.join("\n")}`;
  clone.insertBefore(style, clone.firstChild);
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
