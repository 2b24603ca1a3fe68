"""The report page's inline CSS, and the JS of its generation browser (filters run in the page: no server)."""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1f2937;color:#fff;padding:16px 24px}header h1{margin:0;font-size:20px}
.sub{margin:4px 0 8px;color:#cbd5e1;font-size:12px}nav a{color:#93c5fd;margin-right:14px;font-size:13px}
main{padding:8px 24px 40px;max-width:1500px}section{margin-top:24px}h2{border-bottom:2px solid #e5e7eb;padding-bottom:4px}
table{border-collapse:collapse;background:#fff;margin:8px 0}th,td{border:1px solid #e5e7eb;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f4f6}table.compact td:not(:first-child){text-align:right}
table.findings td{font-size:13px}.badge{padding:2px 8px;border-radius:10px;font-weight:600;white-space:nowrap}
.badge.yes{background:#dcfce7;color:#166534}.badge.no{background:#fee2e2;color:#991b1b}.badge.na{background:#e5e7eb;color:#374151}
.note{color:#6b7280;font-size:12px}.ci{color:#4b5563;font-size:12px;margin-left:12px}.missing{border:1px dashed #cbd5e1;padding:12px;color:#6b7280;background:#fff}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #e5e7eb;padding:6px}figure.wide{grid-column:1/-1}figure img{max-width:100%;display:block}
figcaption{font-size:12px;color:#4b5563}dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}
dt{font-weight:600}dd{margin:0}#browser-controls{position:sticky;top:0;background:#fafafa;padding:8px 0;z-index:1}
#browser-controls label{margin-right:10px}.card{background:#fff;border:1px solid #e5e7eb;margin:10px 0;padding:8px}
.card .pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}.card pre{white-space:pre-wrap;word-break:break-word;
background:#f8fafc;padding:6px;max-height:320px;overflow:auto;font-size:12px;margin:4px 0}
.ok{color:#166534;font-weight:600}.bad{color:#991b1b;font-weight:600}.meta{font-size:12px;color:#4b5563}
.evidence{font-size:12px;color:#4b5563;white-space:nowrap}.setting{border-top:1px dotted #e5e7eb;padding:3px 0}
.setting:first-child{border-top:none}h5{margin:8px 0 0;font-size:13px}
mark{background:#fde68a;color:inherit}.card pre.doc{background:#fefce8;border-left:3px solid #eab308;max-height:200px}
"""

JS = """
(function () {
  var source = document.getElementById("browser-data");
  if (!source) return;
  var data = JSON.parse(source.textContent);
  var list = document.getElementById("browser-list");
  var count = document.getElementById("browser-count");
  var controls = Array.prototype.slice.call(document.querySelectorAll("#browser-controls select"));
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function fits(side, format, correct) {
    if (format !== "any" && (!side || side.format !== format)) return false;
    if (correct !== "any" && (!side || String(side.correct) !== correct)) return false;
    return true;
  }
  function column(title, side) {
    var box = el("div");
    box.appendChild(el("b", null, title + ": "));
    if (!side) { box.appendChild(el("span", "meta", "not evaluated")); return box; }
    box.appendChild(el("span", side.correct ? "ok" : "bad", side.correct ? "correct" : "wrong"));
    box.appendChild(el("span", "meta", " · " + side.format + " · " + side.mode + " · answer " + side.answer +
      " · " + side.status + " · " + side.tokens + " tokens" + (side.truncated ? " · truncated" : "")));
    if (side.sampled) box.appendChild(el("div", "meta", side.sampled));
    box.appendChild(highlighted(side.text, side.echo && side.echo.chars));
    if (side.echo) box.appendChild(echo(side.echo));
    return box;
  }
  function highlighted(text, chars) {
    var pre = el("pre");
    if (!chars) { pre.textContent = text; return pre; }
    pre.appendChild(document.createTextNode(text.slice(0, chars[0])));
    pre.appendChild(el("mark", null, text.slice(chars[0], chars[1])));
    pre.appendChild(document.createTextNode(text.slice(chars[1])));
    return pre;
  }
  function share(value) { return value === null ? "n/a" : (100 * value).toFixed(0) + "%"; }
  function echo(e) {
    var box = el("div", "echo");
    if (!e.tokens) { box.appendChild(el("div", "meta", "no token of it is in the pretraining data")); return box; }
    box.appendChild(el("div", "meta", "longest verbatim span (highlighted): " + e.tokens + " tokens, in " + e.source +
      " document " + e.doc + " at token " + e.doc_offset + " · novel n-grams " + share(e.novelty) +
      " · dominant source " + (e.dominant || "none")));
    if (!e.context) return box;
    var doc = el("pre", "doc");
    doc.appendChild(document.createTextNode((e.context.cut_before ? "… " : "") + e.context.before));
    doc.appendChild(el("mark", null, e.span));
    doc.appendChild(document.createTextNode(e.context.after + (e.context.cut_after ? " …" : "")));
    box.appendChild(el("div", "meta", "the matched pretraining document:"));
    box.appendChild(doc);
    return box;
  }
  function card(entry) {
    var node = el("div", "card");
    node.dataset.run = entry.run;
    node.dataset.benchmark = entry.benchmark;
    node.dataset.beforeFormat = entry.before ? entry.before.format : "";
    node.dataset.afterFormat = entry.after ? entry.after.format : "";
    node.dataset.beforeCorrect = entry.before ? String(entry.before.correct) : "";
    node.dataset.afterCorrect = entry.after ? String(entry.after.correct) : "";
    node.appendChild(el("div", "meta", entry.run + " · " + entry.benchmark + " · " + entry.id + " · gold " + entry.gold));
    node.appendChild(el("pre", null, entry.prompt || "(prompt text unavailable)"));
    var pair = el("div", "pair");
    pair.appendChild(column("before RL", entry.before));
    pair.appendChild(column("after RL", entry.after));
    node.appendChild(pair);
    return node;
  }
  function render() {
    var v = {};
    controls.forEach(function (c) { v[c.name] = c.value; });
    var shown = data.filter(function (e) {
      return (v.run === "any" || e.run === v.run) && (v.benchmark === "any" || e.benchmark === v.benchmark) &&
        fits(e.before, v.before_format, v.before_correct) && fits(e.after, v.after_format, v.after_correct);
    });
    list.replaceChildren.apply(list, shown.map(card));
    count.textContent = shown.length + " of " + data.length + " prompts";
  }
  controls.forEach(function (c) { c.addEventListener("change", render); });
  render();
})();
"""
