// The student judged against its teacher, side by side: the automatic comparison a deployment got when it
// became ready (pass rate per criterion, wins, losses and ties) and the held-out items the student lost,
// each opening on both answers.

import { get } from "./api.js";
import { clip, h, replace, statusBadge } from "./dom.js";

const POLL_MS = 1500;
const DONE = new Set(["completed", "failed", "canceled"]);
const percent = (rate) => (rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1)}%`);
const evalPath = (id) => `/api/evals/${encodeURIComponent(id)}`;

// One card per deployment with a comparison; it follows the two runs until both have finished.
export function comparisonCard(deployment) {
  const comparison = deployment.comparison;
  const body = h("div", { class: "comparison-body", "aria-live": "polite" });
  const card = h(
    "article",
    { class: "card comparison", "data-deployment": deployment.name, "aria-label": `${deployment.name} against its teacher` },
    h("h2", {}, "Student ", h("code", {}, deployment.name), " against its teacher"),
    body,
  );
  if (comparison.error) {
    replace(body, h("p", { class: "form-error" }, comparison.error));
    return card;
  }
  const follow = async () => {
    if (!card.isConnected && card.dataset.drawn) return;
    try {
      const finished = await draw(body, comparison);
      card.dataset.drawn = "1";
      if (!finished) setTimeout(follow, POLL_MS);
    } catch (error) {
      replace(body, h("p", { class: "form-error" }, error.message));
    }
  };
  follow();
  return card;
}

async function draw(body, comparison) {
  const { eval_id: evalId, teacher_run_id: teacherId, student_run_id: studentId } = comparison;
  const [teacher, student] = await Promise.all([teacherId, studentId].map((run) => get(`${evalPath(evalId)}/runs/${encodeURIComponent(run)}`)));
  if (!DONE.has(teacher.status) || !DONE.has(student.status)) {
    replace(body, h("p", { class: "muted" }, "Grading ", comparison.items, " held-out items: teacher ", statusBadge(teacher.status), ", student ", statusBadge(student.status), "."));
    return false;
  }
  const compared = await get(`${evalPath(evalId)}/runs/compare?runs=${encodeURIComponent(teacherId)},${encodeURIComponent(studentId)}`);
  const lost = await lostItems(evalId, teacherId, studentId);
  replace(
    body,
    h("p", { class: "muted" }, `${compared.items_compared} held-out items; eval `, h("code", {}, evalId)),
    h(
      "table",
      { class: "comparison-table" },
      h("thead", {}, h("tr", {}, ["Criterion", "Teacher", "Student", "Student wins", "Student losses", "Ties"].map((label) => h("th", { scope: "col" }, label)))),
      h(
        "tbody",
        {},
        compared.per_testing_criteria.map((row) =>
          h(
            "tr",
            { "data-criterion": row.testing_criteria },
            h("th", { scope: "row" }, row.testing_criteria),
            h("td", { class: "num" }, percent(row.pass_rate[teacherId])),
            h("td", { class: "num" }, percent(row.pass_rate[studentId])),
            h("td", { class: "num wins" }, row.wins[studentId]),
            h("td", { class: "num losses" }, row.wins[teacherId]),
            h("td", { class: "num" }, row.ties),
          ),
        ),
      ),
    ),
    h("h3", {}, `Items the student lost (${lost.length})`),
    lost.length
      ? h(
          "ul",
          { class: "lost-items" },
          lost.map(({ teacher: t, student: s }) =>
            h(
              "li",
              {},
              h(
                "details",
                {},
                h("summary", {}, clip(lastUserText(t.datasource_item.input), 100) || `item ${t.datasource_item_id}`),
                h(
                  "div",
                  { class: "answers" },
                  h("div", {}, h("h4", {}, "Teacher"), h("p", { class: "answer teacher" }, outputText(t))),
                  h("div", {}, h("h4", {}, "Student"), h("p", { class: "answer student" }, outputText(s))),
                ),
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, "None: the student passed wherever the teacher did."),
  );
  return true;
}

// Items the teacher passed and the student failed (matched by their position in the data source).
async function lostItems(evalId, teacherId, studentId) {
  const [teacher, student] = await Promise.all([teacherId, studentId].map((run) => allItems(evalId, run)));
  const byIndex = new Map(teacher.map((item) => [item.datasource_item_id, item]));
  return student
    .filter((item) => item.status === "fail" && byIndex.get(item.datasource_item_id)?.status === "pass")
    .map((item) => ({ teacher: byIndex.get(item.datasource_item_id), student: item }));
}

async function allItems(evalId, runId) {
  const items = [];
  let after = null;
  do {
    const page = await get(`${evalPath(evalId)}/runs/${encodeURIComponent(runId)}/output_items?limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    after = page.has_more ? page.last_id : null;
  } while (after);
  return items;
}

function lastUserText(messages) {
  const user = (messages || []).filter((message) => message.role === "user").pop();
  return user ? (typeof user.content === "string" ? user.content : JSON.stringify(user.content)) : "";
}

function outputText(item) {
  const output = (item.sample && item.sample.output) || [];
  return output.map((message) => message.content).join("\n") || "—";
}
