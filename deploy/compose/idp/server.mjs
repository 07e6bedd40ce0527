// A development OpenID Provider for the compose example: oidc-provider with
// - the client-credentials grant for the API clients reader, writer, admin: RS256 JWT access tokens
//   (aud = the resource, a `roles` claim per client);
// - browser sign-in for the sidecar's client orders-web (compose.redis.yaml): authorization code with PKCE,
//   rotating refresh tokens, its development login page (any password; the login name picks the user:
//   alice reader, bob admin, carol no role) and RP-initiated logout.
// Keys generated at start. For local development only: fixed client secrets, in-memory state.
//   ISSUER (default http://localhost:8090), PORT (8090), HOST (0.0.0.0), AUDIENCE (urn:orders-api),
//   WEB_ORIGIN (http://localhost:8080: the sidecar's callback is WEB_ORIGIN/.authz/callback),
//   WEB_CLIENT_SECRET (the demo's public policies/demo/client-secret)
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors } from 'oidc-provider';

const issuer = process.env.ISSUER ?? 'http://localhost:8090';
const port = Number(process.env.PORT ?? 8090);
const host = process.env.HOST ?? '0.0.0.0';
const audience = process.env.AUDIENCE ?? 'urn:orders-api';
const webOrigin = process.env.WEB_ORIGIN ?? 'http://localhost:8080';
const webClientSecret = process.env.WEB_CLIENT_SECRET ?? 'demo-only-client-secret';

// client_id -> secret and roles (dev only)
const CLIENTS = {
  reader: { secret: 'reader-secret', roles: ['reader'] },
  writer: { secret: 'writer-secret', roles: ['writer'] },
  admin: { secret: 'admin-secret', roles: ['admin'] },
};
// Browser users (login name -> roles), as in `npm start`.
const USERS = { alice: ['reader'], bob: ['admin'], carol: [] };

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: 'dev-1', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [
    ...Object.entries(CLIENTS).map(([id, c]) => ({
      client_id: id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    {
      client_id: 'orders-web',
      client_secret: webClientSecret,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [`${webOrigin}/.authz/callback`],
      post_logout_redirect_uris: [`${webOrigin}/`, `${webOrigin}/public/signed-out`],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'roles'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], roles: ['roles'] },
  conformIdTokenClaims: false,
  findAccount: (_ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, name: id, email: `${id}@example.com`, email_verified: true, roles: USERS[id] ?? [] }),
  }),
  pkce: { required: () => true },
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Single-use refresh tokens: what makes one refresh per session across replicas matter.
  rotateRefreshToken: () => true,
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Client-credentials requests without `resource` get tokens for the one API of the example; browser
      // sign-ins get opaque access tokens (the sidecar decides on the ID token's claims).
      defaultResource: (_ctx, client, oneOf) => oneOf ?? (Object.hasOwn(CLIENTS, client.clientId) ? audience : undefined),
      useGrantedResource: () => false,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== audience) throw new errors.InvalidTarget('unknown resource server');
        return { scope: '', audience: resource, accessTokenFormat: 'jwt', accessTokenTTL: 3600, jwt: { sign: { alg: 'RS256', kid: jwk.kid } } };
      },
    },
  },
  // Browser access tokens live 5 minutes, so that refreshes happen while you try it.
  ttl: { ClientCredentials: 3600, AccessToken: 300, IdToken: 300, AuthorizationCode: 60, RefreshToken: 86_400, Grant: 86_400, Session: 86_400, Interaction: 600 },
  clientBasedCORS: () => false,
  extraTokenClaims: (_ctx, token) => {
    const client = CLIENTS[token.clientId];
    return client === undefined ? undefined : { roles: client.roles };
  },
});

createServer(provider.callback()).listen(port, host, () => {
  console.log(`dev IdP: issuer ${issuer}, token endpoint ${issuer}/token, clients ${Object.keys(CLIENTS).join(', ')}, browser client orders-web for ${webOrigin}`);
});
