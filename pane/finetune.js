// Distill into a model: start fine-tuning from a dataset card, follow the job live (status, events,
// training loss), cancel it, and deploy the student (or register a deployment made elsewhere).

import { del, get, post } from "./api.js";
import { comparisonCard } from "./comparison.js";
import { confirmDialog, h, number, replace, statusBadge, svg, when } from "./dom.js";
import { dialogShell, field } from "./jobs.js";

const POLL_MS = 1500;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const SETTLED = new Set(["Succeeded", "Failed", "Canceled", "Disabled", "Deleted"]);
const TRAINING_TYPES = [
  ["", "The upstream's default"],
  ["globalstandard", "Global standard"],
  ["standard", "Standard (the resource's region)"],
  ["developer", "Developer (cheapest, may be preempted)"],
];

const jobPath = (id) => `/api/fine_tuning_jobs/${encodeURIComponent(id)}`;

// The dataset card's "Fine-tune…" button: only for a succeeded distillation dataset and a caller who may act.
export function fineTuneButton(dataset, ctx) {
  if (!ctx.canAct || dataset.kind !== "distillation" || dataset.status !== "succeeded") return null;
  return h("button", { type: "button", class: "small", onclick: () => openFineTune(dataset) }, "Fine-tune…");
}

function openFineTune(dataset) {
  const { dialog, body } = dialogShell("Fine-tune");
  const model = h("input", { name: "model", required: true, placeholder: "gpt-4.1-mini-2025-04-14", autocomplete: "off" });
  const trainingType = h("select", { name: "training_type" }, TRAINING_TYPES.map(([value, label]) => h("option", { value }, label)));
  const suffix = h("input", { name: "suffix", maxlength: 64, "aria-describedby": "ft-suffix-hint" });
  const seed = h("input", { name: "seed", type: "number", step: 1 });
  const epochs = h("input", { name: "epochs", type: "number", min: 1, step: 1, placeholder: "automatic" });
  const method = h("textarea", { name: "method", rows: 3, placeholder: '{"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}}', "aria-describedby": "ft-method-hint" });
  const validation = h("input", { type: "checkbox", name: "validation", id: "ft-validation", checked: true });
  const formError = h("p", { class: "form-error", role: "alert" });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        formError.textContent = "";
        const request = { model: model.value.trim(), validation: validation.checked };
        if (trainingType.value) request.training_type = trainingType.value;
        if (suffix.value.trim()) request.suffix = suffix.value.trim();
        if (seed.value !== "") request.seed = Number(seed.value);
        if (method.value.trim()) {
          try {
            request.method = JSON.parse(method.value);
          } catch {
            formError.textContent = "Method must be a JSON object.";
            return;
          }
        }
        if (epochs.value !== "") {
          if (request.method) {
            formError.textContent = "Give epochs or a method, not both.";
            return;
          }
          request.method = { type: "supervised", supervised: { hyperparameters: { n_epochs: Number(epochs.value) } } };
        }
        let job;
        try {
          job = await post(`/api/datasets/${encodeURIComponent(dataset.id)}/fine_tuning_jobs`, request);
        } catch (error) {
          formError.textContent = error.message;
          return;
        }
        dialog.close();
        location.hash = `#fine-tuning/${encodeURIComponent(job.id)}`;
      },
    },
    h("p", {}, "Train a model on ", h("code", {}, dataset.id), dataset.name ? ` (${dataset.name})` : "", ". Files are checked and uploaded on the queue."),
    field("ft-model", "Base model", model),
    field("ft-training-type", "Training type", trainingType),
    field("ft-suffix", "Suffix (optional)", suffix, "Part of the fine-tuned model's name; no '.'."),
    field("ft-seed", "Seed (optional)", seed),
    field("ft-epochs", "Epochs (optional)", epochs),
    field("ft-method", "Method (optional, JSON)", method, "The job's method object, instead of epochs."),
    h("div", { class: "field" }, h("label", { for: "ft-validation" }, validation, " Send the validation file too")),
    formError,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Start fine-tuning"), h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel")),
  );
  replace(body, form);
  model.focus();
}

