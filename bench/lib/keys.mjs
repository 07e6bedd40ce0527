/**
 * The benchmarks' issuer: one RS256 key, published as a JWKS file in `work` (and as the object, for the
 * rows that serve it over https), and RS256 tokens of role team0 for the bench's audience.
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const ISSUER = 'https://issuer.bench.local';
export const AUDIENCE = 'bench-api';

const b64 = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

export function benchIssuer(work) {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwks = { keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'bench-1', alg: 'RS256', use: 'sig' }] };
  const jwksFile = join(work, 'jwks.json');
  writeFileSync(jwksFile, JSON.stringify(jwks));
  const header = b64({ alg: 'RS256', typ: 'JWT', kid: 'bench-1' });
  /** A token for `sub`, valid for four hours. */
  function token(sub = 'bench-user') {
    const now = Math.floor(Date.now() / 1000);
    const body = b64({ iss: ISSUER, aud: AUDIENCE, sub, roles: ['team0'], iat: now, exp: now + 4 * 3600 });
    return `${header}.${body}.${sign('sha256', Buffer.from(`${header}.${body}`), privateKey).toString('base64url')}`;
  }
  return { jwks, jwksFile, token };
}
