// Continue's dev-data events, built as continuedev/continue builds them, for tests/test_dev_data.py.
//
// Usage: node tests/continue_dev_data.mjs CONFIG_YAML_INDEX_JS < request.json > answer.json
//   CONFIG_YAML_INDEX_JS: @continuedev/config-yaml's dist/index.js (scripts/continue-config-yaml.sh installs it)
//   {"mode": "events", "destination": {schema, level?, events?}, "ide": {name, version, extensionVersion} | null,
//    "userToken": "", "profileId": "", "events": [spec, ...]}
//     -> [{"name": ..., "body": <the POST body log.ts sends> | null (the destination leaves the event out)}, ...]
//   {"mode": "config", "config": <a config.yaml, as JSON>} -> {"data": <its data: blocks, as the schema parsed them>}
//
// A spec is one event as the IDE extension would log it; its data is made as these sources make it (HEAD d0a3c0b):
//   autocomplete     core/autocomplete/CompletionProvider.ts (the outcome) and util/AutocompleteLoggingService.ts
//                    (accept(): accepted true; the 10 s timeout: accepted false; `useFileSuffix: true` added)
//   nextEditOutcome  core/nextEdit/providers/BaseNextEditProvider.ts (createNextEditOutcome) and
//                    NextEditLoggingService.ts (accept / reject / the 10 s timeout / handleAbort)
//   tokensGenerated  core/llm/index.ts (_logEnd)
// and each body as core/data/log.ts (logToOneDestination, parseEventData, addBaseValues) makes it, validated and
// stripped by config-yaml's own zod schema for the destination's schema version and level.

import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const configYaml = await import(pathToFileURL(process.argv[2]).href);
const { allDevEventNames, configYamlSchema, devDataVersionedSchemas } = configYaml;

// core/util/parameters.ts DEFAULT_AUTOCOMPLETE_OPTS, with the autocompleteOptions `client-config` writes.
const AUTOCOMPLETE_OPTIONS = {
  disable: false,
  maxPromptTokens: 1024,
  prefixPercentage: 0.3,
  maxSuffixPercentage: 0.2,
  debounceDelay: 250,
  modelTimeout: 150,
  multilineCompletions: "auto",
  slidingWindowPrefixPercentage: 0.75,
  slidingWindowSize: 500,
  useCache: true,
  onlyMyCode: true,
  useRecentlyEdited: true,
  useRecentlyOpened: true,
  disableInFiles: undefined,
  useImports: true,
  transform: true,
  showWhateverWeHaveAtXMs: 300,
  experimental_includeClipboard: false,
  experimental_includeRecentlyVisitedRanges: true,
  experimental_includeRecentlyEditedRanges: true,
  experimental_includeDiff: true,
  experimental_enableStaticContextualization: false,
};

function autocomplete(spec) {
  const outcome = {
    time: 42,
    completion: spec.completion,
    prefix: spec.prefix,
    suffix: spec.suffix,
    prompt: spec.prompt,
    modelProvider: "openai", // llm.underlyingProviderName of the openai provider
    modelName: spec.model,
    completionOptions: undefined,
    cacheHit: false,
    filepath: spec.filepath,
    numLines: spec.completion.split("\n").length,
    completionId: spec.completionId,
    gitRepo: undefined,
    uniqueId: "test-machine-id",
    timestamp: new Date().toISOString(),
    ...AUTOCOMPLETE_OPTIONS,
  };
  outcome.accepted = spec.accepted; // accept(): true; the rejection timeout: false
  return { name: "autocomplete", data: { ...outcome, useFileSuffix: true } };
}

function nextEdit(spec) {
  const outcome = {
    elapsed: 180,
    modelProvider: "openai",
    modelName: spec.model,
    completionOptions: null,
    completionId: spec.completionId,
    gitRepo: undefined,
    uniqueId: "test-machine-id",
    requestId: spec.requestId, // llm.lastRequestId: the id of the provider's (our) response
    timestamp: Date.now(),
    fileUri: spec.fileUri,
    workspaceDirUri: spec.fileUri.slice(0, spec.fileUri.lastIndexOf("/")),
    prompt: spec.prompt,
    userEdits: "",
    userExcerpts: "",
    originalEditableRange: "    return a\n",
    completion: "    return a + b\n",
    cursorPosition: { line: 3, character: 4 },
    finalCursorPosition: { line: 3, character: 16 },
    editableRegionStartLine: 2,
    editableRegionEndLine: 4,
    diffLines: [],
    ...AUTOCOMPLETE_OPTIONS,
  };
  outcome.aborted = false; // markDisplayed()
  if (spec.outcome === "accept") Object.assign(outcome, { accepted: true, aborted: false });
  if (spec.outcome === "reject" || spec.outcome === "timeout") Object.assign(outcome, { accepted: false, aborted: false });
  if (spec.outcome === "abort") outcome.aborted = true; // handleAbort() leaves `accepted` as it was
  return { name: "nextEditOutcome", data: outcome };
}

function tokensGenerated(spec) {
  const data = { model: spec.model, provider: "openai", promptTokens: spec.promptTokens, generatedTokens: spec.generatedTokens };
  return { name: "tokensGenerated", data };
}

const BUILDERS = { autocomplete, nextEditOutcome: nextEdit, tokensGenerated, raw: (spec) => ({ name: spec.name, data: spec.data }) };

// core/data/log.ts, addBaseValues: the base fields every 0.2.0 schema has.
function addBaseValues(body, eventName, schema, zodSchema, request) {
  const newBody = { ...body };
  const ideInfo = request.ide;
  if ("eventName" in zodSchema.shape) newBody.eventName = eventName;
  if (!newBody.timestamp && "timestamp" in zodSchema.shape) newBody.timestamp = new Date().toISOString();
  if ("schema" in zodSchema.shape) newBody.schema = schema;
  if ("userAgent" in zodSchema.shape) {
    newBody.userAgent = ideInfo
      ? `${ideInfo.name}/${ideInfo.version} (Continue/${ideInfo.extensionVersion})`
      : "Unknown/Unknown (Continue/Unknown)";
  }
  if ("selectedProfileId" in zodSchema.shape) newBody.selectedProfileId = request.profileId ?? "";
  if ("userId" in zodSchema.shape) newBody.userId = request.userToken ?? "";
  return newBody;
}

// core/data/log.ts, logToOneDestination and parseEventData: the POST body, or null when the event is left out.
function postBody(event, request) {
  const { schema } = request.destination;
  const level = request.destination.level ?? "all";
  const events = request.destination.events ?? allDevEventNames;
  if (!events.includes(event.name)) return null;
  const zodSchema = devDataVersionedSchemas[schema]?.[level]?.[event.name];
  if (!zodSchema) throw new Error(`no schema for ${event.name} at level ${level} for version ${schema}`);
  const parsed = zodSchema.safeParse(addBaseValues(event.data, event.name, schema, zodSchema, request));
  if (!parsed.success) throw new Error(`Failed to parse event data for event ${event.name}: ${parsed.error}`);
  return { name: event.name, data: parsed.data, schema, level, profileId: request.profileId ?? "" };
}

const request = JSON.parse(readFileSync(0, "utf8"));
let answer;
if (request.mode === "config") {
  const parsed = configYamlSchema.safeParse(request.config);
  if (!parsed.success) throw new Error(`config.yaml refused by config-yaml's schema: ${parsed.error}`);
  answer = { data: parsed.data.data ?? null };
} else {
  answer = request.events.map((spec) => {
    const event = BUILDERS[spec.kind](spec);
    return { name: event.name, body: postBody(event, request) };
  });
}
process.stdout.write(JSON.stringify(answer));
