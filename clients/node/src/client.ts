/**
 * A small TypeScript client of vision-grpc: plain gRPC over HTTP/2 (TLS optional) with
 * @connectrpc/connect-node, on the messages protoc-gen-es generates from protos/ (src/gen,
 * `scripts/gen-stubs`). It shows what every caller needs: a stub per service on one connection,
 * TLS and mutual TLS, a unary call, the chunked upload stream (upload.proto), and the
 * google.rpc.Status details of a failure.
 */
import { create, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import {
  Code, ConnectError, createClient, type Client, type Interceptor, type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { type Status, StatusSchema } from "./gen/google/rpc/status_pb.js";
import { Health } from "./gen/grpc/health/v1/health_pb.js";
import { AnalysisService } from "./gen/vision/v1/analysis_service_pb.js";
import { DetectionOptionsSchema } from "./gen/vision/v1/detection_pb.js";
import {
  DetectionService,
  type DetectObjectsResponse,
  type StreamDetectObjectsRequest,
  StreamDetectObjectsRequestSchema,
  type StreamDetectObjectsResponse,
} from "./gen/vision/v1/detection_service_pb.js";
import { EmbeddingService } from "./gen/vision/v1/embedding_service_pb.js";
import { FaceService } from "./gen/vision/v1/face_service_pb.js";
import { IngestService } from "./gen/vision/v1/ingest_service_pb.js";
import { ModelService } from "./gen/vision/v1/model_service_pb.js";
import { OcrService } from "./gen/vision/v1/ocr_service_pb.js";
import { PeopleService } from "./gen/vision/v1/people_service_pb.js";
import { SearchService } from "./gen/vision/v1/search_service_pb.js";

/** 1 MiB chunks: well under the server's 4 MiB message limit (framing included). */
export const DEFAULT_CHUNK_BYTES = 1 << 20;

/** PEM contents (not file names), as Node's tls options take them. */
export interface TlsOptions {
  /** Roots the server's certificate must chain to; Node's default roots when unset. */
  ca?: string | Buffer;
  /** Mutual TLS: the client's certificate chain, with `key`. */
  cert?: string | Buffer;
  /** Mutual TLS: the client certificate's private key, with `cert`. */
  key?: string | Buffer;
}

export interface VisionClientOptions {
  /** `http://host:port` for plain HTTP/2, `https://host:port` for TLS. */
  baseUrl: string;
  /** Certificates for an `https://` baseUrl; a server with mutual TLS needs `cert` and `key`. */
  tls?: TlsOptions;
  /** Sent as `authorization: Bearer <apiKey>` when set. */
  apiKey?: string;
  /** Default deadline of each call. */
  timeoutMs?: number;
}

/**
 * Connect reports a connection that TLS tears down right after the handshake as CANCELLED (the
 * HTTP/2 stream closed with CANCEL), though the caller cancelled nothing: with TLS 1.3 a server
 * that refuses the client's certificate (mutual TLS) sends its alert once the client has
 * finished. gRPC's other clients (grpc-js, Go, Python) say UNAVAILABLE, and so does this one.
 */
const connectionLost: Interceptor = (next) => async (request) => {
  const unavailable = (error: unknown) => {
    const failure = ConnectError.from(error);
    return failure.code === Code.Canceled && !request.signal.aborted
      ? new ConnectError(failure.rawMessage, Code.Unavailable, failure.metadata, undefined, failure)
      : failure;
  };
  try {
    const response = await next(request);
    if (!response.stream) {
      return response;
    }
    const messages = response.message;
    return {
      ...response,
      message: (async function* () {
        try {
          yield* messages;
        } catch (error) {
          throw unavailable(error);
        }
      })(),
    };
  } catch (error) {
    throw unavailable(error);
  }
};

/** One HTTP/2 connection (`transport`) shared by a stub per service. */
export function createVisionClients(options: VisionClientOptions) {
  if ((options.tls?.cert === undefined) !== (options.tls?.key === undefined)) {
    throw new Error("tls.cert and tls.key go together (mutual TLS)");
  }
  const transport: Transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    nodeOptions: options.tls,
    defaultTimeoutMs: options.timeoutMs ?? 30_000,
    interceptors: options.apiKey === undefined ? [connectionLost] : [
      connectionLost,
      (next) => async (request) => {
        request.header.set("authorization", `Bearer ${options.apiKey}`);
        return next(request);
      },
    ],
  });
  return {
    transport,
    detection: createClient(DetectionService, transport),
    embedding: createClient(EmbeddingService, transport),
    faces: createClient(FaceService, transport),
    ocr: createClient(OcrService, transport),
    models: createClient(ModelService, transport),
    ingest: createClient(IngestService, transport),
    search: createClient(SearchService, transport),
    people: createClient(PeopleService, transport),
    analysis: createClient(AnalysisService, transport),
    health: createClient(Health, transport),
  };
}

