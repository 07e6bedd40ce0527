#!/usr/bin/env node
// Entry point of the installed CLI. `npm run build` compiles src/ to dist/ and bundles the CLI into
// dist/bundle/authz-sidecar.mjs (scripts/bundle.mjs), which starts much faster than the loose modules.
import process from 'node:process';
import { main } from '../dist/bundle/authz-sidecar.mjs';

const code = await main(process.argv.slice(2));
// `serve` and `demo` return once drained: what is still pending then (an IdP call cut off at the drain
// deadline) must not hold the process open past shutdown.drainSeconds. Log lines go to stdout
// asynchronously: `serve` and `demo` have written out what was buffered before they return (bounded,
// src/admin/log-output.ts).
process.exit(code);
