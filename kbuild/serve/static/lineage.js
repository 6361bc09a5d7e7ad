// The snapshot list as a lineage: each snapshot under its (first) parent, newest last.
import { get } from "./api.js";
import { badge, compareHref, fill, h, shortTime, snapLink } from "./dom.js";

function node(snap, children, byName) {
  const extraParents = snap.parents.slice(1).filter((p) => byName.has(p));
  const reviewers = (snap.parameters && snap.parameters.reviewers) || [];
  const first = snap.parents[0];
  return h("li", { class: "lineage-node", "data-name": snap.name },
    h("div", { class: "node-line" },
      snapLink(snap.name), " ",
      snap.tags.map((t) => badge(t, "tag")), " ",
      h("span", { class: "op" }, snap.operation), " ",
      h("span", { class: "muted" }, shortTime(snap.created)), " ",
      h("span", { class: "counts" }, `${snap.classes} classes · ${snap.total} descriptions · ${snap.removed_total} removed`),
      reviewers.length ? h("span", { class: "muted" }, " · reviewed by " + reviewers.join(", ")) : null,
      extraParents.length ? h("span", { class: "muted" }, " · also from " + extraParents.join(", ")) : null,
      first && byName.has(first) ? h("a", { class: "small", href: compareHref(first, snap.name) }, " diff with parent") : null),
    children.length ? h("ul", { class: "lineage" }, children) : null);
}

export async function renderLineage(main) {
  const snapshots = await get("/api/snapshots");
  if (!snapshots.length) {
    fill(main, h("p", {}, "No snapshots yet: create one with 'kbuild load FILE' or 'kbuild generate'."));
    return;
  }
  const byName = new Map(snapshots.map((s) => [s.name, s]));
  const kids = new Map(snapshots.map((s) => [s.name, []]));
  const roots = [];
  for (const s of snapshots) {
    const parent = s.parents.find((p) => byName.has(p));
    (parent ? kids.get(parent) : roots).push(s);
  }
  const build = (s) => node(s, kids.get(s.name).map(build), byName);
  fill(main,
    h("h1", {}, "Snapshots"),
    h("p", { class: "muted" }, "Parent → child; each child says which operation made it."),
    h("ul", { class: "lineage root", id: "lineage" }, roots.map(build)));
}
