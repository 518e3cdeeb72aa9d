// Stored completions: filters (metadata, model, dates, a score), the newest-first table with cursor
// paging, selection with the count a filter matches, the detail panel (conversation, usage, scores,
// metadata editing, delete) and the Distill / Evaluate actions.

import { del, get, post, query } from "./api.js";
import { openDistill, openEvaluate } from "./jobs.js";
import { chips, clip, confirmDialog, h, isoDate, number, replace, when } from "./dom.js";

const PAGE = 25;
const COLUMN_CLASSES = { Scores: "col-scores", Output: "col-output", Tokens: "num col-tokens" };
const LIST = "/openai/v1/chat/completions";
const RESPONSES = "/openai/v1/responses";

// Responses (`resp_…`) live on their own routes; lists ask for both kinds (`kind=all`).
const isResponse = (id) => id.startsWith("resp_");
const created = (completion) => completion.created ?? completion.created_at;
const COUNT = "/api/completions/count";
// A score condition's operator: its JSON form (datasets, evals) and its list-query suffix.
const SCORE_OPS = { "=": { json: null, suffix: "" }, "≥": { json: "gte", suffix: ">" }, "≤": { json: "lte", suffix: "<" } };
const emptyFilter = () => ({ model: "", metadata: [["", ""]], createdAfter: "", createdBefore: "", score: { name: "", op: "=", value: "" } });

// Kept across view switches within the tab, so coming back shows the same filter and page.
const state = {
  filter: emptyFilter(),
  cursors: [null],
  selected: new Map(),
  allMatching: false,
  openId: null,
};

export function activeFilter() {
  const filter = {};
  const metadata = Object.fromEntries(state.filter.metadata.filter(([name]) => name.trim()).map(([n, v]) => [n.trim(), v]));
  if (Object.keys(metadata).length) filter.metadata = metadata;
  if (state.filter.model.trim()) filter.model = state.filter.model.trim();
  const after = toSeconds(state.filter.createdAfter);
  const before = toSeconds(state.filter.createdBefore);
  if (after !== null) filter.created_after = after;
  if (before !== null) filter.created_before = before;
  const score = state.filter.score;
  if (score.name.trim() && score.value.trim()) {
    const value = scoreValue(score.value.trim());
    const op = SCORE_OPS[score.op].json;
    filter.scores = { [score.name.trim()]: op ? { [op]: Number(score.value) } : value };
  }
  return filter;
}

// As the list API reads `scores.<name>=<value>`: true/false a boolean, a number a number, else a label.
export function scoreValue(text) {
  if (text === "true" || text === "false") return text === "true";
  const number = Number(text);
  return text.trim() !== "" && Number.isFinite(number) ? number : text;
}

function toSeconds(local) {
  if (!local) return null;
  const millis = new Date(local).getTime();
  return Number.isNaN(millis) ? null : Math.floor(millis / 1000);
}

function describeFilter(filter) {
  const parts = [];
  if (filter.model) parts.push(`model ${filter.model}`);
  for (const [name, value] of Object.entries(filter.metadata || {})) parts.push(`${name}=${value}`);
  if (filter.created_after) parts.push(`from ${when(filter.created_after)}`);
  if (filter.created_before) parts.push(`before ${when(filter.created_before)}`);
  if (filter.scores) parts.push(`score ${state.filter.score.name.trim()} ${state.filter.score.op} ${state.filter.score.value.trim()}`);
  return parts.join(", ");
}

// The filter as list query parameters (the list and its count take the same ones).
function filterParams() {
  const filter = activeFilter();
  const params = [["kind", "all"]]; // the route lists chat completions only unless asked
  if (filter.model) params.push(["model", filter.model]);
  for (const [name, value] of Object.entries(filter.metadata || {})) params.push([`metadata[${name}]`, value]);
  if (filter.created_after) params.push(["created_after", filter.created_after]);
  if (filter.created_before) params.push(["created_before", filter.created_before]);
  if (filter.scores) {
    const score = state.filter.score;
    params.push([`scores.${score.name.trim()}${SCORE_OPS[score.op].suffix}`, score.value.trim()]);
  }
  return params;
}

function listPath(after) {
  return LIST + query([["order", "desc"], ["limit", PAGE], ["after", after], ...filterParams()]);
}

