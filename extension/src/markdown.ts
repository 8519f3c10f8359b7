/**
 * The answer's Markdown made ready for JupyterLab's Markdown renderer.
 *
 * The dollar-sign rule (the notebook face's): a single `$` is shown as written, because answers talk
 * about money far more often than they write inline maths; `$$...$$` is still display maths, and so are
 * a model's `\(...\)` and `\[...\]`. Code spans and fenced blocks are left exactly as they are.
 */

const FOOTER = /\n*<details><summary>[\s\S]*<\/details>\s*$/;

/**
 * The bundle's text/markdown without the collapsible footer and table the kernel adds for front ends
 * that lack this extension (the renderer draws its own).
 */
export function stripFooter(markdown: string): string {
  return markdown.replace(FOOTER, '');
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

/** Escape lone dollars and double the backslash of `\(`, `\)`, `\[`, `\]` in text that may hold code spans. */
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
      } else {
        out += c + next; // `\\`, `\$` and every other escape stay as written
      }
      i += 2;
    } else if (c === '$') {
      if (text[i + 1] === '$') {
        out += '$$';
        i += 2;
      } else {
        out += '\\$';
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
