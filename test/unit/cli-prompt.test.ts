// The no-echo terminal prompt noidctl login uses: key handling (pure) and the
// raw-mode wrapper over a stand-in terminal stream.
import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import { promptKeys, promptLine, type PromptInput } from "../../cli/prompt.js";
import { readLoginSecrets } from "../../cli/commands/auth.js";

const empty = { text: "", done: false, cancelled: false };

describe("promptKeys", () => {
  it.each([
    ["plain line", "hunter2\r", "hunter2", true, false],
    ["LF ends too", "pw\n", "pw", true, false],
    ["backspace and DEL", "abx\x7fc\bd\r", "abd", true, false],
    ["Ctrl-U clears", "wrong\x15right\r", "right", true, false],
    ["arrow keys ignored", "a\x1b[Db\x1b[1;5Cc\r", "abc", true, false],
    ["Ctrl-D ends", "pw\x04", "pw", true, false],
    ["Ctrl-C cancels", "pw\x03more\r", "pw", false, true],
    ["unicode kept, removed whole", "pässwörd😀\x7f\r", "pässwörd", true, false],
    ["text after Enter is not taken", "a\rb", "a", true, false],
    ["other control characters dropped", "a\x01\x02b\t\r", "ab", true, false],
  ])("%s", (_what, input, text, done, cancelled) => {
    expect(promptKeys(empty, input)).toEqual({ text, done, cancelled });
  });

  it("keeps state across chunks (a terminal sends keys one by one)", () => {
    let s = empty;
    for (const k of ["s", "e", "c", "\x7f", "c", "\r"]) s = promptKeys(s, k);
    expect(s).toEqual({ text: "sec", done: true, cancelled: false });
  });
});

class FakeTty extends EventEmitter implements PromptInput {
  isTTY = true;
  raw: boolean[] = [];
  paused = true;
  setRawMode(on: boolean) {
    this.raw.push(on);
  }
  resume() {
    this.paused = false;
  }
  pause() {
    this.paused = true;
  }
  type(s: string) {
    for (const ch of s) this.emit("data", Buffer.from(ch));
  }
}

describe("promptLine", () => {
  it("reads without echo in raw mode and restores the terminal", async () => {
    const tty = new FakeTty();
    let shown = "";
    const p = promptLine(tty, (s) => void (shown += s), "Password: ", { echo: false });
    tty.type("s3cret pass\r");
    expect(await p).toBe("s3cret pass");
    expect(shown).toBe("Password: \n");
    expect(tty.raw).toEqual([true, false]);
    expect(tty.paused).toBe(true);
    expect(tty.listenerCount("data")).toBe(0);
  });

  it("echoes when asked, including erasing", async () => {
    const tty = new FakeTty();
    let shown = "";
    const p = promptLine(tty, (s) => void (shown += s), "Code: ", { echo: true });
    tty.type("12\x7f3\r");
    expect(await p).toBe("13");
    expect(shown).toBe("Code: 12\b \b3\n");
  });

  it("echoes a line that arrives in one chunk with its Enter (a paste)", async () => {
    const tty = new FakeTty();
    let shown = "";
    const p = promptLine(tty, (s) => void (shown += s), "Code: ", { echo: true });
    tty.emit("data", Buffer.from("123456\r"));
    expect(await p).toBe("123456");
    expect(shown).toBe("Code: 123456\n");
  });

  it("Ctrl-C rejects and still restores the terminal", async () => {
    const tty = new FakeTty();
    const p = promptLine(tty, () => {}, "Password: ", { echo: false });
    tty.type("abc\x03");
    await expect(p).rejects.toThrow(/interrupted/);
    expect(tty.raw).toEqual([true, false]);
  });
});

describe("readLoginSecrets", () => {
  const io = (stdin: string, prompt?: (q: string, o: { echo: boolean }) => Promise<string>) => ({
    io: { stdout: () => {}, stderr: () => {}, readStdin: async () => stdin, isTTY: false, cwd: "/", ...(prompt ? { prompt } : {}) },
  });

  it("without a terminal reads the password from the first line of stdin and the code from the second", async () => {
    expect(await readLoginSecrets(io("pw one\n123456\n"), {})).toEqual({ password: "pw one", totpCode: "123456" });
    expect(await readLoginSecrets(io("pw one\n"), { totp: "654321" })).toEqual({ password: "pw one", totpCode: "654321" });
    await expect(readLoginSecrets(io(""), {})).rejects.toThrow(/no password/);
  });

  it("on a terminal asks for the password without echo, then the code with echo unless --totp gave it", async () => {
    const asked: [string, boolean][] = [];
    const answers = ["typed pw", "111222"];
    const prompt = async (q: string, o: { echo: boolean }) => {
      asked.push([q, o.echo]);
      return answers.shift()!;
    };
    expect(await readLoginSecrets(io("ignored", prompt), {})).toEqual({ password: "typed pw", totpCode: "111222" });
    expect(asked).toEqual([
      ["Password: ", false],
      ["TOTP code (Enter if none is enrolled): ", true],
    ]);
    answers.push("pw2");
    expect(await readLoginSecrets(io("", prompt), { totp: "333444" })).toEqual({ password: "pw2", totpCode: "333444" });
    answers.push("pw3", "12");
    await expect(readLoginSecrets(io("", prompt), {})).rejects.toThrow(/6 digits/);
  });
});
