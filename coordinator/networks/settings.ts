// Network settings: one zod schema holding the defaults, the coordinator
// config's `networks` section; `networkSettings(undefined)` gives the defaults.
import { z } from "zod";
import { NoidError } from "../../common/errors.js";
import { parseCidr } from "./cidr.js";
import { checkTenantCidr } from "./validate.js";

const VNI_MAX = 16_777_215; // 24 bits

export const NetworkSettingsSchema = z
  .object({
    /** CIDR of every user's lazily created "default" network (tenants may overlap). */
    default_cidr: z.string().default("10.0.0.0/24"),
    /** VNIs handed out, lowest free first; the range below 4096 is left for operators. */
    vni_min: z.number().int().min(1).max(VNI_MAX).default(4096),
    vni_max: z.number().int().min(1).max(VNI_MAX).default(VNI_MAX),
    /** A released address is not handed out again for this long (stale ARP caches, in-flight packets). */
    ip_reuse_grace_seconds: z.number().int().min(0).default(300),
    /** Networks one user may own, the default network included. */
    max_networks_per_user: z.number().int().min(1).max(1000).default(32),
  })
  .strict();

export type NetworkSettings = z.infer<typeof NetworkSettingsSchema>;

export const NETWORK_SETTINGS_DEFAULTS: NetworkSettings = NetworkSettingsSchema.parse({});

/** Validates a `networks` config section (undefined -> defaults); errors name the field. */
export function networkSettings(section: unknown): NetworkSettings {
  const r = NetworkSettingsSchema.safeParse(section ?? {});
  if (!r.success) {
    const msg = r.error.issues.map((i) => `networks.${i.path.join(".")}: ${i.message}`).join("; ");
    throw new NoidError("INVALID_ARGUMENT", `invalid coordinator config: ${msg}`);
  }
  const s = r.data;
  if (s.vni_min > s.vni_max) throw new NoidError("INVALID_ARGUMENT", "invalid coordinator config: networks.vni_min must be at most networks.vni_max");
  const p = parseCidr(s.default_cidr);
  if (!p.ok) throw new NoidError("INVALID_ARGUMENT", `invalid coordinator config: networks.default_cidr: ${p.why}`);
  checkTenantCidr("networks.default_cidr", p.cidr, s.default_cidr);
  return s;
}
