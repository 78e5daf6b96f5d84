// Records a crew run on a code-analyzer server, streams its logs through
// LogService.IngestLogs, reads them back with QueryLogs and exits with 1 on
// any mismatch (2 when a call fails).
//
// Usage: node crew_run.mjs [HOST:PORT]   (or CODE_ANALYZER_ADDRESS; default
// 127.0.0.1:50051). CODE_ANALYZER_TOKEN, when set, is sent as the bearer
// token of every call, for a server started with --tokens-file. Runs on node 20 without a build step; the types are
// JSDoc comments that `tsc --checkJs` can read.

import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { readdirSync } from "node:fs";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const PROTO_ROOT = fileURLToPath(new URL("../../proto", import.meta.url));
const PROTO_FILES = readdirSync(path.join(PROTO_ROOT, "code_analyzer", "v1"))
  .filter((name) => name.endsWith(".proto"))
  .map((name) => `code_analyzer/v1/${name}`);
const CALL_TIMEOUT_MS = 10_000;
const CREW_NAME = "typescript-example";

/**
 * Loads the protos with the JSON-like mapping that this file expects: field
 * names as written in the protos, 64-bit integers and enums as strings, and
 * unset scalar fields filled with their defaults. protobufjs resolves the
 * imports of the well-known types used here (google/protobuf/struct.proto,
 * timestamp, duration, field_mask) to definitions bundled in its
 * src/common.js, so includeDirs needs only the project's proto root.
 */
function loadServices() {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [PROTO_ROOT],
  });
  return grpc.loadPackageDefinition(definition).code_analyzer.v1;
}

/**
 * A google.protobuf.Struct as proto-loader reads and writes it.
 * @typedef {{ fields: Record<string, ProtoValue> }} ProtoStruct
 * @typedef {{ nullValue?: string, numberValue?: number, stringValue?: string,
 *   boolValue?: boolean, structValue?: ProtoStruct,
 *   listValue?: { values: ProtoValue[] }, kind?: string }} ProtoValue
 */

/**
 * Converts a plain JSON value to a google.protobuf.Value.
 * @param {unknown} value
 * @returns {ProtoValue}
 */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(/** @type {Record<string, unknown>} */ (value)) };
}

/**
 * Converts a plain JSON object to a google.protobuf.Struct.
 * @param {Record<string, unknown>} object
 * @returns {ProtoStruct}
 */
function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([key, value]) => [key, toValue(value)])) };
}

/**
 * Converts a google.protobuf.Value back to plain JSON. Values read from the
 * server name their set member in `kind` (the loader runs with
 * `oneofs: true`); values built by toValue have only the member.
 * @param {ProtoValue} value
 * @returns {unknown}
 */
function fromValue(value) {
  const kind = value.kind ?? Object.keys(value).find((key) => key.endsWith("Value"));
  switch (kind) {
    case "numberValue":
      return value.numberValue;
    case "stringValue":
      return value.stringValue;
    case "boolValue":
      return value.boolValue;
    case "structValue":
      return fromStruct(/** @type {ProtoStruct} */ (value.structValue));
    case "listValue":
      return (value.listValue?.values ?? []).map(fromValue);
    default:
      return null;
  }
}

/**
 * @param {ProtoStruct | null | undefined} struct
 * @returns {Record<string, unknown>}
 */
function fromStruct(struct) {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([key, value]) => [key, fromValue(value)]));
}

/**
 * Converts a Date to a google.protobuf.Timestamp, with seconds as a string
 * like every 64-bit integer here.
 * @param {Date} date
 */
function toTimestamp(date) {
  const millis = date.getTime();
  return { seconds: String(Math.floor(millis / 1000)), nanos: (millis % 1000) * 1_000_000 };
}

/** Mismatches found so far; any of them makes the exit code 1. */
const mismatches = [];

/**
 * Returns the JSON text of `value` with object keys sorted, because the
 * server returns Struct fields in its own order.
 * @param {unknown} value
 * @returns {string}
 */
