// Checks the host's posture now and every interval; hands a changed result to `onChange`
// (the session sends it to the coordinator). A check that cannot run is logged, not fatal.
import type { HostPosture } from "../../gen/noid/v1/host.js";
import type { Logger } from "../../common/logger.js";
import type { Runner } from "../../common/run.js";
import { observePosture } from "./observe.js";
import { type PosturePolicy, assessPosture } from "./posture.js";

export interface PostureReporterOptions {
  root: string;
  policy: PosturePolicy;
  intervalMs: number;
  runner: Runner;
  logger: Logger;
  onChange: (p: HostPosture) => void;
}

export class PostureReporter {
  private timer: NodeJS.Timeout | undefined;
  private last = "";

  constructor(private readonly o: PostureReporterOptions) {}

  /** The posture now, as the proto message (checked_at is set by the coordinator). */
  async check(): Promise<HostPosture> {
    const p = assessPosture(await observePosture({ root: this.o.root, runner: this.o.runner }), this.o.policy);
    const failing = p.checks.filter((c) => !c.ok && !c.optional).map((c) => c.name);
    const msg: HostPosture = { ok: p.ok, checks: p.checks, checkedAt: undefined };
    const key = JSON.stringify(p);
    if (key !== this.last) {
      this.last = key;
      if (failing.length) this.o.logger.warn({ failing }, "host posture fails hardening checks (deploy/harden.ts fixes them)");
      else this.o.logger.info("host posture ok");
    }
    return msg;
  }

  start(): void {
    this.timer = setInterval(() => {
      const before = this.last;
      this.check().then(
        (p) => {
          if (this.last !== before) this.o.onChange(p);
        },
        (e: unknown) => this.o.logger.warn({ err: e instanceof Error ? e.message : String(e) }, "posture check failed"),
      );
    }, this.o.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
