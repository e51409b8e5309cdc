/// The status page `lbd --http` serves: HTML, script and style, all from lbd (no CDN; hospital networks are often
/// closed). The script renders whatever /status.json holds: the known fields in fixed columns, and any other field
/// of a service or a real server (e.g. a health reason, a state or a `since` added later) in extra columns, so the
/// page keeps up with the status schema without being edited. It polls every `refresh` seconds (default 1, `?refresh=N`)
/// and redraws in place; the page itself is never reloaded.
enum StatusPage {
    static let html = """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>lb status</title>
        <link rel="stylesheet" href="/status.css">
        <script src="/status.js" defer></script>
        </head>
        <body>
        <header>
          <h1>lb</h1>
          <span id="summary">loading…</span>
          <span id="updated" class="muted"></span>
          <span class="muted">read-only · changes with lbctl</span>
        </header>
        <div id="problem" hidden></div>
        <main id="services"></main>
        <section id="transitions-section" hidden>
          <h2>Last health transitions</h2>
          <table id="transitions"><thead><tr><th>time</th><th>virtual service</th><th>real server</th><th>health</th><th>reason</th></tr></thead><tbody></tbody></table>
        </section>
        <section id="audit-section" hidden>
          <h2>Last operator actions</h2>
          <table id="audit"><thead><tr><th>time</th><th>user</th><th>command</th><th>targets</th><th>result</th></tr></thead><tbody></tbody></table>
        </section>
        <noscript>This page needs JavaScript; the same data is at <a href="/status.json">/status.json</a>.</noscript>
        </body>
        </html>

        """

    static let style = """
        :root { --up: #1a7f37; --down: #cf222e; --degraded: #bf8700; --admin: #6639ba; --muted: #59636e; }
        body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
        header { display: flex; gap: 1.5em; align-items: baseline; padding: .6em 1.2em; background: #24292f; color: #fff; }
        header h1 { font-size: 1.3em; margin: 0; }
        header .muted { color: #9198a1; }
        .muted { color: var(--muted); }
        #problem { margin: 1em 1.2em; padding: .6em 1em; background: #ffebe9; border: 1px solid var(--down); border-radius: 6px; }
        main { padding: .4em 1.2em; display: grid; gap: 1em; }
        section.service { background: #fff; border: 1px solid #d1d9e0; border-left: 6px solid var(--muted); border-radius: 6px; padding: .5em 1em; }
        section.service[data-state=up] { border-left-color: var(--up); }
        section.service[data-state=degraded] { border-left-color: var(--degraded); }
        section.service[data-state=down] { border-left-color: var(--down); }
        .service h2 { font-size: 1.1em; margin: .2em 0; display: flex; gap: 1em; align-items: baseline; flex-wrap: wrap; }
        .badge { display: inline-block; padding: 0 .5em; border-radius: 1em; font-size: .85em; font-weight: 600; color: #fff; background: var(--muted); }
        .badge.up { background: var(--up); } .badge.down { background: var(--down); } .badge.degraded { background: var(--degraded); }
        .badge.drain, .badge.halt { background: var(--admin); } .badge.online { background: #d1d9e0; color: #1f2328; }
        .badge.unchecked { background: #d1d9e0; color: #1f2328; }
        table { border-collapse: collapse; width: 100%; }
        th, td { text-align: left; padding: .2em .6em; border-bottom: 1px solid #eff2f5; vertical-align: top; }
        th { font-weight: 600; color: var(--muted); font-size: .85em; }
        td.number { text-align: right; font-variant-numeric: tabular-nums; }
        tr[data-health=down] td:first-child { color: var(--down); font-weight: 600; }
        .reason { color: var(--muted); font-size: .9em; }
        tr[data-health=down] .reason { color: var(--down); }
        td:first-child, td.number, td[data-field=since], th { white-space: nowrap; }
        .extra { color: var(--muted); font-size: .85em; }
        svg.chart { width: 220px; height: 36px; background: #f6f8fa; border-radius: 4px; }
        svg.chart polyline { fill: none; stroke-width: 1.5; }
        svg.chart .connections { stroke: #0969da; } svg.chart .throughput { stroke: #bf3989; }
        #audit-section, #transitions-section { padding: 0 1.2em 1.2em; }
        #audit-section h2, #transitions-section h2 { font-size: 1em; }
        #audit, #transitions { background: #fff; border: 1px solid #d1d9e0; }

        """

