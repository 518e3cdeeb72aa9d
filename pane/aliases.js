// Aliases: each alias's traffic shares, its gate, its online pass rate per serving deployment and its history,
// with promote (through the gate, or forced) and roll back for callers who may act.

import { get, post } from "./api.js";
import { confirmDialog, h, replace, when } from "./dom.js";

const percent = (rate) => (rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1)}%`);
const aliasPath = (name) => `/api/aliases/${encodeURIComponent(name)}`;

export async function renderAliases(main, ctx) {
  const page = await get("/api/aliases");
  const cards = h("div", { class: "alias-cards" });
  replace(
    main,
    h(
      "section",
      { class: "view", "aria-labelledby": "aliases-title" },
      h("h1", { id: "aliases-title" }, "Aliases"),
      page.data.length
        ? cards
        : h("div", { class: "empty" }, h("p", {}, "No aliases yet."), h("p", { class: "muted" }, "Create one with PUT /api/aliases/{name} or `distillery alias set`.")),
    ),
  );
  for (const alias of page.data) cards.append(aliasCard(alias, ctx));
}

function aliasCard(alias, ctx) {
  const card = h("article", { class: "card alias", "data-alias": alias.id, "aria-label": `Alias ${alias.id}` });
  draw(card, alias, ctx);
  return card;
}

async function draw(card, alias, ctx) {
  const online = h("div", { class: "online", "aria-live": "polite" });
  const error = h("p", { class: "form-error", role: "alert" });
  const canary = alias.targets.find((target) => target.deployment !== alias.fallback);
  const force = h("input", { type: "checkbox", id: `force-${alias.id}` });
  const act = async (action, body) => {
    error.textContent = "";
    try {
      const changed = await post(`${aliasPath(alias.id)}/${action}`, body);
      draw(card, changed, ctx);
    } catch (failure) {
      error.textContent = failure.message;
    }
  };
  const lastGate = [...alias.history].reverse().find((change) => change.gate_result);
  replace(
    card,
    h("h2", {}, h("code", {}, alias.id)),
    h(
      "ul",
      { class: "shares", "aria-label": "traffic shares" },
      alias.targets.map((target) =>
        h(
          "li",
          { "data-deployment": target.deployment },
          shareBar(target.share),
          h("code", {}, target.deployment),
          " ",
          h("strong", { class: "share" }, `${target.share}%`),
          target.deployment === alias.fallback ? h("span", { class: "badge" }, "fallback") : null,
        ),
      ),
    ),
    h(
      "p",
      { class: "muted gate" },
      `Gate: every criterion at least ${percent(alias.gate.min_pass_rate)}, at most ${percent(alias.gate.max_drop)} below the teacher.`,
      alias.sticky ? ` Sticky by ${alias.sticky.by}${alias.sticky.key ? ` '${alias.sticky.key}'` : ""}.` : "",
    ),
    lastGate ? gateResult(lastGate.gate_result) : null,
    online,
    ctx.canAct
      ? h(
          "div",
          { class: "actions" },
          canary ? h("button", { type: "button", onclick: () => act("promote", { deployment: canary.deployment, force: force.checked }) }, `Promote ${canary.deployment}`) : null,
          canary ? h("label", { for: force.id, class: "small" }, force, " even if the gate fails (recorded as forced)") : null,
          alias.targets.length === 1 && alias.targets[0].deployment === alias.fallback
            ? null
            : h(
                "button",
                {
                  type: "button",
                  class: "secondary",
                  onclick: async () => {
                    if (await confirmDialog("Roll back", `Send all of ${alias.id}'s traffic to ${alias.fallback}?`, "Roll back")) act("rollback", {});
                  },
                },
                "Roll back",
              ),
        )
      : null,
    error,
    history(alias.history),
  );
  try {
    drawOnline(online, await get(`${aliasPath(alias.id)}/online_evals?hours=24`));
  } catch (failure) {
    replace(online, h("p", { class: "form-error" }, failure.message));
  }
}

// The width goes in through the CSSOM: the pane's content security policy refuses style attributes.
function shareBar(share) {
  const bar = h("span", { class: "share-bar" });
  bar.style.width = `${share}%`;
  return bar;
}

function gateResult(result) {
  return h(
    "div",
    { class: `gate-result ${result.passed ? "passed" : "failed"}` },
    h("strong", {}, result.passed ? "Gate passed: " : "Gate failed: "),
    result.reason,
  );
}

function drawOnline(online, view) {
  if (view.sample_rate === null) {
    replace(online, h("p", { class: "muted" }, "No online evals."));
    return;
  }
  const alert = view.alert ? ` Rolls back under ${percent(view.alert.min_pass_rate)} over ${view.alert.window_hours} h (from ${view.alert.min_samples} graded calls).` : "";
  replace(
    online,
    h("h3", {}, "Online pass rate, last 24 h"),
    h("p", { class: "muted" }, `Grades ${percent(view.sample_rate)} of stored calls.${alert}`),
    view.data.length
      ? h(
          "table",
          { class: "online-table" },
          h("thead", {}, h("tr", {}, ["Deployment", "Pass rate", "Passed", "Failed", "Errored", "By hour"].map((label) => h("th", { scope: "col" }, label)))),
          h(
            "tbody",
            {},
            view.data.map((row) =>
              h(
                "tr",
                { "data-deployment": row.deployment },
                h("td", {}, h("code", {}, row.deployment)),
                h("td", { class: "num pass-rate" }, percent(row.pass_rate)),
                h("td", { class: "num" }, row.passed),
                h("td", { class: "num" }, row.failed),
                h("td", { class: "num" }, row.errored),
                h("td", { class: "hours" }, row.buckets.map((bucket) => h("span", { class: "hour", title: `${when(bucket.start)}: ${percent(bucket.pass_rate)} of ${bucket.passed + bucket.failed}` }, percent(bucket.pass_rate)))),
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, "Nothing graded yet."),
  );
}

function history(changes) {
  return h(
    "details",
    { class: "history", open: true },
    h("summary", {}, `History (${changes.length})`),
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ["When", "Action", "By", "Targets", "Why"].map((label) => h("th", { scope: "col" }, label)))),
      h(
        "tbody",
        {},
        [...changes].reverse().map((change) =>
          h(
            "tr",
            { "data-action": change.action },
            h("td", { class: "nowrap" }, when(change.at)),
            h("td", {}, change.action, change.forced ? h("span", { class: "badge forced" }, "forced") : null, change.automatic ? h("span", { class: "badge automatic" }, "automatic") : null),
            h("td", {}, change.by),
            h("td", {}, change.targets.map((target) => `${target.deployment} ${target.share}%`).join(", ")),
            h("td", {}, change.reason || (change.gate_result ? change.gate_result.reason : "")),
          ),
        ),
      ),
    ),
  );
}