function canonicalJson(value) {
  return JSON.stringify(value, (_key, member) =>
    member && typeof member === "object" && !Array.isArray(member)
      ? Object.fromEntries(Object.entries(member).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : member,
  );
}

/**
 * Records a mismatch unless `actual` and `expected` have the same JSON.
 * @param {string} what
 * @param {unknown} actual
 * @param {unknown} expected
 */
function expectEqual(what, actual, expected) {
  const actualJson = canonicalJson(actual);
  const expectedJson = canonicalJson(expected);
  if (actualJson !== expectedJson) {
    mismatches.push(`${what}: expected ${expectedJson}, got ${actualJson}`);
  }
}

/**
 * Calls a unary method with a deadline and returns a promise of its response.
 * @param {any} client
 * @param {string} method
 * @param {object} request
 * @returns {Promise<any>}
 */
function call(client, method, request) {
  const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
  return promisify(client[method].bind(client))(request, callMetadata(), { deadline });
}

/**
 * Builds the metadata of one call: the bearer token from
 * CODE_ANALYZER_TOKEN, if set.
 * @returns {grpc.Metadata}
 */
function callMetadata() {
  const metadata = new grpc.Metadata();
  const token = process.env.CODE_ANALYZER_TOKEN;
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  return metadata;
}

/**
 * Streams `messages` to LogService.IngestLogs, one write per message, and
 * resolves with the response.
 * @param {any} logs
 * @param {Array<{entries: object[]}>} messages
 * @returns {Promise<any>}
 */
function ingestLogs(logs, messages) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
    const stream = logs.IngestLogs(callMetadata(), { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
    for (const message of messages) stream.write(message);
    stream.end();
  });
}

/**
 * Builds the log stream of one run: three messages of log entries with
 * entry ids derived from the run id, and one entry with an unknown level
 * that the server rejects.
 * @param {string} crewOutputId
 */
function logMessages(crewOutputId) {
  const start = Date.UTC(2026, 11, 4, 10, 0, 0);
  /** @param {number} index @param {string} level @param {string} message @param {object} metadata */
  const entry = (index, level, message, metadata) => ({
    entry_id: `${CREW_NAME}:${crewOutputId}:${index}`,
    timestamp: toTimestamp(new Date(start + index * 1000)),
    level,
    message,
    crew_name: CREW_NAME,
    crew_output_id: crewOutputId,
    metadata: toStruct(metadata),
  });
  return [
    { entries: [entry(1, "INFO", "crew started", { agent: "planner" }), entry(2, "debug", "reading src/app.py", { bytes: 2048 })] },
    { entries: [entry(3, "warn", "retrying tool call", { attempt: 2, tool: { name: "ruff", args: ["check", "."] } })] },
    {
      entries: [
        entry(4, "ERROR", "tool failed", { exit_code: 1, retried: true }),
        entry(5, "info", "crew finished", { findings: 2 }),
        entry(6, "LOUD", "level no system writes", {}),
      ],
    },
  ];
}

