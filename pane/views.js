// Datasets, eval runs, fine-tuning jobs and health: lists over the existing report APIs.

import { del, get, query, report } from "./api.js";
import { bytes, confirmDialog, h, number, replace, statusBadge, svg, when } from "./dom.js";
import { fineTuneButton } from "./finetune.js";
import { datasetProgress, datasetResult, runProgress, runSummary } from "./jobs.js";

function section(title, id, ...children) {
  return h("section", { class: "view", "aria-labelledby": id }, h("h1", { id }, title), ...children);
}

function moreButton(label, onclick) {
  return h("div", { class: "pager" }, h("button", { type: "button", class: "secondary", onclick }, label));
}

function empty(text, hint) {
  return h("div", { class: "empty" }, h("p", {}, text), hint ? h("p", { class: "muted" }, hint) : null);
}

export async function renderDatasets(main, ctx) {
  const list = h("div", { class: "cards" });
  const more = h("div");
  replace(main, section("Datasets", "datasets-title", list, more));
  let after = null;
  const load = async () => {
    const page = await get(`/api/datasets${query([["limit", 20], ["after", after]])}`);
    if (!after && !page.data.length) replace(list, empty("No datasets yet.", "Select completions and press Distill to build one."));
    for (const dataset of page.data) list.append(datasetCard(dataset, ctx));
    after = page.data.length ? page.data[page.data.length - 1].id : after;
    replace(more, page.has_more ? moreButton("Load more datasets", () => load().catch(ctx.showError)) : null);
  };
  await load();
}

function datasetCard(dataset, ctx) {
  const card = h(
    "article",
    { class: "card dataset", "aria-labelledby": `title-${dataset.id}` },
    h(
      "div",
      { class: "card-head" },
      h("h2", { id: `title-${dataset.id}` }, dataset.name || dataset.id),
      statusBadge(dataset.status),
      h("span", { class: "badge" }, dataset.kind),
    ),
    h(
      "p",
      { class: "muted" },
      h("code", {}, dataset.id),
      ` · created ${when(dataset.created_at)}`,
      dataset.filter ? ` · filter ${JSON.stringify(dataset.filter)}` : dataset.ids_count ? ` · ${number(dataset.ids_count)} chosen completions` : "",
      dataset.kind === "distillation" ? ` · validation ${dataset.validation_fraction}${dataset.group_by ? `, grouped by ${dataset.group_by}` : ""}` : "",
    ),
    dataset.status === "succeeded" || dataset.status === "failed" ? datasetResult(dataset, ctx) : datasetProgress(dataset, () => !card.isConnected, ctx),
    ctx.canAct
      ? h(
          "div",
          { class: "actions" },
          fineTuneButton(dataset, ctx),
          h(
            "button",
            {
              type: "button",
              class: "danger small",
              onclick: async () => {
                if (!(await confirmDialog("Delete this dataset?", `${dataset.id} and its files are deleted.`, "Delete"))) return;
                try {
                  await del(`/api/datasets/${encodeURIComponent(dataset.id)}`);
                  card.remove();
                } catch (error) {
                  ctx.showError(error);
                }
              },
            },
            "Delete dataset",
          ),
        )
      : null,
  );
  return card;
}

export async function renderEvals(main, ctx, [evalId, runId] = []) {
  if (evalId && runId) return renderRun(main, ctx, evalId, runId);
  const list = h("div", { class: "cards" });
  replace(main, section("Eval runs", "evals-title", list));
  const evals = await get("/api/evals?limit=20&order=desc");
  if (!evals.data.length) {
    replace(list, empty("No evals yet.", "Select completions and press Evaluate to grade them."));
    return;
  }
  for (const evaluation of evals.data) {
    const runs = h("div", { class: "runs" }, h("p", { class: "muted" }, "Loading runs…"));
    list.append(
      h(
        "article",
        { class: "card", "aria-labelledby": `title-${evaluation.id}` },
        h("div", { class: "card-head" }, h("h2", { id: `title-${evaluation.id}` }, evaluation.name || evaluation.id)),
        h("p", { class: "muted" }, h("code", {}, evaluation.id), ` · created ${when(evaluation.created_at)} · ${evaluation.testing_criteria.map((c) => c.name).join(", ")}`),
        runs,
      ),
    );
    get(`/api/evals/${encodeURIComponent(evaluation.id)}/runs?limit=20&order=desc`)
      .then((page) =>
        replace(
          runs,
          page.data.length
            ? page.data.map((run) =>
                h(
                  "div",
                  { class: "run" },
                  h("h3", {}, h("a", { href: runLink(run) }, run.name || run.id), " ", statusBadge(run.status), h("span", { class: "muted" }, ` model ${run.model} · ${when(run.created_at)}`)),
                  runSummary(run),
                ),
              )
            : empty("No runs yet."),
        ),
      )
      .catch((error) => {
        replace(runs, empty("Runs could not be loaded."));
        ctx.showError(error);
      });
  }
}

