// Talking to the server: reads are plain GETs; changes are JSON POSTs that carry the per-server token.
// The token arrives once in the start-up link (?token=...), moves to sessionStorage and leaves the URL.

const TOKEN_KEY = "kbuild-serve-token";
const REVIEWER_KEY = "kbuild-serve-reviewer";

export class ApiError extends Error {
  constructor(status, payload) {
    super((payload && payload.error) || "HTTP " + status);
    this.status = status;
    this.payload = payload || {};
  }
}

export function adoptTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

export const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
export const reviewer = () => (localStorage.getItem(REVIEWER_KEY) || "").trim();
export const setReviewer = (name) => localStorage.setItem(REVIEWER_KEY, name.trim());

async function answer(response) {
  let payload = null;
  try { payload = await response.json(); } catch (err) { payload = null; }
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

export async function get(path, params) {
  const query = params ? "?" + new URLSearchParams(params).toString() : "";
  // The token goes with reads too: a server bound beyond loopback refuses reads without it.
  return answer(await fetch(path + query, { headers: { Accept: "application/json", "X-Kbuild-Token": token() } }));
}

export async function post(path, body) {
  return answer(await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Kbuild-Token": token() },
    body: JSON.stringify(body),
  }));
}