async function main() {
  const address = process.argv[2] ?? process.env.CODE_ANALYZER_ADDRESS ?? "127.0.0.1:50051";
  const v1 = loadServices();
  const credentials = grpc.credentials.createInsecure();
  const crews = new v1.CrewService(address, credentials);
  const analysis = new v1.AnalysisService(address, credentials);
  const fixes = new v1.FixService(address, credentials);
  const logs = new v1.LogService(address, credentials);

  // One crew run with two findings and a fix for the first.
  const run = await call(crews, "CreateCrewOutput", {
    crew_name: CREW_NAME,
    output_type: "code_review",
    status: "CREW_OUTPUT_STATUS_RUNNING",
    results: toStruct({ files_reviewed: 2 }),
  });
  expectEqual("crew output id is a string", typeof run.id, "string");
  expectEqual("status after create", run.status, "CREW_OUTPUT_STATUS_RUNNING");
  const recorded = await call(analysis, "RecordFindings", {
    crew_output_id: run.id,
    findings: [
      { file_path: "src/app.py", rule_id: "S105", message: "Possible hardcoded password", priority: "PRIORITY_HIGH", range: { start_line: 12, end_line: 12 } },
      { file_path: "src/app.py", rule_id: "B007", message: "Unused loop variable", analysis: toStruct({ confidence: "high" }) },
    ],
  });
  expectEqual("recorded findings", recorded.findings.map((/** @type {any} */ f) => [f.rule_id, f.priority, f.status]), [
    ["S105", "PRIORITY_HIGH", "FINDING_STATUS_OPEN"],
    ["B007", "PRIORITY_MEDIUM", "FINDING_STATUS_OPEN"],
  ]);
  const fix = await call(fixes, "RecordFix", {
    crew_output_id: run.id,
    file_path: "src/app.py",
    description: "Read the password from the environment",
    changes: toStruct({ diff: "-password = 'x'\n+password = os.environ['PASSWORD']" }),
    finding_ids: [recorded.findings[0].id],
  });
  expectEqual("fix links the first finding", fix.finding_ids, [recorded.findings[0].id]);

  // Stream the logs, then the same stream again: every entry_id is already
  // stored, so the second stream stores nothing.
  const messages = logMessages(run.id);
  const first = await ingestLogs(logs, messages);
  expectEqual("first ingest counts", [first.accepted_count, first.duplicate_count, first.rejected_count], ["5", "0", "1"]);
  expectEqual("rejected entry", first.rejections.map((/** @type {any} */ r) => [r.position, r.field]), [["5", "level"]]);
  const again = await ingestLogs(logs, messages);
  expectEqual("second ingest counts", [again.accepted_count, again.duplicate_count, again.rejected_count], ["0", "5", "1"]);

  const finished = await call(crews, "UpdateCrewOutput", {
    id: run.id,
    crew_output: { status: "CREW_OUTPUT_STATUS_SUCCEEDED", results: toStruct({ files_reviewed: 2, findings: 2 }) },
    update_mask: { paths: ["status", "results"] },
  });
  expectEqual("status after update", finished.status, "CREW_OUTPUT_STATUS_SUCCEEDED");
  expectEqual("results after update", fromStruct(finished.results), { files_reviewed: 2, findings: 2 });

  // Read the logs back, newest first, and compare them with what was sent.
  const queried = await call(logs, "QueryLogs", { crew_output_id: run.id, page_size: 100 });
  const sent = messages.flatMap((message) => message.entries).filter((entry) => entry.level !== "LOUD").reverse();
  expectEqual("queried total", queried.total_size, String(sent.length));
  expectEqual(
    "queried entries",
    queried.entries.map((/** @type {any} */ e) => [e.entry_id, e.level, e.message, e.timestamp.seconds, fromStruct(e.metadata)]),
    sent.map((e) => [e.entry_id, e.level, e.message, e.timestamp.seconds, fromStruct(e.metadata)]),
  );
  expectEqual(
    "severity numbers",
    queried.entries.map((/** @type {any} */ e) => e.severity_number),
    [9, 17, 13, 5, 9],
  );
  const warnings = await call(logs, "QueryLogs", { crew_output_id: run.id, min_level: "WARNING" });
  expectEqual("entries at WARNING or above", warnings.entries.map((/** @type {any} */ e) => e.message), ["tool failed", "retrying tool call"]);

  // The file may have records of earlier runs; count this run's events.
  const history = await call(analysis, "GetFileHistory", { file_path: "src/app.py", page_size: 1000 });
  const ofThisRun = history.events.filter((/** @type {any} */ e) => e[e.record].crew_output_id === run.id);
  expectEqual("history of this run", ofThisRun.map((/** @type {any} */ e) => e.record).sort(), ["finding", "finding", "fix"]);

  for (const client of [crews, analysis, fixes, logs]) client.close();
  if (mismatches.length > 0) {
    console.error(`${mismatches.length} mismatches:\n${mismatches.join("\n")}`);
    process.exit(1);
  }
  console.log(`crew output ${run.id}: 2 findings, 1 fix, ${sent.length} log entries stored and read back`);
}

main().catch((error) => {
  const code = error?.code !== undefined ? `${grpc.status[error.code]}: ` : "";
  console.error(`call failed: ${code}${error?.details ?? error?.message ?? error}`);
  process.exit(2);
});
