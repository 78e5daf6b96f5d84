// Records a crew run on a code-analyzer server, streams its logs through
// LogService.IngestLogs, reads them back with QueryLogs and exits with 1 on
// any mismatch (2 when a call fails).
//
// Build and run (node 20 runs the compiled JavaScript in dist/):
//   npm ci && npm run build && node dist/crew_run.js [HOST:PORT]
// The address may also come from CODE_ANALYZER_ADDRESS; the default is
// 127.0.0.1:50051. CODE_ANALYZER_TOKEN, when set, is sent as the bearer token
// of every call, for a server started with --tokens-file.
//
// `npm run generate` writes the message and client types to generated/ with
// proto-loader-gen-types. Its flags (package.json) must match the loadSync
// options below, because both describe the same JavaScript objects.

import { readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType as AnalysisProto } from "./generated/analysis.js";
import type { ProtoGrpcType as CrewProto } from "./generated/crew.js";
import type { ProtoGrpcType as FixProto } from "./generated/fix.js";
import type { ProtoGrpcType as LogProto } from "./generated/log.js";
import type { CrewOutput__Output } from "./generated/code_analyzer/v1/CrewOutput.js";
import type { Fix__Output } from "./generated/code_analyzer/v1/Fix.js";
import type { GetFileHistoryResponse__Output } from "./generated/code_analyzer/v1/GetFileHistoryResponse.js";
import type { IngestLogsRequest } from "./generated/code_analyzer/v1/IngestLogsRequest.js";
import type { IngestLogsResponse__Output } from "./generated/code_analyzer/v1/IngestLogsResponse.js";
import type { LogServiceClient } from "./generated/code_analyzer/v1/LogService.js";
import type { NewLogEntry } from "./generated/code_analyzer/v1/NewLogEntry.js";
import type { QueryLogsResponse__Output } from "./generated/code_analyzer/v1/QueryLogsResponse.js";
import type { RecordFindingsResponse__Output } from "./generated/code_analyzer/v1/RecordFindingsResponse.js";
import type { Struct } from "./generated/google/protobuf/Struct.js";
import type { Timestamp } from "./generated/google/protobuf/Timestamp.js";
import type { Value } from "./generated/google/protobuf/Value.js";

// The compiled file runs from dist/, three levels below the repository root.
const PROTO_ROOT = fileURLToPath(new URL("../../../proto", import.meta.url));
const PROTO_FILES = readdirSync(path.join(PROTO_ROOT, "code_analyzer", "v1"))
  .filter((name) => name.endsWith(".proto"))
  .map((name) => `code_analyzer/v1/${name}`);
const CALL_TIMEOUT_MS = 10_000;
const CREW_NAME = "typescript-example";

type JsonObject = { [key: string]: unknown };
type Services = (AnalysisProto & CrewProto & FixProto & LogProto)["code_analyzer"]["v1"];

/**
 * Loads the protos with the JSON-like mapping that this file expects: field
 * names as written in the protos, 64-bit integers and enums as strings, and
 * unset scalar fields filled with their defaults. protobufjs resolves the
 * imports of the well-known types used here (google/protobuf/struct.proto,
 * timestamp, duration, field_mask) to definitions bundled in its
 * src/common.js, so includeDirs needs only the project's proto root.
 */
function loadServices(): Services {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [PROTO_ROOT],
  });
  // loadPackageDefinition returns an untyped tree, which the generated
  // types describe for the options above.
  const tree = grpc.loadPackageDefinition(definition) as unknown as AnalysisProto & CrewProto & FixProto & LogProto;
  return tree.code_analyzer.v1;
}

/** Converts a plain JSON value to a google.protobuf.Value. */
function toValue(value: unknown): Value {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value as JsonObject) };
}

/** Converts a plain JSON object to a google.protobuf.Struct. */
function toStruct(object: JsonObject): Struct {
  return { fields: Object.fromEntries(Object.entries(object).map(([key, value]) => [key, toValue(value)])) };
}

