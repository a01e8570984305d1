// The API key and every request of the dashboard. The key lives in this tab's
// sessionStorage only: closing the tab or "Sign out" forgets it.

const KEY = "crmsync.key";

export class AuthError extends Error {}

export function key() {
  return sessionStorage.getItem(KEY);
}

export function signIn(value) {
  sessionStorage.setItem(KEY, value.trim());
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

// A key handed over in the address (`/ui#key=...`, as `crmsync demo` prints it):
// kept for this tab and removed from the address bar and its history.
export function takeKeyFromAddress() {
  const m = location.hash.match(/^#key=([^&]+)/);
  if (!m) return false;
  signIn(decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + "#/");
  return true;
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${key() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (resp.status === 401) throw new AuthError("the API refused this key");
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const detail = data && data.detail;
    const text = Array.isArray(detail)
      ? detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ")
      : detail || resp.statusText;
    throw new Error(`${method} ${path}: ${resp.status} ${text}`);
  }
  return data;
}
