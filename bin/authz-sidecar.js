#!/usr/bin/env node
// Entry point of the installed CLI. `npm run build` compiles src/ to dist/ and bundles the CLI into
// dist/bundle/authz-sidecar.mjs (scripts/bundle.mjs), which starts much faster than the loose modules.
import process from 'node:process';
import { main } from '../dist/bundle/authz-sidecar.mjs';

process.exitCode = await main(process.argv.slice(2));