export async function renderCompletions(main, ctx) {
  const table = h("div", { class: "table-wrap" });
  const toolbar = h("div", { class: "toolbar", role: "toolbar", "aria-label": "Selection", hidden: true });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const status = h("p", { class: "sr-only", "aria-live": "polite" });
  const detail = h("aside", { id: "detail", class: "detail", "aria-label": "Completion detail", hidden: true });
  const layout = h("div", { class: "split" }, h("section", { class: "list", "aria-labelledby": "completions-title" },
    h("h1", { id: "completions-title" }, "Stored completions"),
    filterForm(),
    toolbar,
    table,
    pager,
    status,
  ), detail);
  replace(main, layout);

  let page = null;
  let latest = 0;
  let matching = null; // how many completions the filter matches (GET /api/completions/count)

  async function load() {
    const cursor = state.cursors[state.cursors.length - 1];
    const ticket = ++latest; // only the newest request may draw: an older, slower answer is dropped
    replace(table, h("p", { class: "muted loading" }, "Loading…"));
    let answer;
    try {
      answer = await get(listPath(cursor));
    } catch (error) {
      if (ticket !== latest) return;
      replace(table, h("p", { class: "empty" }, "The stored completions could not be listed."));
      replace(pager);
      toolbar.hidden = true;
      ctx.showError(error);
      return;
    }
    if (ticket !== latest) return;
    page = answer;
    matching = null;
    ctx.clearError();
    drawTable();
    drawPager();
    drawToolbar();
    status.textContent = `${page.data.length} completions shown.`;
    if (ctx.canAct && Object.keys(activeFilter()).length) countMatches(ticket);
  }

  // The count is shown before Distill, so nobody distills 200,000 completions by surprise.
  async function countMatches(ticket) {
    let answer;
    try {
      answer = await get(COUNT + query(filterParams()));
    } catch (error) {
      if (ticket === latest) ctx.showError(error);
      return;
    }
    if (ticket !== latest) return;
    matching = answer.count;
    drawToolbar();
  }

  // A score chip narrows the filter to that score's value.
  function filterOnScore(name, value) {
    state.filter.score = { name, op: "=", value: String(value) };
    state.cursors = [null];
    state.selected.clear();
    state.allMatching = false;
    renderCompletions(main, ctx);
  }

  // A metadata chip narrows the filter to its pair (replacing any pair with the same key).
  function filterOn(name, value) {
    const pairs = state.filter.metadata.filter(([key]) => key.trim() && key.trim() !== name);
    state.filter.metadata = [...pairs, [name, value]];
    state.cursors = [null];
    state.selected.clear();
    state.allMatching = false;
    renderCompletions(main, ctx);
  }

  function filterForm() {
    const metadataRows = h("div", { class: "metadata-rows" });
    const model = h("input", { id: "filter-model", name: "model", value: state.filter.model, placeholder: "any" });
    const createdAfter = h("input", { id: "filter-after", type: "datetime-local", value: state.filter.createdAfter });
    const createdBefore = h("input", { id: "filter-before", type: "datetime-local", value: state.filter.createdBefore });
    const score = state.filter.score;
    const scoreName = h("input", { id: "filter-score-name", class: "score-name", value: score.name, placeholder: "e.g. quality", maxlength: 64 });
    const scoreOp = h(
      "select",
      { id: "filter-score-op", "aria-label": "Score comparison" },
      Object.keys(SCORE_OPS).map((op) => h("option", { value: op, selected: op === score.op }, op)),
    );
    const scoreText = h("input", { id: "filter-score-value", class: "score-value", value: score.value, placeholder: "true, 4, a label" });
    const drawRows = () =>
      replace(
        metadataRows,
        state.filter.metadata.map((pair, index) =>
          h(
            "div",
            { class: "pair" },
            h("label", { for: `meta-key-${index}` }, "Key"),
            h("input", { id: `meta-key-${index}`, class: "meta-key", value: pair[0], oninput: (e) => (pair[0] = e.target.value) }),
            h("label", { for: `meta-value-${index}` }, "Value"),
            h("input", { id: `meta-value-${index}`, class: "meta-value", value: pair[1], oninput: (e) => (pair[1] = e.target.value) }),
            h(
              "button",
              {
                type: "button",
                class: "secondary small",
                "aria-label": `Remove metadata filter ${index + 1}`,
                onclick: () => {
                  state.filter.metadata.splice(index, 1);
                  if (!state.filter.metadata.length) state.filter.metadata.push(["", ""]);
                  drawRows();
                },
              },
              "Remove",
            ),
          ),
        ),
      );
    drawRows();
    return h(
      "form",
      {
        class: "filters card",
        "aria-label": "Filters",
        onsubmit: (event) => {
          event.preventDefault();
          state.filter.model = model.value;
          state.filter.createdAfter = createdAfter.value;
          state.filter.createdBefore = createdBefore.value;
          state.filter.score = { name: scoreName.value, op: scoreOp.value, value: scoreText.value };
          state.cursors = [null];
          state.selected.clear();
          state.allMatching = false;
          load();
        },
      },
      h("div", { class: "field" }, h("label", { for: "filter-model" }, "Model or deployment"), model),
      h(
        "fieldset",
        { class: "field metadata" },
        h("legend", {}, "Metadata (every pair must match)"),
        metadataRows,
        h(
          "button",
          { type: "button", class: "secondary small", onclick: () => { state.filter.metadata.push(["", ""]); drawRows(); } },
          "Add metadata filter",
        ),
      ),
      h("div", { class: "field" }, h("label", { for: "filter-after" }, "Created from"), createdAfter),
      h("div", { class: "field" }, h("label", { for: "filter-before" }, "Created before"), createdBefore),
      h(
        "fieldset",
        { class: "field score-filter" },
        h("legend", {}, "Score"),
        h("div", { class: "pair" }, h("label", { for: "filter-score-name" }, "Name"), scoreName, scoreOp, h("label", { for: "filter-score-value" }, "Value"), scoreText),
      ),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit" }, "Apply filters"),
        h(
          "button",
          {
            type: "button",
            class: "secondary",
            onclick: () => {
              state.filter = emptyFilter();
              state.cursors = [null];
              state.selected.clear();
              state.allMatching = false;
              renderCompletions(main, ctx);
            },
          },
          "Clear",
        ),
      ),
    );
  }

  function drawToolbar() {
    if (!ctx.canAct) {
      replace(toolbar);
      toolbar.hidden = true;
      return;
    }
    toolbar.hidden = false;
    const filter = activeFilter();
    const filtered = Object.keys(filter).length > 0;
    const count = state.selected.size;
    const chosen = state.allMatching || count > 0;
    const all = matching === null ? "All completions" : `All ${number(matching)} completion${matching === 1 ? "" : "s"}`;
    const summary = state.allMatching
      ? `${all} matching ${describeFilter(filter)} are selected.`
      : count
        ? `${count} selected.`
        : "Select rows, or every completion matching the filter.";
    const selection = () =>
      state.allMatching
        ? { filter, label: `${all.toLowerCase()} matching ${describeFilter(filter)}` }
        : { ids: [...state.selected.keys()], label: `${count} selected completion${count === 1 ? "" : "s"}` };
    replace(
      toolbar,
      h("span", { class: "selection", id: "selection-summary" }, summary),
      filtered && matching !== null ? h("span", { class: "muted", id: "match-count" }, matching === 1 ? "1 completion matches this filter" : `${number(matching)} completions match this filter`) : null,
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          id: "select-all-matching",
          "aria-pressed": String(state.allMatching),
          disabled: !filtered,
          title: filtered ? null : "Set a filter first: an action never takes the whole store by accident.",
          onclick: () => {
            state.allMatching = !state.allMatching;
            state.selected.clear();
            drawTable();
            drawToolbar();
          },
        },
        state.allMatching ? "Clear selection" : "Select all matching this filter",
      ),
      h("button", { type: "button", id: "distill", disabled: !chosen, onclick: () => openDistill(selection(), ctx) }, "Distill…"),
      h("button", { type: "button", id: "evaluate", disabled: !chosen, onclick: () => openEvaluate(selection(), ctx) }, "Evaluate…"),
    );
  }

  function drawTable() {
    if (!page.data.length) {
      const filtered = Object.keys(activeFilter()).length > 0;
      replace(
        table,
        h(
          "div",
          { class: "empty" },
          h("p", {}, filtered ? "No stored completions match these filters." : "No stored completions yet."),
          filtered ? null : h("p", { class: "muted" }, "Call chat completions with \"store\": true and they appear here."),
        ),
      );
      return;
    }
    const head = h(
      "tr",
      {},
      ctx.canAct ? h("th", { scope: "col", class: "check" }, h("span", { class: "sr-only" }, "Select")) : null,
      ["Created", "Deployment → model", "Metadata", "Scores", "First user message", "Output", "Tokens"].map((label) =>
        h("th", { scope: "col", class: COLUMN_CLASSES[label] ?? null }, label),
      ),
    );
    const rows = page.data.map((completion) => {
      const message = (completion.object === "response" ? responseOutput(completion) : completion.choices?.[0]?.message) || {};
      const output = message.content ?? toolSummary(message.tool_calls);
      const row = h(
        "tr",
        { "data-id": completion.id, class: completion.id === state.openId ? "open" : null },
        ctx.canAct
          ? h(
              "td",
              { class: "check" },
              h("input", {
                type: "checkbox",
                "aria-label": `Select ${completion.id}`,
                checked: state.allMatching || state.selected.has(completion.id),
                disabled: state.allMatching,
                onchange: (event) => {
                  if (event.target.checked) state.selected.set(completion.id, true);
                  else state.selected.delete(completion.id);
                  drawToolbar();
                },
              }),
            )
          : null,
        h(
          "td",
          { class: "nowrap" },
          h("button", { type: "button", class: "link open-detail", title: `${completion.id}\n${isoDate(created(completion))}`, onclick: () => openDetail(completion.id) }, when(created(completion))),
          completion.object === "response" ? h("span", { class: "badge kind" }, "response") : null,
        ),
        h("td", { class: "model" }, modelCell(completion)),
        h("td", { class: "metadata" }, chips(completion.metadata, filterOn)),
        h("td", { class: "scores col-scores" }, chips(scoreTexts(completion.distillery?.scores), filterOnScore, "scores")),
        h("td", { class: "preview user-preview" }, userPreview(completion.distillery?.preview)),
        h("td", { class: "preview col-output" }, clip(output, 90)),
        h("td", { class: "num col-tokens" }, number(completion.usage?.total_tokens)),
      );
      row.addEventListener("click", (event) => {
        if (event.target.closest("input, button, a")) return;
        openDetail(completion.id);
      });
      return row;
    });
    replace(table, h("table", { class: "completions" }, h("caption", { class: "sr-only" }, "Stored completions, newest first"), h("thead", {}, head), h("tbody", {}, rows)));
  }

  function drawPager() {
    const pageNumber = state.cursors.length;
    if (pageNumber === 1 && !page.has_more) {
      replace(pager);
      return;
    }
    replace(
      pager,
      h("button", { type: "button", class: "secondary", disabled: pageNumber === 1, onclick: () => { state.cursors.pop(); load(); } }, "← Newer"),
      h("span", { class: "muted" }, `Page ${pageNumber}`),
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          disabled: !page.has_more,
          onclick: () => {
            state.cursors.push(page.data[page.data.length - 1].id);
            load();
          },
        },
        "Older →",
      ),
    );
  }

  async function openDetail(id) {
    state.openId = id;
    for (const row of table.querySelectorAll("tr[data-id]")) row.classList.toggle("open", row.dataset.id === id);
    detail.hidden = false;
    layout.classList.add("with-detail");
    replace(detail, h("p", { class: "muted loading" }, "Loading…"));
    await renderDetail(detail, id, ctx, {
      close: () => {
        const row = table.querySelector(`tr[data-id="${CSS.escape(id)}"] button.open-detail`);
        row?.focus(); // keyboard users continue where they left the table
        state.openId = null;
        detail.hidden = true;
        layout.classList.remove("with-detail");
        for (const row of table.querySelectorAll("tr.open")) row.classList.remove("open");
      },
      changed: load,
      filterOn,
    });
  }

  detail.addEventListener("keydown", (event) => {
    if (event.key === "Escape") detail.querySelector("button[aria-label='Close detail']")?.click();
  });

  await load();
  if (state.openId) openDetail(state.openId);
}