    static let script = """
        "use strict";
        // lb status page: polls /status.json and /audit.json and redraws; never reloads itself.
        const refreshSeconds = Math.max(0.2, Number(new URLSearchParams(location.search).get("refresh")) || 1);
        const serviceColumns = ["name", "mode", "vip", "ports", "transport", "state", "servers"];
        const serverColumns = [
          ["name", "server"], ["address", "address"], ["health", "health"], ["admin", "admin"], ["weight", "weight"],
          ["active_connections", "active"], ["total_connections", "total"],
          ["bytes_to_server", "bytes to"], ["bytes_from_server", "bytes from"]];
        // Shown with the health, not as a column of their own.
        const healthDetails = ["reason"];
        const history = new Map();        // service name -> [{t, active, bytes}] for the last 15 minutes
        const historySeconds = 15 * 60;
        let lastSuccess = null;

        function element(tag, attributes = {}, ...children) {
          const node = document.createElement(tag);
          for (const [key, value] of Object.entries(attributes)) {
            if (key === "class") node.className = value; else node.setAttribute(key, value);
          }
          for (const child of children) node.append(child instanceof Node ? child : String(child));
          return node;
        }
        function badge(text) { return element("span", {class: "badge " + text}, text); }
        function bytes(n) {
          const units = ["B", "KiB", "MiB", "GiB", "TiB"];
          let value = Number(n), unit = 0;
          while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
          return (unit ? value.toFixed(1) : value) + " " + units[unit];
        }
        function scalar(value) {
          if (value === null || value === undefined) return "";
          return typeof value === "object" ? JSON.stringify(value) : String(value);
        }
        function labelOf(key) { return key.replace(/_/g, " "); }

        function record(service) {
          const now = Date.now() / 1000;
          const samples = history.get(service.name) || [];
          const total = (field) => service.servers.reduce((sum, s) => sum + Number(s[field] || 0), 0);
          samples.push({t: now, active: total("active_connections"), bytes: total("bytes_to_server") + total("bytes_from_server")});
          while (samples.length && samples[0].t < now - historySeconds) samples.shift();
          history.set(service.name, samples);
          return samples;
        }
        // Connections (blue) and throughput (pink) over the samples this page has seen, at most 15 minutes.
        function chart(samples) {
          const ns = "http://www.w3.org/2000/svg";
          const svg = document.createElementNS(ns, "svg");
          svg.setAttribute("class", "chart");
          svg.setAttribute("viewBox", "0 0 220 36");
          svg.setAttribute("preserveAspectRatio", "none");
          const rates = samples.map((s, i) => i === 0 ? 0 : Math.max(0, (s.bytes - samples[i - 1].bytes) / Math.max(0.001, s.t - samples[i - 1].t)));
          const line = (values, cls) => {
            const max = Math.max(1, ...values), start = samples.length ? samples[0].t : 0;
            const span = Math.max(1, (samples.length ? samples[samples.length - 1].t : 1) - start);
            const points = values.map((v, i) => ((samples[i].t - start) / span * 218 + 1).toFixed(1) + "," + (34 - v / max * 32).toFixed(1));
            const polyline = document.createElementNS(ns, "polyline");
            polyline.setAttribute("class", cls);
            polyline.setAttribute("points", points.join(" "));
            svg.append(polyline);
          };
          line(samples.map(s => s.active), "connections");
          line(rates, "throughput");
          const last = rates.length ? rates[rates.length - 1] : 0;
          const title = document.createElementNS(ns, "title");
          title.textContent = "connections now " + (samples.length ? samples[samples.length - 1].active : 0) + ", " + bytes(last) + "/s";
          svg.append(title);
          return svg;
        }

        function renderService(service) {
          const section = element("section", {class: "service", "data-service": service.name, "data-state": service.state});
          const heading = element("h2", {}, service.name, badge(service.state),
            element("span", {class: "muted"}, service.mode + " · " + service.vip + " : " + service.ports + "/" + service.transport));
          for (const key of Object.keys(service).filter(k => !serviceColumns.includes(k)).sort()) {
            heading.append(element("span", {class: "extra", "data-field": key}, labelOf(key) + ": " + scalar(service[key])));
          }
          heading.append(chart(record(service)));
          section.append(heading);
          const known = serverColumns.map(([key]) => key).concat(healthDetails);
          const extras = [...new Set(service.servers.flatMap(s => Object.keys(s)).filter(k => !known.includes(k)))].sort();
          const table = element("table");
          table.append(element("thead", {}, element("tr", {}, ...serverColumns.map(([, label]) => element("th", {}, label)),
            ...extras.map(key => element("th", {}, labelOf(key))))));
          const body = element("tbody");
          for (const server of service.servers) {
            const row = element("tr", {"data-server": server.name, "data-health": server.health, "data-admin": scalar(server.admin)});
            for (const [key] of serverColumns) {
              let cell;
              if (key === "health") {
                cell = element("td", {class: "health"}, badge(server.health));
                for (const detail of healthDetails) {
                  if (server[detail]) cell.append(" ", element("span", {class: "reason", "data-field": detail}, scalar(server[detail])));
                }
              } else if (key === "admin") {
                cell = element("td", {}, badge(scalar(server.admin)));
              } else if (key.startsWith("bytes")) {
                cell = element("td", {class: "number", title: scalar(server[key])}, bytes(server[key] || 0));
              } else if (typeof server[key] === "number") {
                cell = element("td", {class: "number"}, server[key]);
              } else {
                cell = element("td", {}, scalar(server[key]));
              }
              row.append(cell);
            }
            for (const key of extras) row.append(element("td", {class: "extra", "data-field": key}, scalar(server[key])));
            body.append(row);
          }
          table.append(body);
          section.append(table);
          return section;
        }

        function renderAudit(entries) {
          const section = document.getElementById("audit-section");
          const body = document.querySelector("#audit tbody");
          body.replaceChildren(...entries.slice().reverse().map(entry => {
            const targets = entry.targets || {};
            const what = [targets.service, targets.server].filter(Boolean).join("/") + (targets.mode ? " → " + targets.mode : "");
            return element("tr", {}, element("td", {}, entry.time), element("td", {}, entry.user + (entry.uid === undefined ? "" : " (" + entry.uid + ")")),
              element("td", {}, entry.command), element("td", {}, what || "-"),
              element("td", {}, entry.result + (entry.error ? ": " + entry.error : "")));
          }));
          section.hidden = entries.length === 0;
        }

        function renderTransitions(entries) {
          const body = document.querySelector("#transitions tbody");
          body.replaceChildren(...entries.map(entry =>
            element("tr", {"data-server": entry.service + "/" + entry.server, "data-health": entry.health},
              element("td", {}, entry.time), element("td", {}, entry.service), element("td", {}, entry.server),
              element("td", {}, badge(entry.health)), element("td", {}, entry.reason || ""))));
          document.getElementById("transitions-section").hidden = entries.length === 0;
        }

        async function refresh() {
          try {
            const response = await fetch("/status.json", {cache: "no-store"});
            if (!response.ok) throw new Error("/status.json answered " + response.status);
            const services = await response.json();
            document.getElementById("services").replaceChildren(...services.map(renderService));
            const counts = {up: 0, degraded: 0, down: 0};
            for (const s of services) counts[s.state] = (counts[s.state] || 0) + 1;
            document.getElementById("summary").textContent =
              services.length + " virtual services: " + counts.up + " up, " + counts.degraded + " degraded, " + counts.down + " down";
            lastSuccess = new Date();
            document.getElementById("updated").textContent = "updated " + lastSuccess.toLocaleTimeString();
            document.getElementById("problem").hidden = true;
            document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
            const transitions = await fetch("/transitions.json", {cache: "no-store"});
            if (transitions.ok) renderTransitions(await transitions.json());
            const audit = await fetch("/audit.json", {cache: "no-store"});
            if (audit.ok) renderAudit(await audit.json());
          } catch (error) {
            const problem = document.getElementById("problem");
            problem.textContent = "lbd does not answer (" + error.message + ")" +
              (lastSuccess ? "; the figures below are from " + lastSuccess.toLocaleTimeString() : "");
            problem.hidden = false;
          } finally {
            setTimeout(refresh, refreshSeconds * 1000);
          }
        }
        refresh();

        """
}
