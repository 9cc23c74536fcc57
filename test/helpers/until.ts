// Polls `cond` until it holds, failing with `what` after `ms`.
export async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 30_000, everyMs = 50): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
