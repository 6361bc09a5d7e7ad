// One snapshot: provenance, descriptions by class (filterable, reviewable), removed descriptions with
// their reasons and scores, and the review log of snapshots that a review produced.
import { get } from "./api.js";
import { badge, compareHref, fill, h, json, shortTime, snapLink } from "./dom.js";
import { Review } from "./review.js";

const PAGE = 500;

function provenance(kb) {
  const m = kb.manifest;
  const clip = m.clip || {};
  const row = (label, ...value) => [h("dt", {}, label), h("dd", {}, ...value)];
  return h("dl", { class: "provenance" },
    row("operation", m.operation),
    row("created", shortTime(m.created)),
    row("parents", m.parents.length ? m.parents.map((p) => [snapLink(p.name), " ",
      h("a", { class: "small", href: compareHref(p.name, kb.name) }, "diff"), " "]) : "—"),
    row("counts", `${m.classes} classes · ${m.total} descriptions · ${m.removed_total} removed`),
    row("CLIP", `${clip.model_id || "?"} · template "${clip.template || ""}"`),
    row("content hash", h("code", {}, m.content_hash)),
    row("parameters", h("details", {}, h("summary", {}, "show"), json(m.parameters))),
    // How the texts were made (prompt, LLM, calls; source files; an imported bundle's original) and the ancestors.
    m.provenance ? row("how made", h("details", {}, h("summary", {}, m.provenance.kind), json(m.provenance))) : [],
    (kb.lineage || []).length ? row("lineage", h("details", {}, h("summary", {}, `${kb.lineage.length} ancestor(s)`),
      json(kb.lineage))) : []);
}

// "melanoma (mel)" when the manifest records a display name for the class key "mel".
function displayName(kb, cls) {
  const shown = (kb.manifest.display_names || {})[cls];
  return shown ? `${shown} (${cls})` : cls;
}

function removedTable(kb, matches) {
  const rows = kb.removed.filter((r) => matches(r.class_name, r.text));
  if (!kb.removed.length) return null;
  // sanitise and overlong scores are counts (characters, tokens), not similarities: no decimals
  const counts = new Set(["sanitise", "overlong"]);
  const score = (s, stage) => (s === null || s === undefined ? "" : Number(s).toFixed(counts.has(stage) ? 0 : 3));
  return h("section", { id: "removed" }, h("h2", {}, `Removed in this snapshot (${kb.removed.length})`),
    h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, ["class", "text", "stage", "reason", "score", "related"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((r) => h("tr", { class: "removed-row" }, h("td", {}, r.class_name), h("td", { class: "text" }, r.text),
        h("td", {}, r.stage), h("td", {}, r.reason), h("td", { class: "num" }, score(r.score, r.stage)), h("td", {}, r.explanation || r.related || ""))))));
}

function reviewLog(kb) {
  const log = (kb.manifest.extra || {}).review;
  if (!Array.isArray(log) || !log.length) return null;
  const cols = ["who", "when", "action", "class", "old", "new", "comment"];
  return h("section", { id: "review-log" }, h("h2", {}, "Review recorded in this snapshot"),
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
      h("tbody", {}, log.map((d) => h("tr", {}, cols.map((c) => h("td", {}, c === "when" ? shortTime(d[c]) : d[c] || "")))))));
}

class SnapshotView {
  constructor(main, kb, review) {
    this.main = main;
    this.kb = kb;
    this.review = review;
    this.limit = PAGE;
    this.classes = [...new Set(kb.descriptions.map((d) => d.class_name))];
    this.list = h("div", { id: "descriptions" });
    this.removed = h("div");
    this.classPick = h("select", { id: "filter-class", onchange: () => this.renderList() },
      h("option", { value: "" }, "all classes"), this.classes.map((c) => h("option", { value: c }, c)));
    this.search = h("input", { id: "filter-text", type: "search", placeholder: "filter text…",
      oninput: () => this.renderList() });
    this.shown = h("span", { class: "muted", id: "shown-count" });
  }

  matches() {
    const cls = this.classPick.value;
    const needle = this.search.value.trim().toLowerCase();
    return (className, text) => (!cls || className === cls) && (!needle || text.toLowerCase().includes(needle));
  }

  row(desc) {
    const decision = this.review.decisionFor(desc);
    const text = decision && decision.action === "edit"
      ? h("td", { class: "text" }, h("del", {}, desc.text), " ", h("ins", {}, decision.new))
      : h("td", { class: "text" }, desc.text);
    return h("tr", { class: "desc " + (decision ? "decided-" + decision.action : ""), "data-id": desc.id },
      text, h("td", { class: "source muted" }, desc.source), this.review.actions(desc));
  }

  addedRow(decision) {
    return h("tr", { class: "desc decided-add" }, h("td", { class: "text" }, h("ins", {}, decision.new)),
      h("td", { class: "source muted" }, "review:" + decision.who),
      h("td", { class: "actions" }, badge("added", "add"), " ", decision.comment || "",
        h("button", { class: "link act-undo", onclick: () => this.review.undo(decision.key) }, "undo")));
  }

  renderList() {
    const matches = this.matches();
    const groups = new Map();
    let total = 0;
    let drawn = 0;
    const push = (cls, row) => { if (!groups.has(cls)) groups.set(cls, []); groups.get(cls).push(row); };
    for (const d of this.kb.descriptions) {
      if (!matches(d.class_name, d.text)) continue;
      total += 1;
      if (drawn < this.limit) { push(d.class_name, this.row(d)); drawn += 1; }
    }
    for (const a of this.review.additions()) if (matches(a.class, a.new)) push(a.class, this.addedRow(a));
    const sections = [...groups].map(([cls, rows]) => h("section", { class: "class-block", "data-class": cls },
      h("h3", {}, displayName(this.kb, cls), h("span", { class: "muted" }, ` (${rows.length})`)),
      h("table", { class: "grid descs" }, h("tbody", {}, rows))));
    const more = total > drawn ? h("button", { id: "show-all", onclick: () => { this.limit = Infinity; this.renderList(); } },
      `show all ${total}`) : null;
    fill(this.shown, `${drawn} of ${total} matching descriptions shown`);
    fill(this.list, ...sections, more || "");
    fill(this.removed, removedTable(this.kb, matches) || "");
  }

  render() {
    this.review.onChange = () => this.renderList();
    fill(this.main,
      h("h1", {}, this.kb.name, " ", this.kb.tags.map((t) => badge(t, "tag"))),
      provenance(this.kb),
      this.review.panel(),
      h("div", { class: "toolbar filters" }, this.classPick, this.search, this.shown),
      this.review.addForm(this.classes),
      this.list, this.removed, reviewLog(this.kb));
    this.renderList();
  }
}

export async function renderSnapshot(main, reference) {
  const kb = await get("/api/snapshots/" + encodeURIComponent(reference));
  const review = new Review(kb);
  await review.load();
  new SnapshotView(main, kb, review).render();
}
