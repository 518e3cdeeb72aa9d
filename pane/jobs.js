// Distill and Evaluate: a dialog for the parameters, then the job's live progress, its counts,
// skip reasons and downloads (datasets) or its pass rates (eval runs).

import { download, get, post } from "./api.js";
import { h, number, replace, statusBadge, svg } from "./dom.js";

const POLL_MS = 1000;
const FINISHED_DATASET = new Set(["succeeded", "failed"]);
const FINISHED_RUN = new Set(["completed", "failed", "canceled"]);

export function dialogShell(title, onClose) {
  const body = h("div", { class: "dialog-body" });
  const dialog = h(
    "dialog",
    { class: "dialog wide", "aria-labelledby": "job-title" },
    h("div", { class: "detail-head" }, h("h2", { id: "job-title" }, title), h("button", { type: "button", class: "secondary small", onclick: () => dialog.close() }, "Close")),
    body,
  );
  dialog.addEventListener("close", () => {
    onClose?.();
    dialog.remove();
  });
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, body };
}

export function field(id, label, input, hint) {
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null);
}

function today() {
  return new Date().toISOString().slice(0, 16).replace(/[:T]/g, "-");
}

function selectionBody(selection) {
  return selection.filter ? { filter: selection.filter } : { ids: selection.ids };
}

export function openDistill(selection, ctx) {
  let stopped = false;
  const { dialog, body } = dialogShell("Distill", () => (stopped = true));
  const name = h("input", { name: "name", value: `distill-${today()}`, maxlength: 256 });
  const fraction = h("input", { name: "validation_fraction", type: "number", min: 0, max: 0.5, step: 0.05, value: 0.1, "aria-describedby": "distill-fraction-hint" });
  const group = h("input", { name: "group_by", placeholder: "none: each completion alone", "aria-describedby": "distill-group-hint" });
  const formError = h("p", { class: "form-error", role: "alert" });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const request = { kind: "distillation", name: name.value.trim() || null, validation_fraction: Number(fraction.value), ...selectionBody(selection) };
        if (group.value.trim()) request.group_by = group.value.trim();
        let job;
        try {
          job = await post("/api/datasets", request);
        } catch (error) {
          formError.textContent = error.message;
          return;
        }
        replace(body, datasetProgress(job, () => stopped, ctx));
      },
    },
    h("p", {}, `A chat fine-tuning dataset from ${selection.label}.`),
    field("distill-name", "Dataset name", name),
    field("distill-fraction", "Validation fraction", fraction, "Share of groups written to validation.jsonl (0 to 0.5)."),
    field("distill-group", "Group key (optional)", group, "A metadata key whose value keeps a group in one file."),
    formError,
    h("div", { class: "actions" }, h("button", { type: "submit", id: "start-distill" }, "Start distilling"), h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel")),
  );
  replace(body, form);
  name.focus();
}

// The live view of one dataset job: polls until it finishes, then counts, skips and downloads.
export function datasetProgress(job, stopped, ctx) {
  const live = h("div", { class: "progress", "aria-live": "polite", "aria-atomic": "true" });
  const panel = h("div", { class: "job" }, live);
  const draw = (current) => {
    const processed = current.progress?.processed ?? 0;
    const total = current.progress?.total;
    replace(
      live,
      h("p", { class: "job-status" }, "Dataset ", h("code", {}, current.id), " ", statusBadge(current.status)),
      current.status === "queued" ? h("p", {}, "Waiting for the dataset worker…") : null,
      current.status === "running"
        ? h("p", {}, total ? h("progress", { max: total, value: processed, "aria-label": "Completions processed" }) : null, ` ${number(processed)}${total ? ` of ${number(total)}` : ""} completions processed`)
        : null,
      FINISHED_DATASET.has(current.status) ? datasetResult(current, ctx) : null,
    );
  };
  draw(job);
  const poll = async () => {
    if (stopped()) return;
    let current;
    try {
      current = await get(`/api/datasets/${encodeURIComponent(job.id)}`);
    } catch (error) {
      ctx.showError(error);
      setTimeout(poll, POLL_MS * 3);
      return;
    }
    draw(current);
    if (!FINISHED_DATASET.has(current.status)) setTimeout(poll, POLL_MS);
  };
  if (!FINISHED_DATASET.has(job.status)) setTimeout(poll, POLL_MS);
  return panel;
}

