// CPU profile of a window of a bench run (e.g. only the placement phase), taken
// with node:inspector in the process that calls it: the bench process itself,
// or the child coordinator on an IPC request. `node --cpu-prof` profiles a
// whole run, where creating the backlog through the API dominates.
import { Session } from "node:inspector/promises";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export class WindowProfiler {
  private session?: Session;

  async start(): Promise<void> {
    if (this.session) return;
    const s = new Session();
    s.connect();
    await s.post("Profiler.enable");
    await s.post("Profiler.setSamplingInterval", { interval: 1000 });
    await s.post("Profiler.start");
    this.session = s;
  }

  /** Stops and writes `<dir>/<name>.cpuprofile`; returns the path ("" when not started). */
  async stop(dir: string, name: string): Promise<string> {
    const s = this.session;
    if (!s) return "";
    this.session = undefined;
    const { profile } = await s.post("Profiler.stop");
    s.disconnect();
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${name}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    return file;
  }
}
