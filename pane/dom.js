// Small DOM helpers. Text always goes in through textContent: stored completions are untrusted.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function when(seconds) {
  if (!seconds) return "—";
  const date = new Date(seconds * 1000);
  // Seconds: completions captured in one minute would otherwise all read the same.
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function isoDate(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString() : "";
}

export function bytes(count) {
  if (count === null || count === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function number(value) {
  return value === null || value === undefined ? "—" : Number(value).toLocaleString();
}

export function clip(text, length = 120) {
  if (text === null || text === undefined) return "";
  const flat = String(text).replace(/\s+/g, " ").trim();
  return flat.length > length ? `${flat.slice(0, length - 1)}…` : flat;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

// Metadata pairs as chips; with `pick`, each chip is a button that filters on its pair.
export function chips(metadata, pick, label = "metadata") {
  const entries = Object.entries(metadata || {});
  if (!entries.length) return h("span", { class: "muted" }, "—");
  const chip = (name, value) => [h("span", { class: "chip-key" }, name), "=", clip(value, 40)];
  return h(
    "ul",
    { class: "chips", "aria-label": label },
    entries.map(([name, value]) =>
      h(
        "li",
        { class: "chip" },
        pick
          ? h("button", { type: "button", class: "chip-filter", title: `Filter on ${name}=${value}`, onclick: () => pick(name, value) }, chip(name, value))
          : h("span", { title: `${name}=${value}` }, chip(name, value)),
      ),
    ),
  );
}

// A modal <dialog> answering true/false; Escape or Cancel is false.
export function confirmDialog(title, message, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "dialog", "aria-labelledby": "confirm-title" },
      h(
        "form",
        { method: "dialog" },
        h("h2", { id: "confirm-title" }, title),
        h("p", {}, message),
        h(
          "div",
          { class: "actions" },
          h("button", { value: "cancel", class: "secondary", autofocus: true }, "Cancel"),
          h("button", { value: "confirm", class: "danger" }, confirmLabel),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}
