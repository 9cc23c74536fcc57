// The last lines a process logged, in memory, bounded by count and by bytes: what
// `noidctl logs --host H` reads from an agent. It receives pino's output (JSON lines,
// already redacted by pino's `redact`), so nothing here sees a secret pino would not print.
import type { DestinationStream } from "pino";

export class LogRing implements DestinationStream {
  private readonly buf: string[] = [];
  private bytes = 0;
  private partial = "";

  constructor(
    private readonly maxLines = 2000,
    private readonly maxBytes = 2 * 1024 * 1024,
  ) {}

  write(chunk: string): void {
    const text = this.partial + chunk;
    const parts = text.split("\n");
    this.partial = parts.pop() ?? "";
    for (const line of parts) if (line !== "") this.push(line);
  }

  private push(line: string): void {
    // One oversized line must not evict everything else.
    const l = line.length > 64 * 1024 ? `${line.slice(0, 64 * 1024)}…` : line;
    this.buf.push(l);
    this.bytes += l.length;
    while (this.buf.length > this.maxLines || (this.bytes > this.maxBytes && this.buf.length > 1)) this.bytes -= this.buf.shift()!.length;
  }

  /** The last `tail` lines (all kept when 0), oldest first. */
  lines(tail = 0): string[] {
    return tail > 0 ? this.buf.slice(-tail) : [...this.buf];
  }
}

/** A pino destination that writes to every one of `dests` (e.g. stderr and a LogRing). */
export function teeDestination(...dests: DestinationStream[]): DestinationStream {
  return {
    write(s: string) {
      for (const d of dests) d.write(s);
    },
  };
}
