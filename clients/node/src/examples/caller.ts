/**
 * What the examples share: their arguments (`[--target host:port] [--ca ca.pem] [--cert c.pem
 * --key k.pem] [--api-key K] IMAGES_DIR`), the files of the folder, and one line per image:
 * `<file> OK` or `<file> <CODE> <REASON> <field>` (the exit status is 1 when some image failed
 * otherwise than with a documented bad-image error, 2 on a usage error).
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

import type { StatusDetails, TlsOptions } from "../client.js";

export interface Arguments {
  target: string;
  tls?: TlsOptions;
  apiKey?: string;
  images: string;
}

export function readArguments(about: string): Arguments {
  const usage = `${about}\nusage: node ${process.argv[1]} [--target host:port] [--ca ca.pem] ` +
    "[--cert cert.pem --key key.pem] [--api-key KEY] IMAGES_DIR";
  try {
    const { values, positionals } = parseArgs({
      options: {
        target: { type: "string", default: "127.0.0.1:4603" },
        ca: { type: "string" }, cert: { type: "string" }, key: { type: "string" },
        "api-key": { type: "string" },
      },
      allowPositionals: true,
    });
    const [images] = positionals;
    if (positionals.length !== 1 || images === undefined
        || (values.cert === undefined) !== (values.key === undefined)) {
      throw new Error("one IMAGES_DIR; --cert and --key together");
    }
    const pem = (file?: string) => (file === undefined ? undefined : readFileSync(file));
    const secure = values.ca !== undefined || values.cert !== undefined;
    return {
      target: values.target,
      tls: secure ? { ca: pem(values.ca), cert: pem(values.cert), key: pem(values.key) } : undefined,
      apiKey: values["api-key"],
      images,
    };
  } catch (error) {
    console.error(`${String(error)}\n${usage}`);
    process.exit(2);
  }
}

/** Every regular file of the folder (hidden ones excepted), by name: the server decides what an
 * image is. */
export function readImages(folder: string): { name: string; content: Uint8Array }[] {
  return readdirSync(folder).sort()
    .filter((name) => !name.startsWith(".") && statSync(join(folder, name)).isFile())
    .map((name) => ({ name, content: new Uint8Array(readFileSync(join(folder, name))) }));
}

/** gRPC's canonical code names, by number. */
const CODE_NAMES = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

/** The documented answers to a bad image (README, "The API"): an example meeting one succeeds. */
const IMAGE_ERRORS = new Set([
  "EMPTY_IMAGE", "INVALID_IMAGE", "IMAGE_TRUNCATED", "UNSUPPORTED_IMAGE_FORMAT",
  "IMAGE_DECODE_FAILED", "IMAGE_TOO_LARGE", "IMAGE_TOO_COMPLEX",
]);

/** Prints the lines and keeps the exit status. */
export class Report {
  private undocumented = 0;

  ok(name: string): void {
    console.log(`${name} OK`);
  }

  failed(name: string, status: StatusDetails): void {
    const fields = status.fieldViolations.map((v) => v.field).join(",") || "-";
    const retry = status.retryDelayMs === undefined ? "" : ` retry-after=${status.retryDelayMs}ms`;
    console.log(`${name} ${CODE_NAMES[status.code] ?? status.code} ${status.reason ?? "-"} ${fields}${retry}`);
    if (status.code !== 3 || !IMAGE_ERRORS.has(status.reason ?? "")) {
      this.undocumented += 1;
    }
  }

  exit(): never {
    process.exit(this.undocumented > 0 ? 1 : 0);
  }
}
