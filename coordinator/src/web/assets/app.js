// Lockstep's web view: polls the fleet, deployments, history and locks
// (one request each per POLL_MS, whatever the fleet's size) and follows the
// current deployment's events over Server-Sent Events. Actions (pause,
// resume, approve, abort) are offered only when the coordinator says this
// caller may operate; the coordinator checks again on every action.
// A gate's countdown is computed here from the deadline the coordinator
// sends (and its clock), ticking locally: no request per second.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let followed = null; // { id, source, seen: Set of seqs }
let slotHolders = new Set(); // hosts holding a disruption budget slot, from the last locks answer
let clockSkewMs = 0; // the coordinator's clock minus this browser's
let refreshSoon = null; // a poll scheduled after a timeline event
let historyShown = null; // the history answer last drawn, as JSON

// A DOM element with text children (never HTML: names come from the fleet).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function clock(ms) {
  return ms > 0 ? new Date(ms).toISOString().slice(11, 19) + "Z" : "";
}

function duration(ms) {
  if (ms == null) return "";
  const s = Math.round(ms / 1000);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
}

// The first line of `text`, at most `max` characters.
function firstLine(text, max) {
  const line = text.split("\n")[0];
  return line.length > max ? `${line.slice(0, max)}…` : line;
}

async function getJson(path) {
  const answer = await fetch(path);
  if (!answer.ok) throw new Error(`${path}: ${answer.status} ${await answer.text()}`);
  return answer.json();
}

function renderFleet(grid) {
  $("fleet-summary").textContent =
    `${grid.hosts} host(s) in ${grid.clusters.length} cluster(s); ${grid.unreachable} unreachable.`;
  const columns = grid.clusters.map((cluster) =>
    el("section", { class: "cluster", "aria-label": `cluster ${cluster.name}` },
      el("h3", {}, `Cluster ${cluster.name}`),
      el("ul", {}, ...cluster.hosts.map(hostCell))));
  $("fleet-grid").replaceChildren(...columns);
}

function hostCell(host) {
  const lines = host.services.map((s) => {
    const line = el("p", { class: "service" },
      `${s.service} `, el("strong", {}, s.version), " ");
    if (s.digest) line.append(el("span", { class: "digest" }, `(${s.digest})`), " ");
    line.append(`ready ${s.ready}/${s.total}`);
    if (s.crash_looping > 0) line.append(`, ${s.crash_looping} crash-looping`);
    if (s.switching) line.append(", switching");
    if (s.last_error) line.append(el("br"), el("span", { class: "muted", title: s.last_error }, `last error: ${firstLine(s.last_error, 100)}`));
    return line;
  });
  if (slotHolders.has(host.id)) lines.push(el("p", { class: "slot" }, "holds a disruption budget slot"));
  return el("li", { class: `host health-${host.health}`, "data-host": host.id },
    el("p", {}, el("strong", {}, host.id), el("span", { class: "badge" }, host.health)),
    ...lines);
}

// The outcome starts with the state ("rolled_back: …"): its first line,
// without the state, is the reason; the rest is the app's last log lines.
function outcomeOf(d) {
  const [first, ...rest] = (d.outcome || "").split("\n");
  const said = first.startsWith(d.state) ? first.slice(d.state.length).replace(/^:\s*/, "") : first;
  return { said, rest };
}

function renderSummary(d) {
  const { said, rest } = outcomeOf(d);
  $("deployment-summary").replaceChildren(
    el("p", {}, el("strong", {}, d.id), ` — ${d.service} ${d.version} `,
      el("span", { class: "digest" }, `(${d.digest})`)),
    el("p", {}, "State: ",
      el("span", { id: "deployment-state", class: `badge state-${d.state}`, "data-state": d.state }, d.state_text),
      d.duration_ms != null ? ` after ${duration(d.duration_ms)}` : ""),
    el("p", { class: "muted" }, `by ${d.actor || "unknown"}${d.reason ? `, because: ${d.reason}` : ""}`),
    said ? el("p", { id: "deployment-outcome" }, el("strong", {}, "Outcome: "), said) : "",
    rest.length ? el("details", {}, el("summary", {}, "Details"), el("pre", {}, rest.join("\n"))) : "");
}

