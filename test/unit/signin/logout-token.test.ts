/**
 * Back-channel logout tokens (OIDC Back-Channel Logout 1.0 §2.6): a valid one names the sessions to end;
 * every invalid variant the issue lists is refused with its reason, and a replay is refused.
 */
import { createLocalJWKSet, exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { BACKCHANNEL_LOGOUT_EVENT, createLogoutTokenVerifier, type LogoutTokenCheck } from '../../../src/signin/logout-token.js';

const ISSUER = 'https://idp.example.com';
const CLIENT = 'orders-web';
let check: LogoutTokenCheck;
let sign: (claims: JWTPayload, options?: { key?: 'other'; alg?: string; iat?: number }) => Promise<string>;

beforeAll(async () => {
  const provider = await generateKeyPair('RS256');
  const other = await generateKeyPair('RS256');
  const jwk = { ...(await exportJWK(provider.publicKey)), kid: 'k1', alg: 'RS256' };
  check = { issuer: ISSUER, clientId: CLIENT, keys: createLocalJWKSet({ keys: [jwk] }), algorithms: ['RS256'] };
  sign = (claims, options = {}) =>
    new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: 'k1', typ: 'logout+jwt' })
      .setIssuedAt(options.iat)
      .sign(options.key === 'other' ? other.privateKey : provider.privateKey);
});

let n = 0;
const valid = (): JWTPayload => ({ iss: ISSUER, aud: CLIENT, jti: `jti-${++n}`, sid: 'session-1', sub: 'alice', events: { [BACKCHANNEL_LOGOUT_EVENT]: {} } });

describe('logout tokens', () => {
  it('accepts a valid one and names its sid and sub; the same token again is a replay', async () => {
    const verifier = createLogoutTokenVerifier();
    const token = await sign(valid());
    expect(await verifier.verify(token, check)).toEqual({ ok: true, jti: expect.any(String) as string, sid: 'session-1', sub: 'alice' });
    expect(await verifier.verify(token, check)).toEqual({ ok: false, reason: 'the logout token was already used' });
  });

  it('accepts one with only a sid, or only a sub', async () => {
    const verifier = createLogoutTokenVerifier();
    const { sub: _sub, ...sidOnly } = valid();
    expect(await verifier.verify(await sign(sidOnly), check)).toEqual({ ok: true, jti: expect.any(String) as string, sid: 'session-1' });
    const { sid: _sid, ...subOnly } = valid();
    expect(await verifier.verify(await sign(subOnly), check)).toEqual({ ok: true, jti: expect.any(String) as string, sub: 'alice' });
  });

  it.each<[string, () => Promise<string>, RegExp]>([
    ['no events member', async () => sign({ ...valid(), events: undefined }), /no back-channel logout event/],
    ['another event only', async () => sign({ ...valid(), events: { 'https://example.com/other': {} } }), /no back-channel logout event/],
    ['the event as a string', async () => sign({ ...valid(), events: { [BACKCHANNEL_LOGOUT_EVENT]: 'yes' } }), /no back-channel logout event/],
    ['a nonce', async () => sign({ ...valid(), nonce: 'n-1' }), /must not carry a nonce/],
    ['another audience', async () => sign({ ...valid(), aud: 'someone-else' }), /aud claim/],
    ['another issuer', async () => sign({ ...valid(), iss: 'https://evil.example.com' }), /iss claim/],
    ['a bad signature', async () => sign(valid(), { key: 'other' }), /not a JWT signed by the provider/],
    ['no jti', async () => sign({ ...valid(), jti: undefined }), /jti claim/],
    ['neither sid nor sub', async () => sign({ ...valid(), sid: undefined, sub: undefined }), /neither a sid nor a sub/],
    ['an iat of an hour ago', async () => sign(valid(), { iat: Math.floor(Date.now() / 1000) - 3600 }), /iat claim|expired/],
    ['alg none', async () => `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ ...valid(), iat: Math.floor(Date.now() / 1000) })).toString('base64url')}.`, /not a JWT signed/],
    ['garbage', async () => 'not.a.jwt', /not a JWT signed/],
  ])('refuses %s', async (_what, token, reason) => {
    const result = await createLogoutTokenVerifier().verify(await token(), check);
    expect(result.ok).toBe(false);
    expect(result.ok ? '' : result.reason).toMatch(reason);
  });

  it('refuses another token that reuses a jti already seen (the jti, not the token, is remembered)', async () => {
    const verifier = createLogoutTokenVerifier();
    const claims = valid();
    expect((await verifier.verify(await sign(claims), check)).ok).toBe(true);
    expect(await verifier.verify(await sign({ ...claims, sid: 'session-2' }), check)).toEqual({ ok: false, reason: 'the logout token was already used' });
  });
});
