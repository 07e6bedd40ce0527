/**
 * `authz-sidecar demo` (what `npm start` runs): the example config from policies/, a local dev issuer at
 * the config's issuer address, a built-in echo app at the upstream address, the sidecar in front, and
 * ready-to-run curl commands with tokens for an anonymous caller, a reader and an admin.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { parseUpstreamUrl, parseListenAddress } from '../config/address.js';
import { loadConfig } from '../config/load.js';
import { startDevIssuer } from '../demo/dev-issuer.js';
import { startDevProvider, type DemoUser } from '../demo/dev-provider.js';
import { startEchoApp } from '../demo/echo-app.js';
import { startSidecar } from '../sidecar.js';
import { UsageError } from './usage-error.js';

export const DEFAULT_DEMO_CONFIG = fileURLToPath(new URL('../../policies/authz-sidecar.yaml', import.meta.url));
const READY_TIMEOUT_MS = 10_000;

/** Who can sign in at the demo's provider (any password). */
export const DEMO_USERS: Readonly<Record<string, DemoUser>> = {
  alice: { roles: ['reader'], email: 'alice@example.test', name: 'Alice (reader)' },
  bob: { roles: ['admin'], email: 'bob@example.test', name: 'Bob (admin)' },
  carol: { roles: [], email: 'carol@example.test', name: 'Carol (no roles)' },
};

function httpBase(address: string): string {
  const parsed = parseListenAddress(address);
  if (parsed?.kind !== 'tcp') throw new UsageError('the demo needs a TCP listen address');
  const host = parsed.host === '0.0.0.0' ? '127.0.0.1' : parsed.host.includes(':') ? `[${parsed.host}]` : parsed.host;
  return `http://${host}:${parsed.port}`;
}

/** Starts everything and prints the curl commands; returns the function that stops it all. */
export async function runDemo(configFile = DEFAULT_DEMO_CONFIG): Promise<() => Promise<void>> {
  const config = await loadConfig(configFile);
  const issuerConfig = config.authn.jwt[0];
  const upstream = config.upstream === undefined ? undefined : parseUpstreamUrl(config.upstream.url);
  if (issuerConfig?.jwksUri === undefined || upstream?.kind !== 'tcp') {
    throw new UsageError('the demo config needs authn.jwt[0].jwksUri and an http:// upstream.url');
  }
  const upstreamUrl = new URL(upstream.origin);
  const issuer = await startDevIssuer({ issuer: issuerConfig.issuer, jwksUri: issuerConfig.jwksUri });
  const echo = await startEchoApp({ host: upstreamUrl.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(upstreamUrl.port || 80) });
  const signIn = config.signIn;
  const signInProvider = signIn?.providers[0];
  const provider =
    signIn === undefined || signInProvider === undefined
      ? undefined
      : await startDevProvider({
          issuer: signInProvider.issuer,
          clientId: signInProvider.clientId,
          clientSecret: signInProvider.clientSecretFile === undefined ? '' : (await readFile(signInProvider.clientSecretFile, 'utf8')).trim(),
          redirectUri: signIn.callbackUrl,
          postLogoutRedirectUri: new URL(signIn.postLogoutRedirect, signIn.callbackUrl).href,
          users: DEMO_USERS,
        });
  const sidecar = await startSidecar(config, { file: configFile });

  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!sidecar.engine.readiness().ready) {
    if (Date.now() > deadline) throw new Error(`the sidecar did not become ready: ${sidecar.engine.readiness().missing.join(', ')}`);
    await new Promise((r) => setTimeout(r, 50));
  }

  const audience = issuerConfig.audiences[0] ?? '';
  const reader = await issuer.mint('alice', { roles: ['reader'] }, { audience });
  const admin = await issuer.mint('bob', { roles: ['admin'] }, { audience });
  const base = httpBase(sidecar.proxyAddress ?? '');
  const adminBase = httpBase(sidecar.adminAddress);

  console.log(`
authz-sidecar demo is running
  sidecar  ${base}   ->  echo app ${upstream.origin}
  issuer   ${issuerConfig.issuer} (dev keys generated at start)
  admin    ${adminBase}/healthz  ${adminBase}/readyz
  policy   ${config.authz.policy}

Tokens (valid for one hour); paste these two lines into your shell first:
export READER=${reader}
export ADMIN=${admin}

Then try (expected status on the right):
  curl -i ${base}/public/hello                                            # 200 anonymous may read /public
  curl -i -H "Accept: application/json" ${base}/orders/42                # 401 no token, Bearer challenge
  curl -i ${base}/orders/42                                               # 302 no token and Accept */* like a browser: to sign in
  curl -i -H "Authorization: Bearer $READER" ${base}/orders/42            # 200 reader, identity headers at the app
  curl -i -H "Authorization: Bearer $READER" -X DELETE ${base}/orders/42  # 403 readers may not delete
  curl -i -H "Authorization: Bearer $ADMIN" -X DELETE ${base}/orders/42   # 200 admin may
  curl -i -H "Authorization: Bearer not.a.token" ${base}/orders/42        # 401 invalid_token
  curl -i -H "X-Auth-Subject: root" ${base}/public/hello                  # 200, and the app never sees X-Auth-Subject

${
    provider === undefined || signIn === undefined
      ? ''
      : `Browser sign-in: open ${base}/orders/42 in a browser and sign in at the dev provider (${provider.issuer})
as one of these users, with any password:
${Object.entries(DEMO_USERS)
  .map(([login, user]) => `  ${login.padEnd(6)} roles: ${user.roles.length === 0 ? '(none)' : user.roles.join(', ')}`)
  .join('\n')}
  ${base}${signIn.prefix}/userinfo shows your session; ${base}${signIn.prefix}/sign-out signs you out.

`
  }Press Ctrl+C to stop.
`);

  return async () => {
    await sidecar.close();
    await Promise.all([echo.close(), issuer.close(), provider?.close()]);
  };
}
