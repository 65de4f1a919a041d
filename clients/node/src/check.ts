/**
 * Exercises the client against a running server (detection, its upload stream, analysis and
 * health over one connection) and prints what came back as JSON, for
 * tests/integration/test_node_client.py: `node dist/check.js <host:port> <images folder>`.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";

import {
  createVisionClients, detect, statusOfError, describeStatus, streamDetect,
  type StatusDetails,
} from "./client.js";
import { create } from "@bufbuild/protobuf";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";

const [target, images] = process.argv.slice(2);
if (!target || !images) {
  console.error("usage: node dist/check.js <host:port> <images folder>");
  process.exit(2);
}
const clients = createVisionClients({ baseUrl: `http://${target}` });
const photo = (name: string) => new Uint8Array(readFileSync(join(images, name)));

const astronaut = await detect(clients.detection, photo("astronaut.png"), { scoreThreshold: 0.3 });

// Every IDAT chunk's data zeroed: the PNG's chunks and header are fine, its pixels do not decode.
const corrupt = photo("coffee.png");
const view = new DataView(corrupt.buffer, corrupt.byteOffset, corrupt.byteLength);
for (let pos = 8; pos + 12 <= corrupt.length; ) {
  const length = view.getUint32(pos);
  if (String.fromCharCode(...corrupt.subarray(pos + 4, pos + 8)) === "IDAT") {
    corrupt.fill(0, pos + 8, pos + 8 + length);
  }
  pos += 12 + length;
}
const streamed: Record<string, { labels: string[]; status: StatusDetails }> = {};
for await (const item of streamDetect(clients.detection, [
  { requestId: "astronaut", content: photo("astronaut.png") },
  { requestId: "corrupt", content: corrupt },
  { requestId: "chelsea", content: photo("chelsea.png") },
], 256 << 10)) {
  streamed[item.requestId] = {
    labels: item.result?.detections.map((d) => d.label) ?? [],
    status: describeStatus(item.status ?? create(StatusSchema)),
  };
}

let empty: StatusDetails | undefined;
try {
  await detect(clients.detection, new Uint8Array());
} catch (error) {
  empty = statusOfError(error);
}

// Analysis and health over the same transport (one HTTP/2 connection) as detection.
const analysis = await clients.analysis.analyzeImage({
  image: { source: { case: "content", value: photo("astronaut.png") } },
  options: { objects: {}, text: {} },
});
const health = await clients.health.check({ service: "vision.v1.AnalysisService" });

console.log(JSON.stringify({
  detect: astronaut.detections.map((d) => ({ label: d.label, score: d.score })),
  imageSize: { width: astronaut.imageSize?.width, height: astronaut.imageSize?.height },
  model: { name: astronaut.model?.name, version: astronaut.model?.version },
  analysis: {
    objects: analysis.analysis?.objects?.detections.map((d) => d.label) ?? [],
    textStatus: analysis.analysis?.text?.status?.code ?? 0,
  },
  health: health.status,
  stream: streamed,
  empty,
}));
