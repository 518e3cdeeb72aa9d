// The JSON APIs the pane calls, with the caller's key (sessionStorage) or, with no key, the
// signed-in user's App Service Authentication session (the platform adds the principal header).

const KEY_ITEM = "distillery.api-key";

export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const key = {
  get: () => sessionStorage.getItem(KEY_ITEM),
  set: (value) => sessionStorage.setItem(KEY_ITEM, value),
  clear: () => sessionStorage.removeItem(KEY_ITEM),
};

function headers(extra = {}) {
  const value = key.get();
  return value ? { "api-key": value, ...extra } : extra;
}

async function failure(response) {
  let message = `The server answered ${response.status} ${response.statusText}.`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      message = body.error.message;
      code = body.error.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(message, response.status, code);
}

export async function request(method, path, body) {
  return (await send(method, path, body)).json();
}

async function send(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "content-type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError("The service could not be reached. Check your connection and retry.", 0, "unreachable");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

// Before the first quota or permission report exists the service answers 202 and builds it on its
// queue: poll as its retry-after asks, for up to two minutes.
export async function report(path, waitMs = 120_000) {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const response = await send("GET", path);
    if (response.status !== 202) return response.json();
    if (Date.now() >= deadline) throw new ApiError("The service is still building its first report; try again in a minute.", 202, "report_pending");
    const seconds = Math.min(5, Math.max(0.5, Number(response.headers.get("retry-after")) || 2));
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  }
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body ?? {});
export const del = (path) => request("DELETE", path);

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of params) {
    if (value !== null && value !== undefined && value !== "") search.append(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Downloads need the key header, so a plain link cannot fetch them: fetch, then save the blob.
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers(), credentials: "same-origin" });
  if (!response.ok) throw await failure(response);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