// What the current deployment waits for, each with a live countdown to
// the deadline the coordinator sent (none for an approval or a pause).
function renderWaits(d) {
  const waits = d && !d.terminal ? d.waits || [] : [];
  if (!waits.length) { $("waits").replaceChildren(); return; }
  $("waits").replaceChildren(el("h4", {}, "Now waiting for"),
    el("ul", {}, ...waits.map((w) => {
      const item = el("li", { class: `wait wait-${w.kind}`, "data-kind": w.kind },
        el("strong", {}, w.kind_text), `: ${w.detail}`);
      if (w.until_unix_ms != null) {
        item.append(" — ", el("span", { class: "countdown", "data-until": w.until_unix_ms }, countdown(w.until_unix_ms)));
      } else {
        item.append(" — ", el("span", { class: "countdown" }, "until an operator acts"));
      }
      return item;
    })));
}

function countdown(until) {
  const left = until - (Date.now() + clockSkewMs);
  return left > 0 ? `${duration(Math.max(1000, left))} left` : "due now";
}

function tickCountdowns() {
  for (const span of document.querySelectorAll(".countdown[data-until]")) {
    span.textContent = countdown(Number(span.dataset.until));
  }
}

// A timeline event may open or close a gate: refresh once, shortly,
// however many events arrive together.
function refreshAfterEvent() {
  if (refreshSoon) return;
  refreshSoon = setTimeout(() => { refreshSoon = null; poll(); }, 300);
}

// Opens the event stream of `d` unless it is the one followed. The
// browser's EventSource reconnects by itself with Last-Event-ID, so a
// coordinator that stops or an etcd hiccup loses no event.
function follow(d) {
  if (followed && followed.id === d.id) return;
  if (followed) followed.source.close();
  $("timeline").replaceChildren();
  const source = new EventSource(`/api/deployments/${encodeURIComponent(d.id)}/events`);
  followed = { id: d.id, source, seen: new Set(), received: 0, finished: false };
  const mine = followed;
  source.addEventListener("open", () => { $("timeline-connection").textContent = "Live."; });
  source.addEventListener("deployment", (message) => {
    const ev = JSON.parse(message.data);
    // Every event received, repeats included: a reconnect that resumed
    // after its Last-Event-ID repeats none.
    $("timeline").dataset.received = ++mine.received;
    if (mine.seen.has(ev.seq)) return;
    mine.seen.add(ev.seq);
    appendEvent(ev);
    refreshAfterEvent();
    const state = $("deployment-state");
    if (state) {
      state.textContent = ev.state_text;
      state.className = `badge state-${ev.state}`;
      state.dataset.state = ev.state;
    }
    if (ev.finished) {
      mine.finished = true;
      source.close();
      $("timeline-connection").textContent = "Finished.";
      poll();
    }
  });
  source.addEventListener("interrupted", (message) => {
    $("timeline-connection").textContent = `Interrupted (${message.data}); reconnecting…`;
  });
  source.addEventListener("error", () => {
    if (!mine.finished) $("timeline-connection").textContent = "Connection lost; reconnecting…";
  });
}

function appendEvent(ev) {
  const where = [ev.cluster, ev.instance].filter(Boolean).join(" ");
  const text = `${clock(ev.at_unix_ms)} #${ev.seq} ${ev.kind_text}${where ? " " + where : ""} (${ev.state_text})` +
    (ev.message ? `: ${ev.message.split("\n")[0]}` : "");
  $("timeline").append(el("li", { class: `kind-${ev.kind}`, "data-seq": ev.seq }, text));
}

