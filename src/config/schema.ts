/**
 * The configuration schema (DESIGN.md §2). Every object is strict: an unknown key is an error, because a
 * misspelt security setting silently ignored is a security bug. Defaults are filled here, from the constants
 * in defaults.ts that the library modules fall back to as well.
 */
import { z } from 'zod';
import {
  ASYMMETRIC_ALGORITHMS,
  DEFAULT_ADMIN_LISTEN,
  DEFAULT_ALGORITHMS,
  DEFAULT_ANONYMOUS_SUBJECT,
  DEFAULT_AUTHZ_MODE,
  DEFAULT_AUTHZ_WATCH,
  DEFAULT_CLOCK_SKEW_SECONDS,
  DEFAULT_DECISION_LOG,
  DEFAULT_DRAIN_SECONDS,
  DEFAULT_ENCODED_SLASHES,
  DEFAULT_EXT_AUTHZ_PATH_PREFIX,
  DEFAULT_FORWARD_TOKEN,
  DEFAULT_HEADER_PREFIX,
  DEFAULT_HMAC_ALGORITHMS,
  DEFAULT_INTROSPECTION_AUTH_METHOD,
  DEFAULT_INTROSPECTION_CACHE_SECONDS,
  DEFAULT_INTROSPECTION_TIMEOUT_SECONDS,
  DEFAULT_ISSUER_HEADER,
  DEFAULT_LISTEN,
  DEFAULT_LOG_LEVEL,
  DEFAULT_MAX_TOKEN_AGE_SECONDS,
  DEFAULT_REQUEST_FIELDS,
  DEFAULT_ROLE_PREFIX,
  DEFAULT_ROLES_CLAIMS,
  DEFAULT_ROLES_HEADER,
  DEFAULT_SCOPES_CLAIM,
  DEFAULT_SCOPES_HEADER,
  DEFAULT_SEMICOLONS,
  DEFAULT_SUBJECT_CLAIM,
  DEFAULT_SUBJECT_HEADER,
  DEFAULT_SUBJECT_PREFIX,
  DEFAULT_TOKEN_SOURCES,
  DEFAULT_UPSTREAM_TIMEOUT_SECONDS,
  DEFAULT_UPSTREAM_WEBSOCKETS,
  DEFAULT_SIGNIN_PREFIX,
  DEFAULT_SIGNIN_SCOPES,
  DEFAULT_SESSION_COOKIE,
  DEFAULT_COOKIE_SAME_SITE,
  DEFAULT_SESSION_MAX_AGE_SECONDS,
  DEFAULT_REFRESH_BEFORE_SECONDS,
  DEFAULT_UNAUTHENTICATED,
  DEFAULT_POST_LOGOUT_REDIRECT,
  DEFAULT_REDIS_KEY_PREFIX,
  HMAC_ALGORITHMS,
} from './defaults.js';
import { checkReturnUrl } from '../signin/return-url.js';
import { parseListenAddress, parseUpstreamUrl } from './address.js';

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const CLAIM_PATH = /^[^.\s]+(\.[^.\s]+)*$/;
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

const headerName = z
  .string()
  .regex(HEADER_NAME, 'must be an HTTP header name')
  .transform((s) => s.toLowerCase());

const listenAddress = z.string({ error: 'must be host:port or unix:/path.sock' }).refine((s) => parseListenAddress(s) !== undefined, {
  message: 'must be host:port or unix:/path.sock',
});

const algorithm = z.string().superRefine((alg, ctx) => {
  if (alg.toLowerCase() === 'none') ctx.addIssue({ code: 'custom', message: '"none" is never allowed' });
  else if (!HMAC_ALGORITHMS.includes(alg) && !ASYMMETRIC_ALGORITHMS.includes(alg)) {
    ctx.addIssue({ code: 'custom', message: `unsupported algorithm; use one of ${[...ASYMMETRIC_ALGORITHMS, ...HMAC_ALGORITHMS].join(', ')}` });
  }
});

/** An http(s) URL; plain http only on loopback, since keys or answers fetched over it can be swapped on the path. */
const idpUrl = z.string().superRefine((uri, ctx) => {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'must be an absolute URL' });
    return;
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname))) {
    ctx.addIssue({ code: 'custom', message: 'must be an https URL (http only on loopback)' });
  }
});

