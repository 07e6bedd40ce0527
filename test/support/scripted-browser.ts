/**
 * A tiny scripted browser for sign-in tests: real HTTP through undici (one connection pool per browser), a cookie
 * jar, redirects followed by hand with every hop recorded, navigation request headers like a browser's, and HTML
 * forms read with regular expressions (enough for oidc-provider's development login, consent and logout pages and
 * for simple pages of the sidecar; not a general HTML parser).
 *
 * Why undici's `request` and not `fetch`: fetch (undici's and Node's global one alike) overwrites
 * `sec-fetch-mode` with the Request's mode ('cors'; 'navigate' cannot be constructed) and adds accept-language /
 * accept-encoding. `request` sends the headers exactly as given. (Setting `cookie` is NOT refused by Node's fetch,
 * it is only the mode header that is lost.)
 *
 * Cookies (RFC 6265 section 5, simplified where it does not matter on loopback):
 * - scoped by host name, NOT by port, like real browsers: cookies set by 127.0.0.1:A are sent to 127.0.0.1:B too
 *   (`cookieScope: 'origin'` isolates ports when a test needs that);
 * - Domain (host-only without it; for an IP address only the address itself), Path (default: the directory of the
 *   request path; path-match on send; most specific path first), Expires / Max-Age (Max-Age wins; zero, negative or
 *   a past date deletes), and the __Secure- / __Host- prefix rules are honoured;
 * - Secure is accepted and such cookies are sent over http: only loopback hosts are ever contacted, which browsers
 *   treat as potentially trustworthy (http://localhost, http://127.0.0.1);
 * - HttpOnly is irrelevant (there is no script) and only recorded;
 * - SameSite: Strict cookies go only with same-site requests; Lax ones (and cookies without SameSite, Chrome's
 *   default) also with cross-site top-level GET navigations; None always. "Site" is scheme + host without the port
 *   (schemeful same-site; no public suffix list: a host name's last two labels, an IP address as a whole), so
 *   127.0.0.1:A -> 127.0.0.1:B is same-site and 127.0.0.1 -> localhost is cross-site.
 *
 * Request headers of a navigation (Chrome-like): accept (text/html, ...), upgrade-insecure-requests, user-agent,
 * sec-fetch-mode: navigate, sec-fetch-dest: document, sec-fetch-user: ?1, and sec-fetch-site computed per the
 * Fetch Metadata spec: `none` for a GET without `from` (typed into the address bar; stays none across redirects),
 * else from the initiator's origin against every URL of the redirect chain so far (same-origin, same-site or
 * cross-site). Form POSTs carry `origin` (the form page's origin, or 'null' once a redirect crossed origins) and
 * `content-type`; `referer` follows strict-origin-when-cross-origin. Options' `headers` apply to every hop and
 * override these (null removes one).
 *
 * Redirects (301, 302, 303, 307, 308 with a location) are followed up to 20 times (more throws, like
 * ERR_TOO_MANY_REDIRECTS): 303 (and 301/302 after a POST) turn into a GET without body, 307/308 keep method and
 * body. A redirect to a non-loopback URL is not followed: the redirect itself is returned with `redirectNotFollowed`
 * (so is one matching `stopBefore`).
 * Only loopback URLs (localhost, 127.0.0.0/8, [::1]) can be requested at all.
 */
import { Agent, request } from 'undici';

export interface Hop {
  method: string;
  url: string;
  status: number;
  /** the raw location header, when there is one */
  location: string | undefined;
  /** the raw Set-Cookie header lines of this response */
  setCookies: string[];
  /** the request headers this hop was sent with (cookie included) */
  requestHeaders: Record<string, string>;
}

export interface BrowserPage {
  /** the URL of the final response */
  url: string;
  status: number;
  /** response headers of the final response (lower-case names; set-cookie as an array) */
  headers: Record<string, string | string[]>;
  body: string;
  /** every request made, oldest first; the last one is the final response */
  hops: Hop[];
  /** set when the final response is a redirect that was not followed: its absolute target and why */
  redirectNotFollowed?: { url: string; reason: 'not-loopback' | 'stopBefore' | 'followRedirects-false' };
}

