/**
 * Browser sign-in from a config (`signIn`): the files it names are read and checked here, for `validate`
 * and `serve` alike (a cookie secret under 32 bytes, an unreadable or empty client secret: an issue naming
 * its key). The sign-in modules (openid-client among them) load only when `signIn` is configured.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { ConfigIssue } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { copyClaims } from '../core/identity.js';
import type { BrowserSessions, IdentityMapper } from '../core/stages.js';
import type { SignInEvents } from './browser-sessions.js';
import { MIN_COOKIE_SECRET_BYTES } from './cookie-codec.js';

/**
 * SHA-256 of the demo's cookie secret (policies/demo/cookie-secret): public, so anyone could seal a session
 * with it. Accepted only with a loopback callback URL (the demo), refused for anything reachable.
 */
export const DEMO_COOKIE_SECRET_SHA256 = '17844c1aae5ec6d626ed8d0b80c2bdaa62fccdd327cac9fe61e7777a51ee827b';
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

export type SignInBuilder = (context: {
  readonly identity: IdentityMapper;
  readonly events?: SignInEvents | undefined;
  readonly now?: (() => Date) | undefined;
}) => BrowserSessions;

/** Reads the sign-in files; the builder of the sessions, or undefined without `signIn`, with issues, or with `check`. */
export async function prepareSignIn(config: Config, issues: ConfigIssue[], options: { readonly check?: boolean } = {}): Promise<SignInBuilder | undefined> {
  const signIn = config.signIn;
  if (signIn === undefined) return undefined;
  const before = issues.length;
  const secrets: Array<{ bytes: Uint8Array; what: string }> = [];
  for (const [i, file] of signIn.cookie.secretFiles.entries()) {
    const what = `signIn.cookie.secretFiles[${i}]`;
    try {
      const bytes = await readFile(file);
      // A trailing newline (echo, kubectl create secret --from-file of an edited file) is not key material.
      const trimmed = bytes.subarray(0, bytes.length - (bytes.at(-1) === 0x0a ? (bytes.at(-2) === 0x0d ? 2 : 1) : 0));
      if (trimmed.length < MIN_COOKIE_SECRET_BYTES) {
        issues.push({ path: what, message: `a cookie secret needs at least ${MIN_COOKIE_SECRET_BYTES} bytes, ${file} has ${trimmed.length} (openssl rand -base64 48 makes one)` });
      } else if (createHash('sha256').update(trimmed).digest('hex') === DEMO_COOKIE_SECRET_SHA256 && !LOOPBACK_HOSTS.has(new URL(signIn.callbackUrl).hostname)) {
        issues.push({ path: what, message: `${file} is the demo's public cookie secret: anyone can seal a session with it (openssl rand -base64 48 makes a real one)` });
      } else {
        secrets.push({ bytes: new Uint8Array(trimmed), what });
      }
    } catch (err) {
      issues.push({ path: what, message: `cannot read file ${file}`, cause: err });
    }
  }
  const clientSecrets = new Map<string, string>();
  for (const [i, provider] of signIn.providers.entries()) {
    if (provider.clientSecretFile === undefined) continue;
    const what = `signIn.providers[${i}].clientSecretFile`;
    try {
      const secret = (await readFile(provider.clientSecretFile, 'utf8')).trim();
      if (secret === '') issues.push({ path: what, message: `${provider.clientSecretFile} is empty` });
      else clientSecrets.set(provider.name, secret);
    } catch (err) {
      issues.push({ path: what, message: `cannot read file ${provider.clientSecretFile}`, cause: err });
    }
  }
  const cookieNames = new Set(config.authn.tokenFrom.flatMap((s) => ('cookie' in s ? [s.cookie] : [])));
  if ([...cookieNames].some((n) => n === signIn.cookie.name || n.startsWith(`${signIn.cookie.name}.`) || n.startsWith(`${signIn.cookie.name}-s-`))) {
    issues.push({ path: 'signIn.cookie.name', message: 'is also a token cookie in authn.tokenFrom' });
  }
  let redisPassword: string | undefined;
  const redis = signIn.session.store === 'redis' ? signIn.session.redis : undefined;
  if (redis?.passwordFile !== undefined) {
    try {
      redisPassword = (await readFile(redis.passwordFile, 'utf8')).trim();
      if (redisPassword === '') issues.push({ path: 'signIn.session.redis.passwordFile', message: `${redis.passwordFile} is empty` });
    } catch (err) {
      issues.push({ path: 'signIn.session.redis.passwordFile', message: `cannot read file ${redis.passwordFile}`, cause: err });
    }
  }
  // `validate` only checks: it loads nothing of the serving side.
  if (issues.length > before || options.check === true) return undefined;
  const { createBrowserSessions } = await import('./browser-sessions.js');
  // The redis client loads only with the redis store.
  const redisStore = redis === undefined ? undefined : await import('./redis-store.js');
  return (context) =>
    createBrowserSessions({
      ...(redis === undefined || redisStore === undefined
        ? {}
        : {
            backend: (settings) =>
              redisStore.createRedisBackend({
                url: redis.url,
                password: redisPassword,
                keyPrefix: redis.keyPrefix,
                settings,
                secrets: secrets.map((x) => x.bytes),
                maxAgeSeconds: signIn.session.maxAgeSeconds,
                copyClaims,
                onStateChange: (up, error) => context.events?.storeState?.(up, error),
              }),
          }),
      config: signIn,
      secrets,
      clientSecrets,
      identity: context.identity,
      claimHeaders: config.headers.claims,
      events: context.events,
      ...(context.now === undefined ? {} : { now: ((clock: () => Date) => () => clock().getTime())(context.now) }),
    });
}