const jwtIssuer = z
  .strictObject({
    issuer: z.string().min(1),
    audiences: z.array(z.string().min(1)).min(1, 'at least one audience is required'),
    discovery: z.boolean().default(false),
    jwksUri: idpUrl.optional(),
    jwksFile: z.string().min(1).optional(),
    secretFile: z.string().min(1).optional(),
    algorithms: z.array(algorithm).min(1).optional(),
    clockSkewSeconds: z.number().int().min(0).max(300).default(DEFAULT_CLOCK_SKEW_SECONDS),
    maxTokenAgeSeconds: z.number().int().min(0).default(DEFAULT_MAX_TOKEN_AGE_SECONDS),
  })
  .superRefine((issuer, ctx) => {
    const sources = [issuer.discovery ? true : undefined, issuer.jwksUri, issuer.jwksFile, issuer.secretFile].filter((s) => s !== undefined);
    if (sources.length !== 1) {
      ctx.addIssue({ code: 'custom', message: 'exactly one of discovery: true, jwksUri, jwksFile, secretFile is required' });
    }
    if (issuer.discovery) idpUrl.safeParse(issuer.issuer).error?.issues.forEach((i) => ctx.addIssue({ code: 'custom', path: ['issuer'], message: `${i.message} (needed for discovery)` }));
    const hmac = (issuer.algorithms ?? []).filter((a) => HMAC_ALGORITHMS.includes(a));
    if (issuer.secretFile !== undefined && hmac.length !== (issuer.algorithms ?? []).length) {
      ctx.addIssue({ code: 'custom', path: ['algorithms'], message: 'with secretFile only HS256, HS384, HS512 are allowed' });
    }
    if (issuer.secretFile === undefined && hmac.length > 0) {
      ctx.addIssue({ code: 'custom', path: ['algorithms'], message: `${hmac.join(', ')} needs secretFile (and never mixes with asymmetric algorithms)` });
    }
  })
  .transform((issuer) => ({
    ...issuer,
    algorithms: issuer.algorithms ?? [...(issuer.secretFile !== undefined ? DEFAULT_HMAC_ALGORITHMS : DEFAULT_ALGORITHMS)],
  }));

const introspection = z
  .strictObject({
    issuer: z.string().min(1),
    discovery: z.boolean().default(false),
    endpoint: idpUrl.optional(),
    clientId: z.string().min(1),
    clientSecretFile: z.string().min(1),
    authMethod: z.enum(['client_secret_basic', 'client_secret_post']).default(DEFAULT_INTROSPECTION_AUTH_METHOD),
    audiences: z.array(z.string().min(1)).min(1).optional(),
    cacheSeconds: z.number().int().min(0).max(3600).default(DEFAULT_INTROSPECTION_CACHE_SECONDS),
    timeoutSeconds: z.number().positive().max(60).default(DEFAULT_INTROSPECTION_TIMEOUT_SECONDS),
  })
  .superRefine((entry, ctx) => {
    if (entry.discovery === (entry.endpoint !== undefined)) {
      ctx.addIssue({ code: 'custom', message: 'exactly one of discovery: true, endpoint is required' });
    }
    if (entry.discovery) idpUrl.safeParse(entry.issuer).error?.issues.forEach((i) => ctx.addIssue({ code: 'custom', path: ['issuer'], message: `${i.message} (needed for discovery)` }));
  });

const cookieOrQueryName = z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'must be a cookie or query parameter name');
const tokenSource = z.union([
  z.strictObject({ header: headerName }),
  z.strictObject({ cookie: cookieOrQueryName }),
  z.strictObject({ query: cookieOrQueryName }),
], { error: 'must be one of { header: NAME }, { cookie: NAME }, { query: NAME }' });

