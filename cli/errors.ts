// The one place that turns failures into the line noidctl prints and its exit
// code: usage mistakes exit 2, everything else 1, with a hint for the codes a
// user can do something about.
import { isNoidApiError } from "../sdk/index.js";
import { UsageError } from "./parse.js";

export interface ErrorReport {
  message: string;
  exitCode: number;
}

export function describeError(e: unknown, server: string | undefined): ErrorReport {
  if (e instanceof UsageError) return { message: e.message, exitCode: 2 };
  if (isNoidApiError(e)) {
    const at = server ? ` at ${server}` : "";
    switch (e.code) {
      case "UNAVAILABLE":
        return { message: `cannot reach coordinator${at}: ${e.message}`, exitCode: 1 };
      case "UNAUTHENTICATED":
        return { message: `${e.message} (run \`noidctl auth setup --token <token>\`, or set NOID_TOKEN)`, exitCode: 1 };
      case "PERMISSION_DENIED":
        return { message: `${e.message} (your token's role does not allow this; see \`noidctl whoami\`)`, exitCode: 1 };
      case "DEADLINE_EXCEEDED":
        return { message: `${e.message} (no answer from the coordinator${at} in time; raise --timeout)`, exitCode: 1 };
      default:
        return { message: e.message, exitCode: 1 };
    }
  }
  return { message: e instanceof Error ? e.message : String(e), exitCode: 1 };
}