function runLink(run) {
  return `#evals/${encodeURIComponent(run.eval_id)}/${encodeURIComponent(run.id)}`;
}

// One eval run, at `#evals/<eval id>/<run id>`: the page `distillery eval run` prints a link to.
// Live until the run finishes, then its counts and pass rate per grader.
async function renderRun(main, ctx, evalId, runId) {
  const [evaluation, run] = await Promise.all([
    get(`/api/evals/${encodeURIComponent(evalId)}`),
    get(`/api/evals/${encodeURIComponent(evalId)}/runs/${encodeURIComponent(runId)}`),
  ]);
  const card = h(
    "article",
    { class: "card run-view", "aria-labelledby": "run-title" },
    h(
      "p",
      { class: "muted" },
      "Eval ",
      h("strong", {}, evaluation.name || evaluation.id),
      " ",
      h("code", {}, evaluation.id),
      ` · model ${run.model} · created ${when(run.created_at)}`,
    ),
    evaluation.testing_criteria.length ? h("p", { class: "muted" }, `Graders: ${evaluation.testing_criteria.map((c) => c.name).join(", ")}`) : null,
  );
  card.append(runProgress(run, () => !card.isConnected, ctx));
  replace(
    main,
    h(
      "section",
      { class: "view", "aria-labelledby": "run-title" },
      h("p", {}, h("a", { href: "#evals" }, "← All eval runs")),
      h("h1", { id: "run-title" }, `Eval run: ${run.name || run.id}`),
      card,
    ),
  );
}

export async function renderHealth(main, ctx) {
  const quota = h("section", { class: "card", "aria-labelledby": "quota-title" }, h("h2", { id: "quota-title" }, "Storage quota"), h("p", { class: "muted" }, "Loading…"));
  const permissions = h("section", { class: "card", "aria-labelledby": "perm-title" }, h("h2", { id: "perm-title" }, "Permission health"), h("p", { class: "muted" }, "Loading…"));
  replace(main, section("Health", "health-title", h("div", { class: "health" }, quota, permissions)));
  await Promise.all([
    report("/api/quota").then((report) => drawQuota(quota, report)).catch((error) => failed(quota, "Storage quota", error, ctx)),
    report("/api/health/permissions").then((report) => drawPermissions(permissions, report)).catch((error) => failed(permissions, "Permission health", error, ctx)),
  ]);
}

function failed(card, title, error, ctx) {
  replace(card, h("h2", {}, title), empty(`${title} could not be loaded.`));
  ctx.showError(error);
}

