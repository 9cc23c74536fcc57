import { invalid } from "./errors.js";

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** A name is a DNS label: 1-63 chars of a-z, 0-9 and '-', not starting or ending with '-'. */
export function isDnsLabel(s: string): boolean {
  return DNS_LABEL.test(s);
}

/** Throws INVALID_ARGUMENT naming `field` unless `value` is a DNS label. */
export function checkName(field: string, value: string): string {
  if (value.length === 0) throw invalid(field, "is required");
  if (value.length > 63) throw invalid(field, `must be at most 63 characters (got ${value.length})`);
  if (!isDnsLabel(value)) {
    throw invalid(field, `"${value}" must be lower-case letters, digits and '-', starting and ending with a letter or digit`);
  }
  return value;
}

/** Label keys may carry a DNS-style prefix ("noid.dev/zone"); values are up to 63 chars. */
const LABEL_KEY = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$/;

export function checkLabels(field: string, labels: Record<string, string>): Record<string, string> {
  const keys = Object.keys(labels);
  if (keys.length > 64) throw invalid(field, `at most 64 labels (got ${keys.length})`);
  for (const k of keys) {
    if (!LABEL_KEY.test(k)) throw invalid(`${field}`, `label key "${k}" is not valid`);
    const v = labels[k] ?? "";
    if (!LABEL_VALUE.test(v)) throw invalid(`${field}`, `label value "${v}" for "${k}" is not valid`);
  }
  return labels;
}