// The deployment the caller asked for, and the model that answered when it says something else.
function modelCell(completion) {
  const deployment = completion.distillery?.deployment ?? completion.model;
  const answered = completion.model && completion.model !== deployment ? completion.model : null;
  return [
    h("span", { class: "deployment", title: `Asked for deployment ${deployment}` }, deployment),
    answered ? h("span", { class: "answered muted", title: `Answered by model ${answered}` }, `→ ${answered}`) : null,
  ];
}

// Scores as chip text: a thumbs value as true/false, numbers and labels as they are.
function scoreTexts(scores) {
  return Object.fromEntries(Object.entries(scores || {}).map(([name, value]) => [name, String(value)]));
}

function userPreview(preview) {
  if (preview === null || preview === undefined) return h("span", { class: "muted" }, "(no user message)");
  return preview ? clip(preview, 90) : h("span", { class: "muted" }, "(no text)");
}

function toolSummary(calls) {
  if (!calls || !calls.length) return "";
  return calls.map((call) => `→ ${call.function?.name}(${call.function?.arguments ?? ""})`).join(" ");
}

// A Responses item as the message the conversation view draws: function calls as tool calls,
// their outputs as tool messages, reasoning as its summary, other items by their type.
function itemMessage(item) {
  const text = (parts) => (typeof parts === "string" ? parts : (parts || []).map((part) => part.text ?? "").join(""));
  if (item.type === "message") return { role: item.role, content: text(item.content) };
  if (item.type === "function_call") return { role: "assistant", tool_calls: [{ id: item.call_id, function: { name: item.name, arguments: item.arguments } }] };
  if (item.type === "function_call_output") return { role: "tool", tool_call_id: item.call_id, content: String(item.output ?? "") };
  if (item.type === "reasoning") return { role: "reasoning", content: text(item.summary) || "(reasoning, no summary)" };
  return { role: item.type, content: `[${item.type}]` };
}

