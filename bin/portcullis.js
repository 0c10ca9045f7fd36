#!/usr/bin/env node
// The CLI is TypeScript run through tsx, so plugins written in TypeScript load the same way.
import { register } from "tsx/esm/api";

register();
await import("../app/cli.ts");
