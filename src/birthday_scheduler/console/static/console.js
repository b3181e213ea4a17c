// Refresh the overview's live part every few seconds without reloading the page.
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const every = Number(live.dataset.everyMs) || 5000;
  async function refresh() {
    try {
      const response = await fetch(live.dataset.refresh, { credentials: "same-origin" });
      if (response.status === 401) { window.location.assign("/admin/signin?next=/admin"); return; }
      if (response.ok) live.innerHTML = await response.text();
    } catch (_) { /* offline for a moment: try again at the next tick */ }
    setTimeout(refresh, every);
  }
  setTimeout(refresh, every);
})();
