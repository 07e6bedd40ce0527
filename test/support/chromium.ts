/**
 * A real browser for the sign-in tests: Debian's Chromium (/usr/bin/chromium) driven by playwright-core (no
 * browser download). Headless, without the sandbox (the tests run as root), and kept to loopback: every
 * request to another host is aborted (oidc-provider's pages @import a web font), so nothing leaves the machine.
 * A missing Chromium is an error, never a skip.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core';

export const CHROMIUM_BINARY = '/usr/bin/chromium';

/** Flags that work in this container (root, no GPU, no network but loopback). */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
] as const;

function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

/** Launches Chromium (the default temporary profile: a fresh user-data-dir, removed on close). */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM_BINARY)) {
    throw new Error(`Chromium is not installed at ${CHROMIUM_BINARY}: the browser sign-in tests need it (apt-get install chromium)`);
  }
  try {
    return await chromium.launch({ executablePath: CHROMIUM_BINARY, args: [...CHROMIUM_ARGS], timeout: 30_000 });
  } catch (err) {
    throw new Error(`Chromium (${CHROMIUM_BINARY}) did not start: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/** A fresh context (its own cookies and storage) that only reaches loopback hosts. */
export async function newLoopbackContext(browser: Browser): Promise<BrowserContext> {
  const context = await browser.newContext();
  context.setDefaultTimeout(10_000);
  context.setDefaultNavigationTimeout(10_000);
  await context.route(
    (url) => !isLoopbackHost(url.hostname),
    (route) => route.abort('blockedbyclient'),
  );
  return context;
}

/**
 * Opens `url` and signs in at oidc-provider's development pages (test/support/signin-provider.ts): the login
 * form (inputs `login` and `password`, any password) and the consent page ("Continue"), as a person would,
 * by typing and clicking; a provider session that needs neither goes straight through. Resolves once the
 * browser has left the provider, with the URL it ended on.
 */
export async function signInWithChromium(page: Page, url: string, login = 'alice'): Promise<string> {
  const target = new URL(url);
  await page.goto(url);
  const providerOrigin = new URL(page.url()).origin;
  if (providerOrigin === target.origin) return page.url();
  for (let step = 0; step < 4; step++) {
    if (new URL(page.url()).origin !== providerOrigin) return page.url();
    const before = page.url();
    const loginField = page.locator('input[name="login"]');
    const consent = page.getByRole('button', { name: 'Continue' });
    let submit: Locator;
    if ((await loginField.count()) > 0) {
      await loginField.fill(login);
      await page.locator('input[name="password"]').fill('any password');
      submit = page.locator('button[type="submit"]');
    } else if ((await consent.count()) > 0) {
      submit = consent;
    } else {
      throw new Error(`signInWithChromium: ${page.url()} is neither the provider's login nor its consent page:\n${(await page.content()).slice(0, 2000)}`);
    }
    // The form's POST and the redirects after it are one navigation; it ends on the next page.
    await Promise.all([page.waitForURL((u) => u.href !== before), submit.click()]);
  }
  if (new URL(page.url()).origin !== providerOrigin) return page.url();
  throw new Error(`signInWithChromium: still at the provider after four steps (${page.url()})`);
}
