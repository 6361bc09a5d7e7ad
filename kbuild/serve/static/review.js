// Review of one snapshot by one reviewer. Decisions live in a server-side draft (so a reload keeps
// them); every change names the draft version it was made on, and a 409 means another tab or person
// changed the draft first: we show their version instead of overwriting it.
import { ApiError, get, post, reviewer, token } from "./api.js";
import { badge, fill, h, message, snapLink } from "./dom.js";

const VERB = { accept: "accepted", reject: "rejected", edit: "edited", add: "added" };

export class Review {
  constructor(kb) {
    this.kb = kb;
    this.draft = null;
    this.onChange = () => {};
    this.status = h("div", { id: "review-status", class: "status", role: "status" });
  }

  get enabled() { return Boolean(token() && reviewer() && this.draft); }

  async load() {
    this.draft = reviewer() ? await get("/api/draft", { snapshot: this.kb.name, reviewer: reviewer() }) : null;
  }

  decisionFor(desc) {
    if (!this.draft) return null;
    return this.draft.decisions.find((d) => d.action !== "add" && d.class === desc.class_name && d.old === desc.text) || null;
  }

  additions() { return this.draft ? this.draft.decisions.filter((d) => d.action === "add") : []; }

  async send(path, extra) {
    const body = { snapshot: this.kb.name, reviewer: reviewer(), version: this.draft.version, ...extra };
    try {
      const answer = await post(path, body);
      this.draft = answer.draft && answer.snapshot ? answer.draft : answer;
      message(this.status, "");
      this.onChange();
      return answer;
    } catch (err) {
      if (err instanceof ApiError && err.status === 409 && err.payload.draft) {
        this.draft = err.payload.draft;
        this.onChange();
      }
      message(this.status, err.message, "error");
      return null;
    }
  }

  decide(decision) { return this.send("/api/draft/decision", { decision }); }
  undo(key) { return this.send("/api/draft/undo", { key }); }

  async save(name) {
    const answer = await this.send("/api/draft/save", name ? { name } : {});
    if (answer) {
      fill(this.status, h("span", { class: "ok", id: "saved-as" }, "Saved as ", snapLink(answer.snapshot),
        ` (child of ${answer.parent}).`));
    }
  }

  // ---- pieces of the page ----------------------------------------------------------------
  panel() {
    const box = h("section", { id: "review-panel", class: "review-panel" });
    const redraw = () => fill(box, ...this.panelContent());
    const previous = this.onChange;
    this.onChange = () => { redraw(); previous(); };
    redraw();
    return box;
  }

  panelContent() {
    if (!token()) return [h("strong", {}, "Review"), " is read-only without the server's token.", this.status];
    if (!reviewer()) return [h("strong", {}, "Review: "), "enter your name (top right) to review this snapshot.", this.status];
    const counts = {};
    for (const d of this.draft.decisions) counts[d.action] = (counts[d.action] || 0) + 1;
    const parts = Object.entries(counts).map(([a, n]) => `${n} ${VERB[a]}`);
    const nameInput = h("input", { id: "save-name", type: "text", placeholder: "name (optional)", maxlength: 128 });
    const empty = this.draft.decisions.length === 0;
    return [
      h("strong", {}, "Review draft"), " by ", h("span", { class: "who" }, reviewer()),
      h("span", { id: "draft-summary", class: "muted" },
        ` · version ${this.draft.version} · ${this.draft.decisions.length} unsaved decision(s)`,
        parts.length ? ` (${parts.join(", ")})` : ""),
      this.draft.saved_as && empty ? h("span", { class: "muted" }, " · last saved as ", snapLink(this.draft.saved_as)) : null,
      h("div", { class: "toolbar" },
        nameInput,
        h("button", { id: "save-snapshot", disabled: empty, onclick: () => this.save(nameInput.value.trim()) },
          "Save as new snapshot"),
        h("button", { id: "discard-draft", class: "secondary", disabled: empty,
          onclick: () => window.confirm("Discard every unsaved decision?") && this.send("/api/draft/discard", {}) },
          "Discard draft")),
      this.status,
    ];
  }

  // The actions cell of one description row: its decision (with undo) or the buttons to make one.
  actions(desc) {
    const cell = h("td", { class: "actions" });
    const decision = this.decisionFor(desc);
    if (decision) {
      cell.append(badge(VERB[decision.action], decision.action), " ",
        decision.comment ? h("span", { class: "comment" }, decision.comment) : "",
        h("button", { class: "link act-undo", disabled: !this.enabled, onclick: () => this.undo(decision.key) }, "undo"));
      return cell;
    }
    const open = (action) => fill(cell, this.editor(desc, action, () => fill(cell, ...buttons())));
    const buttons = () => ["accept", "reject", "edit"].map((action) =>
      h("button", { class: `small act-${action}`, disabled: !this.enabled, onclick: () => open(action) }, action));
    cell.append(...buttons());
    return cell;
  }

  editor(desc, action, cancel) {
    const text = action === "edit" ? h("textarea", { class: "edit-text", rows: 2, value: desc.text }) : null;
    const comment = h("input", { class: "comment-input", type: "text", placeholder: "comment (optional)" });
    const confirm = () => this.decide({ action, class: desc.class_name, old: desc.text,
      new: text ? text.value : null, comment: comment.value });
    return h("div", { class: "editor" }, text, comment,
      h("button", { class: "small confirm", onclick: confirm }, action === "edit" ? "save edit" : action),
      h("button", { class: "small secondary cancel", onclick: cancel }, "cancel"));
  }

  addForm(classes) {
    const list = h("datalist", { id: "class-names" }, classes.map((c) => h("option", { value: c })));
    const cls = h("input", { id: "add-class", type: "text", list: "class-names", placeholder: "class" });
    const text = h("textarea", { id: "add-text", rows: 2, placeholder: "new description" });
    const comment = h("input", { id: "add-comment", type: "text", placeholder: "comment (optional)" });
    const add = async () => {
      const answer = await this.decide({ action: "add", class: cls.value, new: text.value, comment: comment.value });
      if (answer) { text.value = ""; comment.value = ""; }
    };
    return h("details", { class: "add-form" }, h("summary", {}, "Add a description"),
      list, h("div", { class: "toolbar" }, cls, text, comment,
        h("button", { id: "add-go", disabled: !this.enabled, onclick: add }, "add")));
  }
}