function renderHistory(services) {
  const known = new Set();
  const tables = services.filter((s) => s.deployments.length > 0).map((s) =>
    el("table", {},
      el("caption", {}, `Service ${s.service}: last ${s.deployments.length} deployment(s)`),
      el("thead", {}, el("tr", {}, ...["Deployment", "Release", "Outcome", "Who", "Why", "Duration"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...s.deployments.map((d, i) => {
        known.add(d.version);
        // The release deployed before this one: the next older row on
        // another release.
        const before = s.deployments.slice(i + 1).find((o) => o.release_digest !== d.release_digest);
        const release = el("td", {}, `${d.version} `, el("span", { class: "digest" }, d.digest), el("br"),
          releaseButton("Manifest", `manifest of ${d.version} (${d.digest})`, () => showRelease(s.service, d.release_digest)));
        if (before) {
          release.append(releaseButton("Diff with previous", `diff from ${before.version} to ${d.version}`,
            () => showDiff(s.service, before.release_digest, d.release_digest)));
        }
        return el("tr", { "data-deployment": d.id },
          el("td", {}, d.id),
          release,
          el("td", {}, el("span", { class: `badge state-${d.state}` }, d.state_text),
            outcomeOf(d).said ? ` ${firstLine(outcomeOf(d).said, 200)}` : ""),
          el("td", {}, d.actor),
          el("td", {}, d.reason),
          el("td", {}, duration(d.duration_ms)));
      }))));
  $("history-tables").replaceChildren(...(tables.length ? tables : [el("p", {}, "No finished deployment yet.")]));
  $("known-releases").replaceChildren(...[...known].map((v) => el("option", { value: v })));
  if (!$("compare-service").value && services.length === 1) $("compare-service").value = services[0].service;
}

function releaseButton(text, label, onClick) {
  const button = el("button", { type: "button", "aria-label": label, class: "release-link" }, text);
  button.addEventListener("click", onClick);
  return button;
}

function query(params) {
  return Object.entries(params).filter(([, v]) => v)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
}

// Shows `body` in the release panel and moves the keyboard focus there.
function showPanel(title, ...body) {
  $("release").hidden = false;
  $("release-title").textContent = title;
  $("release-body").replaceChildren(...body);
  $("release-title").focus();
}

async function showRelease(service, name) {
  try {
    const r = await getJson(`/api/releases/show?${query({ service, release: name })}`);
    const rows = r.files.map((f) => el("tr", {},
      el("td", {}, el("code", {}, f.path)), el("td", {}, f.kind), el("td", {}, String(f.size)),
      el("td", {}, f.mode), el("td", {}, el("code", {}, f.digest || f.link_target || ""))));
    showPanel(`Release ${r.release.service} ${r.release.version}`,
      el("p", {}, "Digest: ", el("code", {}, r.release.digest)),
      el("h4", {}, "Manifest (release.toml)"),
      el("pre", { id: "release-manifest" }, r.manifest_toml),
      el("table", {},
        el("caption", {}, `${r.files.length} entries${r.files_truncated ? " (cut: more than the coordinator lists)" : ""}`),
        el("thead", {}, el("tr", {}, ...["Path", "Kind", "Bytes", "Mode", "Digest"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...rows)));
  } catch (err) {
    showPanel("Release", el("p", { role: "alert" }, err.message));
  }
}

const CHANGE_MARK = { added: "+", removed: "-", changed: "~" };

async function showDiff(service, from, to) {
  try {
    const d = await getJson(`/api/releases/diff?${query({ service, from, to })}`);
    const files = d.files.map((f) => el("li", { class: `change-${f.change}` },
      `${CHANGE_MARK[f.change]} ${f.change} `, el("code", {}, f.path),
      ` ${sizes(f)}`));
    showPanel(`Diff ${d.from.service} ${d.from.version} → ${d.to.version}`,
      el("p", {}, "From ", el("code", {}, `${d.from.version} (${d.from.digest})`),
        " to ", el("code", {}, `${d.to.version} (${d.to.digest})`)),
      el("p", {}, `${d.files.length} file(s) changed, ${d.unchanged_files} unchanged` +
        (d.files_truncated ? " (list cut: more changes than the coordinator lists)" : "")),
      el("ul", { id: "release-files" }, ...files),
      el("h4", {}, "Configuration"),
      diffBlock(d.config_diff));
  } catch (err) {
    showPanel("Diff", el("p", { role: "alert" }, err.message));
  }
}

function sizes(f) {
  const side = (s) => (s ? `${s.size} bytes ${s.digest ? s.digest.slice(0, 19) : s.kind}` : "");
  if (f.before && f.after) return `${side(f.before)} → ${side(f.after)}`;
  return side(f.before || f.after);
}

// The unified diff as a <pre>: each line keeps its +/- mark (readable
// without colour) and gets a class that colours it.
function diffBlock(text) {
  if (!text) return el("p", { id: "release-diff" }, "No text file differs.");
  const lines = text.replace(/\n$/, "").split("\n").map((line) => {
    let kind = "diff-same";
    if (line.startsWith("+++ ") || line.startsWith("--- ") || line.startsWith("Files ")) kind = "diff-file";
    else if (line.startsWith("@@")) kind = "diff-hunk";
    else if (line.startsWith("+")) kind = "diff-add";
    else if (line.startsWith("-")) kind = "diff-del";
    return el("span", { class: kind }, line);
  });
  return el("pre", { id: "release-diff", class: "diff", "aria-label": "unified diff: lines starting with + are added, with - removed" }, ...lines);
}

function compare(event) {
  event.preventDefault();
  showDiff($("compare-service").value.trim(), $("compare-from").value.trim(), $("compare-to").value.trim());
}

function renderLocks(locks) {
  // A slot's key is …/clusters/<cluster>/budget/<agent>/<service>.
  slotHolders = new Set(locks.filter((l) => l.kind === "disruption slot")
    .map((l) => (l.key.split("/budget/")[1] || "").split("/")[0]).filter(Boolean));
  const rows = locks.map((l) => el("tr", {},
    el("td", {}, l.kind), el("td", {}, el("code", {}, l.key)), el("td", {}, l.holder),
    el("td", {}, l.purpose), el("td", {}, duration(l.age_ms)), el("td", {}, duration(l.ttl_left_ms))));
  $("locks-rows").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6 }, "None held."))]));
}