export type DetectionOptionsInit = MessageInitShape<typeof DetectionOptionsSchema>;

export type DetectionClient = Client<typeof DetectionService>;

/** Detects objects in one image (at most 4 MiB minus a few bytes of framing: stream larger ones). */
export function detect(
  client: DetectionClient, content: Uint8Array, options?: DetectionOptionsInit,
): Promise<DetectObjectsResponse> {
  return client.detectObjects({ image: { source: { case: "content", value: content } }, options });
}

export interface StreamImage {
  requestId: string;
  content: Uint8Array;
  options?: DetectionOptionsInit;
}

/** The upload protocol's messages: per image a header, its chunks, an end marker. */
export async function* detectionUploads(
  images: Iterable<StreamImage>, chunkBytes = DEFAULT_CHUNK_BYTES,
): AsyncGenerator<StreamDetectObjectsRequest> {
  for (const image of images) {
    yield create(StreamDetectObjectsRequestSchema, {
      kind: {
        case: "header",
        value: {
          requestId: image.requestId,
          sizeBytes: BigInt(image.content.length),
          options: { case: "detection", value: image.options ?? {} },
        },
      },
    });
    for (let start = 0; start < image.content.length; start += chunkBytes) {
      yield create(StreamDetectObjectsRequestSchema, {
        kind: { case: "chunk", value: { data: image.content.subarray(start, start + chunkBytes) } },
      });
    }
    yield create(StreamDetectObjectsRequestSchema, { kind: { case: "end", value: {} } });
  }
}

/** Uploads images over one stream; yields each result as it completes (any order). */
export function streamDetect(
  client: DetectionClient, images: Iterable<StreamImage>, chunkBytes = DEFAULT_CHUNK_BYTES,
): AsyncIterable<StreamDetectObjectsResponse> {
  return client.streamDetectObjects(detectionUploads(images, chunkBytes));
}

/** What a google.rpc.Status says, with its details decoded. */
export interface StatusDetails {
  code: number;
  message: string;
  reason?: string;
  domain?: string;
  fieldViolations: { field: string; description: string }[];
  retryDelayMs?: number;
  resource?: { type: string; name: string };
}

/** Decodes a google.rpc.Status: a streamed item's own status, or a failed call's. */
export function describeStatus(status: Status): StatusDetails {
  const described: StatusDetails = {
    code: status.code, message: status.message, fieldViolations: [],
  };
  for (const detail of status.details) {
    const info = anyUnpack(detail, ErrorInfoSchema);
    if (info) {
      described.reason = info.reason;
      described.domain = info.domain;
    }
    const bad = anyUnpack(detail, BadRequestSchema);
    if (bad) {
      described.fieldViolations.push(
        ...bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    }
    const retry = anyUnpack(detail, RetryInfoSchema);
    if (retry?.retryDelay) {
      described.retryDelayMs =
        Number(retry.retryDelay.seconds) * 1000 + retry.retryDelay.nanos / 1e6;
    }
    const resource = anyUnpack(detail, ResourceInfoSchema);
    if (resource) {
      described.resource = { type: resource.resourceType, name: resource.resourceName };
    }
  }
  return described;
}

/**
 * The status of a failed call. gRPC carries it in the `grpc-status-details-bin` trailer: the
 * base64 of a serialized google.rpc.Status whose code and message repeat grpc-status and
 * grpc-message, and whose `details` are Any messages (ErrorInfo, BadRequest, RetryInfo, ...).
 */
export function statusOfError(error: unknown): StatusDetails {
  const connectError = ConnectError.from(error);
  const encoded = connectError.metadata.get("grpc-status-details-bin");
  if (encoded) {
    return describeStatus(fromBinary(StatusSchema, Buffer.from(encoded, "base64")));
  }
  // No trailer: the gRPC layer itself refused the call (e.g. a message over the size limit).
  return { code: connectError.code, message: connectError.rawMessage, fieldViolations: [] };
}

export { Code, ConnectError };
