// xq dashboard: live parts poll their JSON every 1.5 s (to be replaced by SSE on /api/events),
// and forms with data-confirm ask before posting.
(function () {
  for (const f of document.querySelectorAll("form[data-confirm]")) {
    f.addEventListener("submit", (ev) => { if (!confirm(f.dataset.confirm)) ev.preventDefault(); });
  }
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const url = live.dataset.live;
  async function tick() {
    try {
      const r = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (r.ok) {
        const parts = await r.json();
        for (const [id, htmlPart] of Object.entries(parts)) {
          const el = document.getElementById(id);
          if (el) el.innerHTML = htmlPart;
        }
      }
    } catch (e) { /* server away: try again next tick */ }
    setTimeout(tick, 1500);
  }
  setTimeout(tick, 1500);
})();
