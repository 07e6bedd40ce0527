// A development OpenID Provider for the compose example: oidc-provider with the client-credentials grant,
// issuing RS256 JWT access tokens (aud = the resource, a `roles` claim per client) from a key generated at
// start. For local development only: fixed client secrets, in-memory state.
//   ISSUER (default http://localhost:8090), PORT (8090), HOST (0.0.0.0), AUDIENCE (urn:orders-api)
import { createServer } from 'node:http';
import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors } from 'oidc-provider';

const issuer = process.env.ISSUER ?? 'http://localhost:8090';
const port = Number(process.env.PORT ?? 8090);
const host = process.env.HOST ?? '0.0.0.0';
const audience = process.env.AUDIENCE ?? 'urn:orders-api';

// client_id -> secret and roles (dev only)
const CLIENTS = {
  reader: { secret: 'reader-secret', roles: ['reader'] },
  writer: { secret: 'writer-secret', roles: ['writer'] },
  admin: { secret: 'admin-secret', roles: ['admin'] },
};

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: 'dev-1', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: Object.entries(CLIENTS).map(([id, c]) => ({
    client_id: id,
    client_secret: c.secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: { keys: [jwk] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Client-credentials requests without `resource` get tokens for the one API of the example.
      defaultResource: (_ctx, _client, oneOf) => oneOf ?? audience,
      useGrantedResource: () => false,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== audience) throw new errors.InvalidTarget('unknown resource server');
        return { scope: '', audience: resource, accessTokenFormat: 'jwt', accessTokenTTL: 3600, jwt: { sign: { alg: 'RS256', kid: jwk.kid } } };
      },
    },
  },
  ttl: { ClientCredentials: 3600, AccessToken: 3600 },
  clientBasedCORS: () => false,
  extraTokenClaims: (_ctx, token) => {
    const client = CLIENTS[token.clientId];
    return client === undefined ? undefined : { roles: client.roles };
  },
});

createServer(provider.callback()).listen(port, host, () => {
  console.log(`dev IdP: issuer ${issuer}, token endpoint ${issuer}/token, clients ${Object.keys(CLIENTS).join(', ')}`);
});
