/*
 * Learner progress, kept in this browser's localStorage (no account).
 *
 * Stored value (also the export file format):
 *   {"format": "inference-roadmap-progress", "version": 1,
 *    "learner_key": "<32 hex>",            // identifies this learner's submissions
 *    "items": {"<slug>": "in-progress" | "done" | "skipped"},   // not-started = absent
 *    "verified": {"<milestone slug>": "<signed token from the server>"},
 *    "updated": "<ISO time>"}
 *
 * Progress is keyed by slug. The server publishes an alias map (old slug -> new slug) so
 * progress saved under a renamed item moves to its new slug instead of being lost.
 */
(function () {
  "use strict";

  var STORAGE_KEY = "inference-roadmap/progress";
  var FORMAT = "inference-roadmap-progress";
  var VERSION = 1;
  var STATUSES = ["not-started", "in-progress", "done", "skipped"];
  var KEY_PATTERN = /^[0-9a-f]{32}$/;

  function readJsonScript(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function newLearnerKey() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return b.toString(16).padStart(2, "0");
    }).join("");
  }

  function emptyState(learnerKey) {
    return {format: FORMAT, version: VERSION, learner_key: learnerKey || newLearnerKey(),
            items: {}, verified: {}, updated: null};
  }

  function isPlainObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  /* Returns null when `data` is a usable progress file, else a message for the learner. */
  function problemWith(data) {
    if (!isPlainObject(data) || data.format !== FORMAT) {
      return "This file is not an Inference Roadmap progress export.";
    }
    if (typeof data.version !== "number" || data.version < 1 || data.version > VERSION) {
      return "This progress file has version " + JSON.stringify(data.version) +
        ", which this site cannot read (it reads version " + VERSION + ").";
    }
    if (!isPlainObject(data.items)) return "This progress file has no list of items.";
    var slugs = Object.keys(data.items);
    for (var i = 0; i < slugs.length; i++) {
      if (slugs[i].length > 200) return "This progress file has an item name that is too long.";
      if (STATUSES.indexOf(data.items[slugs[i]]) === -1) {
        return "Item “" + slugs[i] + "” has an unknown status " +
          JSON.stringify(data.items[slugs[i]]) + ".";
      }
    }
    if (data.learner_key !== undefined && !KEY_PATTERN.test(String(data.learner_key))) {
      return "This progress file has a malformed learner key.";
    }
    if (data.verified !== undefined && !isPlainObject(data.verified)) {
      return "This progress file has a malformed list of verified milestones.";
    }
    return null;
  }

  function normalise(data) {
    var state = emptyState(data.learner_key);
    Object.keys(data.items).forEach(function (slug) {
      if (data.items[slug] !== "not-started") state.items[slug] = data.items[slug];
    });
    Object.keys(data.verified || {}).forEach(function (slug) {
      if (typeof data.verified[slug] === "string") state.verified[slug] = data.verified[slug];
    });
    state.updated = typeof data.updated === "string" ? data.updated : null;
    return state;
  }

  function applyAliases(state, aliases) {
    if (!isPlainObject(aliases)) return false;
    var moved = false;
    ["items", "verified"].forEach(function (field) {
      Object.keys(state[field]).forEach(function (oldSlug) {
        var newSlug = aliases[oldSlug];
        if (!newSlug) return;
        if (!(newSlug in state[field])) state[field][newSlug] = state[field][oldSlug];
        delete state[field][oldSlug];
        moved = true;
      });
    });
    return moved;
  }

  var storageWorks = true;

  function load() {
    var raw = null;
    try { raw = window.localStorage.getItem(STORAGE_KEY); } catch (e) { storageWorks = false; }
    if (raw === null) return emptyState();
    var data = null;
    try { data = JSON.parse(raw); } catch (e) { data = null; }
    if (problemWith(data) !== null) {
      // Never silently drop what we cannot read: keep a copy beside it.
      try { window.localStorage.setItem(STORAGE_KEY + ".unreadable." + Date.now(), raw); } catch (e) {}
      say("Saved progress in this browser could not be read; a copy was kept and progress starts fresh.");
      return emptyState();
    }
    return normalise(data);
  }

  function save() {
    state.updated = new Date().toISOString();
    try {
      window.localStorage.setItem(STORAGE_KEY, JSON.stringify(state));
    } catch (e) {
      storageWorks = false;
      say("This browser does not allow saving progress (private mode or storage full).");
    }
  }

  function say(message) {
    var box = document.querySelector("[data-progress-message]");
    if (!box) return;
    box.textContent = message;
    box.hidden = !message;
  }

  function statusOf(slug) { return state.items[slug] || "not-started"; }

  function render() {
    var groups = readJsonScript("progress-groups") || {};
    document.querySelectorAll("[data-js-only]").forEach(function (el) { el.hidden = false; });
    document.querySelectorAll("select[data-status-for]").forEach(function (select) {
      select.value = statusOf(select.getAttribute("data-status-for"));
    });
    document.querySelectorAll("[data-item]").forEach(function (el) {
      var slug = el.getAttribute("data-item");
      el.setAttribute("data-status", statusOf(slug));
      el.toggleAttribute("data-verified", slug in state.verified);
    });
    document.querySelectorAll("[data-progress-group]").forEach(function (el) {
      var slugs = groups[el.getAttribute("data-progress-group")] || [];
      var done = 0, skipped = 0, active = 0;
      slugs.forEach(function (slug) {
        var s = statusOf(slug);
        if (s === "done") done++; else if (s === "skipped") skipped++;
        else if (s === "in-progress") active++;
      });
      // Skipped items leave the count: a learner who skips a goal is not held back by it.
      var total = slugs.length - skipped;
      var percent = total > 0 ? Math.round((done * 100) / total) : 0;
      var bar = el.querySelector("progress");
      bar.max = Math.max(total, 1);
      bar.value = done;
      var text = done + " of " + total + " done (" + percent + "%)";
      if (active) text += " · " + active + " in progress";
      if (skipped) text += " · " + skipped + " skipped";
      el.querySelector("[data-progress-text]").textContent = text;
      el.setAttribute("data-percent", String(percent));
    });
  }

  function setStatus(slug, status) {
    if (status === "not-started") delete state.items[slug];
    else state.items[slug] = status;
    save();
    render();
  }

  function exportProgress() {
    var blob = new Blob([JSON.stringify(state, null, 2) + "\n"], {type: "application/json"});
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "inference-roadmap-progress-" + new Date().toISOString().slice(0, 10) + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
  }

  function importProgress(input) {
    var file = input.files && input.files[0];
    input.value = "";
    if (!file) return;
    if (file.size > 1024 * 1024) {
      say("That file is too large to be a progress export (over 1 MB). Nothing was changed.");
      return;
    }
    file.text().then(function (text) {
      var data;
      try { data = JSON.parse(text); } catch (e) {
        say("That file is not JSON, so it cannot be a progress export. Nothing was changed.");
        return;
      }
      var problem = problemWith(data);
      if (problem) { say(problem + " Nothing was changed."); return; }
      var imported = normalise(data);
      applyAliases(imported, readJsonScript("slug-aliases"));
      checkVerifications(imported.verified).then(function (dropped) {
        dropped.forEach(function (slug) { delete imported.verified[slug]; });
        state = imported;
        save();
        render();
        say("Imported progress: " + Object.keys(state.items).length + " items." +
            (dropped.length ? " " + dropped.length + " verification(s) could not be " +
             "confirmed by this site and were left out." : ""));
      });
    });
  }

  /* Resolves to the milestone slugs whose tokens this server does not confirm. */
  function checkVerifications(verified) {
    var slugs = Object.keys(verified);
    if (!slugs.length) return Promise.resolve([]);
    return fetch("/api/v1/verifications/check", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({tokens: verified})
    }).then(function (response) {
      if (!response.ok) throw new Error(String(response.status));
      return response.json();
    }).then(function (body) {
      return slugs.filter(function (slug) { return body.valid.indexOf(slug) === -1; });
    }).catch(function () { return []; });  // offline: keep them rather than lose them
  }

  function resetProgress() {
    if (!window.confirm("Reset all your progress in this browser? This cannot be undone " +
                        "unless you exported it first.")) return;
    // The learner key stays: it is how the site finds this browser's lab submissions.
    state = emptyState(state.learner_key);
    save();
    render();
    say("Progress reset.");
  }

  var state = load();
  if (applyAliases(state, readJsonScript("slug-aliases"))) save();
  if (!storageWorks) say("This browser does not allow saving progress (private mode?).");

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches("select[data-status-for]")) {
      setStatus(target.getAttribute("data-status-for"), target.value);
    } else if (target.matches("[data-progress-import]")) {
      importProgress(target);
    }
  });
  document.addEventListener("click", function (event) {
    if (event.target.closest("[data-progress-export]")) exportProgress();
    else if (event.target.closest("[data-progress-reset]")) resetProgress();
  });
  // Another tab changed the progress: show the same numbers here.
  window.addEventListener("storage", function (event) {
    if (event.key === STORAGE_KEY) { state = load(); render(); }
  });
  // htmx swapped in new items (the project filter): fill in their statuses.
  document.addEventListener("htmx:afterSettle", render);

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", render);
  else render();

  // For other scripts on the site (lab submissions read the learner key).
  window.InferenceRoadmapProgress = {
    learnerKey: function () { if (!state.updated) save(); return state.learner_key; },
    verify: function (milestoneSlug, token) {
      if (state.verified[milestoneSlug] === token) return;
      state.verified[milestoneSlug] = token;
      save();
      render();
    },
    state: function () { return JSON.parse(JSON.stringify(state)); }
  };
})();
