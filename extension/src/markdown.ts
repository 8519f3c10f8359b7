/**
 * The answer's Markdown made ready for JupyterLab's Markdown renderer.
 *
 * The dollar-sign rule (the notebook face's): a single `$` is shown as written, because answers talk
 * about money far more often than they write inline maths; `$$...$$` is still display maths, and so are
 * a model's `\(...\)` and `\[...\]`. Code spans and fenced blocks are left exactly as they are.
 *
 * A Markdown escape (`\$`) is not enough: the parser turns it back into `$` and MathJax, which scans
 * the rendered text, would pair it with the next one. So a single dollar goes through the Markdown
 * renderer as a private-use character, and `restoreDollars` puts a `$` back in an element of its own,
 * which MathJax never pairs across.
 */

/** Stands for a literal `$` between dollarRule and restoreDollars (a private-use code point). */
export const DOLLAR = '\uE024';

/** The footer line the kernel ends text/markdown with: `*served by ... · 1.2 s*` (or a cached answer's). */
const FOOTER = /\n*\*(?:served by |cached · )[^\n]*\*\s*$/;
/** What notebooks saved before wrote instead: the footer folded over the attempt table. */
const OLD_FOOTER = /\n*<details><summary>[\s\S]*<\/details>\s*$/;

/**
 * The bundle's text/markdown without the footer the kernel adds for front ends that lack this
 * extension (the renderer draws its own line and route).
 */
export function stripFooter(markdown: string): string {
  return markdown.replace(OLD_FOOTER, '').replace(FOOTER, '');
}

const FENCE = /^ {0,3}(`{3,}|~{3,})/;

/** Apply the dollar-sign rule outside code; see the module's comment. */
export function dollarRule(markdown: string): string {
  const lines = markdown.split('\n');
  const out: string[] = [];
  let fence: string | null = null;
  let prose: string[] = [];
  const flush = (): void => {
    if (prose.length) {
      out.push(escapeProse(prose.join('\n')));
      prose = [];
    }
  };
  for (const line of lines) {
    const opening = FENCE.exec(line);
    if (fence !== null) {
      out.push(line);
      if (opening && opening[1][0] === fence[0] && opening[1].length >= fence.length && line.trim() === opening[1]) {
        fence = null;
      }
    } else if (opening) {
      flush();
      fence = opening[1];
      out.push(line);
    } else {
      prose.push(line);
    }
  }
  flush();
  return out.join('\n');
}

/** Mark lone dollars and double the backslash of `\(`, `\)`, `\[`, `\]` in text that may hold code spans. */
function escapeProse(text: string): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '`') {
      // a code span: the same run of backticks closes it; an unclosed run is literal text
      let run = 1;
      while (text[i + run] === '`') {
        run++;
      }
      const ticks = '`'.repeat(run);
      let close = text.indexOf(ticks, i + run);
      while (close !== -1 && text[close + run] === '`') {
        close = text.indexOf(ticks, close + run + 1);
      }
      if (close === -1) {
        out += ticks;
        i += run;
      } else {
        out += text.slice(i, close + run);
        i = close + run;
      }
    } else if (c === '\\') {
      const next = text[i + 1] ?? '';
      if ('()[]'.includes(next) && next !== '') {
        out += '\\\\' + next; // Markdown eats one backslash; JupyterLab's maths finder wants `\\(`
      } else if (next === '$') {
        out += DOLLAR; // an escaped dollar is a literal one too
      } else {
        out += c + next; // `\\` and every other escape stay as written
      }
      i += 2;
    } else if (c === '$') {
      if (text[i + 1] === '$') {
        out += '$$';
        i += 2;
      } else {
        out += DOLLAR;
        i += 1;
      }
    } else {
      out += c;
      i += 1;
    }
  }
  return out;
}

/** The answer as the renderer passes it to JupyterLab's Markdown renderer. */
export function answerMarkdown(bundleMarkdown: string): string {
  return dollarRule(stripFooter(bundleMarkdown));
}

/** Put the literal dollars back into rendered HTML, each in a `span.nbr-dollar` (see the module's comment). */
export function restoreDollars(host: HTMLElement): void {
  const doc = host.ownerDocument;
  const walker = doc.createTreeWalker(host, 4 /* NodeFilter.SHOW_TEXT */);
  const found: Text[] = [];
  for (let node = walker.nextNode(); node !== null; node = walker.nextNode()) {
    if ((node as Text).data.includes(DOLLAR)) {
      found.push(node as Text);
    }
  }
  for (const text of found) {
    const parts = text.data.split(DOLLAR);
    const fragment = doc.createDocumentFragment();
    parts.forEach((part, i) => {
      if (i > 0) {
        const dollar = doc.createElement('span');
        dollar.className = 'nbr-dollar';
        dollar.textContent = '$';
        fragment.appendChild(dollar);
      }
      if (part) {
        fragment.appendChild(doc.createTextNode(part));
      }
    });
    text.replaceWith(fragment);
  }
  // a dollar inside a link's address or title is just a dollar
  for (const el of Array.from(host.querySelectorAll('[href], [src], [title], [alt]'))) {
    for (const name of ['href', 'src', 'title', 'alt']) {
      const value = el.getAttribute(name);
      if (value !== null && value.includes(DOLLAR)) {
        el.setAttribute(name, value.split(DOLLAR).join('$'));
      }
    }
  }
}