function drawQuota(card, report) {
  const percent = Math.min(100, report.percent_used);
  const days = report.last_days || [];
  const peak = Math.max(1, ...days.map((day) => day.bytes));
  const barWidth = 34;
  const trend = svg(
    "svg",
    { class: "chart", viewBox: `0 0 ${days.length * (barWidth + 6)} 70`, width: days.length * (barWidth + 6), height: 70, role: "img", "aria-label": `Bytes captured per day: ${days.map((d) => `${d.day} ${bytes(d.bytes)}`).join(", ")}` },
    days.map((day, index) => {
      const height = Math.max(1, (day.bytes / peak) * 50);
      return [
        svg("rect", { x: index * (barWidth + 6), y: 52 - height, width: barWidth, height, class: "chart-bar", rx: 2 }),
        svg("text", { x: index * (barWidth + 6) + barWidth / 2, y: 66, class: "chart-axis" }, day.day.slice(5)),
      ];
    }).flat(),
  );
  replace(
    card,
    h("h2", { id: "quota-title" }, "Storage quota ", statusBadge(report.level)),
    h("div", { class: "gauge" }, h("meter", { id: "quota-meter", min: 0, max: 100, low: 80, high: 95, optimum: 0, value: percent, "aria-label": "Storage used" }), h("span", { class: "gauge-value" }, `${report.percent_used.toFixed(1)}%`)),
    h("p", {}, h("strong", {}, bytes(report.used_bytes)), ` used of ${bytes(report.cap_bytes)} · ${number(report.completion_count)} completions, ${number(report.dataset_count)} datasets`),
    h("p", { class: "muted" }, `Trend ${bytes(report.trend_bytes_per_day)} a day over ${report.trend_window_days} days · ${report.projected_full_date ? `full by ${report.projected_full_date}` : "not filling up"} · at the cap: ${report.mode}`),
    days.length ? trend : null,
    report.cost ? costOf(report.cost) : null,
    h("p", { class: "muted small" }, `Report generated ${report.generated_at}`),
  );
}

// Money for the stored calls (PRICE_TABLE), per serving deployment, and each student's break-even.
function costOf(cost) {
  const money = (value) => Number(value).toLocaleString(undefined, { maximumFractionDigits: 4 });
  return h(
    "div",
    { class: "cost" },
    h("h3", {}, `Cost of stored calls: ${money(cost.total)}`),
    h(
      "table",
      { class: "cost-table" },
      h("thead", {}, h("tr", {}, ["Deployment", "Calls", "Input tokens", "Output tokens", "Cost"].map((label) => h("th", { scope: "col" }, label)))),
      h(
        "tbody",
        {},
        cost.by_deployment.map((row) =>
          h(
            "tr",
            { "data-deployment": row.name },
            h("td", {}, h("code", {}, row.name)),
            h("td", { class: "num" }, number(row.calls)),
            h("td", { class: "num" }, number(row.input_tokens)),
            h("td", { class: "num" }, number(row.output_tokens)),
            h("td", { class: "num cost-value" }, row.unpriced_calls ? `${money(row.cost)} (${number(row.unpriced_calls)} unpriced)` : money(row.cost)),
          ),
        ),
      ),
    ),
    cost.break_even.map((row) =>
      h(
        "p",
        { class: "break-even" },
        h("code", {}, row.student),
        ` behind ${row.alias}: ${money(row.calls_per_day)} calls a day; pays for its hosting (${money(row.hosting_per_day)} a day) from `,
        row.break_even_calls_per_day === null ? "never (it saves nothing per call)" : `${money(row.break_even_calls_per_day)} calls a day`,
        row.pays_off ? " — it pays off." : " — not yet.",
      ),
    ),
  );
}

function drawPermissions(card, report) {
  replace(
    card,
    h("h2", { id: "perm-title" }, "Permission health ", h("span", { class: `badge ${report.healthy ? "status-ok" : "status-failed"}` }, report.healthy ? "healthy" : "needs attention")),
    h(
      "ul",
      { class: "probes" },
      report.probes.map((probe) =>
        h(
          "li",
          { class: `probe probe-${probe.status}` },
          h("div", {}, statusBadge(probe.status), " ", h("code", {}, probe.name), probe.operations.length ? h("span", { class: "muted" }, ` ${probe.operations.join(", ")}`) : null),
          probe.error ? h("p", { class: "form-error" }, probe.error_code ? `${probe.error_code}: ` : "", probe.error) : null,
          probe.fix ? h("p", { class: "fix" }, h("strong", {}, probe.status === "skipped" ? "Note: " : "Fix: "), probe.fix) : null,
        ),
      ),
    ),
    h("h3", {}, "Callers"),
    h("ul", { class: "identities" }, report.identities.map((identity) => h("li", {}, h("code", {}, identity.name), h("span", { class: "muted" }, ` ${identity.kind}: ${identity.rights.join(", ")}`)))),
    h("p", { class: "muted small" }, `Report generated ${report.generated_at}`),
  );
}
