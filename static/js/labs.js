/* Lab pages: put the browser's learner key into the upload form, refuse an oversized file
 * before sending it, and keep a passed lab's verification token with the progress. */
(function () {
  "use strict";
  function progress() { return window.InferenceRoadmapProgress; }

  function setup() {
    document.querySelectorAll("[data-learner-key]").forEach(function (input) {
      if (progress()) input.value = progress().learnerKey();
    });
    document.querySelectorAll("form[data-submit-form]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var file = form.querySelector("input[type=file]").files[0];
        var warning = form.querySelector("[data-too-large]");
        if (file && file.size > Number(form.getAttribute("data-max-bytes"))) {
          event.preventDefault();
          warning.hidden = false;
        }
      });
    });
    document.querySelectorAll("[data-verification]").forEach(function (el) {
      if (progress()) {
        progress().verify(el.getAttribute("data-milestone"), el.getAttribute("data-verification"));
      }
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
