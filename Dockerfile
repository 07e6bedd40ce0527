# syntax=docker/dockerfile:1
# authz-sidecar image: build with the full toolchain, ship only what `serve` needs.
#   docker build -t authz-sidecar .
#   docker run --rm -p 8080:8080 -p 8081:8081 -v "$PWD/policies:/etc/authz-sidecar:ro" authz-sidecar
# Runs read-only friendly (nothing is written outside /tmp), as a numeric non-root user, with no secrets baked
# in: config, model, policy, JWKS and client secrets are mounted at run time (see deploy/).
# Node 26, the Active LTS (Node 20 is end of life; 22 ends in April 2027). Measured on the proxy door
# (docs/performance.md, Node majors): resting RSS about 99 MiB on 22, 24 and 26 alike, peak under load 129-132 MiB on 22,
# 143 on 24, 146 on 26; 26 for the longest security support at about 3 MiB over 24.
# Debian slim (glibc), not alpine (musl): the runtime bench/pods.mjs measures each manifest on (the Node
# binaries of the npm registry are glibc builds), and the one MALLOC_ARENA_MAX in bin/entrypoint.sh acts on.

# ---- build stage: full `npm ci` (TypeScript is a devDependency) and `npm run build` -------------------
FROM node:26-trixie-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/ scripts/
COPY src/ src/
# tsc to dist/, then one esbuild bundle of the CLI (dist/bundle/), which bin/ runs.
RUN npm run build

# ---- production dependencies only (no build scripts: nothing in the runtime needs them) ---------------
FROM node:26-trixie-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# ---- runtime stage -----------------------------------------------------------------------------------
FROM node:26-trixie-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules/ ./node_modules/
COPY --from=build /src/dist/ ./dist/
COPY package.json package-lock.json ./
# Executable whatever the checkout did to the mode bits (a Windows clone, core.fileMode=false, an archive).
COPY --chmod=0555 bin/ ./bin/
COPY proto/ ./proto/
COPY policies/ ./policies/
# The sidecar needs node and /bin/sh only: npm, npx and corepack leave the runtime image.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack
# Files stay root-owned and read-only for the process; numeric ids so Kubernetes can verify runAsNonRoot.
USER 65532:65532
# 8080 proxy, 8081 admin (/healthz, /readyz, /metrics), 9191 HTTP ext_authz, 9292 gRPC ext_authz,
# 9193 forward-auth. Which ones listen depends on the config.
EXPOSE 8080 8081 9191 9292 9193
# The entrypoint sets the measured runtime defaults (V8 young generation, malloc arenas), which a manifest's
# env only overrides, then execs node: signals reach Node directly.
ENTRYPOINT ["/app/bin/entrypoint.sh"]
CMD ["serve", "--config", "/etc/authz-sidecar/authz-sidecar.yaml"]
