// Reading `nft -j list ...` output: the objects of one type ("chain", "rule", "counter", ...),
// and named counters as numbers. Shared by the port guards and the egress table.
import { NoidError } from "./errors.js";

interface NftJson {
  nftables?: Record<string, Record<string, unknown>>[];
}

export function nftObjects(json: string, type: string): Record<string, unknown>[] {
  let parsed: NftJson;
  try {
    parsed = JSON.parse(json) as NftJson;
  } catch (e) {
    throw new NoidError("INTERNAL", "nft -j: unparsable output", { cause: e });
  }
  return (parsed.nftables ?? []).flatMap((o) => (o[type] ? [o[type]] : []));
}

/** Named counters by name. */
export function nftCounters(json: string): Map<string, { packets: number; bytes: number }> {
  return new Map(nftObjects(json, "counter").map((c) => [String(c.name), { packets: Number(c.packets ?? 0), bytes: Number(c.bytes ?? 0) }]));
}
