//! The Workspace pane: one self-contained web page (no external scripts,
//! styles or fonts) that the daemon serves at `GET /pane` when started
//! with `--pane` (which needs `--tcp`, so it is only ever on loopback).
//! The page follows `GET /v1/events/stream` and, after each event, reads
//! `GET /v1/status` and renders it; it resumes with `Last-Event-ID` when
//! the stream breaks. It reads the stream with `fetch` because
//! `EventSource` hides events that carry a name unless each name is
//! listened for, and event kinds are open-ended.

/// The page.
pub const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>syncd</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { color: #555; }
pre { background: #f4f4f4; padding: .5rem; max-height: 60vh; overflow: auto; }
#health[data-health="clean"] { color: #176b1f; }
#health:not([data-health="clean"]) { color: #9a3b00; }
</style>
</head>
<body>
<h1>syncd <span id="health" data-health="">…</span></h1>
<dl>
<dt>summary</dt><dd id="summary"></dd>
<dt>profile</dt><dd id="profile"></dd>
<dt>device</dt><dd id="device"></dd>
<dt>daemon</dt><dd id="daemon"></dd>
<dt>conflicts</dt><dd id="conflict-count"></dd>
<dt>head</dt><dd id="head"></dd>
<dt>stream</dt><dd id="link">connecting</dd>
</dl>
<pre id="document"></pre>
<script>
"use strict";
let last = null;
let pending = false;
const $ = (id) => document.getElementById(id);
function render(s) {
  $("health").textContent = s.health;
  $("health").dataset.health = s.health;
  $("summary").textContent = s.summary;
  $("profile").textContent = s.active_profile;
  $("device").textContent = s.active_device;
  $("daemon").textContent = s.daemon_state;
  $("conflict-count").textContent = String(s.conflict_count);
  $("head").textContent = String(s.log.head_seq);
  $("document").textContent = JSON.stringify(s, null, 2);
}
async function refresh() {
  try {
    const r = await fetch("/v1/status", { cache: "no-store" });
    if (r.ok) { render(await r.json()); }
  } catch (e) { $("link").textContent = "status unavailable"; }
}
function schedule() {
  if (pending) { return; }
  pending = true;
  setTimeout(() => { pending = false; refresh(); }, 20);
}
async function follow() {
  for (;;) {
    try {
      const headers = last === null ? {} : { "Last-Event-ID": String(last) };
      const r = await fetch("/v1/events/stream", { headers, cache: "no-store" });
      if (!r.ok || !r.body) { throw new Error("stream refused"); }
      await refresh();
      $("link").textContent = "live";
      const reader = r.body.getReader();
      const text = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { break; }
        buf += text.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, end);
          buf = buf.slice(end + 2);
          for (const line of frame.split("\n")) {
            if (line.startsWith("id: ")) { last = Number(line.slice(4)); schedule(); }
          }
        }
        // A frame is small; a buffer this large means a broken stream.
        if (buf.length > 1048576) { break; }
      }
    } catch (e) { /* retried below */ }
    $("link").textContent = "reconnecting";
    await new Promise((ok) => setTimeout(ok, 500));
  }
}
follow();
</script>
</body>
</html>
"#;
