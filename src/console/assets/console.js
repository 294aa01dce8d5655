// The LCM console's script: live parts of a page, confirmation dialogs, and the time-zone
// helper of the schedule form. Everything works without it (pages are whole, every action
// has a confirmation page); it only saves reloads and clicks.
"use strict";

(function () {
  // --- Live parts -----------------------------------------------------------------------
  // A page whose <body> names a stream (data-live) keeps its parts fresh: each "patch" event
  // holds whole parts by element id. Applying a patch twice changes nothing, so a stream that
  // reconnects (EventSource does, on its own) shows nothing twice.
  var deferred = {};

  function setState(state, text, symbol) {
    var el = document.getElementById("live-state");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = "";
    var icon = document.createElement("span");
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = symbol + " ";
    el.appendChild(icon);
    el.appendChild(document.createTextNode(text));
  }

  function openDialogIn(el) {
    return el.querySelector("dialog[open]") !== null;
  }

  // Puts `html` in place of the part `id`, keeping what the reader opened and where the
  // keyboard focus was.
  function apply(id, html) {
    var el = document.getElementById(id);
    if (!el) return;
    if (openDialogIn(el)) {
      // Someone is confirming an action: the part is put in place once they are done.
      deferred[id] = html;
      return;
    }
    var open = [];
    el.querySelectorAll("details[open][id]").forEach(function (d) { open.push(d.id); });
    var focused = document.activeElement && el.contains(document.activeElement)
      ? document.activeElement : null;
    var focusKey = focused && (focused.id || focused.dataset.action || null);
    el.innerHTML = html;
    open.forEach(function (openId) {
      var d = document.getElementById(openId);
      if (d && d.tagName === "DETAILS") d.open = true;
    });
    if (focusKey) {
      var again = document.getElementById(focusKey) ||
        el.querySelector('[data-action="' + focusKey + '"]');
      if (again) again.focus();
    }
  }

  function applyDeferred() {
    Object.keys(deferred).forEach(function (id) {
      var html = deferred[id];
      var el = document.getElementById(id);
      if (el && !openDialogIn(el)) {
        delete deferred[id];
        apply(id, html);
      }
    });
  }

  // A browser keeps few connections to one host (six over HTTP/1.1), and a stream holds one
  // for as long as it is open: a page out of sight (another tab in front, or kept for the Back
  // button) gives its stream back, and opens it again when it shows. A stream that opens
  // starts with the current parts, so the page is up to date at once.
  function live(url) {
    var source = null;
    var done = false;

    function open() {
      if (source || done) return;
      // The page says it is not live until here: without scripts, that stays true.
      setState("connecting", "Connecting…", "◌");
      var own = new EventSource(url);
      source = own;
      own.addEventListener("open", function () { setState("live", "Live", "●"); });
      own.addEventListener("patch", function (event) {
        var parts;
        try { parts = JSON.parse(event.data); } catch (e) { return; }
        Object.keys(parts).forEach(function (id) { apply(id, parts[id]); });
        setState("live", "Live", "●");
      });
      own.addEventListener("done", function () {
        done = true;
        close();
        setState("done", "Up to date (nothing more will change)", "■");
      });
      own.addEventListener("error", function () {
        if (own !== source) return;
        if (own.readyState === EventSource.CLOSED) {
          source = null;
          setState("closed", "Not live: reload the page (or sign in again)", "✕");
        } else {
          setState("reconnecting", "Reconnecting…", "◌");
        }
      });
    }

    function close() {
      if (source) source.close();
      source = null;
    }

    function outOfSight() {
      if (!source) return;
      close();
      setState("paused", "Paused while out of sight", "◌");
    }

    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") outOfSight(); else open();
    });
    window.addEventListener("pagehide", outOfSight);
    window.addEventListener("pageshow", function (event) {
      if (event.persisted && document.visibilityState !== "hidden") open();
    });
    if (document.visibilityState === "hidden") {
      setState("paused", "Paused while out of sight", "◌");
    } else {
      open();
    }
  }

  // --- Confirmation dialogs ---------------------------------------------------------------
  // A link with data-dialog opens that dialog instead of the confirmation page.
  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-dialog]");
    if (opener) {
      var dialog = document.getElementById(opener.dataset.dialog);
      if (dialog && typeof dialog.showModal === "function") {
        event.preventDefault();
        dialog.showModal();
        var first = dialog.querySelector("textarea, button[type=submit]");
        if (first) first.focus();
      }
      return;
    }
    var closer = event.target.closest("[data-close]");
    if (closer) {
      var d = closer.closest("dialog");
      if (d) d.close();
    }
  });
  // Parts that changed while a dialog was open are put in place when it closes.
  document.addEventListener("close", applyDeferred, true);

  // --- The schedule form's time zone --------------------------------------------------------
  // Proposes the browser's own UTC offset for the chosen date, and says what time that is.
  function offsetText(minutesEast) {
    var sign = minutesEast < 0 ? "-" : "+";
    var abs = Math.abs(minutesEast);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return sign + pad(Math.floor(abs / 60)) + ":" + pad(abs % 60);
  }

  function scheduleHelper() {
    var local = document.getElementById("local");
    var offset = document.getElementById("offset");
    var preview = document.getElementById("start-preview");
    if (!local || !offset) return;
    // An offset the page came back with (a refused form, as typed) was chosen already.
    var touched = offset.hasAttribute("data-chosen");
    offset.addEventListener("change", function () { touched = true; show(); });
    function show() {
      if (!local.value || !preview) return;
      preview.textContent = "Starts at " + local.value.replace("T", " ") + " in UTC" +
        offset.value + ".";
    }
    local.addEventListener("change", function () {
      if (!touched && local.value) {
        var when = new Date(local.value);
        if (!isNaN(when.getTime())) {
          var text = offsetText(-when.getTimezoneOffset());
          if (offset.querySelector('option[value="' + text + '"]')) offset.value = text;
        }
      }
      show();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var url = document.body.dataset.live;
    if (url && typeof EventSource === "function") live(url);
    scheduleHelper();
  });
})();