export interface NavigationOptions {
  /** extra / overriding request headers for every hop; null removes a default header */
  headers?: Record<string, string | null>;
  /**
   * URL of the page the navigation starts from (a clicked link or a submitted form); drives sec-fetch-site, origin
   * and referer. Default: none for GET (typed URL), the target URL itself for POST (a same-origin form).
   */
  from?: string;
  /** follow redirects (default true); false returns the first response */
  followRedirects?: boolean;
  /**
   * a redirect to a URL starting with this string (or for which the function says true) is not followed: the
   * redirect response is returned with `redirectNotFollowed` (e.g. a redirect URI without a server behind it)
   */
  stopBefore?: string | ((url: URL) => boolean);
}

/** How to submit a form: field values, the button clicked, and the navigation options of the submission. */
export interface SubmitOptions extends Omit<NavigationOptions, 'from'> {
  /** set or add fields (replacing every field of that name) */
  values?: Record<string, string>;
  /** name or visible text of the submit button clicked (its name=value is sent); default: none */
  button?: string;
}

export interface StoredCookie {
  name: string;
  value: string;
  /** host name (or host:port with cookieScope 'origin') the cookie belongs to */
  domain: string;
  hostOnly: boolean;
  path: string;
  secure: boolean;
  httpOnly: boolean;
  sameSite: 'strict' | 'lax' | 'none' | undefined;
  /** ms since the epoch; undefined: a session cookie */
  expiresAt: number | undefined;
  createdAt: number;
}

export interface HtmlForm {
  id: string | undefined;
  /** absolute action URL (the page URL when the form has no action) */
  action: string;
  /** upper-case method, GET when absent */
  method: string;
  /** names and values of the form's hidden, text, password, email inputs (and checked checkboxes/radios), in order */
  fields: Array<[string, string]>;
  /** submit buttons (inside the form or pointing to it with form=id) */
  buttons: Array<{ name: string | undefined; value: string; text: string }>;
}

export interface ScriptedBrowserOptions {
  userAgent?: string;
  /** 'host' (default, like browsers): cookies ignore the port; 'origin': cookies are kept per host:port */
  cookieScope?: 'host' | 'origin';
}

const MAX_REDIRECTS = 20;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const NAVIGATION_ACCEPT =
  'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7';
const DEFAULT_USER_AGENT = 'Mozilla/5.0 (X11; Linux x86_64) ScriptedBrowser/1.0 (authz-sidecar tests)';

export class ScriptedBrowser {
  readonly cookies: CookieJar;
  // A browser takes Set-Cookie headers far past undici's 16 KiB default.
  readonly #agent = new Agent({ keepAliveTimeout: 1_000, maxHeaderSize: 256 * 1024 });
  readonly #userAgent: string;

  constructor(options: ScriptedBrowserOptions = {}) {
    this.cookies = new CookieJar(options.cookieScope ?? 'host');
    this.#userAgent = options.userAgent ?? DEFAULT_USER_AGENT;
  }

  /** A top-level GET navigation (typed URL, or a link on `options.from`). */
  get(url: string | URL, options: NavigationOptions = {}): Promise<BrowserPage> {
    return this.#navigate('GET', String(url), undefined, options);
  }

  /**
   * A POST navigation (a form submission). A URLSearchParams / record body is sent as
   * application/x-www-form-urlencoded; a string as is (set content-type in options.headers then).
   */
  post(url: string | URL, body: URLSearchParams | Record<string, string> | string, options: NavigationOptions = {}): Promise<BrowserPage> {
    const encoded =
      typeof body === 'string'
        ? { text: body, contentType: undefined }
        : { text: new URLSearchParams(body).toString(), contentType: 'application/x-www-form-urlencoded' };
    return this.#navigate('POST', String(url), encoded, options);
  }