export function datasetResult(dataset, ctx) {
  const counts = dataset.counts || {};
  const skipped = Object.entries(counts.skipped || {});
  const files = [...(dataset.files || [])];
  return h(
    "div",
    { class: "result" },
    dataset.error ? h("p", { class: "form-error" }, `${dataset.error.code}: ${dataset.error.message}`) : null,
    h(
      "dl",
      { class: "counts" },
      h("dt", {}, "Selected"), h("dd", { class: "count-selected" }, number(counts.selected)),
      h("dt", {}, "Written"), h("dd", { class: "count-written" }, number(counts.written)),
      h("dt", {}, "Skipped"), h("dd", {}, number(skipped.reduce((sum, [, n]) => sum + n, 0))),
    ),
    skipped.length ? h("ul", { class: "skips", "aria-label": "Skip reasons" }, skipped.map(([reason, n]) => h("li", {}, h("code", {}, reason), ` ${number(n)}`))) : null,
    dataset.status === "succeeded" ? fileButtons(dataset, files, ctx) : null,
  );
}

export function fileButtons(dataset, files, ctx) {
  const names = [...files.map((file) => file.name), "manifest.json"];
  return h(
    "div",
    { class: "actions downloads" },
    names.map((fileName) => {
      const file = files.find((f) => f.name === fileName);
      const label = file ? `Download ${fileName} (${number(file.lines)} lines)` : `Download ${fileName}`;
      return h(
        "button",
        {
          type: "button",
          class: "secondary",
          "data-file": fileName,
          onclick: async () => {
            try {
              await download(`/api/datasets/${encodeURIComponent(dataset.id)}/files/${encodeURIComponent(fileName)}`, `${dataset.id}-${fileName}`);
            } catch (error) {
              ctx.showError(error);
            }
          },
        },
        label,
      );
    }),
  );
}

export function openEvaluate(selection, ctx) {
  let stopped = false;
  const { dialog, body } = dialogShell("Evaluate", () => (stopped = true));
  const name = h("input", { name: "name", value: `evaluate-${today()}`, maxlength: 256 });
  const model = h("input", { name: "model", placeholder: "blank: grade the stored answers", "aria-describedby": "eval-model-hint" });
  const threshold = h("input", { name: "pass_threshold", type: "number", min: 0, max: 1, step: 0.05, value: 0.6 });
  const formError = h("p", { class: "form-error", role: "alert" });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const live = h("div", { class: "progress", "aria-live": "polite" }, h("p", {}, "Creating the eval…"));
        try {
          const evaluation = await post("/api/evals", {
            name: name.value.trim() || "evaluate",
            data_source_config: { type: "stored_completions", metadata: selection.filter?.metadata || {} },
            testing_criteria: [
              { type: "text_similarity", name: "close to the stored answer", evaluation_metric: "fuzzy_match", input: "{{sample.output_text}}", reference: "{{item.reference}}", pass_threshold: Number(threshold.value) },
            ],
          });
          replace(body, live);
          const source = await runSource(selection, live, () => stopped, ctx);
          if (!source) return;
          const dataSource = { type: "completions", source };
          if (model.value.trim()) {
            dataSource.model = model.value.trim();
            dataSource.input_messages = { type: "item_reference", item_reference: "item.input" };
          }
          const run = await post(`/api/evals/${encodeURIComponent(evaluation.id)}/runs`, { name: model.value.trim() || "stored answers", data_source: dataSource });
          replace(body, runProgress(run, () => stopped, ctx));
        } catch (error) {
          if (form.isConnected) formError.textContent = error.message;
          else replace(body, h("p", { class: "form-error", role: "alert" }, error.message));
        }
      },
    },
    h("p", {}, `Grade ${selection.label}: how close each answer is to the stored (teacher's) answer.`),
    field("eval-name", "Eval name", name),
    field("eval-model", "Student model (optional)", model, "A deployment that re-answers each conversation; blank grades the stored answers as they are."),
    field("eval-threshold", "Pass threshold (fuzzy match, 0 to 1)", threshold),
    formError,
    h("div", { class: "actions" }, h("button", { type: "submit", id: "start-evaluate" }, "Start evaluating"), h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel")),
  );
  replace(body, form);
  name.focus();
}

