/**
 * The fetch every call to an identity provider goes through (JWKS, discovery, introspection, sign-in's code
 * exchange, refresh, userinfo, the logout-token keys): the platform's fetch, or with tracing on one that
 * makes each call a CLIENT span (src/tracing/spans.ts). One indirection, set once at startup.
 */
export type Fetch = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

let current: Fetch = (input, init) => fetch(input, init);

/** Calls the provider through the configured fetch. */
export const idpFetch: Fetch = (input, init) => current(input, init);

/** Sets the fetch (undefined: the platform's). */
export function setIdpFetch(next: Fetch | undefined): void {
  current = next ?? ((input, init) => fetch(input, init));
}
