// Validates docs/asyncapi.yaml with the AsyncAPI parser (schema and rules),
// its message examples against their payload schemas (Ajv), and docs/openapi.yaml
// against the OpenAPI 3.1 JSON Schema and with Redocly's linter (the
// recommended rules of redocly.yaml). Each check is also run on a broken copy, so a
// validator that accepts anything fails here instead of passing silently.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import { Validator } from "@seriousme/openapi-schema-validator";

const here = dirname(fileURLToPath(import.meta.url));
const docs = join(here, "..");
const asyncapi = readFileSync(join(docs, "asyncapi.yaml"), "utf8");
const openapi = readFileSync(join(docs, "openapi.yaml"), "utf8");

/** The parser's errors, as lines a person can read. */
async function asyncapiErrors(text) {
  const { diagnostics } = await new Parser().parse(text);
  for (const d of diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning)) {
    console.log(`asyncapi.yaml warning: ${d.message} at ${d.path.join("/")}`);
  }
  return diagnostics
    .filter((d) => d.severity === DiagnosticSeverity.Error)
    .map((d) => `${d.code}: ${d.message} at ${d.path.join("/")}`);
}

/** Runs `redocly lint` on `path`; its exit status and output. */
function redoclyLint(path) {
  const bin = join(here, "node_modules", ".bin", "redocly");
  const r = spawnSync(bin, ["lint", "--format=stylish", path], {
    cwd: here,
    encoding: "utf8",
    env: { ...process.env, REDOCLY_TELEMETRY: "off", REDOCLY_SUPPRESS_UPDATE_NOTICE: "true" },
  });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

function brokenCopy(name, text) {
  const path = join(mkdtempSync(join(tmpdir(), "kpistream-docs-")), name);
  writeFileSync(path, text);
  return path;
}

test("asyncapi.yaml is a valid AsyncAPI 3.0 document", async () => {
  assert.match(asyncapi, /^asyncapi: 3\.0\.0$/m);
  assert.deepEqual(await asyncapiErrors(asyncapi), []);
});

test("the AsyncAPI check refuses a broken document", async () => {
  // An operation on a channel that does not exist.
  const broken = asyncapi.replace("channel: {$ref: '#/channels/topicSocket'}", "channel: {$ref: '#/channels/nowhere'}");
  assert.notEqual(broken, asyncapi);
  assert.notDeepEqual(await asyncapiErrors(broken), []);
});

test("every AsyncAPI message example matches its payload schema", async () => {
  const { document } = await new Parser().parse(asyncapi);
  const ajv = new Ajv({ allErrors: true, strict: false });
  addFormats(ajv);
  let checked = 0;
  for (const message of document.components().messages().all()) {
    const validate = ajv.compile(message.payload().json());
    assert.ok(message.examples().length > 0, `message ${message.id()} has no example`);
    for (const example of message.examples().all()) {
      const ok = validate(example.payload());
      assert.ok(ok, `${message.id()}: ${JSON.stringify(example.payload())}: ${ajv.errorsText(validate.errors)}`);
      checked += 1;
    }
  }
  assert.ok(checked >= 13, `only ${checked} examples`);
});

/** Errors against the OpenAPI Initiative's JSON Schema of the document's version. */
async function openapiSchemaErrors(path) {
  const validator = new Validator();
  const r = await validator.validate(path);
  return r.valid ? [] : r.errors;
}

test("openapi.yaml is a valid OpenAPI 3.1 document", async () => {
  assert.match(openapi, /^openapi: 3\.1\.\d+$/m);
  assert.deepEqual(await openapiSchemaErrors(join(docs, "openapi.yaml")), []);
  const r = redoclyLint(join(docs, "openapi.yaml"));
  assert.equal(r.status, 0, r.output);
});

test("the OpenAPI check refuses a broken document", async () => {
  // A response without its required description.
  const broken = openapi.replace("          description: The current bucket of the topic.\n", "");
  assert.notEqual(broken, openapi);
  const path = brokenCopy("openapi.yaml", broken);
  assert.notDeepEqual(await openapiSchemaErrors(path), []);
  const r = redoclyLint(path);
  assert.notEqual(r.status, 0, r.output);
});
