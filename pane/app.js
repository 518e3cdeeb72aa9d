// The pane's shell: sign-in, the caller's rights, navigation between views, and the error banner.

import { renderAliases } from "./aliases.js";
import { ApiError, get, key } from "./api.js";
import { renderCompletions } from "./completions.js";
import { h, replace } from "./dom.js";
import { renderFineTuning } from "./finetune.js";
import { renderDatasets, renderEvals, renderHealth } from "./views.js";

const READ = "stored-completions/read";
// App Service Authentication's own routes (https://learn.microsoft.com/azure/app-service/configure-authentication-customize-sign-in-out).
const EASY_AUTH_LOGIN = "/.auth/login/aad";
const EASY_AUTH_LOGOUT = "/.auth/logout";
const ACTION = "stored-completions/action";

const VIEWS = [
  ["completions", "Completions", renderCompletions],
  ["datasets", "Datasets", renderDatasets],
  ["evals", "Eval runs", renderEvals],
  ["fine-tuning", "Fine-tuning", renderFineTuning],
  ["aliases", "Aliases", renderAliases],
  ["health", "Health", renderHealth],
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const banner = document.getElementById("error");

export function showError(error) {
  const message = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  replace(
    banner,
    h("strong", {}, "Error: "),
    h("span", { class: "error-message" }, message),
    h("button", { type: "button", class: "link", onclick: clearError }, "Dismiss"),
  );
  banner.hidden = false;
  if (error instanceof ApiError && error.status === 401 && key.get()) signOut();
}

export function clearError() {
  banner.hidden = true;
  banner.replaceChildren();
}

function context(caller) {
  return {
    caller,
    canRead: caller.rights.includes(READ),
    canAct: caller.rights.includes(ACTION),
    showError,
    clearError,
  };
}

let current = null;
let easyAuth = false; // the service said so: it trusts App Service Authentication and nobody is signed in

// `#view/part/part`: a view and what it shows, e.g. `#evals/<eval id>/<run id>` for one eval run.
function route() {
  const [name, ...parts] = location.hash.replace(/^#/, "").split("/");
  const view = VIEWS.find(([id]) => id === (name || "completions")) || VIEWS[0];
  return [view, parts.map(decodeURIComponent)];
}

async function show() {
  if (!current) return;
  const [[id, , render], parts] = route();
  for (const button of nav.querySelectorAll("a")) {
    if (button.dataset.view === id) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  clearError();
  replace(main, h("p", { class: "muted loading" }, "Loading…"));
  try {
    await render(main, current, parts);
  } catch (error) {
    replace(main, h("p", { class: "empty" }, "This view could not be loaded."));
    showError(error);
  }
}

function signIn(message) {
  current = null;
  nav.hidden = true;
  who.replaceChildren();
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true });
  const form = h(
    "form",
    {
      class: "card signin",
      "aria-labelledby": "signin-title",
      onsubmit: async (event) => {
        event.preventDefault();
        key.set(input.value.trim());
        await start();
      },
    },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", {}, "Stored completions, datasets and evals of this Distillery service."),
    easyAuth
      ? h(
          "div",
          { class: "entra" },
          // Back to this very view after signing in: the hash travels inside the redirect path.
          h("a", { class: "button", id: "entra-sign-in", href: `${EASY_AUTH_LOGIN}?post_login_redirect_uri=${encodeURIComponent(`/${location.hash}`)}` }, "Sign in with Microsoft"),
          h("p", { class: "muted" }, "Or use a service key:"),
        )
      : h("p", {}, "Sign in with a service key; it stays in this browser tab only."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")),
    message ? h("p", { class: "form-error", role: "alert" }, message) : null,
  );
  replace(main, form);
  input.focus();
}

function signOut() {
  key.clear();
  signIn();
}

async function start() {
  clearError();
  let caller;
  try {
    caller = await get("/api/caller");
  } catch (error) {
    const hadKey = Boolean(key.get());
    if (error instanceof ApiError && error.code === "sign_in_required") easyAuth = true;
    if (error instanceof ApiError && error.status === 401) {
      key.clear();
      signIn(hadKey ? error.message : null);
    } else if (error instanceof ApiError && error.status === 403) {
      key.clear();
      signIn(`${error.message} The pane needs the '${READ}' right.`);
    } else {
      signIn();
      showError(error);
    }
    return;
  }
  current = context(caller);
  replace(
    nav,
    VIEWS.map(([id, label]) => h("a", { href: `#${id}`, "data-view": id }, label)),
  );
  nav.hidden = false;
  const rights = current.canAct ? "read and act" : "read only";
  replace(
    who,
    h("span", { class: "caller", title: caller.rights.join(", ") }, caller.name),
    h("span", { class: `badge ${current.canAct ? "rights-act" : "rights-read"}` }, rights),
    key.get()
      ? h("button", { type: "button", class: "secondary small", onclick: signOut }, "Sign out")
      : h("a", { href: `${EASY_AUTH_LOGOUT}?post_logout_redirect_uri=/`, id: "entra-sign-out" }, "Sign out"),
  );
  await show();
}

window.addEventListener("hashchange", show);
start();
