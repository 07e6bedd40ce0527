/**
 * A local development issuer for the demo: an RS256 key generated at start, its JWKS and a discovery
 * document served over HTTP on loopback, and a function that mints access tokens. Never for production.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

export interface DevIssuer {
  readonly issuer: string;
  mint(subject: string, claims: Record<string, unknown>, options: { audience: string; expiresInSeconds?: number }): Promise<string>;
  close(): Promise<void>;
}

export async function startDevIssuer(options: { issuer: string; jwksUri: string }): Promise<DevIssuer> {
  const jwksUrl = new URL(options.jwksUri);
  const kid = randomUUID();
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' };
  const jwks = JSON.stringify({ keys: [jwk] });
  const discovery = JSON.stringify({ issuer: options.issuer, jwks_uri: options.jwksUri });

  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0];
    const body = path === jwksUrl.pathname ? jwks : path === '/.well-known/openid-configuration' ? discovery : undefined;
    res.writeHead(body === undefined ? 404 : 200, { 'content-type': 'application/json' });
    res.end(body ?? '{"error":"not found"}');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(jwksUrl.port || 80), jwksUrl.hostname.replace(/^\[(.*)\]$/, '$1'), resolve);
  });

  return {
    issuer: options.issuer,
    async mint(subject, claims, { audience, expiresInSeconds = 3600 }) {
      return new SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid, typ: 'at+jwt' })
        .setIssuer(options.issuer)
        .setSubject(subject)
        .setAudience(audience)
        .setIssuedAt()
        .setExpirationTime(`${expiresInSeconds}s`)
        .setJti(randomUUID())
        .sign(privateKey);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
