// Two snapshots side by side, grouped exactly as 'kbuild diff' groups them (the server runs its function).
import { get } from "./api.js";
import { fill, h, json, snapLink } from "./dom.js";

function picker(id, snapshots, chosen) {
  return h("select", { id, name: id },
    snapshots.map((s) => h("option", { value: s.name, selected: s.name === chosen }, s.name)));
}

function twoColumns(oldName, newName, rows) {
  return h("table", { class: "side-by-side" },
    h("thead", {}, h("tr", {}, h("th", {}, oldName), h("th", {}, newName))),
    h("tbody", {}, rows));
}

function classBlock(change, oldName, newName) {
  const rows = [];
  for (const text of change.removed) {
    const why = change.removal_reasons[text];
    rows.push(h("tr", { class: "removed" },
      h("td", { class: "old" }, h("span", { class: "text" }, text), why ? h("div", { class: "reason" }, why) : null),
      h("td", { class: "empty" }, "")));
  }
  for (const r of change.reworded) {
    rows.push(h("tr", { class: "reworded" },
      h("td", { class: "old" }, h("span", { class: "text" }, r.old)),
      h("td", { class: "new" }, h("span", { class: "text" }, r.new),
        h("div", { class: "reason" }, `reworded (similarity ${r.similarity.toFixed(3)})`))));
  }
  for (const text of change.added) {
    rows.push(h("tr", { class: "added" }, h("td", { class: "empty" }, ""),
      h("td", { class: "new" }, h("span", { class: "text" }, text))));
  }
  return h("section", { class: "class-diff", "data-class": change.class_name },
    h("h3", {}, "Modified class: ", change.class_name), twoColumns(oldName, newName, rows));
}

function wholeClasses(title, classes, side, oldName, newName) {
  return Object.entries(classes).map(([name, texts]) => h("section", { class: "class-diff", "data-class": name },
    h("h3", {}, title, name, ` (${texts.length} descriptions)`),
    twoColumns(oldName, newName, texts.map((t) => h("tr", { class: side },
      side === "removed" ? [h("td", { class: "old" }, t), h("td", { class: "empty" }, "")]
                         : [h("td", { class: "empty" }, ""), h("td", { class: "new" }, t)])))));
}

function manifestTable(changes) {
  const keys = Object.keys(changes);
  if (!keys.length) return null;
  return h("section", {}, h("h2", {}, "Manifest"), h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, h("th", {}, "field"), h("th", {}, "old"), h("th", {}, "new"))),
    h("tbody", {}, keys.map((k) => h("tr", {}, h("td", {}, k), h("td", {}, json(changes[k].old)),
      h("td", {}, json(changes[k].new)))))));
}

function result(data) {
  if (data.empty) return h("p", { id: "diff-summary" }, "No differences between ", data.old, " and ", data.new, ".");
  const d = data.diff;
  return h("div", { id: "diff" },
    h("p", { id: "diff-summary", class: "summary" }, snapLink(d.old), " → ", snapLink(d.new), ": ", data.summary_line),
    d.reword_detection ? null : h("p", { class: "muted" },
      "Reword detection skipped: the snapshots were embedded with different CLIP models."),
    wholeClasses("Added class: ", d.added_classes, "added", d.old, d.new),
    wholeClasses("Removed class: ", d.removed_classes, "removed", d.old, d.new),
    d.modified_classes.map((c) => classBlock(c, d.old, d.new)),
    manifestTable(d.manifest));
}

export async function renderCompare(main, oldName, newName) {
  const snapshots = await get("/api/snapshots");
  if (snapshots.length < 1) {
    fill(main, h("p", {}, "No snapshots to compare yet."));
    return;
  }
  const last = snapshots[snapshots.length - 1].name;
  const older = snapshots.length > 1 ? snapshots[snapshots.length - 2].name : last;
  const oldPick = picker("old", snapshots, oldName || older);
  const newPick = picker("new", snapshots, newName || last);
  const go = () => {
    window.location.hash = "#/compare?old=" + encodeURIComponent(oldPick.value) + "&new=" + encodeURIComponent(newPick.value);
  };
  const out = h("div", { id: "compare-result" });
  fill(main, h("h1", {}, "Compare snapshots"),
    h("div", { class: "toolbar" }, h("label", {}, "old ", oldPick), h("label", {}, "new ", newPick),
      h("button", { id: "compare-go", onclick: go }, "Compare")),
    out);
  if (oldName && newName) {
    fill(out, h("p", { class: "muted" }, "Comparing…"));
    fill(out, result(await get("/api/compare", { old: oldName, new: newName })));
  }
}