  /** Submits `form` of `page` (the form's page is the initiator); see SubmitOptions. */
  submitForm(page: BrowserPage, form: HtmlForm, options: SubmitOptions = {}): Promise<BrowserPage> {
    const { values = {}, button, ...navigation } = options;
    const data = new URLSearchParams();
    const overridden = new Set(Object.keys(values));
    for (const [name, value] of form.fields) if (!overridden.has(name)) data.append(name, value);
    for (const [name, value] of Object.entries(values)) data.append(name, value);
    if (button !== undefined) {
      const chosen = form.buttons.find((b) => b.name === button || b.text === button);
      if (chosen === undefined) throw new Error(`submitForm: the form has no button ${JSON.stringify(button)}`);
      if (chosen.name !== undefined) data.append(chosen.name, chosen.value);
    }
    if (form.method === 'GET') {
      const target = new URL(form.action);
      target.search = data.toString();
      return this.get(target, { ...navigation, from: page.url });
    }
    return this.post(form.action, data, { ...navigation, from: page.url });
  }

  /** Closes the browser's connections. */
  close(): Promise<void> {
    return this.#agent.close();
  }

  async #navigate(
    initialMethod: string,
    initialUrl: string,
    initialBody: { text: string; contentType: string | undefined } | undefined,
    options: NavigationOptions,
  ): Promise<BrowserPage> {
    let url = new URL(initialUrl);
    assertLoopback(url);
    let method = initialMethod;
    let body = initialBody;
    const initiator = options.from !== undefined ? new URL(options.from).origin : method === 'GET' ? undefined : url.origin;
    const referrer = options.from === undefined ? undefined : new URL(options.from);
    const chain: URL[] = [];
    const hops: Hop[] = [];
    let originTainted = false;

    for (;;) {
      chain.push(url);
      const fetchSite = initiator === undefined ? 'none' : fetchSiteOf(initiator, chain);
      const headers: Record<string, string> = {
        accept: NAVIGATION_ACCEPT,
        'upgrade-insecure-requests': '1',
        'user-agent': this.#userAgent,
        'sec-fetch-site': fetchSite,
        'sec-fetch-mode': 'navigate',
        'sec-fetch-user': '?1',
        'sec-fetch-dest': 'document',
      };
      const refererValue = referrer === undefined ? undefined : refererFor(referrer, url);
      if (refererValue !== undefined) headers.referer = refererValue;
      if (method !== 'GET' && method !== 'HEAD') headers.origin = originTainted || initiator === undefined ? 'null' : initiator;
      if (body?.contentType !== undefined) headers['content-type'] = body.contentType;
      const cookie = this.cookies.headerFor(url, { crossSite: fetchSite === 'cross-site', method, topLevel: true });
      if (cookie !== '') headers.cookie = cookie;
      for (const [name, value] of Object.entries(options.headers ?? {})) {
        if (value === null) delete headers[name.toLowerCase()];
        else headers[name.toLowerCase()] = value;
      }

      const res = await request(url, {
        method: method as 'GET',
        headers,
        ...(body !== undefined && { body: body.text }),
        dispatcher: this.#agent,
      });
      const text = method === 'HEAD' ? '' : await res.body.text();
      if (method === 'HEAD') await res.body.dump();
      const responseHeaders = normalizeHeaders(res.headers);
      const setCookies = asArray(responseHeaders['set-cookie']);
      for (const line of setCookies) this.cookies.store(line, url);
      const location = typeof responseHeaders.location === 'string' ? responseHeaders.location : undefined;
      hops.push({ method, url: url.href, status: res.statusCode, location, setCookies, requestHeaders: headers });

      const page: BrowserPage = { url: url.href, status: res.statusCode, headers: responseHeaders, body: text, hops };
      if (!REDIRECT_STATUSES.has(res.statusCode) || location === undefined) return page;
      const next = new URL(location, url);
      if (options.followRedirects === false) return { ...page, redirectNotFollowed: { url: next.href, reason: 'followRedirects-false' } };
      if (!isLoopback(next)) return { ...page, redirectNotFollowed: { url: next.href, reason: 'not-loopback' } };
      const stop = options.stopBefore;
      if (stop !== undefined && (typeof stop === 'string' ? next.href.startsWith(stop) : stop(next))) {
        return { ...page, redirectNotFollowed: { url: next.href, reason: 'stopBefore' } };
      }
      if (hops.length > MAX_REDIRECTS) {
        throw new Error(`too many redirects (more than ${MAX_REDIRECTS}): ${hops.map((h) => `${h.status} ${h.url}`).join(' -> ')}`);
      }
      if (res.statusCode === 303 ? method !== 'HEAD' : (res.statusCode === 301 || res.statusCode === 302) && method === 'POST') {
        method = 'GET';
        body = undefined;
      }
      if (next.origin !== url.origin) originTainted = true;
      url = next;
    }
  }
}

