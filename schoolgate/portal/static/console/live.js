// The console's live view: new decisions at the top of the table, as they happen.
// On the portal's own port the server streams them (server-sent events); through the proxy,
// which buffers every answer, the page asks for new ones every few seconds instead.
// Text only goes into the page as text (textContent), never as markup.
(function () {
  "use strict";
  var state = document.getElementById("live-state");
  var table = document.getElementById("live-events");
  if (!state || !table) {
    return;
  }
  var body = table.tBodies[0];
  var historyBase = document.querySelector("nav[aria-label=Console] a[href$='/history']");
  var historyUrl = historyBase ? historyBase.getAttribute("href") : "/console/history";
  var seen = {};
  var start = parseInt(state.getAttribute("data-after") || "0", 10) || 0;
  var after = start;
  var MAX_ROWS = 500;

  Array.prototype.forEach.call(body.rows, function (row) {
    seen[row.getAttribute("data-id")] = true;
  });

  function cell(row, text, extra) {
    var td = document.createElement("td");
    td.textContent = text;
    if (extra) {
      td.appendChild(extra);
    }
    row.appendChild(td);
    return td;
  }

  function add(e) {
    var key = String(e.id);
    if (seen[key]) {
      return;
    }
    seen[key] = true;
    if (e.id > after) {
      after = e.id;
    }
    var row = document.createElement("tr");
    row.setAttribute("data-id", key);
    row.className = "new";
    cell(row, e.when);
    cell(row, e.who + (e.group ? ", " + e.group : ""));
    var site = cell(row, e.host || "-");
    site.className = "site";
    if (e.search_term) {
      var term = document.createElement("span");
      term.className = "muted";
      term.textContent = "searched: " + e.search_term;
      site.appendChild(document.createElement("br"));
      site.appendChild(term);
    }
    cell(row, e.why);
    var link = document.createElement("a");
    link.href = historyUrl + "?ref=" + encodeURIComponent(e.ref);
    var code = document.createElement("code");
    code.textContent = e.ref;
    link.appendChild(code);
    cell(row, "", link);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > MAX_ROWS) {
      body.deleteRow(body.rows.length - 1);
    }
  }

  var said = "";
  function say(text) {
    if (text !== said) {
      said = text;
      state.textContent = text;
    }
  }

  var stream = state.getAttribute("data-stream");
  if (stream && window.EventSource) {
    var url = stream + (stream.indexOf("?") < 0 ? "?" : "&") + "after=" + after;
    var source = new EventSource(url);
    source.addEventListener("decision", function (message) {
      add(JSON.parse(message.data));
    });
    source.onopen = function () {
      say("Newest first. Streaming new decisions as they happen.");
    };
    source.onerror = function () {
      say("Newest first. The stream was interrupted; reconnecting.");
    };
    return;
  }

  var poll = state.getAttribute("data-poll");
  var every = parseInt(state.getAttribute("data-every") || "2000", 10) || 2000;
  function check() {
    var url = poll + (poll.indexOf("?") < 0 ? "?" : "&") + "start=" + start + "&after=" + after;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("status " + answer.status);
        }
        return answer.json();
      })
      .then(function (data) {
        (data.events || []).forEach(add);
        say("Newest first. New decisions are added every " + every / 1000 + " seconds.");
      })
      .catch(function () {
        say("Newest first. Could not check for new decisions; trying again.");
      })
      .then(function () {
        window.setTimeout(check, every);
      });
  }
  window.setTimeout(check, every);
})();
