// DOM helpers. Every piece of data becomes a text node or a property, never parsed HTML:
// descriptions come from LLMs and curated files and must be treated as untrusted.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "value") el.value = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

// Like replaceChildren, but skips null/false children (so optional sections can be written inline).
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Links inside the app are built from fixed prefixes plus encoded names, so no data can form a scheme.
export function snapLink(name) {
  return h("a", { href: "#/s/" + encodeURIComponent(name), class: "snap" }, name);
}

export function compareHref(oldName, newName) {
  return "#/compare?old=" + encodeURIComponent(oldName) + "&new=" + encodeURIComponent(newName);
}

export function shortTime(iso) {
  return iso ? String(iso).slice(0, 19).replace("T", " ") : "";
}

export function badge(text, kind) {
  return h("span", { class: "badge " + (kind || "") }, text);
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function message(el, text, kind) {
  fill(el, text ? h("span", { class: kind || "" }, text) : null);
}
