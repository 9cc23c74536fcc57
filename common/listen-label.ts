// The VM label that declares which TCP ports a VM may accept connections on, read by the
// agent's listener detection (agent/network/monitor-rules.ts) and checked when a VM is created.
import { invalid } from "./errors.js";

/** Label `noid.dev/listen` on a VM: the TCP ports it may accept connections on ("22_80_443"), or "any". */
export const LISTEN_LABEL = "noid.dev/listen";

/** Pure: the declared listening ports from a VM's labels (absent: none declared). Bad values are an error naming the label. */
export function declaredListen(labels: Readonly<Record<string, string>> | undefined): number[] | "any" {
  const v = labels?.[LISTEN_LABEL];
  if (v === undefined || v === "") return [];
  if (v === "any") return "any";
  const parts = v.split(/[_.]/);
  const ports = parts.map(Number);
  if (ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) throw invalid(`labels.${LISTEN_LABEL}`, `"${v}" is not "any" or ports joined by "_" (e.g. 22_80_443)`);
  return [...new Set(ports)].sort((a, b) => a - b);
}
