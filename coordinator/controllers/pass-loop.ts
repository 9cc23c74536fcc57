// The pass loop of the leader's controllers (placement, host loss): a pass runs soon after a
// kick, passes never overlap, and a kick during a pass (or a pass that asks for it) runs one
// more; a failed pass is retried after a delay the controller chooses.
import type { Logger } from "pino";

export class PassLoop {
  private running = false;
  private more = false;
  private halted = false;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly o: {
      /** One pass; true when it lost a race and should be retried. */
      pass: () => Promise<boolean>;
      /** Logged when a pass throws (then retried). */
      what: string;
      logger: Logger;
      /** Delay before the next pass: after a retryable pass, or after a kick during one that took `tookMs`. */
      nextDelayMs: (retry: boolean, tookMs: number) => number;
    },
  ) {}

  get stopped(): boolean {
    return this.halted;
  }

  /** Runs a pass after `delayMs`, unless one is due already. */
  kick(delayMs = 0): void {
    if (this.halted) return;
    if (this.running) {
      this.more = true;
      return;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, delayMs);
  }

  /** Called during a pass: run another once this one ends (work was left for it). */
  again(): void {
    this.more = true;
  }

  async stop(): Promise<void> {
    this.halted = true;
    if (this.timer) clearTimeout(this.timer);
    while (this.running) await new Promise((r) => setTimeout(r, 10));
  }

  private async run(): Promise<void> {
    this.running = true;
    const started = performance.now();
    let retry = false;
    try {
      retry = await this.o.pass();
    } catch (err) {
      this.o.logger.warn({ err }, `${this.o.what} pass failed`);
      retry = true;
    } finally {
      this.running = false;
    }
    if (this.more || retry) {
      this.more = false;
      this.kick(this.o.nextDelayMs(retry, performance.now() - started));
    }
  }
}
