// Smoke test for the Apache + mod_auth_openidc baseline:
//   node bench/lib/apache-check.mjs
// Proves that valid tokens reach the upstream and bad ones are rejected, so
// benchmark numbers for Apache measure real JWT validation, not a 401 page.
// BENCH_APACHE_CPU=<n> picks the pinned core (default 0); BENCH_APACHE_NO_CA=1
// exercises the OIDCOAuthSSLValidateServer Off path instead of the CA bundle;
// BENCH_APACHE_SHOW_LOG=1 prints Apache's error.log.
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { startApache } from './apache.mjs';
import { selfSignedCert, startJwksHttpsServer } from './tls.mjs';

const ISSUER = 'https://issuer.bench.local';
const AUDIENCE = 'bench-api';
const KID = 'bench-key-1';
const cpu = process.env.BENCH_APACHE_CPU ?? '0';

async function startUpstream() {
  let lastHeaders = null;
  const server = createServer((req, res) => {
    lastHeaders = req.headers;
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    lastHeaders: () => lastHeaders,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

function baseJwt({ kid = KID, iss = ISSUER, aud = AUDIENCE, iat, nbf } = {}) {
  const jwt = new SignJWT({ scope: 'read' })
    .setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' })
    .setSubject('alice')
    .setIssuer(iss)
    .setAudience(aud)
    .setIssuedAt(iat);
  if (nbf !== undefined) jwt.setNotBefore(nbf);
  return jwt;
}

const sign = (key, { exp = '5m', ...opts } = {}) => baseJwt(opts).setExpirationTime(exp).sign(key);
const signNoExp = (key, opts) => baseJwt(opts).sign(key);

// stdout, not console.log: the repo's lint only allows console.error/warn.
const log = (line) => process.stdout.write(`${line}\n`);

const cleanups = [];
let failed = false;

try {
  const dir = await mkdtemp(join(tmpdir(), 'bench-apache-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  // mkdtemp creates 0700; Apache's www-data children must reach run/ and the CA file.
  await chmod(dir, 0o755);

  const { privateKey, publicKey } = await generateKeyPair('RS256');
  const other = await generateKeyPair('RS256');
  const jwk = { ...(await exportJWK(publicKey)), kid: KID, alg: 'RS256', use: 'sig' };

  const tls = await selfSignedCert(join(dir, 'tls'));
  const jwksServer = await startJwksHttpsServer({ jwks: { keys: [jwk] }, cert: tls.cert, key: tls.key, port: 0 });
  cleanups.push(() => jwksServer.close());

  const upstream = await startUpstream();
  cleanups.push(() => upstream.close());

  const apache = await startApache({
    dir: join(dir, 'apache'),
    port: 0,
    jwksUrl: jwksServer.url,
    issuer: ISSUER,
    audience: AUDIENCE,
    upstreamUrl: upstream.url,
    cpu,
    // Validate the self-signed JWKS certificate rather than switching checks off.
    caBundlePath: process.env.BENCH_APACHE_NO_CA ? undefined : tls.certPath,
  });
  cleanups.push(() => apache.stop());

  const children = (await readFile(`/proc/${apache.pid}/task/${apache.pid}/children`, 'utf8'))
    .trim()
    .split(/\s+/)
    .filter(Boolean);
  const affinity = (await readFile(`/proc/${apache.pid}/status`, 'utf8')).match(/Cpus_allowed_list:\s*(\S+)/)?.[1];
  log(`apache ${apache.url} parent pid ${apache.pid} children [${children.join(', ')}] cpus ${affinity}`);
  log(`jwks ${jwksServer.url}, upstream ${upstream.url}`);

  const now = Math.floor(Date.now() / 1000);
  const cases = [
    { name: 'valid token', token: await sign(privateKey), expect: 200, body: 'ok' },
    { name: 'no token', token: null, expect: 401 },
    { name: 'signed by another key', token: await sign(other.privateKey), expect: 401 },
    { name: 'unknown kid, other key', token: await sign(other.privateKey, { kid: 'nope' }), expect: 401 },
    { name: 'wrong audience', token: await sign(privateKey, { aud: 'someone-else' }), expect: 401 },
    { name: 'audience array incl. ours', token: await sign(privateKey, { aud: ['x', AUDIENCE] }), expect: 200 },
    { name: 'wrong issuer', token: await sign(privateKey, { iss: 'https://evil.example' }), expect: 401 },
    { name: 'expired', token: await sign(privateKey, { exp: now - 60, iat: now - 120 }), expect: 401 },
    // Module quirks (2.4.12.x OAuth mode checks only signature and exp-if-present);
    // asserted so a behaviour change is noticed, not because they are desirable.
    { name: 'quirk: no exp claim', token: await signNoExp(privateKey), expect: 200 },
    { name: 'quirk: nbf 1h ahead', token: await sign(privateKey, { nbf: now + 3600 }), expect: 200 },
    { name: 'quirk: iat 1h ahead', token: await sign(privateKey, { iat: now + 3600 }), expect: 200 },
    { name: 'garbage token', token: 'not.a.jwt', expect: 401 },
  ];

  for (const c of cases) {
    const headers = c.token ? { authorization: `Bearer ${c.token}` } : {};
    const res = await fetch(`${apache.url}/hello`, { headers });
    const body = await res.text();
    const ok = res.status === c.expect && (c.body === undefined || body === c.body);
    if (!ok) failed = true;
    const www = res.headers.get('www-authenticate');
    log(
      `${ok ? 'PASS' : 'FAIL'} ${c.name.padEnd(28)} -> ${res.status} (expected ${c.expect})` +
        (www ? ` www-authenticate: ${www}` : ''),
    );
    if (c.name === 'valid token') {
      const h = upstream.lastHeaders() ?? {};
      const claims = Object.keys(h).filter((k) => k.startsWith('oidc_'));
      log(`     upstream saw ${claims.length} OIDC_* headers, oidc_claim_sub=${h.oidc_claim_sub}`);
    }
  }

  // Keep-alive sanity: many requests over the same fetch connection pool.
  const t0 = performance.now();
  const token = await sign(privateKey);
  for (let i = 0; i < 200; i++) {
    const res = await fetch(`${apache.url}/loop`, { headers: { authorization: `Bearer ${token}` } });
    await res.text();
    if (res.status !== 200) {
      failed = true;
      log(`FAIL sequential request ${i} -> ${res.status}`);
      break;
    }
  }
  log(`200 sequential valid requests in ${(performance.now() - t0).toFixed(0)} ms`);
  // Expect 2: first use, plus one forced refresh for the unknown kid.
  log(`JWKS fetched ${jwksServer.requestCount()} times in total (cached in OIDCCacheType shm)`);

  // Every rejected token costs an error.log line: keep invalid tokens out of throughput runs.
  const errLog = (await readFile(apache.errorLogPath, 'utf8')).trim().split('\n');
  const errors = errLog.filter((l) => /:error\]/.test(l)).length;
  log(`error.log: ${errLog.length} lines, ${errors} at level error`);
  if (process.env.BENCH_APACHE_SHOW_LOG) log(errLog.join('\n'));
} catch (err) {
  failed = true;
  console.error(err);
} finally {
  for (const fn of cleanups.reverse()) {
    await fn().catch((e) => console.error('cleanup:', e));
  }
}

log(failed ? 'apache-check: FAILED' : 'apache-check: OK');
process.exit(failed ? 1 : 0);
