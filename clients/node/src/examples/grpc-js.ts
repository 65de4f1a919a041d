/**
 * DetectObjects on each image of a folder with @grpc/grpc-js and @grpc/proto-loader, the .proto
 * files read at run time, no generated code: `node dist/examples/grpc-js.js [flags] IMAGES_DIR`
 * (flags: examples/caller.ts). It loads the service it calls, `vision/v1/detection_service.proto`
 * (imports follow from includeDirs: protos/ and third_party/googleapis/), and decodes a failure's
 * google.rpc.Status from the grpc-status-details-bin trailer with protobufjs (which proto-loader
 * is built on): status.proto and error_details.proto give the detail types.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

import type { StatusDetails } from "../client.js";
import { readArguments, readImages, Report } from "./caller.js";

const root = fileURLToPath(new URL("../../../../", import.meta.url));
const includeDirs = [join(root, "protos"), join(root, "third_party", "googleapis")];

// keepCase: the proto's snake_case names (score_threshold); defaults: zero values present;
// longs: String so int64 is no Long object; oneofs: a field naming the member set.
const definition = protoLoader.loadSync("vision/v1/detection_service.proto", {
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs,
});
type Callback = (error: grpc.ServiceError | null, response?: unknown) => void;
interface DetectionStub extends grpc.Client {
  DetectObjects(request: object, metadata: grpc.Metadata, options: grpc.CallOptions,
                callback: Callback): grpc.ClientUnaryCall;
}
type DetectionConstructor = new (target: string, credentials: grpc.ChannelCredentials)
  => DetectionStub;
const loaded = grpc.loadPackageDefinition(definition) as unknown as {
  vision: { v1: { DetectionService: DetectionConstructor } };
};

// The detail types, for decoding only: google/protobuf/* come with protobufjs.
const details = new protobuf.Root();
details.resolvePath = (_origin, target) =>
  includeDirs.map((dir) => join(dir, target)).find((path) => existsSync(path)) ?? target;
details.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });

interface Any { type_url: string; value: Uint8Array }

/** A failed call's status: base64-free here (grpc-js hands the -bin trailer over as bytes). */
function statusOf(error: grpc.ServiceError): StatusDetails {
  const described: StatusDetails = { code: error.code, message: error.details, fieldViolations: [] };
  const [encoded] = error.metadata.get("grpc-status-details-bin");
  if (!(encoded instanceof Buffer)) {
    return described; // the gRPC layer itself refused the call: no details
  }
  const statusType = details.lookupType("google.rpc.Status");
  const status = statusType.toObject(statusType.decode(encoded), { longs: Number }) as {
    details?: Any[];
  };
  for (const any of status.details ?? []) {
    const type = details.lookupType(any.type_url.slice(any.type_url.lastIndexOf("/") + 1));
    const detail = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
    if (type.fullName === ".google.rpc.ErrorInfo") {
      described.reason = detail.reason as string;
      described.domain = detail.domain as string;
    } else if (type.fullName === ".google.rpc.BadRequest") {
      for (const v of detail.field_violations as { field: string; description: string }[]) {
        described.fieldViolations.push({ field: v.field, description: v.description });
      }
    } else if (type.fullName === ".google.rpc.RetryInfo") {
      const delay = detail.retry_delay as { seconds: number; nanos: number };
      described.retryDelayMs = delay.seconds * 1000 + delay.nanos / 1e6;
    }
  }
  return described;
}

const args = readArguments("grpc-js: DetectObjects on each image of a folder (grpc-js, proto-loader)");
const credentials = args.tls === undefined
  ? grpc.credentials.createInsecure()
  : grpc.credentials.createSsl(args.tls.ca as Buffer | undefined ?? null,
                               args.tls.key as Buffer | undefined ?? null,
                               args.tls.cert as Buffer | undefined ?? null);
const client = new loaded.vision.v1.DetectionService(args.target, credentials);
const metadata = new grpc.Metadata();
if (args.apiKey !== undefined) {
  metadata.set("authorization", `Bearer ${args.apiKey}`);
}
const report = new Report();
for (const image of readImages(args.images)) {
  const error = await new Promise<grpc.ServiceError | null>((resolve) => {
    client.DetectObjects(
      { image: { content: image.content }, options: { score_threshold: 0.3 } }, metadata,
      { deadline: Date.now() + 60_000 }, (failure) => resolve(failure));
  });
  if (error === null) {
    report.ok(image.name);
  } else {
    report.failed(image.name, statusOf(error));
  }
}
client.close();
report.exit();
