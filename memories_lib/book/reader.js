// The reader's checks, run inside a rendered page of the book by `memories check-book`.
//
// Injected into a copy of the page; once the page and MathJax are done it writes a JSON report
// into a hidden pre element (id memories-reader-report), which the Python side reads from Chromium's --dump-dom.
// Each problem is {check, message}; the checks are documented in memories_lib/book/reader.py.
(function () {
  "use strict";
  const OTHER_PROFILES = JSON.parse(document.currentScript.dataset.otherProfiles || "[]");
  const BAD_CELLS = new Set(["nan", "NaN", "None", "True", "False", "<NA>", "NaT", "inf", "-inf"]);
  // Code may scroll sideways by design; everything else in the column must fit it.
  const SCROLLS_BY_DESIGN = "pre, .highlight, .cell_input, .memories-reader-ignore";
  const UNPARSED_ROLE = /\{(glue|glue:text|glue:md|glue:figure|numref|ref|eq|cite|doc|math)\}`/;
  const TOLERANCE_PX = 1;
  // A cell that is a number, an interval or a signed difference ("1.23 [1.10, 1.40]", "+0.12", "25%").
  const SHORT_CELL = 24;  // characters: a data cell this short that needs three lines is squeezed by its table
  const NUMBER_CELL = /^[-+–−]?\d[\d,.]*\s*(%|dB|s|σ)?(\s*\[[^\]]*\])?$/;
  const MIN_FIGURE_SCALE = 0.7;  // a figure drawn wider than the column is shown smaller: its 8 pt text below ~8 px

  function text(el) {
    return (el.textContent || "").replace(/\s+/g, " ").trim();
  }

  // How many lines the text of an element takes on screen.
  function lines(el) {
    const tops = [];
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const range = document.createRange();
      range.selectNodeContents(node);
      for (const r of range.getClientRects()) if (r.width > 0) tops.push(r.top);
    }
    tops.sort((a, b) => a - b);
    return tops.filter((top, i) => i === 0 || top - tops[i - 1] > 3).length;  // boxes on one line share a top
  }

  function where(el) {
    const id = el.id || (el.closest("[id]") || {}).id || "";
    const name = el.tagName.toLowerCase() + (el.className && typeof el.className === "string"
      ? "." + el.className.trim().split(/\s+/).join(".") : "");
    return `${name}${id ? " in #" + id : ""}: "${text(el).slice(0, 80)}"`;
  }

  // Text that a reader sees as prose: not code, not scripts, not typeset math.
  function proseNodes(root) {
    const skip = "script, style, pre, code, .highlight, .cell_input, mjx-container, .MathJax, #memories-reader-report";
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode: (node) => (node.parentElement && node.parentElement.closest(skip))
        ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
    });
    const nodes = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) nodes.push(node);
    return nodes;
  }

  function check() {
    const problems = [];
    const add = (check, message) => problems.push({ check, message });
    const column = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
    const box = column.getBoundingClientRect();

    // 1. Nothing wider than the content column (tables fit, figures fit), and no sideways page.
    const reported = [];
    for (const el of column.querySelectorAll("*")) {
      if (el.closest(SCROLLS_BY_DESIGN) || reported.some((r) => r.contains(el))) continue;
      if (el.parentElement && el.parentElement.closest("mjx-container")) continue;  // an equation is one unit
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) continue;
      if (r.right > box.right + TOLERANCE_PX || r.left < box.left - TOLERANCE_PX) {
        reported.push(el);
        add("width", `${Math.round(r.width)} px wide in a ${Math.round(box.width)} px column: ${where(el)}`);
      }
    }
    if (document.documentElement.scrollWidth > window.innerWidth + TOLERANCE_PX) {
      add("width", `the page scrolls sideways (${document.documentElement.scrollWidth} px in a ${window.innerWidth} px window)`);
    }

    // 2. No table cell a reader should not have to decode.
    for (const table of column.querySelectorAll("table")) {
      const broken = [];
      const squeezed = [];
      for (const cell of table.querySelectorAll("td, th")) {
        const value = text(cell);
        if (BAD_CELLS.has(value)) add("cell", `a table cell reads "${value}": ${where(table)}`);
        if (NUMBER_CELL.test(value) && value.length <= 40 && lines(cell) > 1) broken.push(value);
        else if (!cell.closest("thead") && value.length <= SHORT_CELL && lines(cell) > 2) squeezed.push(value);
      }
      if (broken.length) {
        add("cell", `${broken.length} numbers broken over lines (such as "${broken[0]}"): ${where(table)}`);
      }
      if (squeezed.length) {
        add("cell", `${squeezed.length} short cells squeezed onto three or more lines (such as "${squeezed[0]}"): ` +
          where(table));
      }
    }

    // 3. Every figure numbered and captioned; every image of the content inside such a figure.
    for (const figure of column.querySelectorAll("figure")) {
      const caption = figure.querySelector("figcaption");
      const number = caption && caption.querySelector(".caption-number");
      const words = caption ? text(caption).replace(number ? text(number) : "", "").trim() : "";
      if (!number || !text(number)) add("figure", `a figure without a number: ${where(figure)}`);
      if (!words) add("figure", `a figure without a caption: ${where(figure)}`);
    }
    for (const img of column.querySelectorAll("img")) {
      if (!img.closest("figure")) add("figure", `an image outside a numbered figure: ${img.getAttribute("src")}`);
      else if (!img.complete || img.naturalWidth === 0) add("figure", `an image that does not load: ${img.getAttribute("src")}`);
      else if (img.clientWidth < MIN_FIGURE_SCALE * img.naturalWidth) {
        add("figure", `a figure shrunk to ${Math.round(100 * img.clientWidth / img.naturalWidth)}% of its size, its text ` +
          `too small to read (${img.naturalWidth} px drawn for a ${img.clientWidth} px column): ${img.getAttribute("src")}`);
      }
    }

    // 4. Every reference resolved: no role left as text, no unresolved cross-reference, no error box.
    for (const node of proseNodes(column)) {
      const m = node.textContent.match(UNPARSED_ROLE);
      if (m) add("reference", `an unresolved {${m[1]}} role is printed: "${node.textContent.trim().slice(0, 80)}"`);
    }
    for (const el of column.querySelectorAll("span.xref, .system-message, .problematic")) {
      if (!el.closest("a")) add("reference", `an unresolved reference: ${where(el)}`);
    }

    // 5. Mathematics typeset: no raw TeX delimiters in the prose.
    for (const node of proseNodes(column)) {
      const raw = node.textContent.match(/\$|\\\(|\\\[|\\begin\{/);
      if (raw) add("math", `raw TeX (${raw[0]}) in the prose: "${node.textContent.trim().slice(0, 80)}"`);
    }
    if (column.querySelector(".math") && !column.querySelector("mjx-container")) {
      add("math", "the page has mathematics but MathJax typeset none of it");
    }

    // 6. No sentence about a profile other than the page's own.
    const profile = new RegExp(`(\`|\\bprofile\\s+)(${OTHER_PROFILES.join("|")})\\b|\\b(${OTHER_PROFILES.join("|")})(\`)?\\s+profile\\b`);
    for (const code of column.querySelectorAll("code")) {
      if (code.closest(".cell_input, pre")) continue;
      const name = text(code);
      if (OTHER_PROFILES.includes(name)) {
        add("profile", `names the profile "${name}": "${text(code.parentElement).slice(0, 100)}"`);
      }
    }
    if (OTHER_PROFILES.length) {
      for (const node of proseNodes(column)) {
        const m = node.textContent.match(profile);
        if (m) add("profile", `speaks of another profile: "${node.textContent.trim().slice(0, 100)}"`);
      }
    }
    return problems;
  }

  function report() {
    let result;
    try {
      result = { problems: check() };
    } catch (err) {
      result = { problems: [{ check: "script", message: String(err && err.stack || err) }] };
    }
    const out = document.createElement("pre");
    out.id = "memories-reader-report";
    out.style.display = "none";
    out.textContent = JSON.stringify(result);
    document.body.appendChild(out);
  }

  window.addEventListener("load", () => {
    const mathjax = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
    (mathjax || Promise.resolve()).then(() => setTimeout(report, 50), report);
  });
})();