// The Fine-tuning view: the list of jobs, or (#fine-tuning/<id>) one job, live.
export async function renderFineTuning(main, ctx, [id] = []) {
  if (id) return renderJob(main, id, ctx);
  const page = await get("/api/fine_tuning_jobs?limit=50");
  const body = page.data.length
    ? h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "fine-tuning-jobs" },
          h("thead", {}, h("tr", {}, ["Job", "Status", "Base model", "Fine-tuned model", "Dataset", "Created", "Trained tokens"].map((label) => h("th", { scope: "col" }, label)))),
          h(
            "tbody",
            {},
            page.data.map((job) =>
              h(
                "tr",
                {},
                h("td", {}, h("a", { href: `#fine-tuning/${encodeURIComponent(job.id)}` }, h("code", {}, job.id))),
                h("td", {}, statusBadge(job.status), job.error ? h("div", { class: "form-error" }, job.error.message) : null),
                h("td", {}, job.model),
                h("td", {}, job.fine_tuned_model ?? "—"),
                h("td", {}, h("code", {}, job.dataset_id)),
                h("td", { class: "nowrap" }, when(job.created_at)),
                h("td", { class: "num" }, number(job.trained_tokens)),
              ),
            ),
          ),
        ),
      )
    : h("div", { class: "empty" }, h("p", {}, "No fine-tuning jobs yet."), h("p", { class: "muted" }, "Start one from a succeeded distillation dataset: Datasets → Fine-tune…."));
  replace(main, h("section", { class: "view", "aria-labelledby": "ft-title" }, h("h1", { id: "ft-title" }, "Fine-tuning jobs"), body));
}

async function renderJob(main, id, ctx) {
  let job = await get(jobPath(id));
  const status = h("div", { class: "job-facts", "aria-live": "polite" });
  const loss = h("div", { class: "loss" });
  const events = h("div", { class: "events" });
  const deployments = h("div", { class: "deployments" });
  const controls = h("div", { class: "controls" });
  const comparisons = h("div", { class: "comparisons" });
  const view = h(
    "section",
    { class: "view fine-tuning-job", "aria-labelledby": "ft-job-title" },
    h("p", {}, h("a", { href: "#fine-tuning" }, "← All fine-tuning jobs")),
    h("h1", { id: "ft-job-title" }, "Fine-tuning job ", h("code", {}, id)),
    h("article", { class: "card" }, status, controls, loss),
    h("article", { class: "card", "aria-labelledby": "ft-deployments-title" }, h("h2", { id: "ft-deployments-title" }, "Deployments"), deployments),
    comparisons,
    h("article", { class: "card", "aria-labelledby": "ft-events-title" }, h("h2", { id: "ft-events-title" }, "Events"), events),
  );
  replace(main, view);
  let drawnStatus = null;
  let drawnComparisons = null;
  const refresh = async () => {
    job = await get(jobPath(id));
    draw();
  };
  const draw = () => {
    drawFacts(status, job);
    replace(loss, lossChart(job));
    drawEvents(events, job);
    drawDeployments(deployments, job, ctx, refresh);
    // A comparison card follows its own runs: redrawn only when a deployment gets (another) comparison.
    const judged = (job.deployments || []).filter((d) => d.comparison && d.provisioning_state !== "Deleted");
    const key = JSON.stringify(judged.map((d) => [d.name, d.comparison]));
    if (drawnComparisons !== key) {
      drawnComparisons = key;
      replace(comparisons, judged.map(comparisonCard));
    }
    if (drawnStatus !== job.status) {
      drawnStatus = job.status;
      drawControls(controls, job, ctx, refresh);
    }
  };
  draw();
  const poll = async () => {
    if (!view.isConnected) return;
    const live = !FINISHED.has(job.status) || (job.deployments || []).some((d) => !SETTLED.has(d.provisioning_state));
    if (live) {
      try {
        await refresh();
      } catch (error) {
        ctx.showError(error);
      }
    }
    setTimeout(poll, POLL_MS);
  };
  setTimeout(poll, POLL_MS);
}