/* ---- cookies ---- */

export class CookieJar {
  #cookies: StoredCookie[] = [];
  readonly #scope: 'host' | 'origin';

  constructor(scope: 'host' | 'origin' = 'host') {
    this.#scope = scope;
  }

  /** Stores (or deletes, when expired) the cookie of one Set-Cookie line received from `url`; false when rejected. */
  store(setCookie: string, url: string | URL, now = Date.now()): boolean {
    const from = new URL(url);
    const parsed = parseSetCookie(setCookie);
    if (parsed === undefined) return false;
    const { name, value, attributes } = parsed;
    const host = this.#scope === 'origin' ? `${from.hostname}:${from.port}` : from.hostname;

    let expiresAt: number | undefined;
    const maxAge = attributes.get('max-age');
    const expires = attributes.get('expires');
    if (maxAge !== undefined && /^-?\d+$/.test(maxAge)) {
      const seconds = Number(maxAge);
      expiresAt = seconds <= 0 ? Number.NEGATIVE_INFINITY : now + seconds * 1000;
    } else if (expires !== undefined) {
      const date = Date.parse(expires);
      if (!Number.isNaN(date)) expiresAt = date;
    }

    let domain = host;
    let hostOnly = true;
    const domainAttribute = attributes.get('domain')?.replace(/^\./, '').toLowerCase();
    if (domainAttribute !== undefined && domainAttribute !== '') {
      const requestHost = from.hostname.toLowerCase();
      if (isIpAddress(requestHost) ? domainAttribute !== requestHost : !domainMatches(requestHost, domainAttribute)) return false;
      if (!isIpAddress(requestHost)) {
        domain = this.#scope === 'origin' ? `${domainAttribute}:${from.port}` : domainAttribute;
        hostOnly = false;
      }
    }

    const pathAttribute = attributes.get('path');
    const path = pathAttribute?.startsWith('/') ? pathAttribute : defaultPath(from.pathname);
    const secure = attributes.has('secure');
    if (name.startsWith('__Secure-') && !secure) return false;
    if (name.startsWith('__Host-') && (!secure || !hostOnly || domainAttribute !== undefined || path !== '/')) return false;
    const sameSiteValue = attributes.get('samesite')?.toLowerCase();
    const sameSite = sameSiteValue === 'strict' || sameSiteValue === 'lax' || sameSiteValue === 'none' ? sameSiteValue : undefined;

    const index = this.#cookies.findIndex((c) => c.name === name && c.domain === domain && c.path === path);
    const previous = index === -1 ? undefined : this.#cookies[index];
    if (index !== -1) this.#cookies.splice(index, 1);
    if (expiresAt !== undefined && expiresAt <= now) return true; // a deletion
    this.#cookies.push({
      name,
      value,
      domain,
      hostOnly,
      path,
      secure,
      httpOnly: attributes.has('httponly'),
      sameSite,
      expiresAt,
      createdAt: previous?.createdAt ?? now,
    });
    return true;
  }

  /** The cookies a request to `url` would carry, most specific path first (then oldest first). */
  cookiesFor(url: string | URL, context: { crossSite?: boolean; method?: string; topLevel?: boolean } = {}, now = Date.now()): StoredCookie[] {
    const target = new URL(url);
    this.#cookies = this.#cookies.filter((c) => c.expiresAt === undefined || c.expiresAt > now);
    const host = target.hostname.toLowerCase();
    const port = target.port;
    return this.#cookies
      .filter((c) => {
        const domainHost = this.#scope === 'origin' ? c.domain.slice(0, c.domain.lastIndexOf(':')) : c.domain;
        if (this.#scope === 'origin' && c.domain.slice(c.domain.lastIndexOf(':') + 1) !== port) return false;
        if (c.hostOnly ? host !== domainHost : !domainMatches(host, domainHost)) return false;
        if (!pathMatches(target.pathname, c.path)) return false;
        if (context.crossSite === true) {
          if (c.sameSite === 'strict') return false;
          if (c.sameSite !== 'none' && !(context.topLevel === true && (context.method ?? 'GET') === 'GET')) return false;
        }
        return true;
      })
      .sort((a, b) => b.path.length - a.path.length || a.createdAt - b.createdAt);
  }

  /** The Cookie header value for a request to `url` ('' when no cookie applies). */
  headerFor(url: string | URL, context: { crossSite?: boolean; method?: string; topLevel?: boolean } = {}): string {
    return this.cookiesFor(url, context)
      .map((c) => `${c.name}=${c.value}`)
      .join('; ');
  }

  /** The value of cookie `name` sent to `url`, if any. */
  get(url: string | URL, name: string): string | undefined {
    return this.cookiesFor(url).find((c) => c.name === name)?.value;
  }

  /** Every unexpired cookie. */
  all(now = Date.now()): StoredCookie[] {
    this.#cookies = this.#cookies.filter((c) => c.expiresAt === undefined || c.expiresAt > now);
    return this.#cookies.map((c) => ({ ...c }));
  }

  /** Removes cookies by name (all of that name, or only those of `domain`). */
  delete(name: string, domain?: string): void {
    this.#cookies = this.#cookies.filter((c) => !(c.name === name && (domain === undefined || c.domain === domain)));
  }

  clear(): void {
    this.#cookies = [];
  }
}