const requestField = z
  .string()
  .regex(
    /^(subject|path|method|host|peer|claim:[^\s]+|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$/,
    'must be subject, path, method, host, peer, claim:<dotted.path> or header:<name>',
  );

/** An allowed redirect host: `app.example.com[:port]` (that host) or `.example.com` (its subdomains). */
const redirectHost = z
  .string()
  .regex(
    /^([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?|\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+|\[[0-9a-f:.]+\](:\d{1,5})?)$/i,
    'must be a host (app.example.com, app.example.com:8443) or .example.com for its subdomains (on the default port)',
  )
  .refine((h) => !/:(443|80)$/.test(h), 'must not name the default port (write the host alone: the URL a browser sends has none)')
  .transform((s) => s.toLowerCase());

const signInProvider = z.strictObject({
  name: z.string().regex(/^[a-z0-9-]{1,32}$/, 'must be 1-32 characters of a-z, 0-9 and -'),
  issuer: idpUrl,
  clientId: z.string().min(1),
  clientSecretFile: z.string().min(1).optional(),
  scopes: z
    .array(z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, 'must be an OAuth scope token'))
    .default(() => [...DEFAULT_SIGNIN_SCOPES])
    .transform((scopes) => ['openid', ...scopes.filter((s) => s !== 'openid')]),
  userinfo: z.boolean().default(false),
});

const signIn = z
  .strictObject({
    callbackUrl: z.string().min(1),
    prefix: z
      .string()
      .regex(/^\/[A-Za-z0-9._~!$&'()*+,;=:@-]+(\/[A-Za-z0-9._~!$&'()*+,;=:@-]+)*$/, 'must be a path like /.authz (no trailing slash, no encoded characters)')
      .refine((p) => !p.split('/').some((seg) => seg === '.' || seg === '..'), 'must not contain . or .. segments')
      .default(DEFAULT_SIGNIN_PREFIX),
    providers: z.array(signInProvider).min(1, 'at least one provider is required'),
    cookie: z
      .strictObject({
        name: z.string().regex(/^[!#$%&'*+^_`|~0-9A-Za-z-]{1,64}$/, 'must be a cookie name (no dots: chunks are named <name>.0, <name>.1, ...)').default(DEFAULT_SESSION_COOKIE),
        secretFiles: z.array(z.string().min(1)).min(1, 'at least one secret file is required'),
        secure: z.boolean().default(true),
        sameSite: z.enum(['lax', 'strict'], { error: 'must be lax or strict ("none" would send the session with cross-site requests)' }).default(DEFAULT_COOKIE_SAME_SITE),
        domain: z
          .string()
          .regex(/^$|^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/i, 'must be a domain such as example.com')
          .default(''),
      }),
    session: z
      .strictObject({
        store: z.enum(['cookie', 'redis']).default('cookie'),
        redis: z
          .strictObject({
            url: z.string().superRefine((u, ctx) => {
              let url: URL;
              try {
                url = new URL(u);
              } catch {
                ctx.addIssue({ code: 'custom', message: 'must be a redis:// or rediss:// URL' });
                return;
              }
              if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') ctx.addIssue({ code: 'custom', message: 'must be a redis:// or rediss:// URL (rediss: TLS)' });
              else if (!/^\/?\d*$/.test(url.pathname)) ctx.addIssue({ code: 'custom', message: 'the path must be a database number (redis://host:6379/0)' });
            }),
            passwordFile: z.string().min(1).optional(),
            keyPrefix: z.string().regex(/^[A-Za-z0-9:_.-]{1,64}$/, 'must be 1-64 characters of A-Z, a-z, 0-9, :, _, . and -').default(DEFAULT_REDIS_KEY_PREFIX),
          })
          .optional(),
        maxAgeSeconds: z.number().int().min(60).max(30 * 86_400).default(DEFAULT_SESSION_MAX_AGE_SECONDS),
        refreshBeforeSeconds: z.number().int().min(0).max(3600).default(DEFAULT_REFRESH_BEFORE_SECONDS),
      })
      .prefault({}),
    unauthenticated: z.enum(['auto', 'redirect', 'deny']).default(DEFAULT_UNAUTHENTICATED),
    allowedRedirectHosts: z.array(redirectHost).default([]),
    postLogoutRedirect: z.string().default(DEFAULT_POST_LOGOUT_REDIRECT),
  })
  .superRefine((s, ctx) => {
    let callback: URL | undefined;
    try {
      callback = new URL(s.callbackUrl);
    } catch {
      ctx.addIssue({ code: 'custom', path: ['callbackUrl'], message: 'must be an absolute URL' });
    }
    if (callback !== undefined) {
      const loopback = LOOPBACK_HOSTS.has(callback.hostname);
      if (callback.protocol !== 'https:' && !(callback.protocol === 'http:' && loopback)) {
        ctx.addIssue({ code: 'custom', path: ['callbackUrl'], message: 'must be an https URL (http only on loopback)' });
      }
      if (callback.pathname !== `${s.prefix}/callback` || callback.search !== '' || callback.hash !== '' || callback.username !== '' || callback.password !== '') {
        ctx.addIssue({ code: 'custom', path: ['callbackUrl'], message: `must be the origin followed by ${s.prefix}/callback (prefix + /callback), without query or fragment` });
      }
      if (!s.cookie.secure && !(callback.protocol === 'http:' && loopback)) {
        ctx.addIssue({ code: 'custom', path: ['cookie', 'secure'], message: 'may be false only when callbackUrl is http on a loopback host' });
      }
      if (s.cookie.secure && callback.protocol === 'http:') {
        ctx.addIssue({ code: 'custom', path: ['cookie', 'secure'], message: 'must be false when callbackUrl is http (a browser never sends a Secure cookie over http)' });
      }
      const rd = checkReturnUrl(s.postLogoutRedirect, { callbackHost: callback.host, allowedHosts: s.allowedRedirectHosts, allowHttp: !s.cookie.secure });
      if (!rd.ok) ctx.addIssue({ code: 'custom', path: ['postLogoutRedirect'], message: `must be a path or an absolute URL on an allowed host (${rd.reason})` });
    }
    if (s.cookie.name.startsWith('__Host-') && (!s.cookie.secure || s.cookie.domain !== '')) {
      ctx.addIssue({ code: 'custom', path: ['cookie', 'name'], message: 'a __Host- cookie needs secure: true and no domain (use another name for http on loopback)' });
    }
    if (s.cookie.name.startsWith('__Secure-') && !s.cookie.secure) {
      ctx.addIssue({ code: 'custom', path: ['cookie', 'name'], message: 'a __Secure- cookie needs secure: true' });
    }
    if (s.session.store === 'redis' && s.session.redis === undefined) {
      ctx.addIssue({ code: 'custom', path: ['session', 'redis'], message: 'required with store: redis (url, passwordFile, keyPrefix)' });
    }
    if (s.session.store === 'cookie' && s.session.redis !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['session', 'redis'], message: 'only with store: redis' });
    }
    const names = new Set<string>();
    s.providers.forEach((p, i) => {
      if (names.has(p.name)) ctx.addIssue({ code: 'custom', path: ['providers', i, 'name'], message: `the provider name ${p.name} is used twice` });
      names.add(p.name);
    });
  });