function drawFacts(region, job) {
  const params = job.params || {};
  const files = Object.entries(job.lineage?.files || {});
  const facts = [
    ["Status", h("span", {}, statusBadge(job.status), job.stage ? h("span", { class: "muted stage" }, ` ${job.stage.replaceAll("_", " ")}`) : null)],
    ["Base model", job.model],
    ["Training type", params.training_type || "upstream default"],
    ["Suffix / seed", `${params.suffix || "—"} / ${params.seed ?? "—"}`],
    ["Dataset", h("code", {}, job.dataset_id)],
    ["Files", files.length ? files.map(([name, fileId]) => `${name} → ${fileId}`).join(", ") + (job.files_deleted_at ? " (deleted upstream)" : "") : "—"],
    ["Upstream job", job.upstream_job_id || "—"],
    ["Fine-tuned model", h("span", { class: "fine-tuned-model" }, job.fine_tuned_model || "—")],
    ["Trained tokens", number(job.trained_tokens)],
    ["Created", when(job.created_at)],
  ];
  replace(
    region,
    h("dl", { class: "facts" }, facts.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])),
    job.error ? h("p", { class: "form-error" }, `${job.error.code}: ${job.error.message}`, job.error.hint ? h("span", { class: "fix" }, ` Fix: ${job.error.hint}`) : null) : null,
  );
}

// (step, training loss) from the checkpoints' metrics and any metrics events, one point per step.
export function lossPoints(job) {
  const points = new Map();
  for (const event of job.events || []) {
    const data = event.data || {};
    if (Number.isFinite(data.step) && Number.isFinite(data.train_loss)) points.set(data.step, data.train_loss);
  }
  for (const checkpoint of job.checkpoints || []) {
    const value = checkpoint.metrics?.train_loss;
    if (Number.isFinite(checkpoint.step_number) && Number.isFinite(value)) points.set(checkpoint.step_number, value);
  }
  return [...points.entries()].sort((a, b) => a[0] - b[0]);
}

