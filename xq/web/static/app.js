// xq dashboard.  A [data-live] block is refreshed (JSON {"parts": {id: html}, "events": url} from its
// data-live URL) when its event stream (data-events, SSE) sends anything: at most one refresh every GAP ms
// however many events arrive, plus a slow fallback poll (data-poll ms) for what changes without events.
// A task page ([data-task]) moves its progress bar and status straight from its task's events.
// Forms with data-confirm ask before posting.
(function () {
  for (const f of document.querySelectorAll("form[data-confirm]")) {
    f.addEventListener("submit", (ev) => { if (!confirm(f.dataset.confirm)) ev.preventDefault(); });
  }
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const GAP = 750, RETRY = 5000;
  // the event names of /ui/events (xq.producer.EVENT_STATES): an SSE listener is per name
  const STATES = ["scheduled", "queued", "waiting", "running", "progress", "retrying", "done", "dead",
                  "expired", "canceled", "group_done"];
  const url = live.dataset.live, task = document.querySelector("[data-task]")?.dataset.task;
  let events = live.dataset.events, source = null, opened = false;
  let last = 0, timer = null, busy = false, again = false;
  const direct = {};  // the task's latest progress and state events: re-applied over an older refresh

  async function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    const start = last = Date.now();
    try {
      const r = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (r.ok) {
        const got = await r.json();
        for (const [id, htmlPart] of Object.entries(got.parts)) {
          const el = document.getElementById(id);
          if (el) el.innerHTML = htmlPart;
        }
        for (const d of Object.values(direct)) if (d.at >= start) apply(d.ev);  // newer than what was read
        if (got.events && got.events !== events) { events = got.events; connect(); }  // a new queue
      }
    } catch (e) { /* server away: the next event or poll tries again */ }
    busy = false;
    if (again) { again = false; soon(); }
  }

  function soon() {  // a refresh GAP ms after the last one at the earliest; one pending at most
    if (!timer) timer = setTimeout(refresh, Math.max(0, last + GAP - Date.now()));
  }

  function text(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function apply(ev) {
    if (ev.state === "progress") {
      const pct = Number(ev.progress) || 0;
      document.getElementById("progress-box")?.removeAttribute("hidden");  // the first report shows the bar
      document.getElementById("progress")?.setAttribute("value", String(pct));
      text("progress-pct", pct + "%");
      text("progress-msg", ev.message ?? "");
    } else {
      text("status", ev.state);
    }
  }

  function onEvent(msg) {
    if (task) {
      const ev = JSON.parse(msg.data);
      if (ev.id === task) {
        apply(ev);
        direct[ev.state === "progress" ? "progress" : "state"] = {ev, at: Date.now()};
        if (ev.state === "progress") return;  // nothing else on the page moves with it
      }
    }
    soon();
  }

  function connect() {
    if (source) source.close();
    source = new EventSource(events);
    for (const s of STATES) source.addEventListener(s, onEvent);
    source.onopen = () => { if (opened) soon(); opened = true; };  // reconnected: events may have been missed
    source.onerror = () => {
      // the browser reconnects a dropped stream by itself; an error answer (503: Redis away) closes it
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, RETRY);
    };
  }

  connect();
  setInterval(soon, Number(live.dataset.poll) || 10000);
})();
