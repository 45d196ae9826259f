// The logit bar chart: next-token probabilities baseline (grey) vs patched (green), with the delta.
// Repainted synchronously on every `logits` message (no transition), so a timing taken after
// `paint` returns measures the repaint, not an animation.

const d3 = window.d3;
const ROW = 22, LABEL = 92, DELTA = 58;

export class BarChart {
  constructor(svg, klEl) {
    this.svg = d3.select(svg);
    this.klEl = klEl;
    this.paints = 0;
  }

  /**
   * `top`: [{token, id, p, p_base, dp}], the patched top tokens; `baseTop` (optional, same rows): the
   * baseline's top tokens, so a token a patch pushed out of the top still shows, further down, with its Δ.
   */
  paint(top, kl, baseTop = []) {
    const byId = new Map(top.map((r) => [r.id, r]));
    // Only baseline rows that would have made the chart on their own (p_base ≥ the smallest patched p shown).
    const floor = Math.min(...top.map((r) => r.p));
    for (const r of baseTop || []) if (!byId.has(r.id) && r.p_base >= floor) byId.set(r.id, r);
    const rows = [...byId.values()].sort((a, b) => b.p - a.p);
    const width = Math.max(this.svg.node().clientWidth || 300, 200);
    const height = rows.length * ROW + 4;
    const x = d3.scaleLinear().domain([0, Math.max(1e-9, d3.max(rows, (r) => Math.max(r.p, r.p_base)))])
      .range([0, width - LABEL - DELTA]);
    this.svg.attr("viewBox", `0 0 ${width} ${height}`).attr("height", height);
    const g = this.svg.selectAll("g.bar").data(rows, (r) => r.id).join((enter) => {
      const e = enter.append("g").attr("class", "bar");
      e.append("text").attr("class", "bar-label").attr("x", LABEL - 6).attr("y", 15).attr("text-anchor", "end");
      e.append("rect").attr("class", "bar-base").attr("x", LABEL).attr("y", 3).attr("height", 7);
      e.append("rect").attr("class", "bar-patched").attr("x", LABEL).attr("y", 10).attr("height", 9);
      e.append("text").attr("class", "bar-delta").attr("y", 15).attr("text-anchor", "end");
      return e;
    });
    g.attr("transform", (r, i) => `translate(0,${i * ROW})`)
      .attr("data-token", (r) => r.token).attr("data-id", (r) => r.id)
      .attr("data-p", (r) => r.p).attr("data-p-base", (r) => r.p_base).attr("data-rank", (r, i) => i);
    g.select(".bar-label").text((r) => JSON.stringify(r.token));
    g.select(".bar-base").attr("width", (r) => x(r.p_base));
    g.select(".bar-patched").attr("width", (r) => x(r.p));
    g.select(".bar-delta").attr("x", width - 2)
      .attr("class", (r) => `bar-delta ${r.dp > 1e-4 ? "up" : r.dp < -1e-4 ? "down" : "flat"}`)
      .text((r) => `${r.dp >= 0 ? "+" : "−"}${Math.abs(r.dp).toFixed(3)}`);
    g.selectAll("title").data((r) => [r]).join("title")
      .text((r) => `${JSON.stringify(r.token)}  p ${r.p.toFixed(4)}  baseline ${r.p_base.toFixed(4)}  Δ ${r.dp.toFixed(4)}`);
    this.klEl.textContent = `KL(baseline ‖ patched) = ${Number(kl || 0).toFixed(4)}`;
    this.paints += 1;
    this.svg.attr("data-paints", this.paints);
  }
}