function parseSetCookie(line: string): { name: string; value: string; attributes: Map<string, string> } | undefined {
  const [pair = '', ...rest] = line.split(';');
  const eq = pair.indexOf('=');
  if (eq === -1) return undefined;
  const name = pair.slice(0, eq).trim();
  const value = pair.slice(eq + 1).trim();
  if (name === '') return undefined;
  const attributes = new Map<string, string>();
  for (const part of rest) {
    const at = part.indexOf('=');
    const key = (at === -1 ? part : part.slice(0, at)).trim().toLowerCase();
    if (key !== '') attributes.set(key, at === -1 ? '' : part.slice(at + 1).trim());
  }
  return { name, value, attributes };
}

function defaultPath(pathname: string): string {
  if (!pathname.startsWith('/')) return '/';
  const last = pathname.lastIndexOf('/');
  return last <= 0 ? '/' : pathname.slice(0, last);
}

function pathMatches(requestPath: string, cookiePath: string): boolean {
  if (requestPath === cookiePath) return true;
  if (!requestPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith('/') || requestPath.charAt(cookiePath.length) === '/';
}

function domainMatches(host: string, domain: string): boolean {
  return host === domain || (host.endsWith(`.${domain}`) && !isIpAddress(host));
}

function isIpAddress(hostname: string): boolean {
  return /^\d{1,3}(?:\.\d{1,3}){3}$/.test(hostname) || hostname.startsWith('[') || hostname.includes(':');
}

/* ---- fetch metadata, referer ---- */

function siteOf(url: URL): string {
  const host = url.hostname.toLowerCase();
  const registrable = isIpAddress(host) ? host : host.split('.').slice(-2).join('.');
  return `${url.protocol}//${registrable}`;
}

function fetchSiteOf(initiatorOrigin: string, chain: readonly URL[]): 'same-origin' | 'same-site' | 'cross-site' {
  const initiator = new URL(initiatorOrigin);
  let result: 'same-origin' | 'same-site' | 'cross-site' = 'same-origin';
  for (const url of chain) {
    if (url.origin === initiator.origin) continue;
    if (siteOf(url) !== siteOf(initiator)) return 'cross-site';
    result = 'same-site';
  }
  return result;
}

/** strict-origin-when-cross-origin (no https -> http downgrade on loopback). */
function refererFor(referrer: URL, target: URL): string {
  if (referrer.origin === target.origin) {
    const full = new URL(referrer);
    full.hash = '';
    return full.href;
  }
  return `${referrer.origin}/`;
}

/* ---- forms ---- */

/** Every <form> of `html`, with `action` resolved against `pageUrl`. */
export function parseForms(html: string, pageUrl: string): HtmlForm[] {
  const forms: HtmlForm[] = [];
  const buttonsOutside = [...html.matchAll(/<button\b([^>]*)>([\s\S]*?)<\/button>/gi)].map((m) => ({
    attributes: parseAttributes(m[1] ?? ''),
    text: stripTags(m[2] ?? ''),
  }));
  for (const match of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const attributes = parseAttributes(match[1] ?? '');
    const inner = match[2] ?? '';
    const id = attributes.get('id');
    const fields: Array<[string, string]> = [];
    for (const input of inner.matchAll(/<input\b([^>]*)>/gi)) {
      const a = parseAttributes(input[1] ?? '');
      const name = a.get('name');
      if (name === undefined || a.has('disabled')) continue;
      const type = (a.get('type') ?? 'text').toLowerCase();
      if (type === 'submit' || type === 'button' || type === 'image' || type === 'reset' || type === 'file') continue;
      if ((type === 'checkbox' || type === 'radio') && !a.has('checked')) continue;
      fields.push([name, a.get('value') ?? (type === 'checkbox' || type === 'radio' ? 'on' : '')]);
    }
    const buttons: HtmlForm['buttons'] = [];
    for (const button of inner.matchAll(/<button\b([^>]*)>([\s\S]*?)<\/button>/gi)) {
      const a = parseAttributes(button[1] ?? '');
      if ((a.get('type') ?? 'submit').toLowerCase() !== 'submit') continue;
      buttons.push({ name: a.get('name'), value: a.get('value') ?? '', text: stripTags(button[2] ?? '') });
    }
    if (id !== undefined) {
      for (const b of buttonsOutside) {
        if (b.attributes.get('form') !== id || (b.attributes.get('type') ?? 'submit').toLowerCase() !== 'submit') continue;
        buttons.push({ name: b.attributes.get('name'), value: b.attributes.get('value') ?? '', text: b.text });
      }
    }
    const action = attributes.get('action');
    forms.push({
      id,
      action: new URL(action === undefined || action === '' ? pageUrl : action, pageUrl).href,
      method: (attributes.get('method') ?? 'GET').toUpperCase(),
      fields,
      buttons,
    });
  }
  return forms;
}

function parseAttributes(source: string): Map<string, string> {
  const attributes = new Map<string, string>();
  for (const m of source.matchAll(/([^\s"'<>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?/g)) {
    const name = (m[1] ?? '').toLowerCase();
    if (!attributes.has(name)) attributes.set(name, decodeEntities(m[2] ?? m[3] ?? m[4] ?? ''));
  }
  return attributes;
}

function stripTags(html: string): string {
  return decodeEntities(html.replace(/<[^>]*>/g, '')).replace(/\s+/g, ' ').trim();
}

function decodeEntities(text: string): string {
  const named: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0' };
  return text.replace(/&(?:#(\d+)|#x([0-9a-f]+)|([a-z]+));/gi, (whole, dec?: string, hex?: string, name?: string) => {
    if (dec !== undefined) return String.fromCodePoint(Number(dec));
    if (hex !== undefined) return String.fromCodePoint(Number.parseInt(hex, 16));
    return named[(name ?? '').toLowerCase()] ?? whole;
  });
}

/* ---- oidc-provider's development pages ---- */

export type ProviderInteraction = 'login' | 'consent';

export interface SignInAtProviderResult {
  /** the first page that is neither the login nor the consent page (normally the redirect target's answer) */
  page: BrowserPage;
  /** the interaction pages that were submitted, in order */
  interactions: ProviderInteraction[];
}

/** Which oidc-provider dev interaction `page` is: its login form, its consent form, or neither. */
export function providerInteractionOf(page: BrowserPage): { kind: ProviderInteraction; form: HtmlForm } | undefined {
  if (page.status !== 200) return undefined;
  for (const form of parseForms(page.body, page.url)) {
    if (form.method !== 'POST') continue;
    const prompt = form.fields.find(([name]) => name === 'prompt')?.[1];
    const names = new Set(form.fields.map(([name]) => name));
    if (prompt === 'login' && names.has('login') && names.has('password')) return { kind: 'login', form };
    if (prompt === 'consent') return { kind: 'consent', form };
  }
  return undefined;
}

/**
 * Drives oidc-provider's development interaction pages from `page` on: the login form (`prompt=login`, `login`,
 * `password`: any password works, the login name picks the user) and then the consent form (`prompt=consent`,
 * the "Continue" button), following redirects after each. Stops at the first page that is neither (a provider
 * session with consent already given goes straight through: zero interactions). Throws when an interaction
 * page repeats more than twice (e.g. a login that does not stick).
 */
export async function signInAtProvider(
  browser: ScriptedBrowser,
  page: BrowserPage,
  credentials: { login: string; password?: string; navigation?: Omit<NavigationOptions, 'from'> },
): Promise<SignInAtProviderResult> {
  const interactions: ProviderInteraction[] = [];
  const navigation = credentials.navigation ?? {};
  let current = page;
  for (;;) {
    const interaction = providerInteractionOf(current);
    if (interaction === undefined) return { page: current, interactions };
    if (interactions.filter((k) => k === interaction.kind).length >= 2) {
      throw new Error(`signInAtProvider: the ${interaction.kind} page came back again (${current.url}); interactions so far: ${interactions.join(', ')}`);
    }
    interactions.push(interaction.kind);
    current =
      interaction.kind === 'login'
        ? await browser.submitForm(current, interaction.form, {
            ...navigation,
            values: { login: credentials.login, password: credentials.password ?? 'any password' },
          })
        : await browser.submitForm(current, interaction.form, { ...navigation, button: 'Continue' });
  }
}

/**
 * Answers oidc-provider's end-session confirmation page ("Do you want to sign-out from ...?", form op.logoutForm
 * with a hidden xsrf field): `signOut` true (default) clicks "Yes, sign me out" (logout=yes: the whole provider
 * session ends, back-channel logout to every client of it), false clicks "No, stay signed in" (only the requesting
 * client's part ends). Also submits the auto-posting form oidc-provider sends when there is no session.
 */
export async function confirmLogoutAtProvider(browser: ScriptedBrowser, page: BrowserPage, signOut = true): Promise<BrowserPage> {
  const forms = parseForms(page.body, page.url);
  const logoutForm = forms.find((f) => f.id === 'op.logoutForm');
  if (logoutForm !== undefined) {
    return browser.submitForm(page, logoutForm, { button: signOut ? 'Yes, sign me out' : 'No, stay signed in' });
  }
  const autoPost = forms.find((f) => f.method === 'POST' && f.fields.some(([name]) => name === 'xsrf'));
  if (autoPost !== undefined) return browser.submitForm(page, autoPost);
  throw new Error(`confirmLogoutAtProvider: ${page.url} (HTTP ${page.status}) is not oidc-provider's logout page`);
}

/* ---- misc ---- */

function isLoopback(url: URL): boolean {
  const host = url.hostname;
  return (url.protocol === 'http:' || url.protocol === 'https:') && (host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host));
}

function assertLoopback(url: URL): void {
  if (!isLoopback(url)) throw new Error(`the scripted browser only visits loopback http(s) URLs, not ${url.href}`);
}

function normalizeHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    out[name.toLowerCase()] = name.toLowerCase() === 'set-cookie' ? asArray(value) : Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

function asArray(value: string | string[] | undefined): string[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value];
}
