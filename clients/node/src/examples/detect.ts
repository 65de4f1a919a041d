/**
 * DetectObjects on each image of a folder with the Connect client (one HTTP/2 connection for
 * every service), the failure's details decoded from the grpc-status-details-bin trailer:
 * `node dist/examples/detect.js [flags] IMAGES_DIR` (flags: examples/caller.ts).
 */
import { createVisionClients, detect, statusOfError } from "../client.js";
import { readArguments, readImages, Report } from "./caller.js";

const args = readArguments("detect: DetectObjects on each image of a folder (Connect client)");
const scheme = args.tls === undefined ? "http" : "https";
const clients = createVisionClients({
  baseUrl: `${scheme}://${args.target}`, tls: args.tls, apiKey: args.apiKey, timeoutMs: 60_000,
});
const report = new Report();
for (const image of readImages(args.images)) {
  try {
    await detect(clients.detection, image.content, { scoreThreshold: 0.3 });
    report.ok(image.name);
  } catch (error) {
    report.failed(image.name, statusOfError(error));
  }
}
report.exit();