function lossChart(job) {
  const points = lossPoints(job);
  if (!points.length) return h("p", { class: "muted loss-empty" }, FINISHED.has(job.status) ? "No training loss was reported." : "The training loss appears here as checkpoints arrive.");
  const width = 520;
  const height = 180;
  const pad = 36;
  const steps = points.map(([step]) => step);
  const losses = points.map(([, value]) => value);
  const [minStep, maxStep] = [Math.min(...steps), Math.max(...steps)];
  const [low, high] = [Math.min(0, ...losses), Math.max(...losses)];
  const x = (step) => pad + (maxStep === minStep ? (width - 2 * pad) / 2 : ((step - minStep) / (maxStep - minStep)) * (width - 2 * pad));
  const y = (value) => height - pad - (high === low ? 0.5 : (value - low) / (high - low)) * (height - 2 * pad);
  const label = `Training loss by step: ${points.map(([step, value]) => `step ${step} ${value.toFixed(4)}`).join(", ")}`;
  return h(
    "figure",
    { class: "loss-figure" },
    svg(
      "svg",
      { class: "chart loss-chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label },
      svg("line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, class: "chart-track-line" }),
      svg("line", { x1: pad, y1: pad, x2: pad, y2: height - pad, class: "chart-track-line" }),
      svg("polyline", { points: points.map(([step, value]) => `${x(step)},${y(value)}`).join(" "), class: "loss-line" }),
      points.map(([step, value]) => svg("circle", { cx: x(step), cy: y(value), r: 3, class: "loss-point" })),
      svg("text", { x: pad - 4, y: y(high) + 4, class: "chart-label", "text-anchor": "end" }, high.toFixed(2)),
      svg("text", { x: pad - 4, y: y(low) + 4, class: "chart-label", "text-anchor": "end" }, low.toFixed(2)),
      svg("text", { x: x(minStep), y: height - pad + 16, class: "chart-axis" }, `step ${minStep}`),
      maxStep !== minStep ? svg("text", { x: x(maxStep), y: height - pad + 16, class: "chart-axis" }, `step ${maxStep}`) : null,
    ),
    h("figcaption", { class: "muted" }, `Training loss, ${points.length} point${points.length === 1 ? "" : "s"}; last ${losses[losses.length - 1].toFixed(4)}`),
  );
}

function drawEvents(region, job) {
  const events = [...(job.events || [])].sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
  replace(
    region,
    events.length
      ? h("ol", { class: "event-list", reversed: true }, events.map((event) => h("li", { class: `event level-${event.level || "info"}` }, h("span", { class: "muted nowrap" }, when(event.created_at)), " ", event.message)))
      : h("p", { class: "muted" }, "No events yet."),
  );
}

function drawControls(region, job, ctx, refresh) {
  if (!ctx.canAct || FINISHED.has(job.status)) {
    replace(region);
    return;
  }
  replace(
    region,
    h(
      "div",
      { class: "actions" },
      h(
        "button",
        {
          type: "button",
          class: "danger small",
          onclick: async () => {
            if (!(await confirmDialog("Cancel this fine-tuning job?", `${job.id} stops; its uploaded files are deleted.`, "Cancel job"))) return;
            try {
              await post(`${jobPath(job.id)}/cancel`);
              await refresh();
            } catch (error) {
              ctx.showError(error);
            }
          },
        },
        "Cancel fine-tuning",
      ),
    ),
  );
}

function drawDeployments(region, job, ctx, refresh) {
  const rows = job.deployments || [];
  const form = region.querySelector("form.deploy");
  const table = rows.length
    ? h(
        "table",
        { class: "deployment-list" },
        h("thead", {}, h("tr", {}, ["Deployment", "State", "SKU", "Capacity", "How"].concat(ctx.canAct ? [""] : []).map((label) => h("th", { scope: "col" }, label)))),
        h(
          "tbody",
          {},
          rows.map((deployment) =>
            h(
              "tr",
              { "data-deployment": deployment.name },
              h("td", {}, h("code", {}, deployment.name)),
              h("td", {}, statusBadge(deployment.provisioning_state), deployment.error ? h("div", { class: "form-error" }, deployment.error.message, deployment.error.hint ? ` ${deployment.error.hint}` : "") : null),
              h("td", {}, deployment.sku || "—"),
              h("td", { class: "num" }, number(deployment.capacity)),
              h("td", {}, deployment.managed ? "created here" : "registered"),
              ctx.canAct && deployment.provisioning_state !== "Deleted"
                ? h("td", {}, h("button", { type: "button", class: "danger small", onclick: () => deleteDeployment(job, deployment, ctx, refresh) }, "Delete"))
                : ctx.canAct ? h("td") : null,
            ),
          ),
        ),
      )
    : h("p", { class: "muted" }, job.status === "succeeded" ? "Not deployed yet." : "The model can be deployed once the job has succeeded.");
  // The form keeps what the caller typed across refreshes: only the table is redrawn.
  replace(region, table, form || (ctx.canAct && job.status === "succeeded" ? deployForm(job, ctx, refresh) : null));
}

async function deleteDeployment(job, deployment, ctx, refresh) {
  const what = deployment.managed ? "It is deleted on the Azure OpenAI account." : "It is only forgotten here; nothing upstream changes.";
  if (!(await confirmDialog(`Delete deployment ${deployment.name}?`, what, "Delete"))) return;
  try {
    await del(`${jobPath(job.id)}/deployments/${encodeURIComponent(deployment.name)}`);
    await refresh();
  } catch (error) {
    ctx.showError(error);
  }
}

function deployForm(job, ctx, refresh) {
  const name = h("input", { name: "name", placeholder: `${job.params?.suffix || "student"}-${job.id.slice(-8)}`, autocomplete: "off" });
  const sku = h("input", { name: "sku", placeholder: "the service's default (DeveloperTier)" });
  const capacity = h("input", { name: "capacity", type: "number", min: 1, step: 1, placeholder: "default" });
  const existing = h("input", { type: "checkbox", name: "existing", id: "deploy-existing" });
  const formError = h("p", { class: "form-error", role: "alert" });
  return h(
    "form",
    {
      class: "deploy",
      "aria-label": "Deploy the fine-tuned model",
      onsubmit: async (event) => {
        event.preventDefault();
        formError.textContent = "";
        const request = { existing: existing.checked };
        if (name.value.trim()) request.name = name.value.trim();
        if (!existing.checked && sku.value.trim()) request.sku = sku.value.trim();
        if (!existing.checked && capacity.value !== "") request.capacity = Number(capacity.value);
        try {
          await post(`${jobPath(job.id)}/deployments`, request);
        } catch (error) {
          formError.textContent = error.message;
          return;
        }
        name.value = "";
        await refresh().catch(ctx.showError);
      },
    },
    h("h3", {}, "Deploy the student"),
    field("deploy-name", "Deployment name", name),
    field("deploy-sku", "SKU (optional)", sku),
    field("deploy-capacity", "Capacity (optional, thousands of tokens per minute)", capacity),
    h("div", { class: "field" }, h("label", { for: "deploy-existing" }, existing, " Register a deployment made elsewhere (name required)")),
    formError,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Deploy")),
  );
}