export const configSchema = z.strictObject({
  listen: listenAddress.default(DEFAULT_LISTEN),
  upstream: z.strictObject({
    url: z.string().refine((s) => parseUpstreamUrl(s) !== undefined, {
      message: 'must be http://host:port or unix:/path/app.sock',
    }),
    timeoutSeconds: z.number().positive().max(3600).default(DEFAULT_UPSTREAM_TIMEOUT_SECONDS),
    websockets: z.boolean().default(DEFAULT_UPSTREAM_WEBSOCKETS),
  }).optional(),
  admin: z.strictObject({ listen: listenAddress.default(DEFAULT_ADMIN_LISTEN) }).prefault({}),
  extAuthz: z
    .strictObject({
      http: z
        .strictObject({
          listen: listenAddress,
          pathPrefix: z.string().regex(/^(\/[^?#\s]*)?$/, 'must be empty or a path starting with "/"').default(DEFAULT_EXT_AUTHZ_PATH_PREFIX),
        })
        .optional(),
      grpc: z.strictObject({ listen: listenAddress }).optional(),
      forwardAuth: z.strictObject({ listen: listenAddress }).optional(),
    })
    .prefault({}),
  authn: z
    .strictObject({
      jwt: z.array(jwtIssuer).default([]),
      introspection: z.array(introspection).default([]),
      tokenFrom: z.array(tokenSource).min(1).default(() => DEFAULT_TOKEN_SOURCES.map((source) => ({ ...source }))),
    })
    .prefault({}),
  identity: z
    .strictObject({
      subjectClaim: z.union([z.string().regex(CLAIM_PATH), z.array(z.string().regex(CLAIM_PATH)).min(1)]).default(DEFAULT_SUBJECT_CLAIM),
      rolesClaims: z.array(z.string().regex(CLAIM_PATH)).default(() => [...DEFAULT_ROLES_CLAIMS]),
      scopesClaim: z.string().regex(CLAIM_PATH).default(DEFAULT_SCOPES_CLAIM),
      subjectPrefix: z.string().default(DEFAULT_SUBJECT_PREFIX),
      rolePrefix: z.string().default(DEFAULT_ROLE_PREFIX),
      anonymousSubject: z.string().min(1).default(DEFAULT_ANONYMOUS_SUBJECT),
    })
    .prefault({})
    .superRefine((identity, ctx) => {
      if (identity.subjectPrefix === identity.rolePrefix) {
        ctx.addIssue({ code: 'custom', path: ['rolePrefix'], message: 'must differ from subjectPrefix (users and roles share one Casbin namespace)' });
      }
      if (identity.anonymousSubject.startsWith(identity.subjectPrefix) || identity.anonymousSubject.startsWith(identity.rolePrefix)) {
        ctx.addIssue({ code: 'custom', path: ['anonymousSubject'], message: 'must not start with subjectPrefix or rolePrefix' });
      }
    }),
  authz: z.strictObject({
    model: z.string().min(1),
    policy: z.string().min(1),
    request: z.array(requestField).min(1).default(() => [...DEFAULT_REQUEST_FIELDS]),
    mode: z.enum(['enforce', 'dryRun']).default(DEFAULT_AUTHZ_MODE),
    watch: z.boolean().default(DEFAULT_AUTHZ_WATCH),
  }),
  shutdown: z.strictObject({ drainSeconds: z.number().min(0).max(600).default(DEFAULT_DRAIN_SECONDS) }).prefault({}),
  headers: z
    .strictObject({
      prefix: z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]*$/, 'must be the start of an HTTP header name').default(DEFAULT_HEADER_PREFIX).transform((s) => s.toLowerCase()),
      subject: headerName.default(DEFAULT_SUBJECT_HEADER),
      issuer: headerName.default(DEFAULT_ISSUER_HEADER),
      roles: headerName.default(DEFAULT_ROLES_HEADER),
      scopes: headerName.default(DEFAULT_SCOPES_HEADER),
      claims: z.record(headerName, z.string().regex(CLAIM_PATH, 'must be a dotted claim path')).default({}),
      forwardToken: z.boolean().default(DEFAULT_FORWARD_TOKEN),
    })
    .prefault({}),
  paths: z
    .strictObject({
      encodedSlashes: z.enum(['reject', 'decode']).default(DEFAULT_ENCODED_SLASHES),
      semicolons: z.enum(['reject', 'keep']).default(DEFAULT_SEMICOLONS),
    })
    .prefault({}),
  signIn: signIn.optional(),
  logging: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default(DEFAULT_LOG_LEVEL),
      decisions: z.enum(['none', 'denied', 'all']).default(DEFAULT_DECISION_LOG),
    })
    .prefault({}),
});

export type Config = z.output<typeof configSchema>;

/** The proxy door needs an upstream; a sidecar that only answers ext_authz or forward-auth does not. */
export const configSchemaChecked = configSchema.superRefine((config, ctx) => {
  const doors = config.extAuthz;
  if (config.upstream === undefined && doors.http === undefined && doors.grpc === undefined && doors.forwardAuth === undefined) {
    ctx.addIssue({ code: 'custom', path: ['upstream'], message: 'required (unless an extAuthz door is configured)' });
  }
});
export type JwtIssuerConfig = Config['authn']['jwt'][number];
export type IntrospectionConfig = Config['authn']['introspection'][number];
export type TokenSourceConfig = Config['authn']['tokenFrom'][number];
export type SignInConfig = NonNullable<Config['signIn']>;
export type SignInProviderConfig = SignInConfig['providers'][number];