// A response's output folded into one assistant message: its text and its function calls.
function responseOutput(response) {
  const parts = (response.output || []).map(itemMessage);
  const content = parts.filter((m) => m.role === "assistant" && m.content).map((m) => m.content).join("") || null;
  return { role: "assistant", content, tool_calls: parts.flatMap((m) => m.tool_calls || []) };
}

async function allMessages(id) {
  const messages = [];
  let after = null;
  for (;;) {
    const path = isResponse(id)
      ? `${RESPONSES}/${encodeURIComponent(id)}/input_items${query([["limit", 100], ["order", "asc"], ["after", after]])}`
      : `${LIST}/${encodeURIComponent(id)}/messages${query([["limit", 100], ["after", after]])}`;
    const page = await get(path);
    messages.push(...(isResponse(id) ? page.data.map(itemMessage) : page.data));
    if (!page.has_more || !page.data.length) return messages;
    after = page.data[page.data.length - 1].id;
  }
}

async function renderDetail(panel, id, ctx, { close, changed, filterOn }) {
  let completion;
  let messages;
  try {
    [completion, messages] = await Promise.all([get(`${isResponse(id) ? RESPONSES : LIST}/${encodeURIComponent(id)}`), allMessages(id)]);
  } catch (error) {
    replace(panel, h("div", { class: "detail-head" }, h("h2", {}, "Completion"), closeButton(close)), h("p", { class: "empty" }, "This completion could not be loaded."));
    ctx.showError(error);
    return;
  }
  const response = completion.object === "response";
  const outputs = response ? (completion.output || []).map(itemMessage) : [completion.choices?.[0]?.message].filter(Boolean);
  const output = outputs.length ? outputs : null;
  const usage = response
    ? { prompt_tokens: completion.usage?.input_tokens, completion_tokens: completion.usage?.output_tokens, total_tokens: completion.usage?.total_tokens }
    : completion.usage || {};
  replace(
    panel,
    h("div", { class: "detail-head" }, h("h2", { id: "detail-title", tabindex: "-1" }, response ? "Response" : "Completion"), closeButton(close)),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Id"), h("dd", {}, h("code", {}, completion.id)),
      h("dt", {}, "Created"), h("dd", {}, h("time", { datetime: isoDate(created(completion)) }, when(created(completion)))),
      h("dt", {}, "Deployment"), h("dd", { class: "fact-deployment" }, completion.distillery?.deployment ?? "—"),
      h("dt", {}, "Model"), h("dd", { class: "fact-model" }, completion.model),
      h("dt", {}, "Finish"), h("dd", {}, (response ? completion.status : completion.choices?.[0]?.finish_reason) ?? "—"),
      h("dt", {}, "Tokens"),
      h("dd", {}, `${number(usage.prompt_tokens)} in · ${number(usage.completion_tokens)} out · ${number(usage.total_tokens)} total`),
    ),
    metadataSection(completion, ctx, changed, filterOn),
    toolsSection(completion.tools, completion.tool_choice),
    response && completion.distillery?.history_complete === false
      ? h("p", { class: "muted" }, "Earlier turns of this conversation were not captured: it lacks their context.")
      : null,
    h("h3", {}, `Conversation (${messages.length + (output ? output.length : 0)} ${response ? "items" : "messages"})`),
    h("ol", { class: "conversation" }, messages.map((m) => messageItem(m, false)), (output || []).map((m) => messageItem(m, true))),
    scoresSection(completion.id, ctx, changed), // judged once the conversation has been read
    ctx.canAct
      ? h(
          "div",
          { class: "actions danger-zone" },
          h(
            "button",
            {
              type: "button",
              class: "danger",
              id: "delete-completion",
              onclick: async () => {
                const confirmed = await confirmDialog("Delete this completion?", `${completion.id} is deleted for good; datasets already built keep their copy.`, "Delete");
                if (!confirmed) return;
                try {
                  await del(`${response ? RESPONSES : LIST}/${encodeURIComponent(completion.id)}`);
                } catch (error) {
                  ctx.showError(error);
                  return;
                }
                close();
                changed();
              },
            },
            "Delete completion",
          ),
        )
      : null,
  );
  panel.querySelector("#detail-title").focus();
}

