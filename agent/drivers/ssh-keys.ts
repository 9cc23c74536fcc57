// Handing the owner's SSH public keys to a VM. Pure helpers shared by the
// drivers: the authorized_keys content, and the guest-side command that
// installs it as /root/.ssh/authorized_keys (QEMU, through the guest agent).
import { invalid } from "../../common/errors.js";

/** Where the guest reads its keys (QEMU guests: the root user's authorized_keys). */
export const GUEST_AUTHORIZED_KEYS = "/root/.ssh/authorized_keys";
/** The environment variable that carries the file's content to the guest's installer. */
export const KEYS_ENV = "NOID_AUTHORIZED_KEYS";

/**
 * authorized_keys content: one key per line. A key with a line break or a NUL in it
 * would smuggle extra lines (options such as command=) into the file: refused. The
 * coordinator only stores keys it parsed (coordinator/users/ssh-key.ts); this is the
 * agent's own guard.
 */
export function authorizedKeysFile(keys: readonly string[]): string {
  for (const k of keys) {
    if (/[\r\n\0]/.test(k) || k.trim() === "") throw invalid("spec.ssh_authorized_keys", "a key must be one non-empty line");
  }
  return keys.length ? keys.map((k) => k.trim()).join("\n") + "\n" : "";
}

/**
 * argv (and env) that write the file in the guest with the modes sshd insists on. The
 * content travels in the environment, not in argv, so no quoting is involved.
 */
export function guestInstallCommand(keys: readonly string[]): { argv: string[]; env: Record<string, string> } {
  const dir = GUEST_AUTHORIZED_KEYS.slice(0, GUEST_AUTHORIZED_KEYS.lastIndexOf("/"));
  const script = [
    `umask 077`,
    `mkdir -p ${dir}`,
    `chmod 700 ${dir}`,
    `printf '%s' "$${KEYS_ENV}" > ${GUEST_AUTHORIZED_KEYS}.tmp`,
    `chmod 600 ${GUEST_AUTHORIZED_KEYS}.tmp`,
    `mv -f ${GUEST_AUTHORIZED_KEYS}.tmp ${GUEST_AUTHORIZED_KEYS}`,
  ].join(" && ");
  return { argv: ["/bin/sh", "-c", script], env: { [KEYS_ENV]: authorizedKeysFile(keys) } };
}