/**
 * Converts a google.protobuf.Value back to plain JSON. Values read from the
 * server name their set member in `kind`, because the loader runs with
 * `oneofs: true`. Values built by toValue have only the member.
 */
function fromValue(value: Value): unknown {
  const kind = value.kind ?? Object.keys(value).find((key) => key.endsWith("Value"));
  switch (kind) {
    case "numberValue":
      return value.numberValue;
    case "stringValue":
      return value.stringValue;
    case "boolValue":
      return value.boolValue;
    case "structValue":
      return fromStruct(value.structValue);
    case "listValue":
      return (value.listValue?.values ?? []).map(fromValue);
    default:
      return null;
  }
}

function fromStruct(struct: Struct | null | undefined): JsonObject {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([key, value]) => [key, fromValue(value)]));
}

/**
 * Converts a Date to a google.protobuf.Timestamp, with seconds as a string
 * like every 64-bit integer here.
 */
function toTimestamp(date: Date): Timestamp {
  const millis = date.getTime();
  return { seconds: String(Math.floor(millis / 1000)), nanos: (millis % 1000) * 1_000_000 };
}

/** Mismatches found so far. Any of them makes the exit code 1. */
const mismatches: string[] = [];

/**
 * Returns the JSON text of `value` with object keys sorted, because the
 * server returns Struct fields in its own order.
 */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key: string, member: unknown) => {
    if (!member || typeof member !== "object" || Array.isArray(member)) {
      return member;
    }
    const entries = Object.entries(member).sort(([a], [b]) => a.localeCompare(b));
    return Object.fromEntries(entries);
  });
}

/** Records a mismatch unless `actual` and `expected` have the same JSON. */
function expectEqual(label: string, actual: unknown, expected: unknown): void {
  const actualJson = canonicalJson(actual);
  const expectedJson = canonicalJson(expected);
  if (actualJson !== expectedJson) {
    mismatches.push(`${label}: expected ${expectedJson}, got ${actualJson}`);
  }
}

/**
 * Builds the metadata of one call: the bearer token from
 * CODE_ANALYZER_TOKEN, if set.
 */
function callMetadata(): grpc.Metadata {
  const metadata = new grpc.Metadata();
  const token = process.env.CODE_ANALYZER_TOKEN;
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  return metadata;
}

function callOptions(): grpc.CallOptions {
  return { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) };
}

/**
 * Starts a call with `start`, which passes the given callback to a client
 * method, and returns a promise of its response. A call that ends without
 * an error and without a response rejects the promise too.
 */
function unary<Response>(start: (callback: grpc.requestCallback<Response>) => unknown): Promise<Response> {
  return new Promise((resolve, reject) => {
    start((error, response) => {
      if (error) {
        reject(error);
      } else if (response === undefined) {
        reject(new Error("the call returned no response"));
      } else {
        resolve(response);
      }
    });
  });
}

/**
 * Streams `messages` to LogService.IngestLogs, one write per message, and
 * resolves with the response.
 */
function ingestLogs(logs: LogServiceClient, messages: IngestLogsRequest[]): Promise<IngestLogsResponse__Output> {
  return unary<IngestLogsResponse__Output>((callback) => {
    const stream = logs.IngestLogs(callMetadata(), callOptions(), callback);
    for (const message of messages) stream.write(message);
    stream.end();
  });
}

/** One log entry of the example run, before it becomes a NewLogEntry. */
interface LogLine {
  index: number;
  level: string;
  message: string;
  metadata: JsonObject;
}

// Entries 1 to 6 are one second apart from this time.
const LOG_START_MILLIS = Date.UTC(2026, 11, 4, 10, 0, 0);

/**
 * Returns the log lines of one run, grouped by stream message: three
 * messages, the last with an entry of an unknown level that the server
 * rejects.
 */
