// A store that counts the calls made through it, by method (get, list, txn...), and
// otherwise is the store it wraps: for tests that show how many etcd requests a
// change of behaviour saves.
import type { Store } from "../../coordinator/store/store.js";

export function countingStore<S extends Store>(inner: S): { store: S; count: (...methods: (keyof Store)[]) => number } {
  const calls = new Map<PropertyKey, number>();
  const store = new Proxy(inner, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        calls.set(prop, (calls.get(prop) ?? 0) + 1);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { store, count: (...methods) => methods.reduce((n, m) => n + (calls.get(m) ?? 0), 0) };
}
