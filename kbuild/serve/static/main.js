// Hash router: #/ lineage, #/s/NAME a snapshot, #/compare?old=A&new=B, #/reports.
import { adoptTokenFromUrl, get, reviewer, setReviewer, token } from "./api.js";
import { fill, h, message } from "./dom.js";
import { renderLineage } from "./lineage.js";
import { renderSnapshot } from "./snapshot.js";
import { renderCompare } from "./compare.js";
import { renderReports } from "./reports.js";

const main = document.getElementById("main");

function parseHash() {
  const raw = window.location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { path, params: new URLSearchParams(query || "") };
}

async function route() {
  const { path, params } = parseHash();
  fill(main, h("p", { class: "muted" }, "Loading…"));
  try {
    if (path.startsWith("/s/")) await renderSnapshot(main, decodeURIComponent(path.slice(3)));
    else if (path === "/compare") await renderCompare(main, params.get("old"), params.get("new"));
    else if (path === "/reports") await renderReports(main);
    else await renderLineage(main);
  } catch (err) {
    fill(main, h("p", { class: "error", role: "alert" }, "Error: " + err.message));
  }
}

function setupHeader() {
  const input = document.getElementById("reviewer");
  input.value = reviewer();
  input.addEventListener("change", () => { setReviewer(input.value); route(); });
  const state = document.getElementById("token-state");
  const banner = document.getElementById("banner");
  if (token()) {
    message(state, "review enabled", "ok");
  } else {
    message(state, "read-only", "warn");
    banner.hidden = false;
    fill(banner, "Read-only: open the link that 'kbuild serve' printed (it carries the token) to review.");
  }
}

async function footer() {
  try {
    const info = await get("/api/info");
    document.getElementById("footer").replaceChildren(
      `kbuild ${info.kbuild_version} · ${info.mode} store ${info.store}`);
  } catch (err) { /* the footer is decoration; the page reports real errors */ }
}

adoptTokenFromUrl();
setupHeader();
footer();
window.addEventListener("hashchange", route);
route();
