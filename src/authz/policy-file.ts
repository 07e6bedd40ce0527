/**
 * Policy files as text with line numbers, for the findings of `validate` and the coverage of
 * `policy test`: Casbin's own loader keeps no line numbers. CSV as Casbin reads it: one rule per line,
 * `#` comments, fields separated by commas and trimmed, double quotes around a field that holds a comma.
 */

export interface PolicyLine {
  /** 1-based line in the file. */
  readonly line: number;
  /** `p`, `p2`, `g`, `g2`, ... */
  readonly ptype: string;
  readonly values: readonly string[];
  /** The line as written, trimmed. */
  readonly text: string;
}

function splitCsv(line: string): string[] {
  const out: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        field += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"' && field.trim() === '') {
      quoted = true;
      field = '';
    } else if (ch === ',') {
      out.push(field.trim());
      field = '';
    } else field += ch;
  }
  out.push(field.trim());
  return out;
}

export function parsePolicyText(text: string): PolicyLine[] {
  const out: PolicyLine[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const trimmed = raw.trim();
    if (trimmed === '' || trimmed.startsWith('#')) return;
    const [ptype = '', ...values] = splitCsv(trimmed);
    out.push({ line: i + 1, ptype, values, text: trimmed });
  });
  return out;
}

/** The same rule, as Casbin's explanation reports it (values only), for matching explanations to lines. */
export function ruleKey(ptype: string, values: readonly string[]): string {
  return `${ptype}\u0000${values.join('\u0000')}`;
}