// A filter is a stored-completions source; explicit rows go through an evaluation dataset first.
async function runSource(selection, live, stopped, ctx) {
  if (selection.filter) return { type: "stored_completions", ...selection.filter, limit: 10000 };
  let dataset = await post("/api/datasets", { kind: "evaluation", ids: selection.ids, name: "selection for an eval" });
  while (!FINISHED_DATASET.has(dataset.status)) {
    if (stopped()) return null;
    replace(live, h("p", {}, "Collecting the selected completions ", statusBadge(dataset.status)));
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    dataset = await get(`/api/datasets/${encodeURIComponent(dataset.id)}`);
  }
  if (dataset.status !== "succeeded") {
    replace(live, datasetResult(dataset, ctx));
    return null;
  }
  return { type: "file_id", id: `${dataset.id}/eval.jsonl` };
}

export function runProgress(run, stopped, ctx) {
  const live = h("div", { class: "progress", "aria-live": "polite", "aria-atomic": "true" });
  const draw = (current) => {
    const graded = current.distillery?.items_graded ?? 0;
    const total = current.distillery?.items_total;
    replace(
      live,
      h("p", { class: "job-status" }, "Run ", h("code", {}, current.id), " ", statusBadge(current.status)),
      !FINISHED_RUN.has(current.status) ? h("p", {}, total ? h("progress", { max: total, value: graded, "aria-label": "Items graded" }) : null, ` ${number(graded)}${total ? ` of ${number(total)}` : ""} items graded`) : null,
      runSummary(current),
    );
  };
  draw(run);
  const poll = async () => {
    if (stopped()) return;
    let current;
    try {
      current = await get(`/api/evals/${encodeURIComponent(run.eval_id)}/runs/${encodeURIComponent(run.id)}`);
    } catch (error) {
      ctx.showError(error);
      setTimeout(poll, POLL_MS * 3);
      return;
    }
    draw(current);
    if (!FINISHED_RUN.has(current.status)) setTimeout(poll, POLL_MS);
  };
  if (!FINISHED_RUN.has(run.status)) setTimeout(poll, POLL_MS);
  return h("div", { class: "job" }, live);
}

export function runSummary(run) {
  const counts = run.result_counts || {};
  return h(
    "div",
    { class: "result" },
    run.error?.message ? h("p", { class: "form-error" }, `${run.error.code}: ${run.error.message}`) : null,
    h(
      "dl",
      { class: "counts" },
      h("dt", {}, "Passed"), h("dd", {}, number(counts.passed)),
      h("dt", {}, "Failed"), h("dd", {}, number(counts.failed)),
      h("dt", {}, "Errored"), h("dd", {}, number(counts.errored)),
      h("dt", {}, "Total"), h("dd", {}, number(counts.total)),
    ),
    passRateChart(run.per_testing_criteria_results || []),
  );
}

// One horizontal bar per grader: its pass rate over the items it graded.
export function passRateChart(results) {
  if (!results.length) return null;
  const width = 480;
  const label = 210;
  const bar = 18;
  const gap = 8;
  const height = results.length * (bar + gap);
  const rows = results.map((result, index) => {
    const graded = result.passed + result.failed;
    const rate = graded ? result.passed / graded : 0;
    const y = index * (bar + gap);
    const span = width - label - 50;
    return [
      svg("text", { x: 0, y: y + bar - 5, class: "chart-label" }, result.testing_criteria.length > 30 ? `${result.testing_criteria.slice(0, 29)}…` : result.testing_criteria),
      svg("rect", { x: label, y, width: span, height: bar, class: "chart-track", rx: 3 }),
      svg("rect", { x: label, y, width: Math.max(0, span * rate), height: bar, class: "chart-bar", rx: 3 }),
      svg("text", { x: width - 44, y: y + bar - 5, class: "chart-value" }, graded ? `${Math.round(rate * 100)}%` : "—"),
    ];
  });
  const description = results.map((r) => `${r.testing_criteria}: ${r.passed} passed, ${r.failed} failed`).join("; ");
  return svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `Pass rate per grader. ${description}` }, svg("title", {}, "Pass rate per grader"), rows.flat());
}