function logLines(): LogLine[][] {
  return [
    [
      { index: 1, level: "INFO", message: "crew started", metadata: { agent: "planner" } },
      { index: 2, level: "debug", message: "reading src/app.py", metadata: { bytes: 2048 } },
    ],
    [{ index: 3, level: "warn", message: "retrying tool call", metadata: { attempt: 2, tool: { name: "ruff", args: ["check", "."] } } }],
    [
      { index: 4, level: "ERROR", message: "tool failed", metadata: { exit_code: 1, retried: true } },
      { index: 5, level: "info", message: "crew finished", metadata: { findings: 2 } },
      { index: 6, level: "LOUD", message: "level no system writes", metadata: {} },
    ],
  ];
}

/** Returns the entry id of a log line, derived from the run id. */
function entryId(crewOutputId: string, line: LogLine): string {
  return `${CREW_NAME}:${crewOutputId}:${line.index}`;
}

function logTimestamp(line: LogLine): Timestamp {
  return toTimestamp(new Date(LOG_START_MILLIS + line.index * 1000));
}

/** Builds the IngestLogs stream messages of one run from its log lines. */
function logMessages(crewOutputId: string, lines: LogLine[][]): IngestLogsRequest[] {
  return lines.map((group) => ({
    entries: group.map(
      (line): NewLogEntry => ({
        entry_id: entryId(crewOutputId, line),
        timestamp: logTimestamp(line),
        level: line.level,
        message: line.message,
        crew_name: CREW_NAME,
        crew_output_id: crewOutputId,
        metadata: toStruct(line.metadata),
      }),
    ),
  }));
}

/** Returns the id of the run that a file history event belongs to. */
function eventRunId(event: GetFileHistoryResponse__Output["events"][number]): string | undefined {
  return event.record === "finding" ? event.finding?.crew_output_id : event.fix?.crew_output_id;
}