function closeButton(close) {
  return h("button", { type: "button", class: "secondary small", "aria-label": "Close detail", onclick: close }, "Close");
}

function messageItem(message, isOutput) {
  const calls = message.tool_calls || [];
  const content = message.content;
  return h(
    "li",
    { class: `message role-${message.role}${isOutput ? " output" : ""}` },
    h("div", { class: "message-head" }, h("span", { class: "role" }, message.role), isOutput ? h("span", { class: "badge" }, "output") : null, message.name ? h("span", { class: "muted" }, message.name) : null, message.tool_call_id ? h("span", { class: "muted" }, `result of ${message.tool_call_id}`) : null),
    content ? h("div", { class: "content" }, content) : null,
    calls.map((call) =>
      h(
        "div",
        { class: "tool-call" },
        h("div", { class: "tool-name" }, `→ ${call.function?.name ?? call.type}`, h("span", { class: "muted" }, ` ${call.id ?? ""}`)),
        h("pre", {}, prettyArguments(call.function?.arguments)),
      ),
    ),
    !content && !calls.length ? h("div", { class: "muted" }, "(no text)") : null,
  );
}

function prettyArguments(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text ?? "";
  }
}

// The tool definitions the request offered the model: name, description and parameter schema.
function toolsSection(tools, choice) {
  if (!tools || !tools.length) return null;
  return h(
    "section",
    { class: "tools", "aria-labelledby": "tools-title" },
    h("h3", { id: "tools-title" }, `Tools offered (${tools.length})`, choice ? h("span", { class: "muted" }, ` · tool_choice ${typeof choice === "string" ? choice : JSON.stringify(choice)}`) : null),
    h(
      "ul",
      { class: "tool-defs" },
      tools.map((tool) => {
        const fn = tool.function || {};
        return h(
          "li",
          { class: "tool-def" },
          h(
            "details",
            {},
            h("summary", {}, h("code", { class: "tool-def-name" }, fn.name ?? tool.type), fn.description ? h("span", { class: "muted" }, ` ${fn.description}`) : null),
            h("pre", {}, JSON.stringify(tool.function ? fn.parameters ?? {} : tool, null, 2)),
          ),
        );
      }),
    ),
  );
}

