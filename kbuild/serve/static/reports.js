// Evaluation reports (report.html from 'kpl eval --out DIR') under the --results folder.
import { get, token } from "./api.js";
import { fill, h, shortTime } from "./dom.js";

export async function renderReports(main) {
  const [info, reports] = await Promise.all([get("/api/info"), get("/api/reports")]);
  const title = h("h1", {}, "Evaluation reports");
  if (!info.reports) {
    fill(main, title, h("p", {}, "No results folder: start with 'kbuild serve --results DIR'."));
    return;
  }
  if (!reports.length) {
    fill(main, title, h("p", {}, "No report.html under the results folder yet (run 'kpl eval --out DIR')."));
    return;
  }
  // Each path segment is encoded, so a folder name can never change what the link points at.
  // A link cannot send a header, so it carries the token (needed beyond loopback; no-referrer keeps it in).
  const href = (path) => "/reports/" + path.split("/").map(encodeURIComponent).join("/") +
    "?token=" + encodeURIComponent(token());
  fill(main, title, h("table", { class: "grid", id: "reports" },
    h("thead", {}, h("tr", {}, h("th", {}, "report"), h("th", {}, "modified"), h("th", {}, "size"))),
    h("tbody", {}, reports.map((r) => h("tr", {},
      h("td", {}, h("a", { href: href(r.path), target: "_blank", rel: "noopener noreferrer" }, r.path)),
      h("td", {}, shortTime(r.modified)), h("td", {}, `${Math.round(r.size / 1024)} KiB`))))));
}