async function main(): Promise<void> {
  const address = process.argv[2] ?? process.env.CODE_ANALYZER_ADDRESS ?? "127.0.0.1:50051";
  const v1 = loadServices();
  const credentials = grpc.credentials.createInsecure();
  const crews = new v1.CrewService(address, credentials);
  const analysis = new v1.AnalysisService(address, credentials);
  const fixes = new v1.FixService(address, credentials);
  const logs = new v1.LogService(address, credentials);

  // One crew run with two findings and a fix for the first.
  const run = await unary<CrewOutput__Output>((callback) =>
    crews.CreateCrewOutput(
      {
        crew_name: CREW_NAME,
        output_type: "code_review",
        status: "CREW_OUTPUT_STATUS_RUNNING",
        results: toStruct({ files_reviewed: 2 }),
      },
      callMetadata(),
      callOptions(),
      callback,
    ),
  );
  expectEqual("crew output id is a string", typeof run.id, "string");
  expectEqual("status after create", run.status, "CREW_OUTPUT_STATUS_RUNNING");
  const recorded = await unary<RecordFindingsResponse__Output>((callback) =>
    analysis.RecordFindings(
      {
        crew_output_id: run.id,
        findings: [
          {
            file_path: "src/app.py",
            rule_id: "S105",
            message: "Possible hardcoded password",
            priority: "PRIORITY_HIGH",
            range: { start_line: 12, end_line: 12 },
          },
          { file_path: "src/app.py", rule_id: "B007", message: "Unused loop variable", analysis: toStruct({ confidence: "high" }) },
        ],
      },
      callMetadata(),
      callOptions(),
      callback,
    ),
  );
  expectEqual(
    "recorded findings",
    recorded.findings.map((finding) => [finding.rule_id, finding.priority, finding.status]),
    [
      ["S105", "PRIORITY_HIGH", "FINDING_STATUS_OPEN"],
      ["B007", "PRIORITY_MEDIUM", "FINDING_STATUS_OPEN"],
    ],
  );
  const firstFindingId = recorded.findings[0]?.id;
  if (firstFindingId === undefined) {
    throw new Error("RecordFindings returned no findings");
  }
  const fix = await unary<Fix__Output>((callback) =>
    fixes.RecordFix(
      {
        crew_output_id: run.id,
        file_path: "src/app.py",
        description: "Read the password from the environment",
        changes: toStruct({ diff: "-password = 'x'\n+password = os.environ['PASSWORD']" }),
        finding_ids: [firstFindingId],
      },
      callMetadata(),
      callOptions(),
      callback,
    ),
  );
  expectEqual("fix links the first finding", fix.finding_ids, [firstFindingId]);

  // Stream the logs, then the same stream again: every entry_id is already
  // stored, so the second stream stores nothing.
  const lines = logLines();
  const messages = logMessages(run.id, lines);
  const first = await ingestLogs(logs, messages);
  expectEqual("first ingest counts", [first.accepted_count, first.duplicate_count, first.rejected_count], ["5", "0", "1"]);
  expectEqual(
    "rejected entry",
    first.rejections.map((rejection) => [rejection.position, rejection.field]),
    [["5", "level"]],
  );
  const again = await ingestLogs(logs, messages);
  expectEqual("second ingest counts", [again.accepted_count, again.duplicate_count, again.rejected_count], ["0", "5", "1"]);

  const finished = await unary<CrewOutput__Output>((callback) =>
    crews.UpdateCrewOutput(
      {
        id: run.id,
        crew_output: { status: "CREW_OUTPUT_STATUS_SUCCEEDED", results: toStruct({ files_reviewed: 2, findings: 2 }) },
        update_mask: { paths: ["status", "results"] },
      },
      callMetadata(),
      callOptions(),
      callback,
    ),
  );
  expectEqual("status after update", finished.status, "CREW_OUTPUT_STATUS_SUCCEEDED");
  expectEqual("results after update", fromStruct(finished.results), { files_reviewed: 2, findings: 2 });

  // Read the logs back, newest first, and compare them with what was sent.
  const queried = await unary<QueryLogsResponse__Output>((callback) =>
    logs.QueryLogs({ crew_output_id: run.id, page_size: 100 }, callMetadata(), callOptions(), callback),
  );
  const stored = lines
    .flat()
    .filter((line) => line.level !== "LOUD")
    .reverse();
  expectEqual("queried total", queried.total_size, String(stored.length));
  expectEqual(
    "queried entries",
    queried.entries.map((entry) => [entry.entry_id, entry.level, entry.message, entry.timestamp?.seconds, fromStruct(entry.metadata)]),
    stored.map((line) => [entryId(run.id, line), line.level, line.message, logTimestamp(line).seconds, line.metadata]),
  );
  expectEqual(
    "severity numbers",
    queried.entries.map((entry) => entry.severity_number),
    [9, 17, 13, 5, 9],
  );
  const warnings = await unary<QueryLogsResponse__Output>((callback) =>
    logs.QueryLogs({ crew_output_id: run.id, min_level: "WARNING" }, callMetadata(), callOptions(), callback),
  );
  expectEqual(
    "entries at WARNING or above",
    warnings.entries.map((entry) => entry.message),
    ["tool failed", "retrying tool call"],
  );

  // The file may have records of earlier runs, so count this run's events.
  const history = await unary<GetFileHistoryResponse__Output>((callback) =>
    analysis.GetFileHistory({ file_path: "src/app.py", page_size: 1000 }, callMetadata(), callOptions(), callback),
  );
  const ofThisRun = history.events.filter((event) => eventRunId(event) === run.id);
  expectEqual(
    "history of this run",
    ofThisRun.map((event) => event.record).sort(),
    ["finding", "finding", "fix"],
  );

  for (const client of [crews, analysis, fixes, logs]) client.close();
  if (mismatches.length > 0) {
    console.error(`${mismatches.length} mismatches:\n${mismatches.join("\n")}`);
    process.exit(1);
  }
  console.log(`crew output ${run.id}: 2 findings, 1 fix, ${stored.length} log entries stored and read back`);
}

/** Returns the gRPC status and details of a failed call, or the error text. */
function describeError(error: unknown): string {
  if (error instanceof Error && "code" in error && typeof error.code === "number") {
    const { code, details } = error as grpc.ServiceError;
    return `${grpc.status[code]}: ${details}`;
  }
  return error instanceof Error ? error.message : String(error);
}

main().catch((error: unknown) => {
  console.error(`call failed: ${describeError(error)}`);
  process.exit(2);
});