// The form stays in the page (a reason being typed survives a refresh);
// it is shown only to a caller who may operate, for a running deployment.
function showActions(canOperate, d) {
  const form = $("actions");
  form.hidden = !(canOperate && d && !d.terminal);
  form.dataset.deployment = d ? d.id : "";
  if (canOperate) $("mode").textContent = "You may operate from this page; every action is recorded with its reason.";
}

async function act(event) {
  event.preventDefault();
  const form = $("actions");
  const verb = event.submitter.value;
  const reason = $("action-reason").value.trim();
  const answer = await fetch(`/api/deployments/${encodeURIComponent(form.dataset.deployment)}/${verb}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Lockstep-Action": verb },
    body: JSON.stringify({ reason }),
  });
  $("action-result").textContent = answer.ok
    ? `${verb}: done; the deployment is ${(await answer.json()).state_text}.`
    : `${verb} refused: ${await answer.text()}`;
  if (answer.ok) $("action-reason").value = "";
  poll();
}

// Each section is fetched on its own: one that fails says so and leaves
// the others up to date.
async function poll() {
  const problems = [];
  const section = async (path, render) => {
    try { render(await getJson(path)); } catch (err) { problems.push(err.message); }
  };
  await Promise.all([
    section("/api/fleet", renderFleet),
    section("/api/deployments", (answer) => {
      clockSkewMs = answer.server_now_unix_ms - Date.now();
      showActions(answer.can_operate, answer.current);
      renderWaits(answer.current);
      if (!answer.current) return;
      renderSummary(answer.current);
      follow(answer.current);
    }),
    section("/api/history", (services) => {
      // The history holds buttons: redrawn only when it changed, so a
      // keyboard user's focus on one (and an open release list) survives.
      const shown = JSON.stringify(services);
      if (shown === historyShown) return;
      historyShown = shown;
      renderHistory(services);
    }),
    section("/api/locks", renderLocks),
  ]);
  $("status").textContent = problems.length
    ? `Could not refresh: ${problems.join("; ")}`
    : `Updated ${clock(Date.now())}.`;
}

$("actions").addEventListener("submit", act);
$("compare").addEventListener("submit", compare);
poll();
setInterval(poll, POLL_MS);
setInterval(tickCountdowns, 1000);
