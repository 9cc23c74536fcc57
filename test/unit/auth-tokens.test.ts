// Token rotation with overlap, expiry and revocation, on the in-memory store with an injected clock.
import { Metadata } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { Role } from "../../gen/noid/v1/auth.js";
import { TokenStore } from "../../coordinator/auth/tokens.js";
import { MemoryStore } from "../../coordinator/store/memory-store.js";
import { isNoidError } from "../../common/errors.js";

const md = (secret: string) => {
  const m = new Metadata();
  m.set("authorization", `Bearer ${secret}`);
  return m;
};

async function refusal(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (isNoidError(e, "UNAUTHENTICATED")) return e.message;
    throw e;
  }
  throw new Error("expected UNAUTHENTICATED");
}

describe("TokenStore", () => {
  const stores: MemoryStore[] = [];
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
  });
  const setup = (overlap = 60) => {
    let t = 1_700_000_000_000;
    const clock = { now: () => new Date(t), advance: (s: number) => (t += s * 1000) };
    const store = new MemoryStore({ sweepIntervalMs: 0 });
    stores.push(store);
    return { clock, tokens: new TokenStore(store, clock, overlap) };
  };

  it("keeps the old secret working for the overlap after a rotation, then refuses it", async () => {
    const { clock, tokens } = setup(60);
    const { secret: old } = await tokens.create({ name: "ci", user: "ci", role: Role.ROLE_USER, ttlSeconds: 0 });
    const r = await tokens.rotate(await tokens.find({ name: "ci" }));
    expect(r.oldExpiresAt.getTime() - clock.now().getTime()).toBe(60_000);
    expect((await tokens.authenticate(md(old), "p")).user).toBe("ci");
    expect((await tokens.authenticate(md(r.secret), "p")).tokenName).toBe("ci");
    // One token in listings, not two.
    expect((await tokens.list()).map((t) => t.record.name)).toEqual(["ci"]);
    clock.advance(60);
    expect(await refusal(tokens.authenticate(md(old), "p"))).toBe("invalid, expired or revoked token");
    expect((await tokens.authenticate(md(r.secret), "p")).user).toBe("ci");
    expect(await tokens.sweep()).toBe(1);
  });

  it("never extends an expiry by rotating, and a second rotation kills the first old secret at once", async () => {
    const { clock, tokens } = setup(60);
    const { secret: s0 } = await tokens.create({ name: "short", user: "u", role: Role.ROLE_USER, ttlSeconds: 30 });
    const r1 = await tokens.rotate(await tokens.find({ name: "short" }));
    expect(r1.oldExpiresAt.getTime() - clock.now().getTime()).toBe(30_000);
    const r2 = await tokens.rotate(await tokens.find({ name: "short" }));
    await refusal(tokens.authenticate(md(s0), "p"));
    expect((await tokens.authenticate(md(r1.secret), "p")).user).toBe("u");
    expect((await tokens.authenticate(md(r2.secret), "p")).user).toBe("u");
    clock.advance(31);
    // The token itself expired: every secret of it is refused, with the same message as an unknown one.
    for (const s of [r1.secret, r2.secret]) expect(await refusal(tokens.authenticate(md(s), "p"))).toBe("invalid, expired or revoked token");
  });

  it("revokes the live secret and the one in overlap together; unknown and malformed tokens are refused", async () => {
    const { tokens } = setup(60);
    const { secret: old } = await tokens.create({ name: "t", user: "u", role: Role.ROLE_ADMIN, ttlSeconds: 0 });
    const r = await tokens.rotate(await tokens.find({ name: "t" }));
    await tokens.revoke(await tokens.find({ name: "t" }));
    for (const s of [old, r.secret, "ab".repeat(32)]) expect(await refusal(tokens.authenticate(md(s), "p"))).toBe("invalid, expired or revoked token");
    expect(await refusal(tokens.authenticate(md("nope"), "p"))).toMatch(/malformed/);
    expect(await refusal(tokens.authenticate(new Metadata(), "p"))).toMatch(/missing authorization/);
  });

  it("with overlap 0 the old secret dies at once", async () => {
    const { tokens } = setup(0);
    const { secret: old } = await tokens.create({ name: "t", user: "u", role: Role.ROLE_USER, ttlSeconds: 0 });
    await tokens.rotate(await tokens.find({ name: "t" }));
    await refusal(tokens.authenticate(md(old), "p"));
  });
});