function metadataSection(completion, ctx, changed, filterOn) {
  if (!ctx.canAct) return h("section", {}, h("h3", {}, "Metadata"), chips(completion.metadata, filterOn));
  const pairs = Object.entries(completion.metadata || {});
  if (!pairs.length) pairs.push(["", ""]);
  const rows = h("div", { class: "metadata-rows" });
  const status = h("p", { class: "muted", "aria-live": "polite" });
  const draw = () =>
    replace(
      rows,
      pairs.map((pair, index) =>
        h(
          "div",
          { class: "pair" },
          h("label", { for: `edit-key-${index}` }, "Key"),
          h("input", { id: `edit-key-${index}`, class: "edit-key", value: pair[0], maxlength: 64, oninput: (e) => (pair[0] = e.target.value) }),
          h("label", { for: `edit-value-${index}` }, "Value"),
          h("input", { id: `edit-value-${index}`, class: "edit-value", value: pair[1], maxlength: 512, oninput: (e) => (pair[1] = e.target.value) }),
          h("button", { type: "button", class: "secondary small", "aria-label": `Remove metadata ${pair[0] || index + 1}`, onclick: () => { pairs.splice(index, 1); draw(); } }, "Remove"),
        ),
      ),
    );
  draw();
  return h(
    "form",
    {
      class: "metadata-edit",
      "aria-labelledby": "metadata-title",
      onsubmit: async (event) => {
        event.preventDefault();
        const metadata = Object.fromEntries(pairs.filter(([name]) => name.trim()).map(([n, v]) => [n.trim(), v]));
        status.textContent = "Saving…";
        try {
          await post(`${LIST}/${encodeURIComponent(completion.id)}`, { metadata });
        } catch (error) {
          status.textContent = "Not saved.";
          ctx.showError(error);
          return;
        }
        ctx.clearError();
        status.textContent = "Metadata saved.";
        changed();
      },
    },
    h("h3", { id: "metadata-title" }, "Metadata"),
    rows,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "secondary small", onclick: () => { pairs.push(["", ""]); draw(); } }, "Add pair"),
      h("button", { type: "submit", id: "save-metadata" }, "Save metadata"),
    ),
    status,
  );
}

