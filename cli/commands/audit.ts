// audit: read the audit log, newest first; audit verify: check its hash chain.
import type { Command } from "commander";
import type { App } from "../app.js";
import { parsePositiveInt } from "../parse.js";
import { VerifyAuditChainResponse } from "../../sdk/index.js";
import type { View } from "../render.js";

export const verifyView: View<VerifyAuditChainResponse> = {
  toJSON: (r) => VerifyAuditChainResponse.toJSON(r),
  columns: [
    { header: "OK", value: (r) => (r.ok ? "yes" : "NO") },
    { header: "CHECKED", value: (r) => String(r.checked) },
    { header: "FIRST", value: (r) => String(r.firstSeq) },
    { header: "LAST", value: (r) => String(r.lastSeq) },
    { header: "HEAD", value: (r) => r.headHash || "-" },
  ],
};

/** Pure: the one line `audit verify` prints for people. */
export function verifySentence(r: VerifyAuditChainResponse): string {
  if (r.ok) return `audit chain intact: ${r.checked} events (seq ${r.firstSeq}..${r.lastSeq}), head ${r.headHash || "-"}`;
  return `audit chain BROKEN at event ${r.brokenSeq}${r.brokenId ? ` (${r.brokenId})` : ""}: ${r.reason}`;
}
import { auditView } from "../views.js";

export function registerAuditCommand(program: Command, app: App): void {
  const audit = program
    .command("audit")
    .description("show audit events, newest first")
    .option("--limit <n>", "at most this many events", "50")
    .option("--user <user>", "only this user's events")
    .option("--vm <vm>", "only events about this VM")
    .option("--event <event>", "only this event, e.g. vm.create or auth.failure")
    .addHelpText("after", "\nExamples:\n  noidctl audit --limit 20\n  noidctl audit --user alice --vm web -o json\n  noidctl audit verify")
    .action(async (o: { limit: string; user?: string; vm?: string; event?: string }) => {
      const events = await app.client().listAuditEvents({
        limit: parsePositiveInt("--limit", o.limit),
        ...(o.user ? { user: o.user } : {}),
        ...(o.vm ? { vm: o.vm } : {}),
        ...(o.event ? { event: o.event } : {}),
      });
      app.printList(auditView, events);
    });

  audit
    .command("verify")
    .description("walk the audit log's hash chain and report the first broken link (admins); exit 1 if broken")
    .addHelpText("after", "\nExamples:\n  noidctl audit verify\n  noidctl audit verify -o json")
    .action(async () => {
      const r = await app.client().verifyAuditChain();
      app.printResult(verifySentence(r), verifyView, r);
      if (!r.ok) app.exitCode = 1;
    });
}
