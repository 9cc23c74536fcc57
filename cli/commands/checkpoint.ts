// Checkpoint commands: checkpoint (save a running VM's state), checkpoints (list them),
// restore (in place, or as a new VM with --as).
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { Checkpoint } from "../../sdk/index.js";
import type { App } from "../app.js";
import { UsageError } from "../parse.js";
import type { View } from "../render.js";
import { age, vmView } from "../views.js";

const size = (n: number): string => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)}Mi` : n >= 1024 ? `${(n / 1024).toFixed(1)}Ki` : `${n}B`);

export const checkpointView: View<Checkpoint> = {
  toJSON: (c) => Checkpoint.toJSON(c),
  columns: [
    { header: "NAME", value: (c) => c.name },
    { header: "VM", value: (c) => c.vmName },
    { header: "HOST", value: (c) => c.hostName },
    { header: "DRIVER", value: (c) => c.driver },
    { header: "SIZE", value: (c) => size(c.sizeBytes) },
    { header: "ENCRYPTED", value: (c) => (c.encrypted ? "yes" : "no") },
    { header: "AGE", value: (c, now) => age(c.createdAt, now) },
    { header: "SHA256", value: (c) => c.sha256, wide: true },
    { header: "ID", value: (c) => c.id, wide: true },
  ],
};

/** Pure: a key file holds 32 raw bytes or 64 hex characters. */
export function parseKeyFile(content: Buffer, path: string): Buffer {
  if (content.length === 32) return content;
  const text = content.toString("latin1").trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex");
  throw new UsageError(`${path}: a key file holds 32 bytes (or 64 hex characters); this one has ${content.length} bytes. Make one with: head -c 32 /dev/urandom > ${path}`);
}

function readKey(app: App, path: string): Buffer {
  let content: Buffer;
  try {
    content = readFileSync(app.absolute(path));
  } catch (e) {
    throw new UsageError(`cannot read key file ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  return parseKeyFile(content, path);
}

export function registerCheckpointCommands(program: Command, app: App): void {
  program
    .command("checkpoint")
    .description("save a running VM's state (memory and disk) as a named checkpoint on its host")
    .argument("<vm>", "VM name")
    .argument("<name>", "checkpoint name")
    .option("--encrypt", "encrypt the checkpoint with AES-256-GCM (needs --key-file)")
    .option("--key-file <path>", "32-byte key (raw, or 64 hex characters)")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText(
      "after",
      `
The VM is paused while its state is written, then runs on. The key is sent to the VM's host
for this call only: never stored or logged; without it the checkpoint cannot be restored.

Examples:
  noidctl checkpoint web before-upgrade
  head -c 32 /dev/urandom > ./key && chmod 600 ./key
  noidctl checkpoint web snap1 --encrypt --key-file ./key`,
    )
    .action(async (vm: string, name: string, o: { encrypt?: boolean; keyFile?: string; owner?: string }) => {
      if (o.encrypt && !o.keyFile) throw new UsageError("--encrypt needs --key-file");
      if (o.keyFile && !o.encrypt) throw new UsageError("--key-file without --encrypt: add --encrypt to encrypt the checkpoint");
      const key = o.keyFile ? readKey(app, o.keyFile) : undefined;
      const c = await app.client().checkpointVm(vm, name, { ...(key ? { key } : {}), ...(o.owner ? { owner: o.owner } : {}) });
      app.printResult(`checkpoint ${c.name} of ${c.vmName} saved on ${c.hostName} (${size(c.sizeBytes)}${c.encrypted ? ", encrypted" : ""})`, checkpointView, c);
    });

  program
    .command("checkpoints")
    .description("list a VM's checkpoints")
    .argument("<vm>", "VM name")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText("after", "\nExamples:\n  noidctl checkpoints web\n  noidctl checkpoints web -o wide")
    .action(async (vm: string, o: { owner?: string }) => {
      app.printList(checkpointView, await app.client().listCheckpoints(vm, o.owner ? { owner: o.owner } : {}));
    });

  program
    .command("restore")
    .description("bring a VM back to a checkpoint, in place or as a new VM (--as)")
    .argument("<vm>", "VM name")
    .argument("<name>", "checkpoint name")
    .option("--as <new-vm>", "restore as a new VM: a clone with its own MAC and address")
    .option("--key-file <path>", "the key of an encrypted checkpoint")
    .option("--force", "restore in place onto a running VM (its current state is lost)")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText(
      "after",
      `
In place, the VM's memory and disk become the checkpoint's: processes resume where they were.
A clone runs on the checkpoint's host with the same disk and memory, a new name, MAC and
address; the guest is given them (and fresh entropy) right after it resumes.
A wrong key is refused and nothing is changed.

Examples:
  noidctl restore web before-upgrade --force
  noidctl restore web snap1 --key-file ./key --force
  noidctl restore web snap1 --as web2 --key-file ./key`,
    )
    .action(async (vm: string, name: string, o: { as?: string; keyFile?: string; force?: boolean; owner?: string }) => {
      const key = o.keyFile ? readKey(app, o.keyFile) : undefined;
      const v = await app.client().restoreVm(vm, name, {
        ...(key ? { key } : {}),
        ...(o.as ? { as: o.as } : {}),
        ...(o.force ? { force: true } : {}),
        ...(o.owner ? { owner: o.owner } : {}),
      });
      app.printResult(o.as ? `VM ${v.name} restored from ${vm}/${name}` : `VM ${v.name} restored to checkpoint ${name}`, vmView, v);
    });
}