// The completion's scores, and (with the action right) thumbs up/down as `helpful`, any named score
// (a number, true/false or a label) and removing one. The author is whoever is signed in.
function scoresSection(id, ctx, changed) {
  const path = `/api/completions/${encodeURIComponent(id)}/scores`;
  const list = h("div", { class: "score-list" }, h("p", { class: "muted loading" }, "Loading…"));
  const status = h("p", { class: "muted", "aria-live": "polite" });
  const save = async (name, value) => {
    status.textContent = "Saving…";
    try {
      await post(path, { name, value });
    } catch (error) {
      status.textContent = "Not saved.";
      ctx.showError(error);
      return;
    }
    ctx.clearError();
    status.textContent = `Score ${name} saved.`;
    await draw();
    changed();
  };
  const remove = async (name) => {
    try {
      await del(`${path}/${encodeURIComponent(name)}`);
    } catch (error) {
      ctx.showError(error);
      return;
    }
    status.textContent = `Score ${name} removed.`;
    await draw();
    changed();
  };
  async function draw() {
    let scores;
    try {
      scores = (await get(path)).data;
    } catch (error) {
      replace(list, h("p", { class: "empty" }, "The scores could not be loaded."));
      ctx.showError(error);
      return;
    }
    if (!scores.length) {
      replace(list, h("p", { class: "muted" }, "No scores yet."));
      return;
    }
    replace(
      list,
      h(
        "ul",
        { class: "scores" },
        scores.map((score) =>
          h(
            "li",
            { class: "score", "data-name": score.name },
            h("span", { class: "chip-key" }, score.name),
            " ",
            h("strong", { class: "score-value" }, String(score.value)),
            h("span", { class: "muted" }, ` · ${score.source} · ${score.author}`),
            score.comment ? h("div", { class: "muted" }, score.comment) : null,
            ctx.canAct
              ? h("button", { type: "button", class: "secondary small", "aria-label": `Remove score ${score.name}`, onclick: () => remove(score.name) }, "Remove")
              : null,
          ),
        ),
      ),
    );
  }
  draw();
  const name = h("input", { id: "score-name", maxlength: 64, placeholder: "quality" });
  const value = h("input", { id: "score-value", placeholder: "4, true or a label" });
  return h(
    "section",
    { class: "score-section", "aria-labelledby": "scores-title" },
    h("h3", { id: "scores-title" }, "Scores"),
    list,
    ctx.canAct
      ? h(
          "div",
          { class: "actions thumbs" },
          h("button", { type: "button", class: "secondary small", id: "thumbs-up", "aria-label": "Helpful (thumbs up)", onclick: () => save("helpful", true) }, "✓ Helpful"),
          h("button", { type: "button", class: "secondary small", id: "thumbs-down", "aria-label": "Not helpful (thumbs down)", onclick: () => save("helpful", false) }, "✗ Not helpful"),
        )
      : null,
    ctx.canAct
      ? h(
          "form",
          {
            class: "score-edit pair",
            "aria-label": "Add a score",
            onsubmit: (event) => {
              event.preventDefault();
              if (!name.value.trim() || !value.value.trim()) return;
              save(name.value.trim(), scoreValue(value.value.trim()));
            },
          },
          h("label", { for: "score-name" }, "Name"),
          name,
          h("label", { for: "score-value" }, "Value"),
          value,
          h("button", { type: "submit", id: "save-score", class: "small" }, "Save score"),
        )
      : null,
    status,
  );
}
